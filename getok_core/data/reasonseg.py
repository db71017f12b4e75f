"""ReasonSeg (``load_reasonseg``): labelme JSON beside each image; the union of the target polygons
is one mask target, ignore-labelled polygons the ignore region (``reasonseg_masks``, polygons
filled by ``fill_polygon``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import numpy as np

from .masks import encode_rle
from .records import Sample
from .rows import IMAGE_EXTS, BadRow, ImageSizes, Reporter, expressions_of, is_number, mask_target


def _decode_text(raw: bytes) -> str:
    """UTF-8 (a BOM allowed), else cp1252; raises UnicodeDecodeError when neither fits."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def fill_polygon(points, size: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of a polygon given in pixels, filled including its outline.

    Vertices are floored to pixel indices (labelme points lie in the pixel they were clicked
    in); the polygon over those pixel indices is filled and its closed outline drawn one pixel
    wide (PIL ``ImageDraw.polygon`` with ``fill`` and ``outline``). Parts outside the image
    are clipped.
    """
    from PIL import Image, ImageDraw

    w, h = size
    pts = [(math.floor(x), math.floor(y)) for x, y in points]
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon(pts, fill=1, outline=1)
    return np.asarray(img, dtype=np.uint8).astype(bool)


def _labelme_shape_points(shape: dict, j: int) -> list[tuple[float, float]]:
    kind = shape.get("shape_type") or "polygon"
    pts = shape.get("points")
    field = f"shapes[{j}].points"
    if not isinstance(pts, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(is_number(t) for t in p) for p in pts):
        raise BadRow(field, "points must be a list of [x, y] with finite numbers")
    pts = [(float(x), float(y)) for x, y in pts]
    if kind == "rectangle":
        if len(pts) != 2:
            raise BadRow(field, f"a rectangle needs 2 points, has {len(pts)}")
        (x1, y1), (x2, y2) = pts
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if kind != "polygon":
        raise BadRow(f"shapes[{j}].shape_type", f"shape type {kind!r} is not supported (polygon, rectangle)")
    if len(pts) < 3:
        raise BadRow(field, f"polygon has {len(pts)} point(s), needs at least 3")
    return pts


def reasonseg_masks(shapes, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) boolean masks of labelme ``shapes`` (ReasonSeg rules).

    Labels equal to "flag" (any case) are skipped; labels containing "ignore" (any case) mark
    the ignore region; every other label is target. Each polygon is filled including its
    outline (``fill_polygon``); polygons are painted largest first (by filled pixel count, ties
    in file order), so a smaller polygon drawn over a larger one wins its pixels.
    """
    if not isinstance(shapes, list):
        raise BadRow("shapes", "shapes must be a list")
    filled = []
    for j, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise BadRow(f"shapes[{j}]", "shape is not an object")
        label = shape.get("label")
        if not isinstance(label, str):
            raise BadRow(f"shapes[{j}].label", "label must be a string")
        if label.strip().lower() == "flag":
            continue
        value = 2 if "ignore" in label.lower() else 1
        m = fill_polygon(_labelme_shape_points(shape, j), size)
        filled.append((-int(m.sum()), j, value, m))
    filled.sort(key=lambda t: (t[0], t[1]))
    w, h = size
    label_map = np.zeros((h, w), np.uint8)
    for _, _, value, m in filled:
        label_map[m] = value
    return label_map == 1, label_map == 2


def load_reasonseg(root, split: str | None = None, *, skipped: list | None = None,
                   check_images: bool = True, max_mask_fraction: float = 1.0,
                   origins: dict | None = None) -> Iterator[Sample]:
    """ReasonSeg: ``image_n.jpg`` beside ``image_n.json`` (labelme), in ``<root>/<split>`` (or
    ``root`` itself when ``split`` is None). One Sample per JSON file: its ``text`` instructions
    are the expressions and the union of its target polygons is one target; ``ignore`` holds
    the ignore region. JSON is read as UTF-8, falling back to cp1252.
    """
    folder = os.path.join(str(root), split) if split else str(root)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"reasonseg: folder {folder} not found")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    return _reasonseg_samples(folder, names, split, skipped, ImageSizes(check_images), max_mask_fraction,
                              {} if origins is None else origins)


def _reasonseg_samples(folder, names, split, skipped, images, max_mask_fraction, origins):
    for name in names:
        jpath = os.path.join(folder, name)
        report = Reporter(skipped, jpath, origins)
        stem = name[:-5]
        try:
            try:
                with open(jpath, "rb") as f:
                    text = _decode_text(f.read())
            except UnicodeDecodeError as exc:
                raise BadRow("", f"neither UTF-8 nor cp1252: {exc}") from None
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise BadRow("", f"not JSON: {exc}"[:200]) from None
            if not isinstance(data, dict):
                raise BadRow("", "not a JSON object")
            exprs = expressions_of(data.get("text"), "text")
            img_path = next((os.path.join(folder, stem + e) for e in IMAGE_EXTS
                             if os.path.isfile(os.path.join(folder, stem + e))), None)
            if img_path is None:
                raise BadRow("image", f"no image {stem}.jpg (or .jpeg / .png) beside the JSON")
            img_path = os.path.abspath(img_path)
            annotated = None
            if "imageWidth" in data or "imageHeight" in data:
                annotated = (data.get("imageWidth"), data.get("imageHeight"))
            size = images.size(img_path, annotated, "imageWidth/imageHeight")
            target, ignore = reasonseg_masks(data.get("shapes"), size)
            if not target.any():
                raise BadRow("shapes", "no target pixels (only flag / ignore shapes, or targets covered "
                                     "by ignore)")
            t = mask_target(encode_rle(target), size, "shapes", max_mask_fraction)
        except BadRow as bad:
            report(name, bad.field, bad.reason)
            continue
        except OSError as exc:
            report(name, "", f"unreadable: {exc}")
            continue
        if not report.first(f"reasonseg/{split}/{stem}" if split else f"reasonseg/{stem}", name):
            continue
        yield Sample(sample_id=f"reasonseg/{split}/{stem}" if split else f"reasonseg/{stem}",
                     image_path=img_path, image_size=size, expressions=exprs, targets=[t], task="seg",
                     image_key=f"{split}/{os.path.basename(img_path)}" if split else os.path.basename(img_path),
                     ignore=encode_rle(ignore) if ignore.any() else None, split=split or "",
                     meta={"is_sentence": data.get("is_sentence")})


__all__ = ["load_reasonseg", "reasonseg_masks", "fill_polygon"]
