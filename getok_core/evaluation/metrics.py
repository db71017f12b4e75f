"""Evaluation metrics (SPEC §7): referring segmentation, REC boxes, pointing, lanes, format.

Every function takes parallel sequences with **one entry per referring expression** and
aggregates over the dataset. Geometry is normalized (u, v) in [0, 1] (SPEC §1) except masks,
which live in the original image frame.

Masks
    A mask is a boolean (H, W) array (an integer array holding only 0 / 1 is accepted too), a
    COCO RLE dict (``getok_core.data.masks``; compressed counts as str or bytes, or uncompressed
    counts), or None. None and an all-false mask both mean "no target" (ground truth) or "empty
    prediction". When every mask of an expression is an RLE the counts come from pycocotools
    (``merge`` + ``area``), otherwise RLEs are decoded and counted with numpy: both are integer
    pixel counts, so the two paths give identical numbers.

Segmentation (LISA / ReLA conventions)
    For expression i, I_i and U_i are the pixel counts of pred & gt and pred | gt, outside the
    ignore region when there is one (ReasonSeg: ignored pixels count in neither).
    IoU_i = I_i / U_i, and when U_i = 0 (empty prediction on an empty ground truth: a correct
    rejection) 1 by default (LISA / ReLA), 0 under the Seg-Zero convention
    (``MetricRules(giou_empty="zero")``). A non-empty prediction on an empty ground truth scores 0
    and adds its area to the cIoU union.
    gIoU = mean_i IoU_i. cIoU = sum_i I_i / sum_i U_i (an empty-empty pair adds 0 to both; None
    when the total union is 0). N_acc = share of no-target expressions predicted empty,
    T_acc = share of target expressions predicted non-empty (None when there are no such
    expressions). "No target" and "predicted empty" look at the whole masks (the ignore region
    does not change them).

Counting (``MetricRules.counting``)
    "per-expression" (default): every referring expression weighs 1. "per-instance": every
    annotated object (a ground truth's ``sample_id``: one object, or one gRefCOCO target set,
    with its expressions) weighs 1, shared evenly by its expressions; every mean, share and the
    cIoU sums are then weighted (the reported ``intersection`` / ``union`` stay unweighted pixel
    counts). docs/evaluation.md says which paper counts which way.

Boxes (REC)
    (u1, v1, u2, v2) normalized; a box with u2 <= u1 or v2 <= v1 is degenerate (IoU 0 with
    anything). Acc@t = share of the expressions **with a target** whose IoU >= t; the caller
    passes one predicted box per expression (the first predicted instance's), None counting as a
    miss. Several ground-truth boxes (multi-target): the IoU with the best-matching one.
    Expressions without a ground-truth box (no target) are not in Acc@t: they are reported apart
    as N_acc = the share of them answered with no box.

Points
    A point hits a mask when the pixel that contains it (``codec.coords.point_pixel``: col = floor(u W), row = floor(v H) to a 1e-9 px tolerance;
    u = 1 maps into the last column) is in the mask; it hits ground-truth points when within ``tol``
    pixels (default 2% of the image diagonal) of one of them. An expression scores the share of
    its predicted points that hit (0 when it predicts none); no-target expressions score 1 when
    they predict no point, else 0. Accuracy = mean over expressions.

Polylines (lanes)
    Vertices and segments are measured in pixels of the image (u W, v H). A predicted vertex
    matches when within ``tol`` pixels (default 0.02 * image diagonal) of any ground-truth
    polyline of its expression (distance to the segments, a single-vertex polyline being a
    point); a ground-truth vertex is recovered when within ``tol`` of any predicted polyline.
    Precision = matched predicted vertices / predicted vertices, recall = recovered ground-truth
    vertices / ground-truth vertices, both micro-averaged over the dataset; F1 = 2PR / (P + R).
    Empty cases: precision is None when nothing was predicted, recall None when there is no
    ground-truth vertex; F1 is 0 when exactly one of them is None (the other is then 0: nothing
    could match), None when both are, 0 when P + R = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
from pycocotools import mask as mask_utils

from ..codec.coords import points_pixels
from ..codec.geometry import box_iou_matrix, point_segment_distances
from ..data.groundtruth import GroundTruthError, loads
from ..data.masks import to_coco
from ..data.records import TASKS

#: Default polyline / point tolerance, as a share of the image diagonal.
DEFAULT_TOL_FRACTION = 0.02

GIOU_EMPTY = {"one": "LISA / ReLA: an empty prediction on an empty ground truth scores IoU 1",
              "zero": "Seg-Zero: an empty prediction on an empty ground truth scores IoU 0"}
COUNTING = {"per-expression": "every referring expression weighs 1 (LISA, ReLA, GETok)",
            "per-instance": "every annotated object (sample_id) weighs 1, shared by its expressions "
                            "(VisionReasoner's instance level)"}
REC_RULE = ("Acc@t over the expressions with a target (no-target expressions are not hits or misses); "
            "no-target expressions reported apart as box.N_acc (answered with no box)")


@dataclass(frozen=True)
class MetricRules:
    """The switchable metric conventions (docs/evaluation.md): ``giou_empty`` "one" (LISA / ReLA,
    default) or "zero" (Seg-Zero); ``counting`` "per-expression" (default) or "per-instance"."""

    giou_empty: str = "one"
    counting: str = "per-expression"

    def __post_init__(self):
        if self.giou_empty not in GIOU_EMPTY:
            raise ValueError(f"giou_empty must be one of {list(GIOU_EMPTY)}, got {self.giou_empty!r}")
        if self.counting not in COUNTING:
            raise ValueError(f"counting must be one of {list(COUNTING)}, got {self.counting!r}")

    @property
    def empty_iou(self) -> float:
        return 1.0 if self.giou_empty == "one" else 0.0

    def describe(self) -> dict:
        """The conventions by name and in words (metrics.json ``_meta.conventions``)."""
        return {"giou_empty": self.giou_empty, "giou_empty_rule": GIOU_EMPTY[self.giou_empty],
                "counting": self.counting, "counting_rule": COUNTING[self.counting], "rec": REC_RULE}

    def label(self) -> str:
        """One line naming the conventions (printed above the tables)."""
        return (f"gIoU empty/empty = {self.empty_iou:g} ({self.giou_empty}: "
                f"{'LISA / ReLA' if self.giou_empty == 'one' else 'Seg-Zero'}); counting {self.counting}; "
                "REC Acc over expressions with a target, no-target as N-acc")


def _weights(weights, n: int) -> np.ndarray:
    """Per-expression weights (default all 1) as a float array; ValueError unless n finite >= 0."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights: one finite non-negative weight per expression ({n}) is needed")
    return w


