"""Converters between normalized coordinates and pixels (SPEC §1).

Sizes are ``(width, height)`` in pixels. Pixel coordinates are continuous positions: pixel
(col, row) covers [col, col + 1) x [row, row + 1), so its centre is (col + 0.5, row + 0.5).
Normalized coordinates are u = x / W, v = y / H, the same at every resolution, so a GETok answer
needs no rescaling between the original image and the model's resized input.
"""

from __future__ import annotations

import math

Size = tuple[int, int]

#: Qwen2.5-VL defaults (transformers' Qwen2VLImageProcessor): patch 14 x spatial merge 2.
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 1280


def pixel_to_norm(xy, size: Size) -> tuple[float, float]:
    """Pixel position (x, y) in an image of ``size`` = (W, H) -> normalized (u, v)."""
    x, y = xy
    w, h = size
    return x / w, y / h


def norm_to_pixel(uv, size: Size) -> tuple[float, float]:
    """Normalized (u, v) -> pixel position (x, y) in an image of ``size`` = (W, H)."""
    u, v = uv
    w, h = size
    return u * w, v * h


def box_pixel_to_norm(box, size: Size) -> tuple[float, float, float, float]:
    """Pixel box (x1, y1, x2, y2) -> normalized (u1, v1, u2, v2)."""
    x1, y1, x2, y2 = box
    w, h = size
    return x1 / w, y1 / h, x2 / w, y2 / h


def box_norm_to_pixel(box, size: Size) -> tuple[float, float, float, float]:
    """Normalized box (u1, v1, u2, v2) -> pixel box (x1, y1, x2, y2)."""
    u1, v1, u2, v2 = box
    w, h = size
    return u1 * w, v1 * h, u2 * w, v2 * h


def smart_resize(
    size: Size,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> Size:
    """(W, H) of Qwen2.5-VL's resized model input for an image of ``size`` = (W, H).

    Both sides become multiples of ``factor``, the aspect ratio is kept as closely as possible and
    the area is brought into [min_pixels, max_pixels]: the rule of transformers' Qwen2-VL /
    Qwen2.5-VL image processor, which is what the model sees. (qwen-vl-utils' copy differs only
    for a side of at most factor / 2, which it first raises to factor.)
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    if max(width, height) / min(width, height) > 200:
        raise ValueError(f"aspect ratio of {size!r} is above 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def original_to_input(xy, size: Size, input_size: Size | None = None) -> tuple[float, float]:
    """Pixel position in the original image -> pixel position in the model input.

    ``input_size`` defaults to ``smart_resize(size)`` (Qwen2.5-VL).
    """
    input_size = input_size or smart_resize(size)
    return norm_to_pixel(pixel_to_norm(xy, size), input_size)


def input_to_original(xy, size: Size, input_size: Size | None = None) -> tuple[float, float]:
    """Pixel position in the model input -> pixel position in the original image of ``size``."""
    input_size = input_size or smart_resize(size)
    return norm_to_pixel(pixel_to_norm(xy, input_size), size)
