"""Dataset loaders: each yields ``records.Sample`` objects and reports unusable rows as
``records.Skipped``.

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

import io
import json
import logging
import math
import os
import pickle
from collections.abc import Iterable, Iterator

import numpy as np

from .groundtruth import rle_problem
from .records import TASKS, Sample, Skipped, Target

log = logging.getLogger(__name__)

#: Names ``load_dataset`` accepts.
DATASETS = ("refcoco", "refcoco+", "refcocog", "grefcoco", "reasonseg", "coco", "points", "lanes",
            "jsonl", "sample")
#: Default ``splitBy`` of the refer-style datasets.
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "grefcoco": "unc"}
#: EXIF orientations that rotate the image by 90 or 270 degrees (width and height swap).
_EXIF_SWAP = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


# ---------------------------------------------------------------------- reporting
class _Reporter:
    """Appends ``Skipped`` records to a list (or logs them when there is none)."""

    def __init__(self, skipped: list | None, source: str):
        self.skipped = skipped
        self.source = str(source)

    def __call__(self, row, field: str, reason: str, source: str | None = None) -> None:
        rec = Skipped(source=source or self.source, row=str(row), field=field, reason=reason)
        if self.skipped is None:
            log.warning("skipped %s row %s%s: %s", rec.source, rec.row,
                        f" field {rec.field}" if rec.field else "", rec.reason)
        else:
            self.skipped.append(rec)


class _Bad(Exception):
    """A row-level problem: ``field`` and ``reason`` become a ``Skipped`` record."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


# ---------------------------------------------------------------------- images
def image_size(path) -> tuple[int, int]:
    """(W, H) of the image at ``path`` as displayed: the header size with EXIF orientation
    applied (orientations 5-8 swap the sides). Reads the header only, never the pixels.
    Raises OSError (missing / unreadable file) or ValueError (not an image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = _exif_orientation(im)
    except UnidentifiedImageError as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from None
    if orientation in _EXIF_SWAP:
        w, h = h, w
    return int(w), int(h)


def _exif_orientation(im) -> int:
    """EXIF orientation tag of an opened image without loading its pixels (1 when absent).

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
            return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
        if im.format == "TIFF":
            return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block: the image still opens, assume no rotation
        return 1
    return 1


class _Images:
    """Per-loader cache of image header sizes (or the reason they cannot be read)."""

    def __init__(self, check: bool):
        self.check = check
        self.cache: dict[str, tuple[tuple[int, int] | None, str]] = {}

    def header(self, path: str) -> tuple[int, int]:
        if path not in self.cache:
            if not os.path.exists(path):
                self.cache[path] = (None, f"image file not found: {path}")
            else:
                try:
                    self.cache[path] = (image_size(path), "")
                except (OSError, ValueError) as exc:
                    self.cache[path] = (None, f"unreadable image {path}: {exc}")
        size, why = self.cache[path]
        if size is None:
            raise _Bad("image", why)
        return size

    def size(self, path: str, annotated=None, field: str = "size") -> tuple[int, int]:
        """The image size: the annotation's (checked against the header when ``check``), or
        the header's when the annotation has none. Raises _Bad."""
        if annotated is not None:
            w, h = _check_size(annotated, field)
            if self.check:
                hw = self.header(path)
                if hw != (w, h):
                    raise _Bad("image", f"image size mismatch: the annotation says {w}x{h}, the image "
                                        f"header (after EXIF orientation) says {hw[0]}x{hw[1]}")
            return w, h
        return self.header(path)