def _share(mask: np.ndarray, ok: np.ndarray, w: np.ndarray):
    """Weighted share of ``ok`` among ``mask`` (None when ``mask`` weighs nothing)."""
    tot = float(w[mask].sum())
    return float(w[mask & ok].sum()) / tot if tot > 0 else None


def instance_weights(sample_ids) -> list[float]:
    """Per-instance counting: 1 / (number of expressions of the same sample_id) per expression."""
    counts: dict = {}
    for s in sample_ids:
        counts[s] = counts.get(s, 0) + 1
    return [1.0 / counts[s] for s in sample_ids]


# ---------------------------------------------------------------------- masks
class _Mask:
    """A normalized mask: kind "none", "rle" (pycocotools dict, bytes counts) or "bool"."""

    __slots__ = ("kind", "data", "shape", "_area")

    def __init__(self, kind, data=None, shape=None):
        self.kind, self.data, self.shape, self._area = kind, data, shape, None

    @property
    def area(self) -> int:
        if self._area is None:
            if self.kind == "none":
                self._area = 0
            elif self.kind == "rle":
                self._area = int(mask_utils.area(self.data))
            else:
                self._area = int(np.count_nonzero(self.data))
        return self._area

    @property
    def empty(self) -> bool:
        return self.area == 0

    def as_bool(self) -> np.ndarray:
        if self.kind == "bool":
            return self.data
        if self.kind == "rle":
            return mask_utils.decode(self.data).astype(bool)
        raise AssertionError("as_bool of an absent mask")


