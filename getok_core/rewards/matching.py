"""Predictions against targets (SPEC §6): the geometry of a response's predicted instances, the
Hungarian matching on 1 - S (S = a * box IoU + b * point-hit ratio + c * boxscore), the
nearest-neighbour spread of each instance's points, and the semantic-critical points quality.

Boxes and points are normalized (u, v); distances and areas are pixels of the image of the
ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..codec.geometry import box_iou_matrix
from ..codec.instance import InstanceCells
from ..codec.vocab import GetokVocab
from .params import RewardParams
from .scores import boxscore_matrix, unit
from .truth import Truth

#: Instances with more points than this take the k-d tree path of ``mean_nn_batch``.
NN_PAD = 64


@dataclass(eq=False)
class Predictions:
    """Geometry of a response's predicted instances: ``boxes[i]`` (normalized, or None) and the
    points of each instance (seg points, the single point, polyline vertices; cell centres)
    concatenated in ``pts`` (K, 2), normalized, with ``starts[i]`` / ``counts[i]``."""

    cells: list[InstanceCells]
    boxes: list
    pts: np.ndarray
    starts: list[int]
    counts: list[int]

    @classmethod
    def of(cls, cells: list[InstanceCells], vocab: GetokVocab) -> "Predictions":
        n = float(vocab.grid_size)
        boxes, flat, counts, starts = [], [], [], []
        for c in cells:
            boxes.append(None if c.box is None else vocab.cells_box(c.box))
            starts.append(len(flat) // 2)
            k0 = len(flat)
            for x, y in c.points:
                flat += (x, y)
            if c.point is not None:
                flat += c.point
            if c.polyline is not None:
                for x, y in c.polyline:
                    flat += (x, y)
            counts.append((len(flat) - k0) // 2)
        return cls(cells, boxes, (np.array(flat, float).reshape(-1, 2) + 0.5) / n, starts, counts)

    def points_of(self, i: int) -> np.ndarray:
        """The (counts[i], 2) normalized points of instance i."""
        s = self.starts[i]
        return self.pts[s:s + self.counts[i]]


@dataclass
class Matching:
    """The matching of P predictions to G targets: ``pairs`` [(prediction, target)] and the
    three similarity terms of every pair as (P, G) arrays in [0, 1]: box ``iou``, ``boxscore``
    and ``hit`` (share of the prediction's points inside the target's region)."""

    pairs: list[tuple[int, int]]
    iou: np.ndarray
    boxscore: np.ndarray
    hit: np.ndarray

    @classmethod
    def empty(cls, p: int, g: int) -> "Matching":
        """No pair (no prediction or no target): every term 0."""
        return cls([], np.zeros((p, g)), np.zeros((p, g)), np.zeros((p, g)))


def _box_rows(boxes, missing) -> np.ndarray:
    return np.array([missing if b is None else b for b in boxes], float).reshape(-1, 4)


def hit_fractions(preds: list[Predictions], truth: Truth) -> np.ndarray:
    """(instances of all ``preds``, G): the share of each instance's points inside each target's
    region (0 for an instance without points); one ``contains_all`` for all of them."""
    counts = np.array([m for p in preds for m in p.counts], np.int64)
    out = np.zeros((counts.size, len(truth.targets)))
    nz = counts > 0
    if not nz.any():
        return out
    inside = truth.contains_all(np.concatenate([p.pts for p in preds])).astype(np.int64)  # (G, K)
    starts = (np.cumsum(counts) - counts)[nz]
    out[nz] = (np.add.reduceat(inside, starts, axis=1) / counts[nz]).T
    return out


def similarity_terms(preds: list[Predictions], truth: Truth, params: RewardParams):
    """(iou, boxscore, hit), each (instances of all ``preds``, G), of every (prediction, target)
    pair; a missing box scores 0 on both box terms."""
    tboxes = [t.box for t in truth.targets]
    pboxes = [b for p in preds for b in p.boxes]
    iou = box_iou_matrix(_box_rows(pboxes, (0.0,) * 4), _box_rows(tboxes, (0.0,) * 4))
    bs = boxscore_matrix(_box_rows(pboxes, (np.nan,) * 4), _box_rows(tboxes, (np.nan,) * 4), truth.size,
                         params.boxscore_scale)
    return iou, bs, hit_fractions(preds, truth)


def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of a (P, G) cost matrix, as [(row, col)]."""
    if cost.shape == (1, 1):
        return [(0, 0)]
    rows, cols = linear_sum_assignment(cost)
    return list(zip(rows.tolist(), cols.tolist()))


