"""What every dataset loader shares: skip reporting, image sizes, annotation geometry -> the
normalized targets of ``records.Target``, and reading record files (JSON, JSONL, parquet).

- ``Reporter`` appends ``records.Skipped`` to a list (or logs a warning on the
  ``getok_core.data.loaders`` logger); ``BadRow(field, reason)`` is a row-level problem that
  becomes one. ``Reporter.first(sample_id, row)`` notes where a sample comes from (``origins``)
  and skips a later row repeating an id. ``skip_kind(field, reason)``: the kind of a skip, one of
  ``SKIP_KINDS`` (the keys of ``summary.json``'s ``skip_reasons``).
- ``ImageSizes``: the per-loader cache of image header sizes (``data.images.image_size``, EXIF
  orientation applied), checked against annotated sizes.
- Geometry (pixels, or normalized where ``normalized``): ``clip_box``, ``norm_point``,
  ``norm_polyline`` (clipped with ``clip_segment``), ``flat_polygon`` / ``polygons_rle``,
  ``rle_from_any``, ``mask_target`` (a mask's RLE and its pixel box). Each raises ``BadRow``
  naming the field.
- ``record_rows(path)``: (row id, record) of a JSON list, a JSONL or a parquet file.

The rules (which input is handled, which skipped) are in ``docs/data.md`` ("Bad input").
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator

from .images import image_size
from .masks import rle_problem
from .records import Skipped, Target

#: The logger of skipped rows when a loader is given no ``skipped`` list.
log = logging.getLogger("getok_core.data.loaders")

#: Image file extensions a loader looks for beside an annotation (ReasonSeg) or by hash (points).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


# ---------------------------------------------------------------------- reporting
#: The kinds of skipped rows (``skip_kind``), a fixed vocabulary: the keys of ``summary.json``'s
#: ``skip_reasons``; the values (the box, the path...) are in each row's ``reason``.
SKIP_KINDS = {
    "duplicate-id": "a later row repeats a sample id (the first row is kept)",
    "image-missing": "the image file does not exist, or the row names none",
    "image-unreadable": "the image cannot be decoded (not an image, truncated, too large for PIL)",
    "image-size-mismatch": "the annotated size differs from the image's (after EXIF orientation)",
    "not-json": "a line or file that does not parse as JSON (or text neither UTF-8 nor cp1252)",
    "crowd": "a COCO iscrowd annotation, left out",
    "missing-reference": "the row names an image, annotation or category that does not exist",
    "bad-size": "a malformed size field",
    "bad-expression": "no usable referring expression",
    "bad-mask": "an empty, corrupt or too large mask, or a malformed polygon / segmentation",
    "bad-box": "an inverted, zero-area, outside or malformed box",
    "bad-point": "a point outside the image or malformed",
    "bad-polyline": "a polyline outside the image, in pieces or malformed",
    "bad-field": "any other malformed field (wrong type, unknown key, contradiction)",
    "no-proposal": "prepare: no mask proposal overlaps the target mask",
    "invalid-target": "prepare: a target lacks what its task needs, or an invalid ground truth",
}

_KIND_RULES = (  # (kind, field pattern or None, reason pattern), first match wins
    ("duplicate-id", None, r"duplicate sample id"),
    ("image-size-mismatch", None, r"size mismatch|annotated size"),
    ("missing-reference", r"image_id|ann_id|category_id|file_name",
     r"^no (image|annotation|category)|belongs to image|has no file_name"),
    ("image-missing", None, r"not found|no image( file)? |has no 'image'|no image path"),
    ("image-unreadable", r"^image", r""),
    ("image-unreadable", None, r"^image unreadable|unreadable image"),
    ("not-json", None, r"json|utf-8|cp1252|^unreadable"),
    ("crowd", r"iscrowd", r""),
    ("bad-size", r"size|width|height", r""),
    ("bad-expression", r"sentences|expression|label$|^text$", r""),
    ("bad-mask", None, r"mask|rle|polygon|segmentation|no target pixels"),
    ("bad-box", None, r"\bbox\b|bbox"),
    ("bad-polyline", None, r"polyline|vertex|lanes"),
    ("bad-point", None, r"\bpoint"),
)


def skip_kind(field: str, reason: str) -> str:
    """The ``SKIP_KINDS`` kind of a skip given its field and reason (``bad-field`` if none fits)."""
    f, r = str(field).lower(), str(reason).lower()
    for kind, fpat, rpat in _KIND_RULES:
        if (fpat is None or re.search(fpat, f)) and re.search(rpat, r):
            return kind
    return "bad-field"


class Reporter:
    """Appends ``Skipped`` records to a list (or logs them when there is none). ``origins``
    (sample id -> (source, row)) is filled by ``first``; share one dict between reporters to
    catch repeated ids across files."""

    def __init__(self, skipped: list | None, source: str, origins: dict | None = None):
        self.skipped = skipped
        self.source = str(source)
        self.origins = {} if origins is None else origins

    def first(self, sample_id: str, row, source: str | None = None) -> bool:
        """Note that ``sample_id`` comes from ``row``; False, and the row reported as skipped
        (field ``id``), when an earlier row gave the same id."""
        src = source or self.source
        if sample_id in self.origins:
            s0, r0 = self.origins[sample_id]
            where = r0 if s0 == src else f"{s0} {r0}"
            self(row, "id", f"duplicate sample id {sample_id!r} (first at {where}): this row is skipped",
                 source)
            return False
        self.origins[sample_id] = (src, str(row))
        return True

    def __call__(self, row, field: str, reason: str, source: str | None = None) -> None:
        rec = Skipped(source=source or self.source, row=str(row), field=field, reason=reason)
        if self.skipped is None:
            log.warning("skipped %s row %s%s: %s", rec.source, rec.row,
                        f" field {rec.field}" if rec.field else "", rec.reason)
        else:
            self.skipped.append(rec)


class BadRow(Exception):
    """A row-level problem: ``field`` and ``reason`` become a ``Skipped`` record."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason




