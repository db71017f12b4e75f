"""COCO instances (``load_coco``: one Sample per annotation, its category name the expression),
and the COCO parts the refer-style loaders (``data.refer``) build on: the pycocotools index of an
instances file (``coco_index``) and an annotation's target (``annotation_target``)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

from .records import TASKS, Sample, Target
from .rows import (BadRow, ImageSizes, Reporter, clip_box, flat_polygon, is_number, mask_target, polygons_rle,
                   read_json, rle_from_any)


def coco_segmentation(seg, size: tuple[int, int], field: str = "segmentation") -> dict:
    """RLE of a COCO ``segmentation`` (list of polygons, compressed or uncompressed RLE)."""
    if isinstance(seg, dict):
        return rle_from_any(seg, size, field)
    if isinstance(seg, list):
        if not seg:
            raise BadRow(field, "empty segmentation (no polygon)")
        polys = [flat_polygon(p, f"{field}[{i}]") for i, p in enumerate(seg)]
        return polygons_rle(polys, size)
    raise BadRow(field, f"segmentation must be a list of polygons or an RLE, got {type(seg).__name__}")



def coco_index(data: dict, source: str):
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


def lookup(index: dict, key):
    """``index[key]``, or None when the key is absent or not hashable (bad input)."""
    try:
        return index.get(key)
    except TypeError:
        return None


def annotation_target(ann: dict, img: dict, size: tuple[int, int], task: str,
                       max_mask_fraction: float) -> Target:
    """Target of a COCO annotation: its mask (and the mask's box); a box-only annotation gives
    its ``bbox`` (x, y, w, h) when the task does not need a mask."""
    seg = ann.get("segmentation")
    if seg:
        rle = coco_segmentation(seg, size)
        return mask_target(rle, size, "segmentation", max_mask_fraction)
    if task == "seg":
        raise BadRow("segmentation", "no segmentation, which a seg sample needs")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(t) for t in bbox)):
        raise BadRow("bbox", f"no segmentation and no usable bbox: {bbox!r}"[:200])
    x, y, bw, bh = (float(t) for t in bbox)
    return Target(box=clip_box((x, y, x + bw, y + bh), size, False, "bbox"))


def image_entry_size(img: dict):
    if "width" in img or "height" in img:
        return (img.get("width"), img.get("height"))
    return None


def load_coco(annotation_file, image_dir, *, split: str = "", task: str = "seg",
              skipped: list | None = None, check_images: bool = True, include_crowd: bool = False,
              max_mask_fraction: float = 1.0, origins: dict | None = None) -> Iterator[Sample]:
    """COCO instances: one Sample per annotation, the category name as its expression.

    Masks from ``segmentation`` (several polygons per object, compressed or uncompressed RLE).
    ``iscrowd`` annotations are left out (reported as skipped) unless ``include_crowd``. Images:
    ``image_dir / file_name``; sizes from the image entry's ``width`` / ``height``.
    """
    annotation_file = str(annotation_file)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    report = Reporter(skipped, annotation_file, origins)
    coco = coco_index(read_json(annotation_file), annotation_file)
    return _coco_samples(coco, annotation_file, str(image_dir), split, task, report,
                         ImageSizes(check_images), include_crowd, max_mask_fraction)


def _coco_samples(coco, source, image_dir, split, task, report, images, include_crowd, max_fraction):
    stem = os.path.splitext(os.path.basename(source))[0]
    for i, ann in enumerate(coco.dataset.get("annotations") or []):
        if not isinstance(ann, dict):
            report(f"annotations[{i}]", "", "annotation is not an object")
            continue
        row = f"annotation id {ann.get('id', '?')} (annotations[{i}])"
        try:
            if ann.get("iscrowd") and not include_crowd:
                raise BadRow("iscrowd", "crowd annotation (iscrowd=1) left out")
            img = lookup(coco.imgs, ann.get("image_id"))
            if img is None:
                raise BadRow("image_id", f"no image with id {ann.get('image_id')!r}")
            cat = lookup(coco.cats, ann.get("category_id"))
            if cat is None or not isinstance(cat.get("name"), str) or not cat["name"].strip():
                raise BadRow("category_id", f"no category (with a name) with id {ann.get('category_id')!r}")
            fname = img.get("file_name")
            if not isinstance(fname, str) or not fname:
                raise BadRow("file_name", f"image {img.get('id')!r} has no file_name")
            path = os.path.abspath(os.path.join(image_dir, fname))
            size = images.size(path, image_entry_size(img), "width/height")
            target = annotation_target(ann, img, size, task, max_fraction)
        except BadRow as bad:
            report(row, bad.field, bad.reason)
            continue
        if not report.first(f"coco/{stem}/{ann.get('id', i)}", row):
            continue
        yield Sample(sample_id=f"coco/{stem}/{ann.get('id', i)}", image_path=path, image_size=size,
                     expressions=[cat["name"].strip()], targets=[target], task=task, image_key=fname,
                     split=split, meta={"ann_id": ann.get("id"), "category_id": cat.get("id"),
                                        "image_id": img.get("id")})


__all__ = ["load_coco", "coco_index", "coco_segmentation", "annotation_target", "image_entry_size", "lookup"]