def _as_mask(m, what: str) -> _Mask:
    """Normalize a mask argument; ValueError naming ``what`` when it is not a mask."""
    if m is None:
        return _Mask("none")
    if isinstance(m, dict):
        try:
            rle = to_coco(m)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        return _Mask("rle", rle, (int(rle["size"][0]), int(rle["size"][1])))
    arr = np.asarray(m)
    if arr.ndim != 2:
        raise ValueError(f"{what}: a mask must be a 2-D (H, W) array, an RLE dict or None, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what}: a mask array must be boolean (or integer 0/1), got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{what}: an integer mask must hold only 0 and 1")
        arr = arr.astype(bool)
    return _Mask("bool", arr, arr.shape)


def union_masks(masks):
    """OR of several masks (bool arrays and / or RLE dicts), None when there are none.

    All RLE in, an RLE dict (str counts) out; otherwise a bool array. Sizes must agree."""
    ms = [m for m in (_as_mask(x, f"mask {k}") for k, x in enumerate(masks)) if m.kind != "none"]
    if not ms:
        return None
    shapes = {m.shape for m in ms}
    if len(shapes) > 1:
        raise ValueError(f"masks to merge have different sizes (H, W): {sorted(shapes)}")
    if all(m.kind == "rle" for m in ms):
        rle = ms[0].data if len(ms) == 1 else mask_utils.merge([m.data for m in ms], intersect=0)
        counts = rle["counts"]
        return {"size": [int(rle["size"][0]), int(rle["size"][1])],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    out = np.zeros(ms[0].shape, bool)
    for m in ms:
        out |= m.as_bool()
    return out


def _inter_union(p: _Mask, g: _Mask, ign: _Mask) -> tuple[int, int]:
    """(intersection, union) pixel counts of p and g outside ign."""
    present = [m for m in (p, g) if m.kind != "none"]
    if not present:
        return 0, 0
    if all(m.kind == "rle" for m in (*present, *([ign] if ign.kind != "none" else []))):
        rles = [m.data for m in present]
        if len(rles) == 2:
            inter_rle = mask_utils.merge(rles, intersect=1)
            union_rle = mask_utils.merge(rles, intersect=0)
            inter, union = int(mask_utils.area(inter_rle)), int(mask_utils.area(union_rle))
        else:
            inter_rle, union_rle = None, rles[0]
            inter, union = 0, present[0].area
        if ign.kind != "none":
            if inter_rle is not None and inter:
                inter -= int(mask_utils.area(mask_utils.merge([inter_rle, ign.data], intersect=1)))
            if union:
                union -= int(mask_utils.area(mask_utils.merge([union_rle, ign.data], intersect=1)))
        return inter, union
    arrays = [m.as_bool() for m in present]
    keep = None if ign.kind == "none" else ~ign.as_bool()
    if len(arrays) == 2:
        i_mask, u_mask = arrays[0] & arrays[1], arrays[0] | arrays[1]
    else:
        i_mask, u_mask = None, arrays[0]
    if keep is not None:
        u_mask = u_mask & keep
        i_mask = None if i_mask is None else i_mask & keep
    return (0 if i_mask is None else int(np.count_nonzero(i_mask))), int(np.count_nonzero(u_mask))


def _check_lengths(**seqs) -> int:
    lens = {k: len(v) for k, v in seqs.items() if v is not None}
    if len(set(lens.values())) > 1:
        raise ValueError("one entry per expression is needed in each argument, got lengths "
                         + ", ".join(f"{k}={n}" for k, n in lens.items()))
    return next(iter(lens.values()), 0)


def segmentation_scores(pred_masks, gt_masks, ignore_masks=None, empty_iou: float = 1.0, weights=None) -> dict:
    """gIoU, cIoU, N_acc, T_acc over expressions (LISA / ReLA; see the module docstring).

    ``pred_masks``, ``gt_masks`` and (optional) ``ignore_masks`` are parallel sequences, one mask
    (bool array, RLE dict or None) per expression. ``empty_iou``: the IoU of an empty prediction
    on an empty ground truth (1 LISA / ReLA, 0 Seg-Zero). ``weights``: one per expression (default
    1; per-instance counting passes ``instance_weights``). Returns ``{"gIoU", "cIoU", "N_acc",
    "T_acc", "n", "n_no_target", "n_target", "intersection", "union", "per_sample"}``:
    ``intersection`` / ``union`` are the summed (unweighted) pixel counts, ``per_sample`` the
    per-expression IoUs. gIoU and cIoU are None when there is no expression.
    Raises ValueError on mismatched lengths, a non-mask entry, or masks of one expression with
    different sizes (the message names the expression index).
    """
    n = _check_lengths(pred_masks=pred_masks, gt_masks=gt_masks, ignore_masks=ignore_masks)
    w = _weights(weights, n)
    per_sample: list[float] = []
    inters, unions, no_target, empty = [], [], [], []
    for i in range(n):
        p = _as_mask(pred_masks[i], f"expression {i}: prediction")
        g = _as_mask(gt_masks[i], f"expression {i}: ground truth")
        ign = _as_mask(None if ignore_masks is None else ignore_masks[i], f"expression {i}: ignore mask")
        shapes = {name: m.shape for name, m in (("prediction", p), ("ground truth", g), ("ignore", ign))
                  if m.kind != "none"}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"expression {i}: mask sizes (H, W) differ: "
                             + ", ".join(f"{k} {s[0]}x{s[1]}" for k, s in shapes.items()))
        inter, union = _inter_union(p, g, ign)
        per_sample.append(inter / union if union else float(empty_iou))
        inters.append(inter)
        unions.append(union)
        no_target.append(g.empty)
        empty.append(p.empty)
    no_target, empty = np.array(no_target, bool), np.array(empty, bool)
    wu = float(np.dot(w, unions)) if n else 0.0
    return {
        "gIoU": (float(np.mean(per_sample)) if weights is None else float(np.dot(w, per_sample) / w.sum()))
        if n and w.sum() > 0 else None,
        "cIoU": float(np.dot(w, inters)) / wu if wu > 0 else None,
        "N_acc": _share(no_target, empty, w),
        "T_acc": _share(~no_target, ~empty, w),
        "n": n,
        "n_no_target": int(no_target.sum()),
        "n_target": int(n - no_target.sum()),
        "intersection": int(sum(inters)),
        "union": int(sum(unions)),
        "per_sample": per_sample,
    }