class ImageSizes:
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
            raise BadRow("image", why)
        return size

    def size(self, path: str, annotated=None, field: str = "size") -> tuple[int, int]:
        """The image size: the annotation's (checked against the header when ``check``), or
        the header's when the annotation has none. Raises BadRow."""
        if annotated is not None:
            w, h = check_size(annotated, field)
            if self.check:
                hw = self.header(path)
                if hw != (w, h):
                    raise BadRow("image", f"image size mismatch: the annotation says {w}x{h}, the image "
                                        f"header (after EXIF orientation) says {hw[0]}x{hw[1]}")
            return w, h
        return self.header(path)


def check_size(value, field: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise BadRow(field, f"size must be [width, height], got {value!r}"[:200])
    w, h = value
    ok = all(isinstance(t, (int, float)) and not isinstance(t, bool) and float(t).is_integer() and t > 0
             for t in (w, h))
    if not ok:
        raise BadRow(field, f"size must be positive integers [width, height], got {value!r}"[:200])
    return int(w), int(h)

# ---------------------------------------------------------------------- geometry helpers
def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def rle_with_str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts).decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}



def rle_from_any(rle, size: tuple[int, int], field: str) -> dict:
    """A validated compressed RLE (string counts) from a compressed or uncompressed RLE dict."""
    from pycocotools import mask as mask_utils

    why = rle_problem(rle, size)
    if why:
        raise BadRow(field, f"corrupt RLE: {why}")
    if isinstance(rle["counts"], list):
        h, w = rle["size"]
        return rle_with_str_counts(mask_utils.frPyObjects({"size": [h, w], "counts": rle["counts"]}, h, w))
    return rle_with_str_counts(rle)


def flat_polygon(poly, field: str) -> list[float]:
    """A COCO polygon [x1, y1, x2, y2, ...] checked (or [[x, y], ...] flattened)."""
    if isinstance(poly, (list, tuple)) and poly and all(isinstance(p, (list, tuple)) for p in poly):
        if not all(len(p) == 2 for p in poly):
            raise BadRow(field, "polygon vertices must be [x, y] pairs")
        poly = [t for p in poly for t in p]
    if not isinstance(poly, (list, tuple)) or not all(is_number(t) for t in poly):
        raise BadRow(field, "polygon must be a list of finite numbers")
    if len(poly) % 2:
        raise BadRow(field, f"polygon has an odd number of coordinates ({len(poly)})")
    if len(poly) < 6:
        raise BadRow(field, f"polygon has {len(poly) // 2} vertices, needs at least 3")
    return [float(t) for t in poly]


def polygons_rle(polys: list[list[float]], size: tuple[int, int]) -> dict:
    """RLE of the union of COCO polygons (pycocotools rasterization, pixels)."""
    from pycocotools import mask as mask_utils

    w, h = size
    rles = mask_utils.frPyObjects(polys, h, w)
    return rle_with_str_counts(mask_utils.merge(rles) if len(rles) > 1 else rles[0])



def mask_target(rle: dict, size: tuple[int, int], field: str, max_mask_fraction: float) -> Target:
    """Target of a mask: its RLE and its pixel box. Empty masks raise BadRow, and so do masks
    covering more than ``max_mask_fraction`` of the image."""
    from pycocotools import mask as mask_utils

    w, h = size
    coco = dict(rle, counts=rle["counts"].encode("ascii"))
    area = int(mask_utils.area(coco))
    if area == 0:
        raise BadRow(field, "empty mask")
    if area > max_mask_fraction * w * h:
        what = "the whole image" if area == w * h else f"{area / (w * h):.1%} of the image"
        raise BadRow(field, f"mask covers {what} (more than max_mask_fraction={max_mask_fraction})")
    x, y, bw, bh = (float(t) for t in mask_utils.toBbox(coco))
    return Target(mask=rle, box=(x / w, y / h, (x + bw) / w, (y + bh) / h))


