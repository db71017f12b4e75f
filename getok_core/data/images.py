"""Image pixels and sizes, in the frame annotations use: the image as displayed, EXIF
orientation applied (``PIL.ImageOps.exif_transpose`` semantics: orientations 5-8 swap width and
height), which is what transformers' ``load_image`` and labelme show.

- ``to_rgb(array or PIL image)``: the (H, W, 3) uint8 RGB array (grayscale replicated, alpha
  dropped; other dtypes refused).
- ``load_image(source)``: RGB uint8 pixels of a path, an array or a zero-argument callable
  returning one (``ImageSource``: what the decoders take, read only when needed).
- ``image_size(path)``: (W, H) from the file's header, without decoding the pixels.
- ``check_image_size((W, H))``: the size as two positive ints, or ValueError.
- ``work_size((W, H), max_pixels)`` / ``resize_rgb(rgb, (w, h))``: the size an image is
  downscaled to for bounded work (``getok prepare --max-pixels``), and the downscaling.
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

#: An image given by path, as (H, W, 3) uint8 RGB pixels, or as a callable returning them.
ImageSource = Union[str, np.ndarray, Callable[[], np.ndarray]]

#: EXIF orientations that rotate the image by 90 or 270 degrees (width and height swap).
EXIF_SWAP = frozenset({5, 6, 7, 8})
EXIF_ORIENTATION = 0x0112


def to_rgb(image) -> np.ndarray:
    """The (H, W, 3) uint8 RGB array of ``image``.

    Accepted: a uint8 (or bool) array (H, W, 3) RGB, used as is; (H, W) or (H, W, 1) grayscale,
    replicated into three channels; (H, W, 4) RGBA, whose alpha channel is dropped (the colour
    channels are used as they are, as PIL's ``convert("RGB")`` does); a PIL image (converted with
    ``np.asarray``, so convert palette images to RGB first). Other dtypes (float images) raise
    ValueError: scale them to uint8 yourself so that nothing is guessed.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W[, C]), got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image is empty: shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_image(source: ImageSource) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of an image source: a file (EXIF orientation applied), an array
    (``to_rgb``) or a zero-argument callable returning either. The file is decoded completely: an
    unreadable or truncated file (even where ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was set by
    someone else), or one over PIL's decompression-bomb limit, raises ValueError naming it."""
    if callable(source):
        source = source()
    if isinstance(source, np.ndarray):
        return to_rgb(source)
    from PIL import Image, ImageFile, ImageOps

    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(source) as im:
            return to_rgb(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image {source!r}: {exc}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def image_size(path) -> tuple[int, int]:
    """(W, H) of the image at ``path`` as displayed: the header size with EXIF orientation
    applied (orientations 5-8 swap the sides). Reads the header only, never the pixels.
    Raises OSError (missing / unreadable file) or ValueError (not an image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = exif_orientation(im)
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from None
    if orientation in EXIF_SWAP:
        w, h = h, w
    return int(w), int(h)


def exif_orientation(im) -> int:
    """EXIF orientation tag of an opened PIL image without loading its pixels (1 when absent).

    PNG's ``getexif`` decodes the image when the eXIf chunk comes after the pixel data, so for
    every format only EXIF data already in ``im.info`` (read with the header) is used, plus the
    TIFF tag directory, which is part of the header.
    """
    from PIL import Image

    try:
        raw = im.info.get("exif")
        if raw:
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(EXIF_ORIENTATION, 1) or 1)
        if im.format == "TIFF":
            return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block: the image still opens, assume no rotation
        return 1
    return 1


def check_image_size(image_size) -> tuple[int, int]:
    """``image_size`` = (W, H) as two ints >= 1; ValueError otherwise."""
    try:
        w, h = (int(t) for t in image_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_size must be (W, H), got {image_size!r}") from exc
    if w < 1 or h < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return w, h


def work_size(image_size, max_pixels: int) -> tuple[int, int]:
    """The (w, h) an image of ``image_size`` = (W, H) is downscaled to so that w * h <= max_pixels,
    keeping its aspect ratio: (floor(W s), floor(H s)) with s = sqrt(max_pixels / (W H)), each
    side at least 1 (the other then at most ``max_pixels``); (W, H) itself when it has at most ``max_pixels`` pixels or ``max_pixels`` <= 0
    (no bound)."""
    w, h = check_image_size(image_size)
    if max_pixels <= 0 or w * h <= max_pixels:
        return w, h
    s = (max_pixels / (w * h)) ** 0.5
    sw, sh = max(1, int(w * s)), max(1, int(h * s))
    if sh == 1:    # a very thin image: the short side cannot shrink below one pixel
        sw = min(w, max_pixels)
    elif sw == 1:
        sh = min(h, max_pixels)
    return sw, sh


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 resized to ``size`` = (w, h) by PIL's box filter (each output
    pixel the mean of the input pixels it covers: no aliasing when downscaling)."""
    from PIL import Image

    w, h = check_image_size(size)
    if (rgb.shape[1], rgb.shape[0]) == (w, h):
        return rgb
    return np.asarray(Image.fromarray(to_rgb(rgb)).resize((w, h), Image.Resampling.BOX))


__all__ = ["ImageSource", "to_rgb", "load_image", "image_size", "exif_orientation", "check_image_size",
           "work_size", "resize_rgb",
           "EXIF_SWAP", "EXIF_ORIENTATION"]