def _check_size(value, field: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise _Bad(field, f"size must be [width, height], got {value!r}"[:200])
    w, h = value
    ok = all(isinstance(t, (int, float)) and not isinstance(t, bool) and float(t).is_integer() and t > 0
             for t in (w, h))
    if not ok:
        raise _Bad(field, f"size must be positive integers [width, height], got {value!r}"[:200])
    return int(w), int(h)


# ---------------------------------------------------------------------- geometry helpers
def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rle_str(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts).decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _mask_rle(mask: np.ndarray) -> dict:
    from .masks import encode_rle

    return encode_rle(mask)


def _rle_from_any(rle, size: tuple[int, int], field: str) -> dict:
    """A validated compressed RLE (string counts) from a compressed or uncompressed RLE dict."""
    from pycocotools import mask as mask_utils

    why = rle_problem(rle, size)
    if why:
        raise _Bad(field, f"corrupt RLE: {why}")
    if isinstance(rle["counts"], list):
        h, w = rle["size"]
        return _rle_str(mask_utils.frPyObjects({"size": [h, w], "counts": rle["counts"]}, h, w))
    return _rle_str(rle)


def _flat_polygon(poly, field: str) -> list[float]:
    """A COCO polygon [x1, y1, x2, y2, ...] checked (or [[x, y], ...] flattened)."""
    if isinstance(poly, (list, tuple)) and poly and all(isinstance(p, (list, tuple)) for p in poly):
        if not all(len(p) == 2 for p in poly):
            raise _Bad(field, "polygon vertices must be [x, y] pairs")
        poly = [t for p in poly for t in p]
    if not isinstance(poly, (list, tuple)) or not all(_num(t) for t in poly):
        raise _Bad(field, "polygon must be a list of finite numbers")
    if len(poly) % 2:
        raise _Bad(field, f"polygon has an odd number of coordinates ({len(poly)})")
    if len(poly) < 6:
        raise _Bad(field, f"polygon has {len(poly) // 2} vertices, needs at least 3")
    return [float(t) for t in poly]


def _polygons_rle(polys: list[list[float]], size: tuple[int, int]) -> dict:
    """RLE of the union of COCO polygons (pycocotools rasterization, pixels)."""
    from pycocotools import mask as mask_utils

    w, h = size
    rles = mask_utils.frPyObjects(polys, h, w)
    return _rle_str(mask_utils.merge(rles) if len(rles) > 1 else rles[0])


def _coco_segmentation(seg, size: tuple[int, int], field: str = "segmentation") -> dict:
    """RLE of a COCO ``segmentation`` (list of polygons, compressed or uncompressed RLE)."""
    if isinstance(seg, dict):
        return _rle_from_any(seg, size, field)
    if isinstance(seg, list):
        if not seg:
            raise _Bad(field, "empty segmentation (no polygon)")
        polys = [_flat_polygon(p, f"{field}[{i}]") for i, p in enumerate(seg)]
        return _polygons_rle(polys, size)
    raise _Bad(field, f"segmentation must be a list of polygons or an RLE, got {type(seg).__name__}")


def _mask_target(rle: dict, size: tuple[int, int], field: str, max_mask_fraction: float) -> Target:
    """Target of a mask: its RLE and its pixel box. Empty masks raise _Bad, and so do masks
    covering more than ``max_mask_fraction`` of the image."""
    from pycocotools import mask as mask_utils

    w, h = size
    coco = dict(rle, counts=rle["counts"].encode("ascii"))
    area = int(mask_utils.area(coco))
    if area == 0:
        raise _Bad(field, "empty mask")
    if area > max_mask_fraction * w * h:
        what = "the whole image" if area == w * h else f"{area / (w * h):.1%} of the image"
        raise _Bad(field, f"mask covers {what} (more than max_mask_fraction={max_mask_fraction})")
    x, y, bw, bh = (float(t) for t in mask_utils.toBbox(coco))
    return Target(mask=rle, box=(x / w, y / h, (x + bw) / w, (y + bh) / h))


def _clip_box(box, size: tuple[int, int], normalized: bool, field: str = "box"):
    """Normalized (u1, v1, u2, v2) of an (x1, y1, x2, y2) box, clipped to the image.
    Inverted and zero-area boxes raise _Bad, and so does a box with nothing inside the image."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_num(t) for t in box)):
        raise _Bad(field, f"box must be [x1, y1, x2, y2] with finite numbers, got {box!r}"[:200])
    x1, y1, x2, y2 = (float(t) for t in box)
    if x2 < x1 or y2 < y1:
        raise _Bad(field, f"inverted box {list(box)} (needs x1 <= x2 and y1 <= y2)")
    if x2 == x1 or y2 == y1:
        raise _Bad(field, f"zero-area box {list(box)}")
    w, h = (1.0, 1.0) if normalized else (float(size[0]), float(size[1]))
    cx1, cy1, cx2, cy2 = min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)
    if cx2 <= cx1 or cy2 <= cy1:
        raise _Bad(field, f"box {list(box)} lies outside the image")
    return cx1 / w, cy1 / h, cx2 / w, cy2 / h


def _point(p, size: tuple[int, int], normalized: bool, field: str) -> tuple[float, float]:
    """Normalized point of a pixel (or normalized) [x, y] or {"x": .., "y": ..}; outside raises."""
    if isinstance(p, dict) and set(p) >= {"x", "y"}:
        p = (p["x"], p["y"])
    if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(_num(t) for t in p)):
        raise _Bad(field, f"point must be [x, y] with finite numbers, got {p!r}"[:200])
    w, h = (1.0, 1.0) if normalized else (float(size[0]), float(size[1]))
    x, y = float(p[0]), float(p[1])
    if not (0.0 <= x <= w and 0.0 <= y <= h):
        raise _Bad(field, f"point {list(p)} outside the image")
    return x / w, y / h


def _clip_segment(p, q, w, h):
    """Liang-Barsky: the part of segment p-q inside [0, w] x [0, h], or None."""
    (x0, y0), (x1, y1) = p, q
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for pk, qk in ((-dx, x0), (dx, w - x0), (-dy, y0), (dy, h - y0)):
        if pk == 0:
            if qk < 0:
                return None
        else:
            t = qk / pk
            if pk < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    if t0 > t1:
        return None
    start = p if t0 == 0.0 else (x0 + t0 * dx, y0 + t0 * dy)
    end = q if t1 == 1.0 else (x0 + t1 * dx, y0 + t1 * dy)
    return start, end


def _polyline(verts, size: tuple[int, int], normalized: bool, field: str) -> tuple:
    """Normalized polyline of pixel (or normalized) vertices, clipped to the image.

    Consecutive duplicate vertices are dropped. Segments are clipped to the image rectangle; a
    polyline that leaves the image and comes back (two separate pieces), or keeps fewer than two
    distinct vertices, raises _Bad.
    """
    if not isinstance(verts, (list, tuple)):
        raise _Bad(field, "polyline must be a list of [x, y] vertices")
    pts = []
    for i, p in enumerate(verts):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(_num(t) for t in p)):
            raise _Bad(field, f"vertex {i} must be [x, y] with finite numbers, got {p!r}"[:200])
        pts.append((float(p[0]), float(p[1])))
    w, h = (1.0, 1.0) if normalized else (float(size[0]), float(size[1]))
    dedup = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
    if len(dedup) < 2:
        raise _Bad(field, f"polyline has {len(dedup)} distinct vertex(es), needs at least 2")
    pieces: list[list] = []
    prev_end = None
    for a, b in zip(dedup, dedup[1:]):
        seg = _clip_segment(a, b, w, h)
        if seg is None:
            prev_end = None
            continue
        s, e = seg
        if pieces and prev_end is not None and s == prev_end:
            pieces[-1].append(e)
        else:
            pieces.append([s, e])
        prev_end = e if e == b else None
    pieces = [[p for i, p in enumerate(pc) if i == 0 or p != pc[i - 1]] for pc in pieces]
    pieces = [pc for pc in pieces if len(pc) >= 2]
    if not pieces:
        raise _Bad(field, "polyline lies outside the image")
    if len(pieces) > 1:
        raise _Bad(field, f"polyline leaves the image and comes back ({len(pieces)} pieces inside)")
    return tuple((x / w, y / h) for x, y in pieces[0])


def _expressions(value, field: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _Bad(field, f"expressions must be a string or a list of strings, got {type(value).__name__}")
    if not all(isinstance(v, str) for v in value):
        raise _Bad(field, "every expression must be a string")
    out = [v.strip() for v in value if v.strip()]
    if not out:
        raise _Bad(field, "no non-empty expression")
    return out


def _abs(path: str) -> str:
    return os.path.abspath(path)


def _read_json(path: str):
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def _jsonl_records(path: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"line {i}", json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                yield f"line {i}", _Bad("", f"not a JSON object: {exc}"[:200])


def _records(path: str) -> Iterator[tuple[str, object]]:
    """(row id, record) of a JSON list / {"samples": [...]} file, a JSONL file or a parquet file.
    JSON and parquet files are read now (a broken file raises here); JSONL lines lazily, a line
    that is not JSON being yielded as a _Bad for the caller to report."""
    if path.endswith(".jsonl"):
        return _jsonl_records(path)
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
        data = pq.read_table(path).to_pylist()
    else:
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("samples"), list):
            data = data["samples"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records or an object with a 'samples' list")
    return iter([(str(i), rec) for i, rec in enumerate(data)])


# ---------------------------------------------------------------------- COCO
def _coco_index(data: dict, source: str):
    """A pycocotools COCO object over parsed instances JSON (its progress prints silenced)."""
    import contextlib

    from pycocotools.coco import COCO

    if not isinstance(data, dict):
        raise ValueError(f"{source}: a COCO file must hold a JSON object")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: not a COCO instances file (every image needs an 'id', every "
                         f"annotation an 'id' and an 'image_id', every category an 'id'): "
                         f"{type(exc).__name__}: {exc}") from None
    return coco


def _lookup(index: dict, key):
    """``index[key]``, or None when the key is absent or not hashable (bad input)."""
    try:
        return index.get(key)
    except TypeError:
        return None


def _annotation_target(ann: dict, img: dict, size: tuple[int, int], task: str,
                       max_mask_fraction: float) -> Target:
    """Target of a COCO annotation: its mask (and the mask's box); a box-only annotation gives
    its ``bbox`` (x, y, w, h) when the task does not need a mask."""
    seg = ann.get("segmentation")
    if seg:
        rle = _coco_segmentation(seg, size)
        return _mask_target(rle, size, "segmentation", max_mask_fraction)
    if task == "seg":
        raise _Bad("segmentation", "no segmentation, which a seg sample needs")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_num(t) for t in bbox)):
        raise _Bad("bbox", f"no segmentation and no usable bbox: {bbox!r}"[:200])
    x, y, bw, bh = (float(t) for t in bbox)
    return Target(box=_clip_box((x, y, x + bw, y + bh), size, False, "bbox"))


def _image_entry_size(img: dict):
    if "width" in img or "height" in img:
        return (img.get("width"), img.get("height"))
    return None


def load_coco(annotation_file, image_dir, *, split: str = "", task: str = "seg",
              skipped: list | None = None, check_images: bool = True, include_crowd: bool = False,
              max_mask_fraction: float = 1.0) -> Iterator[Sample]:
    """COCO instances: one Sample per annotation, the category name as its expression.

    Masks from ``segmentation`` (several polygons per object, compressed or uncompressed RLE).
    ``iscrowd`` annotations are left out (reported as skipped) unless ``include_crowd``. Images:
    ``image_dir / file_name``; sizes from the image entry's ``width`` / ``height``.
    """
    annotation_file = str(annotation_file)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    report = _Reporter(skipped, annotation_file)
    coco = _coco_index(_read_json(annotation_file), annotation_file)
    return _coco_samples(coco, annotation_file, str(image_dir), split, task, report,
                         _Images(check_images), include_crowd, max_mask_fraction)


def _coco_samples(coco, source, image_dir, split, task, report, images, include_crowd, max_fraction):
    stem = os.path.splitext(os.path.basename(source))[0]
    for i, ann in enumerate(coco.dataset.get("annotations") or []):
        if not isinstance(ann, dict):
            report(f"annotations[{i}]", "", "annotation is not an object")
            continue
        row = f"annotation id {ann.get('id', '?')} (annotations[{i}])"
        try:
            if ann.get("iscrowd") and not include_crowd:
                raise _Bad("iscrowd", "crowd annotation (iscrowd=1) left out")
            img = _lookup(coco.imgs, ann.get("image_id"))
            if img is None:
                raise _Bad("image_id", f"no image with id {ann.get('image_id')!r}")
            cat = _lookup(coco.cats, ann.get("category_id"))
            if cat is None or not isinstance(cat.get("name"), str) or not cat["name"].strip():
                raise _Bad("category_id", f"no category (with a name) with id {ann.get('category_id')!r}")
            fname = img.get("file_name")
            if not isinstance(fname, str) or not fname:
                raise _Bad("file_name", f"image {img.get('id')!r} has no file_name")
            path = _abs(os.path.join(image_dir, fname))
            size = images.size(path, _image_entry_size(img), "width/height")
            target = _annotation_target(ann, img, size, task, max_fraction)
        except _Bad as bad:
            report(row, bad.field, bad.reason)
            continue
        yield Sample(sample_id=f"coco/{stem}/{ann.get('id', i)}", image_path=path, image_size=size,
                     expressions=[cat["name"].strip()], targets=[target], task=task, image_key=fname,
                     split=split, meta={"ann_id": ann.get("id"), "category_id": cat.get("id"),
                                        "image_id": img.get("id")})


# ---------------------------------------------------------------------- RefCOCO / gRefCOCO
class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (lists, dicts, strings, numbers): refs files need nothing else,
    and no code from a downloaded file runs."""

    _ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refs pickle refers to {module}.{name}: only plain lists, dicts, "
                                     "strings and numbers are accepted")


def _load_refs_pickle(path: str):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return _PlainUnpickler(io.BytesIO(raw), encoding="utf-8").load()
    except UnicodeDecodeError:  # a Python 2 pickle with non-UTF-8 byte strings
        return _PlainUnpickler(io.BytesIO(raw), encoding="latin1").load()


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ref_expressions(ref: dict) -> list[str]:
    sents = ref.get("sentences")
    if not isinstance(sents, list):
        raise _Bad("sentences", "sentences must be a list")
    out = []
    for s in sents:
        text = s.get("sent") or s.get("raw") if isinstance(s, dict) else s
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    if not out:
        raise _Bad("sentences", "no non-empty sentence")
    return out


def _ref_samples(refs, coco, source, dataset, split_by, image_dir, split, task, report, images,
                 max_fraction, generalized: bool):
    if not isinstance(refs, list):
        raise ValueError(f"{source}: expected a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            report(f"refs[{i}]", "", "ref is not an object")
            continue
        ref_id = ref.get("ref_id", i)
        if split is not None and ref.get("split") != split:
            continue
        row = f"ref_id {ref_id} (refs[{i}])"
        try:
            exprs = _ref_expressions(ref)
            img = _lookup(coco.imgs, ref.get("image_id"))
            if img is None:
                raise _Bad("image_id", f"no image with id {ref.get('image_id')!r} in instances.json")
            fname = img.get("file_name")
            if not isinstance(fname, str) or not fname:
                raise _Bad("file_name", f"image {img.get('id')!r} has no file_name")
            ann_ids = ref.get("ann_id")
            if generalized:
                if _is_id(ann_ids):
                    ann_ids = [ann_ids]
                if not isinstance(ann_ids, list) or not ann_ids or not all(_is_id(a) for a in ann_ids):
                    raise _Bad("ann_id", f"ann_id must be a non-empty list of integers, got {ann_ids!r}"[:200])
                if -1 in ann_ids:
                    if len(ann_ids) > 1:
                        raise _Bad("ann_id", f"ann_id mixes -1 (no target) with object ids: {ann_ids}")
                    ann_ids = []
                if ref.get("no_target") is True and ann_ids:
                    raise _Bad("no_target", f"no_target is true but ann_id lists objects {ann_ids}")
                ann_ids = list(dict.fromkeys(ann_ids))
            else:
                if not _is_id(ann_ids):
                    raise _Bad("ann_id", f"ann_id must be an integer, got {ann_ids!r}"[:200])
                ann_ids = [ann_ids]
            path = _abs(os.path.join(image_dir, fname))
            size = images.size(path, _image_entry_size(img), "width/height")
            targets = []
            for aid in ann_ids:
                ann = coco.anns.get(aid)
                if ann is None:
                    raise _Bad("ann_id", f"no annotation with id {aid!r} in instances.json")
                if ann.get("image_id") != img.get("id"):
                    raise _Bad("ann_id", f"annotation {aid} belongs to image {ann.get('image_id')}, "
                                         f"the ref to image {img.get('id')}")
                try:
                    targets.append(_annotation_target(ann, img, size, task, max_fraction))
                except _Bad as bad:
                    raise _Bad(f"annotation {aid}.{bad.field}", bad.reason) from None
        except _Bad as bad:
            report(row, bad.field, bad.reason)
            continue
        yield Sample(sample_id=f"{dataset}/{split_by}/{ref_id}", image_path=path, image_size=size,
                     expressions=exprs, targets=targets, task=task, image_key=fname,
                     split=str(ref.get("split", "")),
                     meta={"dataset": dataset, "split_by": split_by, "ref_id": ref_id,
                           "ann_ids": ann_ids, "image_id": img.get("id"),
                           "category_id": ref.get("category_id")})


def load_refcoco(root, dataset: str = "refcoco", split: str | None = None, split_by: str | None = None,
                 *, image_dir=None, task: str = "seg", skipped: list | None = None,
                 check_images: bool = True, max_mask_fraction: float = 1.0) -> Iterator[Sample]:
    """RefCOCO / RefCOCO+ / RefCOCOg: one Sample per ref, every sentence an expression.

    Reads ``<root>/<dataset>/refs(<split_by>).p`` and ``<root>/<dataset>/instances.json``;
    images in ``image_dir`` (default ``<root>/images/train2014``). ``split`` keeps refs whose
    ``split`` equals it (train / val / testA / testB / test); None keeps all. ``split_by``
    defaults to unc (refcoco, refcoco+) or umd (refcocog).
    """
    root = str(root)
    split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "unc")
    folder = os.path.join(root, dataset)
    refs_file = os.path.join(folder, f"refs({split_by}).p")
    inst_file = os.path.join(folder, "instances.json")
    for f in (refs_file, inst_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{dataset}: {f} not found")
    refs = _load_refs_pickle(refs_file)
    coco = _coco_index(_read_json(inst_file), inst_file)
    image_dir = str(image_dir) if image_dir else os.path.join(root, "images", "train2014")
    return _ref_samples(refs, coco, refs_file, dataset, split_by, image_dir, split, task,
                            _Reporter(skipped, refs_file), _Images(check_images), max_mask_fraction,
                            generalized=False)


def load_grefcoco(root, split: str | None = None, split_by: str = "unc", *, image_dir=None,
                  task: str = "seg", skipped: list | None = None, check_images: bool = True,
                  max_mask_fraction: float = 1.0) -> Iterator[Sample]:
    """gRefCOCO: like RefCOCO, but ``ann_id`` is a list: ``[-1]`` means no target (``targets ==
    []``) and several ids give several targets (one per object). Reads
    ``<root>/grefcoco/grefs(<split_by>).p``, or ``.json`` when there is no pickle, and
    ``<root>/grefcoco/instances.json``.
    """
    root = str(root)
    folder = os.path.join(root, "grefcoco")
    pkl = os.path.join(folder, f"grefs({split_by}).p")
    jsn = os.path.join(folder, f"grefs({split_by}).json")
    inst_file = os.path.join(folder, "instances.json")
    if os.path.isfile(pkl):
        refs_file, refs = pkl, _load_refs_pickle(pkl)
    elif os.path.isfile(jsn):
        refs_file, refs = jsn, _read_json(jsn)
    else:
        raise FileNotFoundError(f"grefcoco: neither {pkl} nor {jsn} found")
    if not os.path.isfile(inst_file):
        raise FileNotFoundError(f"grefcoco: {inst_file} not found")
    coco = _coco_index(_read_json(inst_file), inst_file)
    image_dir = str(image_dir) if image_dir else os.path.join(root, "images", "train2014")
    return _ref_samples(refs, coco, refs_file, "grefcoco", split_by, image_dir, split, task,
                            _Reporter(skipped, refs_file), _Images(check_images), max_mask_fraction,
                            generalized=True)


# ---------------------------------------------------------------------- ReasonSeg
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
            isinstance(p, (list, tuple)) and len(p) == 2 and all(_num(t) for t in p) for p in pts):
        raise _Bad(field, "points must be a list of [x, y] with finite numbers")
    pts = [(float(x), float(y)) for x, y in pts]
    if kind == "rectangle":
        if len(pts) != 2:
            raise _Bad(field, f"a rectangle needs 2 points, has {len(pts)}")
        (x1, y1), (x2, y2) = pts
        return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if kind != "polygon":
        raise _Bad(f"shapes[{j}].shape_type", f"shape type {kind!r} is not supported (polygon, rectangle)")
    if len(pts) < 3:
        raise _Bad(field, f"polygon has {len(pts)} point(s), needs at least 3")
    return pts


def reasonseg_masks(shapes, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) boolean masks of labelme ``shapes`` (ReasonSeg rules).

    Labels equal to "flag" (any case) are skipped; labels containing "ignore" (any case) mark
    the ignore region; every other label is target. Each polygon is filled including its
    outline (``fill_polygon``); polygons are painted largest first (by filled pixel count, ties
    in file order), so a smaller polygon drawn over a larger one wins its pixels.
    """
    if not isinstance(shapes, list):
        raise _Bad("shapes", "shapes must be a list")
    filled = []
    for j, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise _Bad(f"shapes[{j}]", "shape is not an object")
        label = shape.get("label")
        if not isinstance(label, str):
            raise _Bad(f"shapes[{j}].label", "label must be a string")
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
                   check_images: bool = True, max_mask_fraction: float = 1.0) -> Iterator[Sample]:
    """ReasonSeg: ``image_n.jpg`` beside ``image_n.json`` (labelme), in ``<root>/<split>`` (or
    ``root`` itself when ``split`` is None). One Sample per JSON file: its ``text`` instructions
    are the expressions and the union of its target polygons is one target; ``ignore`` holds
    the ignore region. JSON is read as UTF-8, falling back to cp1252.
    """
    folder = os.path.join(str(root), split) if split else str(root)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"reasonseg: folder {folder} not found")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    return _reasonseg_samples(folder, names, split, skipped, _Images(check_images), max_mask_fraction)


def _reasonseg_samples(folder, names, split, skipped, images, max_mask_fraction):
    for name in names:
        jpath = os.path.join(folder, name)
        report = _Reporter(skipped, jpath)
        stem = name[:-5]
        try:
            try:
                with open(jpath, "rb") as f:
                    text = _decode_text(f.read())
            except UnicodeDecodeError as exc:
                raise _Bad("", f"neither UTF-8 nor cp1252: {exc}") from None
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise _Bad("", f"not JSON: {exc}"[:200]) from None
            if not isinstance(data, dict):
                raise _Bad("", "not a JSON object")
            exprs = _expressions(data.get("text"), "text")
            img_path = next((os.path.join(folder, stem + e) for e in _IMAGE_EXTS
                             if os.path.isfile(os.path.join(folder, stem + e))), None)
            if img_path is None:
                raise _Bad("image", f"no image {stem}.jpg (or .jpeg / .png) beside the JSON")
            img_path = _abs(img_path)
            annotated = None
            if "imageWidth" in data or "imageHeight" in data:
                annotated = (data.get("imageWidth"), data.get("imageHeight"))
            size = images.size(img_path, annotated, "imageWidth/imageHeight")
            target, ignore = reasonseg_masks(data.get("shapes"), size)
            if not target.any():
                raise _Bad("shapes", "no target pixels (only flag / ignore shapes, or targets covered "
                                     "by ignore)")
            t = _mask_target(_mask_rle(target), size, "shapes", max_mask_fraction)
        except _Bad as bad:
            report(name, bad.field, bad.reason)
            continue
        except OSError as exc:
            report(name, "", f"unreadable: {exc}")
            continue
        yield Sample(sample_id=f"reasonseg/{split}/{stem}" if split else f"reasonseg/{stem}", image_path=img_path, image_size=size,
                     expressions=exprs, targets=[t], task="seg",
                     image_key=f"{split}/{os.path.basename(img_path)}" if split else os.path.basename(img_path),
                     ignore=_mask_rle(ignore) if ignore.any() else None, split=split or "",
                     meta={"is_sentence": data.get("is_sentence")})


# ---------------------------------------------------------------------- points, lanes, JSONL
def _image_of(rec: dict, image_root: str) -> tuple[str, str]:
    """(absolute path, key) of a record's image: ``image``, else ``image_sha256`` (a file named
    by the hash, any common extension, in ``image_root``)."""
    img = rec.get("image")
    if isinstance(img, str) and img:
        return _abs(os.path.join(image_root, img)), img
    sha = rec.get("image_sha256")
    if isinstance(sha, str) and sha:
        for ext in ("",) + _IMAGE_EXTS:
            p = os.path.join(image_root, sha + ext)
            if os.path.isfile(p):
                return _abs(p), sha + ext
        raise _Bad("image_sha256", f"no image file named {sha}[.jpg|.png|...] in {image_root}")
    raise _Bad("image", "record has no 'image' path (or 'image_sha256')")


def _check_file(path: str, image_root) -> str:
    """The image root (default: the folder of ``path``); raises when ``path`` is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    return str(image_root) if image_root else os.path.dirname(os.path.abspath(path))


