"""Dataset loaders: each yields ``records.Sample`` objects and reports unusable rows as
``records.Skipped``. ``load_dataset(name, root, split)`` picks one by name (``DATASETS``).

Here: points, lanes, generic JSONL and the bundled sample. By family elsewhere, re-exported
here: RefCOCO / RefCOCO+ / RefCOCOg / gRefCOCO (``data.refer``), COCO (``data.coco``), ReasonSeg
(``data.reasonseg``); what they share (skip reporting, size checks, geometry) is ``data.rows``,
image headers and pixels ``data.images``.

Every loader returns a lazy iterator: pass ``skipped=[]`` and it is filled while you iterate (a
row the loader cannot use is never dropped silently; with ``skipped=None`` each one is logged as
a warning on the ``getok_core.data.loaders`` logger instead). Problems with a whole dataset (a missing
annotation file, a file that is not JSON) raise when the loader is called.

Conventions shared by all loaders (details and the formats in ``docs/data.md``):

- Geometry is normalized (u = x / W, v = y / H); masks are COCO RLE dicts with string counts, in
  the original image frame; a mask's box is the box of its pixels (pixel edges).
- ``image_path`` is absolute. ``image_key`` (the key of SAM embedding caches) is the image's
  path as the annotation file names it, so datasets over the same images share cache entries.
- Image sizes come from the annotations when they have them, otherwise from the image header,
  read with PIL without decoding the pixels. The header size is the size after EXIF orientation
  (``PIL.ImageOps.exif_transpose`` semantics: orientations 5-8 swap width and height), which is
  what transformers' ``load_image`` and labelme show. With ``check_images=True`` (default) every
  image's header is read (once per image): a missing or unreadable image, or one whose size
  differs from the annotation's, skips its rows.
- Bad geometry: see ``docs/data.md`` ("Bad input"); each case is either handled or skipped with
  a reason naming the file, the row and the field.
"""


from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from .coco import load_coco
from .images import image_size
from .reasonseg import fill_polygon, load_reasonseg, reasonseg_masks
from .records import TASKS, Sample, Target
from .refer import DEFAULT_SPLIT_BY, load_grefcoco, load_refcoco
from .rows import (IMAGE_EXTS, BadRow, ImageSizes, Reporter, clip_box, expressions_of, flat_polygon, is_number,
                   mask_target, norm_point, norm_polyline, polygons_rle, record_rows, rle_from_any)

#: Names ``load_dataset`` accepts.
DATASETS = ("refcoco", "refcoco+", "refcocog", "grefcoco", "reasonseg", "coco", "points", "lanes",
            "jsonl", "sample")


# ---------------------------------------------------------------------- points, lanes, JSONL
def _image_of(rec: dict, image_root: str) -> tuple[str, str]:
    """(absolute path, key) of a record's image: ``image``, else ``image_sha256`` (a file named
    by the hash, any common extension, in ``image_root``)."""
    img = rec.get("image")
    if isinstance(img, str) and img:
        return os.path.abspath(os.path.join(image_root, img)), img
    sha = rec.get("image_sha256")
    if isinstance(sha, str) and sha:
        for ext in ("",) + IMAGE_EXTS:
            p = os.path.join(image_root, sha + ext)
            if os.path.isfile(p):
                return os.path.abspath(p), sha + ext
        raise BadRow("image_sha256", f"no image file named {sha}[.jpg|.png|...] in {image_root}")
    raise BadRow("image", "record has no 'image' path (or 'image_sha256')")


def _check_file(path: str, image_root) -> str:
    """The image root (default: the folder of ``path``); raises when ``path`` is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    return str(image_root) if image_root else os.path.dirname(os.path.abspath(path))


def _split_ok(rec: dict, split: str | None) -> bool:
    return split is None or rec.get("split", "") == split


def _file_samples(path: str, records, image_root: str, split: str | None, report, images, fields,
                  not_object: str = "record is not an object") -> Iterator[Sample]:
    """The Samples of a points / lanes / JSONL file's ``records`` ((row id, record) pairs).

    Here, for every record: it must be an object (else ``not_object``), of ``split`` (others are
    passed over), with a readable image (``_image_of``) of the right size. Then
    ``fields(rec, size)`` returns the format's Sample fields (expressions, targets, task, and
    optionally ignore / meta). A ``BadRow`` raised on the way skips the record, reported with
    its row id. Sample ids are ``<file stem>/<record id, else row>``.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    for row, rec in records:
        try:
            if isinstance(rec, BadRow):
                raise rec
            if not isinstance(rec, dict):
                raise BadRow("", not_object)
            if not _split_ok(rec, split):
                continue
            img_path, key = _image_of(rec, image_root)
            size = images.size(img_path, rec.get("size"), "size")
            values = fields(rec, size)
        except BadRow as bad:
            report(row, bad.field, bad.reason)
            continue
        rid = rec.get("id", row.replace("line ", ""))
        if not report.first(f"{stem}/{rid}", row):
            continue
        yield Sample(sample_id=f"{stem}/{rid}", image_path=img_path, image_size=size, image_key=key,
                     split=str(rec.get("split", "")), **values)