def match_batch(items: list[tuple[Predictions, Truth]], params: RewardParams) -> list[Matching]:
    """Hungarian matching on 1 - S for each (predictions, truth): the pairs of all items sharing
    a ground truth are scored in one numpy pass. One ``Matching`` per item."""
    a, b, c = params.match_weights
    out: list = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for r, (p, t) in enumerate(items):
        if not p.cells or not t.targets:
            out[r] = Matching.empty(len(p.cells), len(t.targets))
        else:
            groups.setdefault(id(t), []).append(r)
    for rs in groups.values():
        preds = [items[r][0] for r in rs]
        iou, bs, hit = similarity_terms(preds, items[rs[0]][1], params)
        cost = 1.0 - (a * iou + b * hit + c * bs)
        off = 0
        for r, p in zip(rs, preds):
            rows = slice(off, off + len(p.cells))
            off += len(p.cells)
            out[r] = Matching(_assign(cost[rows]), iou[rows], bs[rows], hit[rows])
    return out


# ---------------------------------------------------------------------- spread and quality
def _nn_padded(pts: np.ndarray, counts: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean nearest-neighbour distance of the instances ``keep`` (2 to ``NN_PAD`` points each)
    on one padded (instances, points, points) array; ``pts`` all points, grouped by instance."""
    kept = np.flatnonzero(keep)
    inst_of_point = np.repeat(np.arange(counts.size), counts)
    start_of_point = np.repeat(np.cumsum(counts) - counts, counts)
    renum = np.full(counts.size, -1, np.int64)
    renum[kept] = np.arange(kept.size)
    sel = keep[inst_of_point]
    rows = renum[inst_of_point[sel]]
    cols = (np.arange(pts.shape[0]) - start_of_point)[sel]
    mmax = int(counts[kept].max())
    xs = np.full((kept.size, mmax), np.inf)
    ys = np.full((kept.size, mmax), np.inf)
    xs[rows, cols] = pts[sel, 0]
    ys[rows, cols] = pts[sel, 1]
    with np.errstate(invalid="ignore"):
        dx = xs[:, :, None] - xs[:, None, :]
        dy = ys[:, :, None] - ys[:, None, :]
        d2 = dx * dx + dy * dy  # inf - inf (two padding slots) gives NaN: fmin skips it
        d2[:, np.arange(mmax), np.arange(mmax)] = np.inf
        nn = np.sqrt(np.fmin.reduce(d2, axis=2))
    nn[~np.isfinite(nn)] = 0.0  # padding rows
    return nn.sum(axis=1) / counts[kept]


def _nn_tree(px: np.ndarray) -> float:
    """Mean nearest-neighbour distance of the points ``px`` (k, 2) through a k-d tree. A repeated
    point's nearest neighbour is its copy (distance 0): the tree holds each distinct point once."""
    from scipy.spatial import cKDTree

    uniq, inverse, mult = np.unique(px, axis=0, return_inverse=True, return_counts=True)
    nn_u = np.zeros(len(uniq))
    if len(uniq) > 1:
        nn_u = cKDTree(uniq).query(uniq, k=2)[0][:, 1]
    nn_u[mult > 1] = 0.0
    return float(nn_u[np.ravel(inverse)].mean())


def mean_nn_batch(items: list[tuple[Predictions, tuple[int, int]]]) -> list[list[float]]:
    """For each (predictions, image size (W, H)): the mean nearest-neighbour distance in pixels
    among each instance's own points (0 for fewer than 2 points), for the whole batch at once
    (instances of more than ``NN_PAD`` points: a k-d tree each)."""
    out = [[0.0] * len(p.cells) for p, _ in items]
    counts = np.array([m for p, _ in items for m in p.counts], np.int64)
    if counts.size == 0 or counts.max() < 2:
        return out
    pts = np.concatenate([p.pts for p, _ in items])
    pts = pts * np.repeat(np.array([size for _, size in items], float), [p.pts.shape[0] for p, _ in items], axis=0)
    means = np.zeros(counts.size)
    keep = (counts >= 2) & (counts <= NN_PAD)
    if keep.any():
        means[keep] = _nn_padded(pts, counts, keep)
    starts = np.cumsum(counts) - counts
    for g in np.flatnonzero(counts > NN_PAD).tolist():
        means[g] = _nn_tree(pts[starts[g]:starts[g] + counts[g]])
    flat = means.tolist()
    off = 0
    for r, (p, _) in enumerate(items):
        out[r] = flat[off:off + len(p.cells)]
        off += len(p.cells)
    return out


def spread_of(mean_nn: float, m: int, area_px: float, scale: float) -> float:
    """min(1, mean nearest-neighbour distance / (scale * sqrt(area))), 1 for a single point
    (distance and area in pixels)."""
    if m <= 1:
        return 1.0
    return min(1.0, mean_nn / (scale * math.sqrt(max(area_px, 1.0))))


def points_quality(m: int, hit: float, spread: float, params: RewardParams) -> float:
    """q = hit * (1 - exp(-m / saturation)) * spread - penalty * m, clamped into [0, 1]."""
    return unit(hit * (1.0 - math.exp(-m / params.points_saturation)) * spread - params.points_penalty * m)


__all__ = ["NN_PAD", "Predictions", "Matching", "hit_fractions", "similarity_terms", "match_batch",
           "mean_nn_batch", "spread_of", "points_quality"]