def _split_ok(rec: dict, split: str | None) -> bool:
    return split is None or rec.get("split", "") == split


_UNITS = {"pixel": None, "norm": 1.0, "percent": 100.0}


def load_points(path, image_root=None, *, split: str | None = None, units: str = "pixel",
                skipped: list | None = None, check_images: bool = True) -> Iterator[Sample]:
    """Point datasets in the Pixmo-points layout (see docs/data.md): one Sample per record, its
    ``label`` the expression and one target per point (``targets == []`` when ``points`` is
    empty). ``units``: ``pixel`` (Pixmo's), ``norm`` ([0, 1]) or ``percent`` ([0, 100])."""
    path = str(path)
    if units not in _UNITS:
        raise ValueError(f"units must be one of {sorted(_UNITS)}, got {units!r}")
    image_root = _check_file(path, image_root)
    return _points_samples(path, _records(path), image_root, split, units, _Reporter(skipped, path),
                           _Images(check_images))


def _points_samples(path, records, image_root, split, units, report, images):
    stem = os.path.splitext(os.path.basename(path))[0]
    for row, rec in records:
        try:
            if isinstance(rec, _Bad):
                raise rec
            if not isinstance(rec, dict):
                raise _Bad("", "record is not an object")
            if not _split_ok(rec, split):
                continue
            img_path, key = _image_of(rec, image_root)
            size = images.size(img_path, rec.get("size"), "size")
            label = rec.get("label", rec.get("expression"))
            exprs = _expressions(label, "label")
            pts = rec.get("points")
            if pts is None:
                pts = []
            if not isinstance(pts, list):
                raise _Bad("points", "points must be a list")
            scale = _UNITS[units]
            targets = []
            for j, p in enumerate(pts):
                if isinstance(p, dict) and set(p) >= {"x", "y"}:
                    p = (p["x"], p["y"])
                if scale is not None and isinstance(p, (list, tuple)) and len(p) == 2 and all(map(_num, p)):
                    p = (p[0] / scale, p[1] / scale)
                targets.append(Target(points=(_point(p, size, scale is not None, f"points[{j}]"),)))
        except _Bad as bad:
            report(row, bad.field, bad.reason)
            continue
        rid = rec.get("id", row.replace("line ", ""))
        yield Sample(sample_id=f"{stem}/{rid}", image_path=img_path, image_size=size, expressions=exprs,
                     targets=targets, task="point", image_key=key, split=str(rec.get("split", "")),
                     meta={k: rec[k] for k in ("count", "collection_method", "image_url") if k in rec})