_UNITS = {"pixel": None, "norm": 1.0, "percent": 100.0}


def load_points(path, image_root=None, *, split: str | None = None, units: str = "pixel",
                skipped: list | None = None, check_images: bool = True,
                origins: dict | None = None) -> Iterator[Sample]:
    """Point datasets in the Pixmo-points layout (see docs/data.md): one Sample per record, its
    ``label`` the expression and one target per point (``targets == []`` when ``points`` is
    empty). ``units``: ``pixel`` (Pixmo's), ``norm`` ([0, 1]) or ``percent`` ([0, 100])."""
    path = str(path)
    if units not in _UNITS:
        raise ValueError(f"units must be one of {sorted(_UNITS)}, got {units!r}")
    image_root = _check_file(path, image_root)
    return _file_samples(path, record_rows(path), image_root, split, Reporter(skipped, path, origins),
                         ImageSizes(check_images), lambda rec, size: _point_fields(rec, size, _UNITS[units]))


def _point_fields(rec: dict, size: tuple[int, int], scale: float | None) -> dict:
    """A points record's Sample fields; ``scale``: what the file's coordinates are in units of
    the image (None: pixels)."""
    exprs = expressions_of(rec.get("label", rec.get("expression")), "label")
    pts = rec.get("points")
    if pts is None:
        pts = []
    if not isinstance(pts, list):
        raise BadRow("points", "points must be a list")
    targets = []
    for j, p in enumerate(pts):
        if isinstance(p, dict) and set(p) >= {"x", "y"}:
            p = (p["x"], p["y"])
        if scale is not None and isinstance(p, (list, tuple)) and len(p) == 2 and all(map(is_number, p)):
            p = (p[0] / scale, p[1] / scale)
        targets.append(Target(points=(norm_point(p, size, scale is not None, f"points[{j}]"),)))
    return {"expressions": exprs, "targets": targets, "task": "point",
            "meta": {k: rec[k] for k in ("count", "collection_method", "image_url") if k in rec}}


def load_lanes(path, image_root=None, *, split: str | None = None, skipped: list | None = None,
               check_images: bool = True, origins: dict | None = None) -> Iterator[Sample]:
    """Lane polylines (the GETok lanes format, docs/data.md): one Sample per record, one target
    per lane (a normalized polyline); ``targets == []`` when ``lanes`` is empty."""
    path = str(path)
    image_root = _check_file(path, image_root)
    return _file_samples(path, record_rows(path), image_root, split, Reporter(skipped, path, origins),
                         ImageSizes(check_images), _lane_fields)


def _lane_fields(rec: dict, size: tuple[int, int]) -> dict:
    exprs = expressions_of(rec.get("expression", "the lane markings"), "expression")
    lanes = rec.get("lanes")
    if not isinstance(lanes, list):
        raise BadRow("lanes", "lanes must be a list of vertex lists")
    normalized = rec.get("normalized", False) is True
    targets = [Target(polyline=norm_polyline(lane, size, normalized, f"lanes[{j}]"))
               for j, lane in enumerate(lanes)]
    return {"expressions": exprs, "targets": targets, "task": "line"}


_JSONL_TARGET_KEYS = {"box", "points", "polygon", "polygons", "mask", "polyline"}


