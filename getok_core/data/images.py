"""Image pixels and sizes, in the frame annotations use: the image as displayed, EXIF
orientation applied (``PIL.ImageOps.exif_transpose`` semantics: orientations 5-8 swap width and
height), which is what transformers' ``load_image`` and labelme show.

- ``to_rgb(array or PIL image)``: the (H, W, 3) uint8 RGB array (grayscale replicated, alpha
  dropped; other dtypes refused).
- ``load_image(source)``: RGB uint8 pixels of a path, an array or a zero-argument callable
  returning one (``ImageSource``: what the decoders take, read only when needed).
- ``image_size(path)``: (W, H) from the file's header, without decoding the pixels.
- ``check_image_size((W, H))``: the size as two positive ints, or ValueError.
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
    (``to_rgb``) or a zero-argument callable returning either. An unreadable file raises
    ValueError naming it."""
    if callable(source):
        source = source()
    if isinstance(source, np.ndarray):
        return to_rgb(source)
    from PIL import Image, ImageOps

    try:
        with Image.open(source) as im:
            return to_rgb(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {source!r}: {exc}") from exc


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


__all__ = ["ImageSource", "to_rgb", "load_image", "image_size", "exif_orientation", "check_image_size",
           "EXIF_SWAP", "EXIF_ORIENTATION"]