def load_lanes(path, image_root=None, *, split: str | None = None, skipped: list | None = None,
               check_images: bool = True) -> Iterator[Sample]:
    """Lane polylines (the GETok lanes format, docs/data.md): one Sample per record, one target
    per lane (a normalized polyline); ``targets == []`` when ``lanes`` is empty."""
    path = str(path)
    image_root = _check_file(path, image_root)
    return _lanes_samples(path, _records(path), image_root, split, _Reporter(skipped, path),
                          _Images(check_images))


def _lanes_samples(path, records, image_root, split, report, images):
    stem = os.path.splitext(os.path.basename(path))[0]
    for row, rec in records:
        try:
            if isinstance(rec, _Bad):
                raise rec
            if not isinstance(rec, dict):
                raise _Bad("", "record is not an object")
            if not _split_ok(rec, split):
                continue
            img_path, key = _image_of(rec, image_root)
            size = images.size(img_path, rec.get("size"), "size")
            exprs = _expressions(rec.get("expression", "the lane markings"), "expression")
            lanes = rec.get("lanes")
            if not isinstance(lanes, list):
                raise _Bad("lanes", "lanes must be a list of vertex lists")
            normalized = rec.get("normalized", False) is True
            targets = [Target(polyline=_polyline(lane, size, normalized, f"lanes[{j}]"))
                       for j, lane in enumerate(lanes)]
        except _Bad as bad:
            report(row, bad.field, bad.reason)
            continue
        rid = rec.get("id", row.replace("line ", ""))
        yield Sample(sample_id=f"{stem}/{rid}", image_path=img_path, image_size=size, expressions=exprs,
                     targets=targets, task="line", image_key=key, split=str(rec.get("split", "")))


