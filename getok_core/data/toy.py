"""A toy grounding dataset made for learning (``getok sample --toy``), generated deterministically.

``write_toy_dataset(out_dir, n_images=2000, n_val=100, image_size=112, seed=0)`` draws small RGB
images with one to three shapes (circle, square, triangle; red, green, blue, yellow) on a plain
background and writes them in the generic JSONL format that ``getok prepare --dataset jsonl``
reads (docs/data.md)::

    out_dir/
      README.txt            what is here
      images/toy_NNNNN.png  n_images square PNGs, image_size px
      data.jsonl            one line per object: expression, target (polygon + centre point), task

Each object gets one referring expression that names it uniquely in its image: by colour and shape
("the red circle"), by colour or shape alone when that is unique ("the green shape", "the
triangle"), or by position among 2-3 objects ("the leftmost shape", "the shape at the bottom").
Targets carry the shape's polygon (its mask and pixel box follow, as for COCO polygons) and one
point inside it; ``task`` (box by default) says what the answer is. Sizes are chosen so that a tiny
Qwen2.5-VL learns on 2 CPU cores: 112 px = 4 x 4 visual tokens after Qwen2.5-VL's 28-px merge,
shapes 22-46 px (a few tokens each), answers of two grid tokens for a box (docs/training.md,
"Does it learn?"). The shapes are drawn by ``sample_data``'s geometry and PNG writer, so the same
seed gives byte-identical files.
"""

from __future__ import annotations

import os

import numpy as np

from .records import TASKS
from .sample_data import _save_png, _shape_geometry
from .writers import write_jsonl

TOY_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
TOY_SHAPES = ("circle", "square", "triangle")
IMAGE_DIR = "images"
#: Shape side in pixels, as a share of the image side.
SIZE_RANGE = (0.2, 0.42)


def _place(rng, n: int, side: int) -> list[tuple[float, float, float]]:
    """(cx, cy, s) of ``n`` shapes in a ``side`` px square image whose square footprints do not
    overlap (a gap of 2 px); rejection sampling in a fixed draw order."""
    out: list[tuple[float, float, float]] = []
    while len(out) < n:
        s = float(rng.uniform(*SIZE_RANGE)) * side
        cx, cy = (float(v) for v in rng.uniform(s / 2 + 1, side - s / 2 - 1, size=2))
        if all(abs(cx - x) > (s + t) / 2 + 2 or abs(cy - y) > (s + t) / 2 + 2 for x, y, t in out):
            out.append((cx, cy, s))
    return out


def _expressions(objs: list[dict]) -> list[list[str]]:
    """Per object, every expression naming it uniquely among ``objs`` (colour + shape first)."""
    out = []
    for o in objs:
        others = [p for p in objs if p is not o]
        exprs = [f"the {o['color']} {o['kind']}"]
        if all(p["color"] != o["color"] for p in others):
            exprs.append(f"the {o['color']} shape")
        if all(p["kind"] != o["kind"] for p in others):
            exprs.append(f"the {o['kind']}")
        if others:
            for key, words in (("cx", ("leftmost", "rightmost")), ("cy", ("topmost", "bottom"))):
                vals = sorted(p[key] for p in objs)
                if o[key] == vals[0] and vals[1] - vals[0] > 8:
                    exprs.append(f"the {words[0]} shape" if key == "cx" else "the shape at the top")
                elif o[key] == vals[-1] and vals[-1] - vals[-2] > 8:
                    exprs.append(f"the {words[1]} shape" if key == "cx" else "the shape at the bottom")
        out.append(exprs)
    return out


def _toy_image(rng, i: int, side: int, split: str, task: str, out_dir: str) -> list[dict]:
    """Draw image ``i`` and return its JSONL records (one per object)."""
    n = int(rng.integers(1, 4))
    base = rng.uniform(90, 170) * np.ones(3) + rng.uniform(-15, 15, size=3)
    img = np.broadcast_to(base, (side, side, 3)).copy()
    pairs = [(c, k) for c in TOY_COLORS for k in TOY_SHAPES]
    chosen = [pairs[int(j)] for j in rng.permutation(len(pairs))[:n]]
    objs = []
    for (color, kind), (cx, cy, s) in zip(chosen, _place(rng, n, side)):
        mask, poly = _shape_geometry(kind, cx, cy, s, rng, side, side)
        img[mask] = TOY_COLORS[color]
        ys, xs = np.nonzero(mask)
        k = int(np.argmin((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2))
        objs.append({"color": color, "kind": kind, "cx": cx, "cy": cy, "poly": poly,
                     "point": [float(xs[k]) + 0.5, float(ys[k]) + 0.5]})
    fname = f"{IMAGE_DIR}/toy_{i:05d}.png"
    _save_png(img, os.path.join(out_dir, fname))
    recs = []
    for j, (o, exprs) in enumerate(zip(objs, _expressions(objs))):
        expr = exprs[int(rng.integers(0, len(exprs)))]
        recs.append({"id": f"toy{i:05d}_{j}", "image": fname, "size": [side, side], "expressions": [expr],
                     "task": task, "split": split, "targets": [{"polygon": o["poly"], "points": [o["point"]]}],
                     "meta": {"color": o["color"], "shape": o["kind"], "n_objects": n}})
    return recs


_README = """GETok toy grounding dataset (getok_core.data.toy.write_toy_dataset, seed {seed})

{n_images} synthetic {side}x{side} images with 1-3 coloured shapes on a plain background, one
referring expression per object, for showing that training learns (docs/training.md). Read it with
    getok prepare --dataset jsonl --root <this folder>/data.jsonl --out OUT --grid-size G
Files
  images/toy_NNNNN.png   the images
  data.jsonl             {n_records} records (generic JSONL, docs/data.md), task {task}:
                         {n_train} train (images 0..{last_train}), {n_val_rec} val (the last {n_val} images)
"""


def write_toy_dataset(out_dir, n_images: int = 2000, n_val: int = 100, image_size: int = 112, seed: int = 0,
                      task: str = "box") -> dict:
    """Write the toy dataset into ``out_dir``; the last ``n_val`` images are the "val" split.
    ``image_size``: the side in pixels (a multiple of 28 keeps Qwen2.5-VL from resizing it).
    Returns a summary dict (counts). Same arguments, same bytes."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not 0 <= n_val <= n_images or n_images < 1:
        raise ValueError(f"need 1 <= n_images and 0 <= n_val <= n_images, got {n_images}, {n_val}")
    if image_size < 28:
        raise ValueError(f"image_size must be at least 28 px, got {image_size}")
    out_dir = os.fspath(out_dir)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_images):
        split = "val" if i >= n_images - n_val else "train"
        records += _toy_image(rng, i, image_size, split, task, out_dir)
    write_jsonl(os.path.join(out_dir, "data.jsonl"), records)
    n_train = sum(r["split"] == "train" for r in records)
    summary = {"seed": seed, "n_images": n_images, "n_val": n_val, "side": image_size, "task": task,
               "n_records": len(records), "n_train": n_train, "n_val_rec": len(records) - n_train,
               "last_train": n_images - n_val - 1}
    with open(os.path.join(out_dir, "README.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(_README.format(**summary))
    return summary


__all__ = ["write_toy_dataset", "TOY_COLORS", "TOY_SHAPES"]