def clip_box(box, size: tuple[int, int], normalized: bool, field: str = "box"):
    """Normalized (u1, v1, u2, v2) of an (x1, y1, x2, y2) box, clipped to the image.
    Inverted and zero-area boxes raise BadRow, and so does a box with nothing inside the image."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(is_number(t) for t in box)):
        raise BadRow(field, f"box must be [x1, y1, x2, y2] with finite numbers, got {box!r}"[:200])
    x1, y1, x2, y2 = (float(t) for t in box)
    if x2 < x1 or y2 < y1:
        raise BadRow(field, f"inverted box {list(box)} (needs x1 <= x2 and y1 <= y2)")
    if x2 == x1 or y2 == y1:
        raise BadRow(field, f"zero-area box {list(box)}")
    w, h = (1.0, 1.0) if normalized else (float(size[0]), float(size[1]))
    cx1, cy1, cx2, cy2 = min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)
    if cx2 <= cx1 or cy2 <= cy1:
        raise BadRow(field, f"box {list(box)} lies outside the image")
    return cx1 / w, cy1 / h, cx2 / w, cy2 / h


def norm_point(p, size: tuple[int, int], normalized: bool, field: str) -> tuple[float, float]:
    """Normalized point of a pixel (or normalized) [x, y] or {"x": .., "y": ..}; outside raises."""
    if isinstance(p, dict) and set(p) >= {"x", "y"}:
        p = (p["x"], p["y"])
    if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(is_number(t) for t in p)):
        raise BadRow(field, f"point must be [x, y] with finite numbers, got {p!r}"[:200])
    w, h = (1.0, 1.0) if normalized else (float(size[0]), float(size[1]))
    x, y = float(p[0]), float(p[1])
    if not (0.0 <= x <= w and 0.0 <= y <= h):
        raise BadRow(field, f"point {list(p)} outside the image")
    return x / w, y / h


def clip_segment(p, q, w, h):
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


def norm_polyline(verts, size: tuple[int, int], normalized: bool, field: str) -> tuple:
    """Normalized polyline of pixel (or normalized) vertices, clipped to the image.

    Consecutive duplicate vertices are dropped. Segments are clipped to the image rectangle; a
    polyline that leaves the image and comes back (two separate pieces), or keeps fewer than two
    distinct vertices, raises BadRow.
    """
    if not isinstance(verts, (list, tuple)):
        raise BadRow(field, "polyline must be a list of [x, y] vertices")
    pts = []
    for i, p in enumerate(verts):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(is_number(t) for t in p)):
            raise BadRow(field, f"vertex {i} must be [x, y] with finite numbers, got {p!r}"[:200])
        pts.append((float(p[0]), float(p[1])))
    w, h = (1.0, 1.0) if normalized else (float(size[0]), float(size[1]))
    dedup = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
    if len(dedup) < 2:
        raise BadRow(field, f"polyline has {len(dedup)} distinct vertex(es), needs at least 2")
    pieces: list[list] = []
    prev_end = None
    for a, b in zip(dedup, dedup[1:]):
        seg = clip_segment(a, b, w, h)
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
        raise BadRow(field, "polyline lies outside the image")
    if len(pieces) > 1:
        raise BadRow(field, f"polyline leaves the image and comes back ({len(pieces)} pieces inside)")
    return tuple((x / w, y / h) for x, y in pieces[0])


def expressions_of(value, field: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise BadRow(field, f"expressions must be a string or a list of strings, got {type(value).__name__}")
    if not all(isinstance(v, str) for v in value):
        raise BadRow(field, "every expression must be a string")
    out = [v.strip() for v in value if v.strip()]
    if not out:
        raise BadRow(field, "no non-empty expression")
    return out


def read_json(path: str):
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def jsonl_rows(path: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"line {i}", json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                yield f"line {i}", BadRow("", f"not a JSON object: {exc}"[:200])


def record_rows(path: str) -> Iterator[tuple[str, object]]:
    """(row id, record) of a JSON list / {"samples": [...]} file, a JSONL file or a parquet file.
    JSON and parquet files are read now (a broken file raises here); JSONL lines lazily, a line
    that is not JSON being yielded as a BadRow for the caller to report."""
    if path.endswith(".jsonl"):
        return jsonl_rows(path)
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
        data = pq.read_table(path).to_pylist()
    else:
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("samples"), list):
            data = data["samples"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records or an object with a 'samples' list")
    return iter([(str(i), rec) for i, rec in enumerate(data)])



__all__ = ["log", "IMAGE_EXTS", "SKIP_KINDS", "skip_kind", "Reporter", "BadRow", "ImageSizes", "check_size", "is_number",
           "rle_with_str_counts", "rle_from_any", "flat_polygon", "polygons_rle", "mask_target", "clip_box", "norm_point", "clip_segment",
           "norm_polyline", "expressions_of", "read_json", "jsonl_rows", "record_rows"]