_JSONL_TARGET_KEYS = {"box", "points", "polygon", "polygons", "mask", "polyline"}


def _jsonl_target(t, j: int, size, normalized: bool, max_fraction: float) -> Target:
    f = f"targets[{j}]"
    if not isinstance(t, dict):
        raise _Bad(f, "target must be an object")
    unknown = set(t) - _JSONL_TARGET_KEYS
    if unknown:
        hint = " (use 'box' as [x1, y1, x2, y2])" if "bbox" in unknown else ""
        raise _Bad(f, f"unknown target field(s) {sorted(unknown)}{hint}")
    if not any(t.get(k) is not None for k in _JSONL_TARGET_KEYS):
        raise _Bad(f, "target has none of box, points, polygon(s), mask, polyline")
    w, h = size
    scale = (w, h) if normalized else (1.0, 1.0)
    mask = box = None
    polys = []
    if t.get("polygon") is not None:
        polys.append(t["polygon"])
    if t.get("polygons") is not None:
        if not isinstance(t["polygons"], list):
            raise _Bad(f"{f}.polygons", "polygons must be a list of polygons")
        polys.extend(t["polygons"])
    if polys:
        flat = []
        for i, p in enumerate(polys):
            fp = _flat_polygon(p, f"{f}.polygon[{i}]")
            flat.append([c * scale[k % 2] for k, c in enumerate(fp)])
        mask = _polygons_rle(flat, size)
    if t.get("mask") is not None:
        rle = _rle_from_any(t["mask"], size, f"{f}.mask")
        if mask is not None:
            raise _Bad(f, "give a mask or polygons, not both")
        mask = rle
    if mask is not None:
        mt = _mask_target(mask, size, f"{f}.mask", max_fraction)
        mask, box = mt.mask, mt.box
    if t.get("box") is not None:
        box = _clip_box(t["box"], size, normalized, f"{f}.box")
    pts = t.get("points")
    points = ()
    if pts is not None:
        if not isinstance(pts, list):
            raise _Bad(f"{f}.points", "points must be a list of [x, y]")
        points = tuple(_point(p, size, normalized, f"{f}.points[{i}]") for i, p in enumerate(pts))
    line = None if t.get("polyline") is None else _polyline(t["polyline"], size, normalized, f"{f}.polyline")
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
               max_mask_fraction: float = 1.0) -> Iterator[Sample]:
    """Generic JSONL (docs/data.md): one object per line with ``image``, ``expressions`` and
    ``targets`` (box / points / polygon(s) / mask RLE / polyline), in pixels or, with
    ``"normalized": true``, in [0, 1]. ``task`` overrides every line's task."""
    path = str(path)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    image_root = _check_file(path, image_root)
    return _jsonl_samples(path, _records(path), image_root, split, task, _Reporter(skipped, path),
                          _Images(check_images), max_mask_fraction)