def _jsonl_target(t, j: int, size, normalized: bool, max_fraction: float) -> Target:
    f = f"targets[{j}]"
    if not isinstance(t, dict):
        raise BadRow(f, "target must be an object")
    unknown = set(t) - _JSONL_TARGET_KEYS
    if unknown:
        hint = " (use 'box' as [x1, y1, x2, y2])" if "bbox" in unknown else ""
        raise BadRow(f, f"unknown target field(s) {sorted(unknown)}{hint}")
    if not any(t.get(k) is not None for k in _JSONL_TARGET_KEYS):
        raise BadRow(f, "target has none of box, points, polygon(s), mask, polyline")
    w, h = size
    scale = (w, h) if normalized else (1.0, 1.0)
    mask = box = None
    polys = []
    if t.get("polygon") is not None:
        polys.append(t["polygon"])
    if t.get("polygons") is not None:
        if not isinstance(t["polygons"], list):
            raise BadRow(f"{f}.polygons", "polygons must be a list of polygons")
        polys.extend(t["polygons"])
    if polys:
        flat = []
        for i, p in enumerate(polys):
            fp = flat_polygon(p, f"{f}.polygon[{i}]")
            flat.append([c * scale[k % 2] for k, c in enumerate(fp)])
        mask = polygons_rle(flat, size)
    if t.get("mask") is not None:
        rle = rle_from_any(t["mask"], size, f"{f}.mask")
        if mask is not None:
            raise BadRow(f, "give a mask or polygons, not both")
        mask = rle
    if mask is not None:
        mt = mask_target(mask, size, f"{f}.mask", max_fraction)
        mask, box = mt.mask, mt.box
    if t.get("box") is not None:
        box = clip_box(t["box"], size, normalized, f"{f}.box")
    pts = t.get("points")
    points = ()
    if pts is not None:
        if not isinstance(pts, list):
            raise BadRow(f"{f}.points", "points must be a list of [x, y]")
        points = tuple(norm_point(p, size, normalized, f"{f}.points[{i}]") for i, p in enumerate(pts))
    line = None if t.get("polyline") is None else norm_polyline(t["polyline"], size, normalized, f"{f}.polyline")
    return Target(mask=mask, box=box, points=points, polyline=line)


def _infer_task(targets: list[Target]) -> str:
    if any(t.mask is not None for t in targets):
        return "seg"
    if any(t.polyline is not None for t in targets):
        return "line"
    if any(t.box is not None for t in targets):
        return "box"
    if any(t.points for t in targets):
        return "point"
    return "seg"


def load_jsonl(path, image_root=None, *, split: str | None = None, task: str | None = None,
               skipped: list | None = None, check_images: bool = True,
               max_mask_fraction: float = 1.0, origins: dict | None = None) -> Iterator[Sample]:
    """Generic JSONL (docs/data.md): one object per line with ``image``, ``expressions`` and
    ``targets`` (box / points / polygon(s) / mask RLE / polyline), in pixels or, with
    ``"normalized": true``, in [0, 1]. ``task`` overrides every line's task."""
    path = str(path)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    image_root = _check_file(path, image_root)
    return _file_samples(path, record_rows(path), image_root, split, Reporter(skipped, path, origins),
                         ImageSizes(check_images),
                         lambda rec, size: _jsonl_fields(rec, size, task, max_mask_fraction),
                         not_object="line is not a JSON object")


def _jsonl_fields(rec: dict, size: tuple[int, int], task: str | None, max_mask_fraction: float) -> dict:
    exprs = expressions_of(rec.get("expressions", rec.get("expression")), "expressions")
    normalized = rec.get("normalized", False)
    if not isinstance(normalized, bool):
        raise BadRow("normalized", "normalized must be true or false")
    raw = rec.get("targets")
    if not isinstance(raw, list):
        raise BadRow("targets", "targets must be a list ([] = no target)")
    targets = [_jsonl_target(t, j, size, normalized, max_mask_fraction) for j, t in enumerate(raw)]
    t_task = task or rec.get("task") or _infer_task(targets)
    if t_task not in TASKS:
        raise BadRow("task", f"task must be one of {TASKS}, got {t_task!r}")
    need = {"seg": "mask", "box": "box", "point": "points", "line": "polyline"}[t_task]
    for j, t in enumerate(targets):
        if not getattr(t, need):
            raise BadRow(f"targets[{j}]", f"a {t_task!r} sample needs a {need} for every target")
    ignore = rec.get("ignore")
    if ignore is not None:
        ignore = rle_from_any(ignore, size, "ignore")
    return {"expressions": exprs, "targets": targets, "task": t_task, "ignore": ignore,
            "meta": dict(rec.get("meta") or {})}


# ---------------------------------------------------------------------- the sample dataset
SAMPLE_PARTS = ("refcoco", "grefcoco", "points", "lanes")


