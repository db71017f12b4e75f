"""Converters between normalized coordinates and pixels (SPEC §1).

Sizes are ``(width, height)`` in pixels. Pixel coordinates are continuous positions: pixel
(col, row) covers [col, col + 1) x [row, row + 1), so its centre is (col + 0.5, row + 0.5).
Normalized coordinates are u = x / W, v = y / H, the same at every resolution, so a GETok answer
needs no rescaling between the original image and the model's resized input.
"""

from __future__ import annotations

import math

import numpy as np

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


# ---------------------------------------------------------------------- the pixel of a point
#: A position within PIXEL_EPS pixels below a pixel edge counts as on it. u * W is computed in
#: floating point, and a cell centre (x + 0.5) / n lands exactly on a pixel edge whenever
#: (2x + 1) W is a multiple of 2n (n = 10, W = 180, x = 3: 63.0, computed as 62.99999999999999):
#: the tolerance makes every caller agree with exact arithmetic. It is far below any real
#: position difference (a pixel at W = 100000 is 1e-5 in u) and far above float error (~1e-11 px).
PIXEL_EPS = 1e-9


def point_pixel(uv, size: Size) -> tuple[int, int]:
    """(row, col) of the pixel containing the normalized point ``uv`` = (u, v) in an image of
    ``size`` = (W, H): col = floor(u W + PIXEL_EPS) clamped into [0, W - 1], row likewise with
    v and H (so u = 1 falls in the last column). The one point-to-pixel rule of GETok: rewards,
    metrics, decoders, proposals and refinement data all use it (or ``points_pixels``)."""
    u, v = uv
    w, h = size
    col = min(max(math.floor(u * w + PIXEL_EPS), 0), w - 1)
    row = min(max(math.floor(v * h + PIXEL_EPS), 0), h - 1)
    return row, col


def points_pixels(uv, size: Size):
    """``point_pixel`` of many points: ``uv`` (k, 2) normalized -> (rows, cols) int64 arrays of
    length k. Non-finite coordinates are clamped like out-of-range ones (NaN -> pixel 0)."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    w, h = size
    with np.errstate(invalid="ignore"):
        x = np.nan_to_num(np.floor(uv[:, 0] * w + PIXEL_EPS), nan=0.0, posinf=w - 1, neginf=0.0)
        y = np.nan_to_num(np.floor(uv[:, 1] * h + PIXEL_EPS), nan=0.0, posinf=h - 1, neginf=0.0)
    cols = np.clip(x, 0, w - 1).astype(np.int64)
    rows = np.clip(y, 0, h - 1).astype(np.int64)
    return rows, cols


def _box_axis(lo: float, hi: float, n: int) -> tuple[int, int]:
    lo, hi = min(lo, hi), max(lo, hi)
    first = math.ceil(lo - 0.5 - PIXEL_EPS)  # pixel i's centre is i + 0.5
    last = math.floor(hi - 0.5 + PIXEL_EPS)
    if first > last:  # no centre inside: the pixel holding the box's middle
        first = last = math.floor((lo + hi) / 2)
    return min(max(first, 0), n - 1), min(max(last, 0), n - 1) + 1


def box_pixel_mask(box, size: Size) -> np.ndarray:
    """Bool (H, W) mask of the pixels inside the normalized box ``(u1, v1, u2, v2)`` in an image
    of ``size`` = (W, H).

    A pixel is inside when its centre (col + 0.5, row + 0.5) lies in [u1 W, u2 W] x [v1 H, v2 H]
    (edges included, to ``PIXEL_EPS``). On an axis where the box holds no pixel centre (narrower
    than a pixel), the pixel containing the box's middle is taken, so a box is never empty. Boxes
    are clipped to the image; a box wholly outside the image keeps the border pixels nearest to it.
    """
    w, h = size
    u1, v1, u2, v2 = box
    c0, c1 = _box_axis(u1 * w, u2 * w, w)
    r0, r1 = _box_axis(v1 * h, v2 * h, h)
    out = np.zeros((h, w), bool)
    out[r0:r1, c0:c1] = True
    return out
