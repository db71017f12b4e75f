"""Binary masks and COCO run-length encoding (RLE), over pycocotools.

A mask is a boolean array of shape (H, W) in the original image frame. An RLE is the COCO dict
``{"size": [H, W], "counts": str}`` (compressed counts as text, so it survives JSON). Both forms
give the same IoU: tests check them against each other.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean (H, W) mask, counts as an ASCII string."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def to_coco(rle: dict) -> dict:
    """An RLE dict in the form pycocotools takes (compressed counts as bytes)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("RLE must be a dict with 'size' and 'counts'")
    h, w = (int(t) for t in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd annotations)
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask of an RLE (compressed or uncompressed counts)."""
    return mask_utils.decode(to_coco(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    """Number of pixels in an RLE mask."""
    return int(mask_utils.area(to_coco(rle)))


def rle_iou(a: dict, b: dict) -> float:
    """IoU of two RLE masks of the same size; 0 when both are empty."""
    return float(mask_utils.iou([to_coco(a)], [to_coco(b)], [0])[0, 0])


def rle_ious(rles, target: dict) -> np.ndarray:
    """IoU of each RLE in ``rles`` with ``target`` (same size), as a float64 (K,) array."""
    if not rles:
        return np.zeros(0)
    return np.asarray(mask_utils.iou([to_coco(r) for r in rles], [to_coco(target)], [0]), float)[:, 0]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape; 0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """Boolean mask of COCO polygons (each a flat [x1, y1, x2, y2, ...] list in pixels)."""
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not polys:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalized box (u1, v1, u2, v2) spanning the mask's pixels (pixel edges), None if empty."""
    m = np.asarray(mask, bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    h, w = m.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h