# ---------------------------------------------------------------------- boxes
def _one_box(b, what: str):
    if b is None:
        return None
    try:
        arr = np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: a box must be 4 numbers (u1, v1, u2, v2) or None, got {b!r}") from None
    if arr.shape != (4,) or not np.isfinite(arr).all():
        raise ValueError(f"{what}: a box must be 4 finite numbers (u1, v1, u2, v2) or None, got {b!r}")
    return arr


def _gt_boxes(b, what: str) -> np.ndarray:
    """Ground-truth entry -> (K, 4) array (K = 0: no target)."""
    if b is None:
        return np.zeros((0, 4))
    try:
        arr = np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: ground truth must be a box, a list of boxes or None, got {b!r}") from None
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise ValueError(f"{what}: ground truth must be a box (4 finite numbers), a list of boxes or None, "
                         f"got shape {arr.shape}")
    return arr


def _acc_key(t: float) -> str:
    return f"Acc@{t:g}"


def box_accuracy(pred_boxes, gt_boxes, thresholds=(0.5, 0.8), weights=None) -> dict:
    """REC accuracy: share of the expressions with a target whose predicted box has IoU >= t.

    ``pred_boxes[i]``: the expression's predicted box (normalized (u1, v1, u2, v2)) or None (a
    miss). ``gt_boxes[i]``: a box, a list of boxes (multi-target: the IoU with the best-matching
    box counts) or None / [] (no target: outside Acc@t and mean_iou; counted in N_acc, the share
    of them answered with None). ``weights``: one per expression (default 1). Returns
    ``{"Acc@0.5": .., "Acc@0.8": .., "mean_iou", "N_acc", "n", "n_target", "n_no_target",
    "per_sample"}`` (one ``Acc@t`` per threshold; Acc@t and mean_iou None without a target
    expression, N_acc None without a no-target one). ``per_sample``: the IoU of a target
    expression, 1 / 0 for a no-target one answered with None / a box.
    """
    n = _check_lengths(pred_boxes=pred_boxes, gt_boxes=gt_boxes)
    w = _weights(weights, n)
    thresholds = tuple(float(t) for t in thresholds)
    ious: list[float] = []
    target = np.zeros(n, bool)
    for i in range(n):
        p = _one_box(pred_boxes[i], f"expression {i}: prediction")
        g = _gt_boxes(gt_boxes[i], f"expression {i}")
        target[i] = len(g) > 0
        if not target[i]:
            ious.append(1.0 if p is None else 0.0)
        elif p is None:
            ious.append(0.0)
        else:
            ious.append(float(box_iou_matrix(p[None], g).max()))
    arr = np.array(ious, float)
    out = {_acc_key(t): _share(target, arr >= t, w) for t in thresholds}
    wt = float(w[target].sum())
    out.update({"mean_iou": float(np.dot(w[target], arr[target])) / wt if wt > 0 else None,
                "N_acc": _share(~target, arr == 1.0, w), "n": n, "n_target": int(target.sum()),
                "n_no_target": int(n - target.sum()), "per_sample": ious})
    return out


