"""Shared test helpers: masks of simple shapes, targets, and reward ground truths built through
``groundtruth.dumps`` (so every test's ground truth is one the schema accepts).

Imported as ``from testkit import ...`` (pytest puts ``tests/`` on the path: tests/conftest.py).
"""

from __future__ import annotations

import numpy as np

from getok_core.data import groundtruth
from getok_core.data.masks import encode_rle

#: The image size most reward tests use: (W, H) = (100, 100).
SIZE = (100, 100)


def square(c0: int, c1: int, r0: int, r1: int, size=SIZE) -> np.ndarray:
    """Bool (H, W) mask of the pixels with c0 <= col <= c1 and r0 <= row <= r1 (inclusive)."""
    w, h = size
    m = np.zeros((h, w), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


def disc(cx: float, cy: float, r: float, size=SIZE) -> np.ndarray:
    """Bool (H, W) mask of the pixels whose centre is within ``r`` px of (cx, cy)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


#: The square most reward tests score against, its box, and a picture of it on a grey background.
SQUARE = square(25, 54, 35, 64)
SQUARE_BOX = [0.25, 0.35, 0.55, 0.65]


def write_scene(path, mask=None, size=SIZE) -> str:
    """A PNG at ``path``: grey (200), ``mask`` (default ``SQUARE``) painted red. Returns the path."""
    from PIL import Image

    w, h = size
    img = np.full((h, w, 3), 200, np.uint8)
    img[SQUARE if mask is None else mask] = (200, 30, 30)
    Image.fromarray(img).save(path)
    return str(path)


def scene_ground_truth(image_path: str = "", targets: bool = True, extra=None) -> str:
    """The ground truth of ``write_scene``'s square (image key "scene"), or of no target."""
    t = [target(mask=SQUARE, box=SQUARE_BOX)] if targets else []
    return ground_truth(t, image_path=image_path, image_key="scene", extra=extra)


def target(mask=None, box=None, points=(), polyline=None) -> dict:
    """One ground-truth target: a bool mask (-> RLE), a normalized box, points, a polyline."""
    return {"mask": None if mask is None else encode_rle(np.asarray(mask, bool)),
            "box": None if box is None else [float(x) for x in box],
            "points": [[float(u), float(v)] for u, v in points],
            "polyline": None if polyline is None else [[float(u), float(v)] for u, v in polyline]}


def ground_truth(targets=(), *, size=SIZE, task: str = "seg", image_path: str = "", image_key: str = "k",
                 sample_id: str = "t", expression: str = "x", ignore=None, extra=None) -> str:
    """The reward ground-truth JSON string of ``targets`` (dicts of ``target``), validated by
    ``groundtruth.dumps``. ``ignore``: a bool mask of pixels left out of mask IoU, or None."""
    gt = {"version": groundtruth.VERSION, "sample_id": sample_id, "image_key": image_key,
          "image_path": image_path, "image_size": [int(size[0]), int(size[1])], "task": task,
          "expression": expression, "no_target": not list(targets), "targets": list(targets),
          "ignore": None if ignore is None else encode_rle(np.asarray(ignore, bool)), "extra": dict(extra or {})}
    return groundtruth.dumps(gt)


# ---------------------------------------------------------------------- references
def naive_iou(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def naive_greedy(gt, proposals, tau=0.9, max_points=32):
    """SPEC §4 written plainly over full bool arrays: the reference ``greedy_select`` is tested
    and benchmarked against (tests/core/test_greedy.py, bench/bench_greedy.py)."""
    gt = np.asarray(gt, bool)
    if not gt.any() or len(proposals) == 0:
        return [], 0.0
    ious = [naive_iou(p, gt) for p in proposals]
    order = sorted(range(len(proposals)), key=lambda k: (-ious[k], k))
    union = np.zeros_like(gt)
    chosen, best = [], 0.0
    for k in order:
        if best >= tau or len(chosen) >= max_points:
            break
        c = naive_iou(union | proposals[k], gt)
        if c > best:
            union = union | proposals[k]
            chosen.append(k)
            best = c
    return chosen, best
