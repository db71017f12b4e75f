"""Geometry of normalized boxes and polylines: box IoU and point-to-polyline distance. One
definition each, used by the rewards, the metrics and the refinement data.

Boxes are ``(u1, v1, u2, v2)`` in normalized image coordinates (or any one frame: the functions
only compare the numbers they are given).
"""

from __future__ import annotations

import numpy as np


def boxes_array(b, what: str = "boxes") -> np.ndarray:
    """``b`` as an (N, 4) float array of boxes (one box -> (1, 4), empty -> (0, 4)); ValueError
    naming ``what`` for another shape or a non-finite coordinate."""
    arr = np.asarray(b, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be (N, 4) arrays of (u1, v1, u2, v2), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: box coordinates must be finite")
    return arr


def box_iou_matrix(a, b) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), as an (N, M) float array
    in [0, 1]. A degenerate box (u2 <= u1 or v2 <= v1) has IoU 0 with anything."""
    a = boxes_array(a, "a")
    b = boxes_array(b, "b")
    a_ok = (a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1])
    b_ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    area_a = np.where(a_ok, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 0.0)
    area_b = np.where(b_ok, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0.0)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    ok = a_ok[:, None] & b_ok[None, :]
    inter = np.where(ok, iw * ih, 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(ok & (union > 0), inter / np.where(union > 0, union, 1.0), 0.0)
    return np.clip(iou, 0.0, 1.0)


def box_iou(a, b) -> float:
    """IoU of two boxes (u1, v1, u2, v2) in [0, 1]; 0 when either is None, not finite or
    degenerate. Never raises on a malformed box (it scores 0)."""
    if a is None or b is None:
        return 0.0
    try:
        return float(box_iou_matrix([a], [b])[0, 0])
    except (TypeError, ValueError):
        return 0.0


def point_segment_distances(points, polyline) -> np.ndarray:
    """Distance of each point of ``points`` (k, 2) to the polyline ``polyline`` (m, 2): to the
    nearest point of its segments (a polyline of one vertex is that point). Same frame and units
    as the inputs; (k,) float array."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    line = np.asarray(polyline, dtype=float).reshape(-1, 2)
    if len(line) == 1:
        line = np.vstack([line, line])
    a, b = line[:-1], line[1:]
    ab = b - a
    denom = (ab * ab).sum(axis=1)
    ap = p[:, None, :] - a[None, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(denom > 0, (ap * ab[None]).sum(axis=2) / np.where(denom > 0, denom, 1.0), 0.0)
    t = np.clip(t, 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((p[:, None, :] - closest) ** 2).sum(axis=2)).min(axis=1)


__all__ = ["boxes_array", "box_iou", "box_iou_matrix", "point_segment_distances"]