# ---------------------------------------------------------------------- polylines
def _sizes(image_size, n: int, what: str = "image_size") -> list[tuple[float, float]]:
    """One (W, H) per expression from a single (W, H) or a per-expression sequence."""
    if image_size is None:
        raise ValueError(f"{what} (W, H) is needed")
    if len(image_size) == 2 and all(isinstance(t, Real) and not isinstance(t, bool) for t in image_size):
        sizes = [image_size] * n
    else:
        if len(image_size) != n:
            raise ValueError(f"{what}: one (W, H) for all expressions or one per expression ({n}), "
                             f"got {len(image_size)}")
        sizes = list(image_size)
    out = []
    for i, s in enumerate(sizes):
        try:
            w, h = (float(t) for t in s)
        except (TypeError, ValueError):
            raise ValueError(f"expression {i}: {what} must be (W, H), got {s!r}") from None
        if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
            raise ValueError(f"expression {i}: {what} must be positive, got {s!r}")
        out.append((w, h))
    return out


def _polylines(entry, what: str) -> list[np.ndarray]:
    """An expression's polylines as (k, 2) float arrays (normalized)."""
    if entry is None:
        return []
    out = []
    for j, line in enumerate(entry):
        try:
            arr = np.asarray(line, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: polyline {j} must be a list of (u, v) vertices") from None
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
            raise ValueError(f"{what}: polyline {j} must be a non-empty (k, 2) list of (u, v) vertices, got "
                             f"shape {arr.shape} (pass a list of polylines per expression)")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: polyline {j} has a non-finite vertex")
        out.append(arr)
    return out


def _matched(vertices: list[np.ndarray], lines: list[np.ndarray], tol: float) -> int:
    if not vertices:
        return 0
    pts = np.vstack(vertices)
    if not lines:
        return 0
    d = np.min([point_segment_distances(pts, line) for line in lines], axis=0)
    return int(np.count_nonzero(d <= tol))


def polyline_scores(pred_lines, gt_lines, image_size, tol=None) -> dict:
    """Vertex precision / recall / F1 of polylines (lanes), micro-averaged over expressions.

    ``pred_lines[i]`` / ``gt_lines[i]``: the expression's list of polylines, each a list of
    normalized (u, v) vertices (None or [] = none). ``image_size``: (W, H) for every expression or
    one (W, H) per expression. ``tol``: pixels, default 0.02 * the image diagonal (per image).
    Returns ``{"precision", "recall", "F1", "n", "n_pred_vertices", "n_gt_vertices",
    "matched_pred", "matched_gt"}``; see the module docstring for the empty cases.
    """
    n = _check_lengths(pred_lines=pred_lines, gt_lines=gt_lines)
    sizes = _sizes(image_size, n)
    if tol is not None and not (isinstance(tol, Real) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a non-negative number of pixels, got {tol!r}")
    n_pred = n_gt = m_pred = m_gt = 0
    for i in range(n):
        w, h = sizes[i]
        scale = np.array([w, h])
        t = DEFAULT_TOL_FRACTION * math.hypot(w, h) if tol is None else float(tol)
        pl = [line * scale for line in _polylines(pred_lines[i], f"expression {i}: prediction")]
        gl = [line * scale for line in _polylines(gt_lines[i], f"expression {i}: ground truth")]
        n_pred += sum(len(x) for x in pl)
        n_gt += sum(len(x) for x in gl)
        m_pred += _matched(pl, gl, t)
        m_gt += _matched(gl, pl, t)
    precision = m_pred / n_pred if n_pred else None
    recall = m_gt / n_gt if n_gt else None
    if precision is None and recall is None:
        f1 = None
    elif precision is None or recall is None or precision + recall == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "F1": f1, "n": n, "n_pred_vertices": n_pred,
            "n_gt_vertices": n_gt, "matched_pred": m_pred, "matched_gt": m_gt}


# ---------------------------------------------------------------------- points
def _points(entry, what: str) -> np.ndarray:
    """A point (u, v), a list of points or None -> (k, 2) array."""
    if entry is None:
        return np.zeros((0, 2))
    try:
        arr = np.asarray(entry, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: points must be (u, v) or a list of (u, v), got {entry!r}") from None
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{what}: points must be finite (u, v) pairs, got shape {arr.shape}")
    return arr


def _is_mask_entry(x) -> bool:
    return isinstance(x, dict) or (isinstance(x, np.ndarray) and x.dtype == bool)


def point_accuracy(pred_points, gt_masks_or_points, image_size=None, tol=None) -> dict:
    """Pointing accuracy: share of predicted points on their target, averaged over expressions.

    ``pred_points[i]``: a normalized point (u, v), a list of points, or None. ``gt_masks_or_points[i]``:
    a mask (bool (H, W) array or RLE dict: a point hits when its pixel is in the mask), or a point /
    list of normalized points (a point hits when within ``tol`` pixels of one; needs ``image_size``
    (W, H), single or per expression; ``tol`` defaults to 0.02 * the image diagonal), or None / []
    / an all-false mask (no target). An expression scores hits / its points (0 with no point);
    no target: 1 when it predicts no point, else 0. A point outside [0, 1]^2 misses a mask.
    Returns ``{"accuracy", "point_hit_rate" (hits / points over target expressions), "n",
    "n_points", "n_no_target", "per_sample"}``; values None where there is nothing to average.
    """
    n = _check_lengths(pred_points=pred_points, gt_masks_or_points=gt_masks_or_points)
    sizes = None if image_size is None else _sizes(image_size, n)
    if tol is not None and not (isinstance(tol, Real) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a non-negative number of pixels, got {tol!r}")
    scores: list[float] = []
    hits_total = pts_total = n_no = 0
    for i in range(n):
        pts = _points(pred_points[i], f"expression {i}: prediction")
        g = gt_masks_or_points[i]
        if _is_mask_entry(g):
            m = _as_mask(g, f"expression {i}: ground truth")
            if sizes is not None and (int(sizes[i][1]), int(sizes[i][0])) != m.shape:
                raise ValueError(f"expression {i}: mask is {m.shape[0]}x{m.shape[1]} (HxW), image_size is "
                                 f"{sizes[i][0]:g}x{sizes[i][1]:g} (WxH)")
            target = not m.empty
            if target and len(pts):
                mh, mw = m.shape
                arr = m.as_bool()
                inside = (pts[:, 0] >= 0) & (pts[:, 0] <= 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= 1)
                rows, cols = points_pixels(pts, (mw, mh))
                hits = int(np.count_nonzero(inside & arr[rows, cols]))
        else:
            gp = _points(g, f"expression {i}: ground truth")
            target = len(gp) > 0
            if target and len(pts):
                if sizes is None:
                    raise ValueError(f"expression {i}: ground-truth points need image_size (W, H)")
                w, h = sizes[i]
                t = DEFAULT_TOL_FRACTION * math.hypot(w, h) if tol is None else float(tol)
                scale = np.array([w, h])
                d = np.sqrt((((pts * scale)[:, None, :] - (gp * scale)[None]) ** 2).sum(axis=2)).min(axis=1)
                hits = int(np.count_nonzero(d <= t))
        if not target:
            n_no += 1
            scores.append(1.0 if len(pts) == 0 else 0.0)
            continue
        if len(pts) == 0:
            scores.append(0.0)
            continue
        scores.append(hits / len(pts))
        hits_total += hits
        pts_total += len(pts)
    return {"accuracy": float(np.mean(scores)) if n else None,
            "point_hit_rate": hits_total / pts_total if pts_total else None,
            "n": n, "n_points": pts_total, "n_no_target": n_no, "per_sample": scores}


# ---------------------------------------------------------------------- format
def format_validity(parsed_list) -> float | None:
    """Share of answers whose ``Parsed.valid`` is true (None entries count as invalid); None for
    an empty list."""
    parsed_list = list(parsed_list)
    if not parsed_list:
        return None
    return sum(bool(getattr(p, "valid", False)) for p in parsed_list) / len(parsed_list)


# ---------------------------------------------------------------------- convenience
def _gt_dict(gt, i: int) -> dict:
    try:
        return loads(gt)
    except GroundTruthError as exc:
        raise ValueError(f"record {i}: {exc}") from None


#: Ground-truth target fields (any one of) that each task's metrics read.
_NEEDS = {"seg": ("mask",), "box": ("box",), "point": ("mask", "points"), "line": ("polyline",)}


def evaluate_predictions(records, strict: bool = False, rules: MetricRules | None = None) -> dict:
    """Every applicable metric per task, from per-expression records.

    A record is a dict ``{"task" (default: the ground truth's), "parsed": Parsed or None,
    "pred_masks": the prediction's mask (the union of its instances' masks; a list of masks is
    OR-ed) or None, "gt": the ground-truth object of getok_core.data.groundtruth (dict or JSON)}``;
    ``pred_masks`` is required for "seg" records. The prediction is what the parser recovered
    (``Parsed.instances``); with ``strict=True`` an answer that is not ``valid`` counts as empty.
    An answer with no instance (parse failure, ``<none>``, None) is an empty prediction: it is
    scored, never skipped. ``rules``: the gIoU empty convention and the counting
    (``MetricRules``; default LISA / ReLA, per expression).

    Returns ``{task: {"n", "format_validity", "n_no_instance", <family>: {...}}}`` with families
    "segmentation" (seg; ``segmentation_scores`` without per_sample), "box" (box; and seg when
    every ground-truth target of the task has a box; the first predicted instance's box),
    "point" (point; per expression, the ground-truth masks when every target has one, else the
    targets' points; ``gt_kind`` says "mask", "points" or "mixed") and
    "polyline" (line).
    """
    rules = rules or MetricRules()
    out: dict = {}
    for task, items in _group_by_task(records).items():
        weights = (None if rules.counting == "per-expression"
                   else instance_weights([gt.get("sample_id", "") for _, _, gt in items]))
        insts_list = []
        for i, rec, _ in items:
            parsed = rec.get("parsed")
            ok = parsed is not None and (getattr(parsed, "valid", False) or not strict)
            insts_list.append(list(getattr(parsed, "instances", None) or []) if ok else [])
        res: dict = {"n": len(items), "format_validity": format_validity([r.get("parsed") for _, r, _ in items]),
                     "n_no_instance": sum(not x for x in insts_list)}
        gts = [gt for _, _, gt in items]
        if task == "seg":
            res["segmentation"] = _segmentation_family(items, insts_list, rules.empty_iou, weights)
        seg_boxes = [t["box"] for gt in gts for t in gt["targets"]]
        if task == "box" or (task == "seg" and seg_boxes and all(b is not None for b in seg_boxes)):
            pb = [insts[0].box if insts else None for insts in insts_list]
            gb = [[t["box"] for t in gt["targets"] if t["box"] is not None] for gt in gts]
            res["box"] = box_accuracy(pb, gb, weights=weights)
            res["box"].pop("per_sample")
        if task == "point":
            res["point"] = _point_family(items, insts_list)
        if task == "line":
            pl = [[inst.polyline for inst in insts if inst.polyline is not None] for insts in insts_list]
            gl = [[t["polyline"] for t in gt["targets"] if t["polyline"] is not None] for gt in gts]
            res["polyline"] = polyline_scores(pl, gl, [tuple(gt["image_size"]) for gt in gts])
        out[task] = res
    return out


def _group_by_task(records) -> dict[str, list[tuple[int, dict, dict]]]:
    """Records checked and grouped by task: task -> [(record index, record, ground truth)]."""
    groups: dict[str, list[tuple[int, dict, dict]]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"record {i}: must be a dict, got {type(rec).__name__}")
        if "gt" not in rec:
            raise ValueError(f"record {i}: no 'gt'")
        gt = _gt_dict(rec["gt"], i)
        task = rec.get("task") or gt["task"]
        if task not in TASKS:
            raise ValueError(f"record {i}: task must be one of {list(TASKS)}, got {task!r}")
        for j, t in enumerate(gt["targets"]):
            if not any(t[k] for k in _NEEDS[task]):
                raise ValueError(f"record {i}: target {j} has no {' or '.join(_NEEDS[task])}, which a "
                                 f"{task!r} evaluation needs")
        groups.setdefault(task, []).append((i, rec, gt))
    return groups


def _segmentation_family(items, insts_list, empty_iou: float = 1.0, weights=None) -> dict:
    """``segmentation_scores`` (without per_sample) of seg records; an answer without instances
    is an empty prediction."""
    preds, gms, igns = [], [], []
    for (i, rec, gt), insts in zip(items, insts_list):
        if "pred_masks" not in rec:
            raise ValueError(f"record {i}: a seg record needs 'pred_masks' (a mask, a list of masks or None)")
        pm = rec["pred_masks"]
        try:
            if isinstance(pm, (list, tuple)):
                pm = union_masks(pm)
            shape = _as_mask(pm, "pred_masks").shape
        except ValueError as exc:
            raise ValueError(f"record {i}: {exc}") from None
        w, h = gt["image_size"]
        if shape is not None and shape != (h, w):
            raise ValueError(f"record {i}: pred_masks is {shape[0]}x{shape[1]} (HxW), the ground-truth "
                             f"image is {h}x{w} (HxW)")
        preds.append(pm if insts else None)
        gms.append(union_masks([t["mask"] for t in gt["targets"] if t["mask"] is not None]))
        igns.append(gt["ignore"])
    seg = segmentation_scores(preds, gms, igns, empty_iou=empty_iou, weights=weights)
    seg.pop("per_sample")
    return seg


def _point_family(items, insts_list) -> dict:
    """``point_accuracy`` (without per_sample) of point records against the targets' masks when
    every target has one, else their points; ``gt_kind`` says which ("mixed" over records)."""
    pp = [[inst.point for inst in insts if inst.point is not None] for insts in insts_list]
    gp, kinds = [], set()
    for i, _, gt in items:
        targets = gt["targets"]
        if all(t["mask"] is not None for t in targets):
            gp.append(union_masks([t["mask"] for t in targets]))  # an RLE: decoded one expression at a time
            kinds.add("mask")
        elif all(t["points"] for t in targets):
            gp.append([p for t in targets for p in t["points"]])
            kinds.add("points")
        else:
            raise ValueError(f"record {i}: point targets need all masks or all points")
    pa = point_accuracy(pp, gp, image_size=[tuple(gt["image_size"]) for _, _, gt in items])
    pa.pop("per_sample")
    pa["gt_kind"] = kinds.pop() if len(kinds) == 1 else "mixed"
    return pa


__all__ = ["MetricRules", "instance_weights", "GIOU_EMPTY", "COUNTING", "REC_RULE", "segmentation_scores", "box_accuracy", "polyline_scores",
           "point_accuracy", "format_validity", "evaluate_predictions",
           "union_masks", "DEFAULT_TOL_FRACTION"]