def load_sample(root, split: str | None = None, *, parts: Iterable[str] = SAMPLE_PARTS,
                skipped: list | None = None, check_images: bool = True,
                origins: dict | None = None) -> Iterator[Sample]:
    """The bundled sample dataset (``getok_core.data.sample_data.write_sample_dataset``): its refs
    (RefCOCO format), grefs (gRefCOCO format: multi- and no-target), points and lanes."""
    import itertools

    root = str(root)
    common = {"skipped": skipped, "check_images": check_images,
              "origins": {} if origins is None else origins}  # one dict: ids unique across parts
    loaders = []
    for part in parts:
        if part == "refcoco":
            loaders.append(load_refcoco(root, "refcoco", split, "unc", **common))
        elif part == "grefcoco":
            loaders.append(load_grefcoco(root, split, "unc", **common))
        elif part in ("points", "lanes"):
            loader = load_points if part == "points" else load_lanes
            loaders.append(loader(os.path.join(root, f"{part}.json"), root, split=split, **common))
        else:
            raise ValueError(f"unknown sample part {part!r}; parts are {SAMPLE_PARTS}")
    return itertools.chain.from_iterable(loaders)


# ---------------------------------------------------------------------- dispatcher
def _in_root(root: str, name: str, default: str) -> str:
    """``name`` (absolute, or relative to ``root``) or ``root / default``; ``root`` itself when
    it is a file."""
    if name:
        return name if os.path.isabs(name) else os.path.join(root, name)
    if os.path.isfile(root):
        return root
    return os.path.join(root, default)


def load_dataset(name: str, root, split: str | None = None, *, skipped: list | None = None,
                 check_images: bool = True, origins: dict | None = None, **kwargs) -> Iterator[Sample]:
    """Samples of the dataset ``name`` under ``root`` (see ``DATASETS``).

    - refcoco, refcoco+, refcocog: ``root`` holds ``<name>/refs(<split_by>).p``,
      ``<name>/instances.json`` and ``images/train2014/``; kwargs ``split_by``, ``image_dir``.
    - grefcoco: ``root`` holds ``grefcoco/grefs(unc).json`` (or ``.p``) and ``images/train2014``.
    - reasonseg: images and labelme JSON in ``root/<split>`` (``root`` when split is None).
    - coco: ``annotation_file`` (default ``<root>/annotations/instances_<split>.json``) and
      ``image_dir`` (default ``<root>/<split>``), both relative to ``root`` unless absolute.
    - points, lanes, jsonl: ``root`` is the file, or a folder with ``points.json`` /
      ``lanes.json`` / ``data.jsonl``; ``image_root`` defaults to the file's folder; records are
      filtered by their ``split`` field when ``split`` is given.
    - sample: the folder written by ``getok_core.data.sample_data.write_sample_dataset``.

    ``origins``: a dict filled with sample id -> (source file, row) while you iterate. A row
    repeating an earlier row's sample id is skipped (``duplicate sample id``, with both rows).
    Remaining kwargs go to the loader (``task``, ``max_mask_fraction``, ``units``, ...).
    """
    key = str(name).lower()
    root = str(root)
    common = {"skipped": skipped, "check_images": check_images, "origins": origins}
    if key in ("refcoco", "refcoco+", "refcocog"):
        return load_refcoco(root, key, split, kwargs.pop("split_by", None), **common, **kwargs)
    if key == "grefcoco":
        return load_grefcoco(root, split, kwargs.pop("split_by", "unc"), **common, **kwargs)
    if key == "reasonseg":
        return load_reasonseg(root, split, **common, **kwargs)
    if key == "coco":
        split_name = split or "train2017"
        ann = _in_root(root, kwargs.pop("annotation_file", ""), f"annotations/instances_{split_name}.json")
        img_dir = kwargs.pop("image_dir", "") or split_name
        img_dir = img_dir if os.path.isabs(img_dir) else os.path.join(
            root if os.path.isdir(root) else os.path.dirname(root), img_dir)
        return load_coco(ann, img_dir, split=split or "", **common, **kwargs)
    if key in ("points", "lanes", "jsonl"):
        default = {"points": "points.json", "lanes": "lanes.json", "jsonl": "data.jsonl"}[key]
        path = _in_root(root, kwargs.pop("path", ""), default)
        loader = {"points": load_points, "lanes": load_lanes, "jsonl": load_jsonl}[key]
        return loader(path, kwargs.pop("image_root", None), split=split, **common, **kwargs)
    if key == "sample":
        return load_sample(root, split, **common, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DEFAULT_SPLIT_BY", "SAMPLE_PARTS", "load_dataset", "load_coco", "load_refcoco",
           "load_grefcoco", "load_reasonseg", "load_points", "load_lanes", "load_jsonl", "load_sample",
           "image_size", "fill_polygon", "reasonseg_masks"]