def _jsonl_samples(path, records, image_root, split, task, report, images, max_mask_fraction):
    stem = os.path.splitext(os.path.basename(path))[0]
    for row, rec in records:
        try:
            if isinstance(rec, _Bad):
                raise rec
            if not isinstance(rec, dict):
                raise _Bad("", "line is not a JSON object")
            if not _split_ok(rec, split):
                continue
            img_path, key = _image_of(rec, image_root)
            size = images.size(img_path, rec.get("size"), "size")
            exprs = _expressions(rec.get("expressions", rec.get("expression")), "expressions")
            normalized = rec.get("normalized", False)
            if not isinstance(normalized, bool):
                raise _Bad("normalized", "normalized must be true or false")
            raw = rec.get("targets")
            if not isinstance(raw, list):
                raise _Bad("targets", "targets must be a list ([] = no target)")
            targets = [_jsonl_target(t, j, size, normalized, max_mask_fraction) for j, t in enumerate(raw)]
            t_task = task or rec.get("task") or _infer_task(targets)
            if t_task not in TASKS:
                raise _Bad("task", f"task must be one of {TASKS}, got {t_task!r}")
            need = {"seg": "mask", "box": "box", "point": "points", "line": "polyline"}[t_task]
            for j, t in enumerate(targets):
                if not getattr(t, need):
                    raise _Bad(f"targets[{j}]", f"a {t_task!r} sample needs a {need} for every target")
            ignore = rec.get("ignore")
            if ignore is not None:
                ignore = _rle_from_any(ignore, size, "ignore")
        except _Bad as bad:
            report(row, bad.field, bad.reason)
            continue
        rid = rec.get("id", row.replace("line ", ""))
        yield Sample(sample_id=f"{stem}/{rid}", image_path=img_path, image_size=size, expressions=exprs,
                     targets=targets, task=t_task, image_key=key, ignore=ignore,
                     split=str(rec.get("split", "")), meta=dict(rec.get("meta") or {}))


# ---------------------------------------------------------------------- the sample dataset
SAMPLE_PARTS = ("refcoco", "grefcoco", "points", "lanes")


def load_sample(root, split: str | None = None, *, parts: Iterable[str] = SAMPLE_PARTS,
                skipped: list | None = None, check_images: bool = True) -> Iterator[Sample]:
    """The bundled sample dataset (``getok_core.data.sample_data.write_sample_dataset``): its refs
    (RefCOCO format), grefs (gRefCOCO format: multi- and no-target), points and lanes."""
    import itertools

    root = str(root)
    common = {"skipped": skipped, "check_images": check_images}
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
                 check_images: bool = True, **kwargs) -> Iterator[Sample]:
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

    Remaining kwargs go to the loader (``task``, ``max_mask_fraction``, ``units``, ...).
    """
    key = str(name).lower()
    root = str(root)
    common = {"skipped": skipped, "check_images": check_images}
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
