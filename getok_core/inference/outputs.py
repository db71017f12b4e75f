"""The files of one prediction: answer text, geometry JSON, mask PNGs and RLEs, overlay PNG.

``save_prediction(pred, out_dir, stem)`` writes::

    STEM.answer.txt     the dialogue: user and model turns, in order
    STEM.json           prediction_json(pred): answers, geometry (normalized and pixels), mask RLEs
    STEM.mask.png       the union of the instance masks (0 / 255, the image's size; seg with a decoder)
    STEM.mask-K.png     instance K's mask, when there are several
    STEM.overlay.png    the overlay (grid, token cells, box, mask, refinement arrows)

Pixels: ``pixels`` are continuous positions x = u W, y = v H (``codec.instance.instance_to_dict``);
``pixel_index`` holds the (row, col) of the pixel containing each point (``codec.coords.point_pixel``,
the one point-to-pixel rule) and each box's inclusive pixel range [col0, row0, col1, row1] (the
pixels ``codec.coords.box_pixel_mask`` counts as inside).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..codec.coords import box_pixel_mask, point_pixel
from ..codec.instance import Instance, InstanceCells, instance_to_dict
from ..data.masks import encode_rle, mask_box
from ..data.store import atomic_path


def pixel_index(inst: Instance, size) -> dict:
    """(row, col) pixel indices of ``inst``'s points and its box's inclusive pixel range, in an
    image of ``size`` = (W, H)."""
    out: dict = {}
    if inst.point is not None:
        out["point"] = list(point_pixel(inst.point, size))
    if inst.box is not None:
        rows, cols = np.nonzero(box_pixel_mask(inst.box, size))
        out["box"] = [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]
    for name in ("points", "polyline", "polygon"):
        pts = getattr(inst, name)
        if pts:
            out[name] = [list(point_pixel(p, size)) for p in pts]
    return out


def cells_json(cells: InstanceCells) -> dict:
    """The grid cells (x, y) of an instance's tokens, element by element."""
    out: dict = {}
    for name in ("box", "points", "polyline", "polygon"):
        value = getattr(cells, name)
        if value:
            out[name] = [list(c) for c in value]
    if cells.point is not None:
        out["point"] = list(cells.point)
    return out


def instance_json(inst: Instance, size) -> dict:
    return {"normalized": instance_to_dict(inst, None, 6), "pixels": instance_to_dict(inst, size, 2),
            "pixel_index": pixel_index(inst, size)}


def mask_json(mask: np.ndarray) -> dict:
    """COCO RLE (``data.masks.encode_rle``), area and normalized bounding box of a bool mask."""
    m = np.asarray(mask, bool)
    return {"rle": encode_rle(m), "area": int(m.sum()), "box": mask_box(m)}


def prediction_json(pred) -> dict:
    """The JSON record of a ``Prediction`` (no arrays: masks as RLE)."""
    size = tuple(pred.image_size)
    union = pred.mask
    return {
        "image": pred.image, "image_size": list(size), "query": pred.query, "task": pred.task,
        "prompt": pred.prompt, "turns": list(pred.turns), "user_turns": list(pred.user_turns),
        "rounds_done": pred.rounds_done, "valid": pred.valid, "errors": list(pred.errors),
        "no_target": pred.no_target, "stop_reason": pred.stop_reason,
        "cells": [cells_json(c) for c in pred.cells],
        "instances": [instance_json(i, size) for i in pred.instances],
        "history": [[instance_to_dict(i, None, 6) for i in step] for step in pred.history],
        "moves": [[list(a), list(b)] for a, b in pred.moves], "deleted": [list(p) for p in pred.deleted],
        "masks": [mask_json(m) for m in pred.masks],
        "mask": None if union is None else mask_json(union),
    }


def dialogue_text(pred) -> str:
    """The dialogue as plain text: ``## user`` / ``## assistant`` headed turns."""
    parts = []
    for k, answer in enumerate(pred.turns):
        parts += [f"## user (turn {k + 1})", pred.user_turns[k], f"## assistant (turn {k + 1})", answer]
    return "\n".join(parts) + "\n"


def _png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def save_prediction(pred, out_dir, stem: str) -> dict:
    """Write ``pred``'s files (module docstring) into ``out_dir``; {kind: path} of those written."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"answer": out / f"{stem}.answer.txt", "json": out / f"{stem}.json"}
    _text(dialogue_text(pred), files["answer"])
    union = pred.mask
    if union is not None:
        files["mask"] = out / f"{stem}.mask.png"
        _png(union.astype(np.uint8) * 255, files["mask"])
        if len(pred.masks) > 1:
            for k, m in enumerate(pred.masks):
                files[f"mask-{k}"] = out / f"{stem}.mask-{k}.png"
                _png(np.asarray(m, bool).astype(np.uint8) * 255, files[f"mask-{k}"])
    if pred.overlay is not None:
        files["overlay"] = out / f"{stem}.overlay.png"
        _png(np.asarray(pred.overlay, np.uint8), files["overlay"])
    record = prediction_json(pred)
    record["files"] = {k: p.name for k, p in files.items()}
    _text(json.dumps(record, indent=1) + "\n", files["json"])
    return files


__all__ = ["pixel_index", "cells_json", "instance_json", "mask_json", "prediction_json", "dialogue_text",
           "save_prediction"]
