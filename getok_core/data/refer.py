"""RefCOCO / RefCOCO+ / RefCOCOg (``load_refcoco``) and gRefCOCO (``load_grefcoco``): one Sample
per ref, every sentence an expression, over a COCO instances file (``data.coco``). Refs pickles
are read with an unpickler that accepts plain data only."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator

from .coco import annotation_target, coco_index, image_entry_size, lookup
from .records import Sample
from .rows import BadRow, ImageSizes, Reporter, read_json

#: Default ``splitBy`` of the refer-style datasets.
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "grefcoco": "unc"}


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
        raise BadRow("sentences", "sentences must be a list")
    out = []
    for s in sents:
        text = s.get("sent") or s.get("raw") if isinstance(s, dict) else s
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    if not out:
        raise BadRow("sentences", "no non-empty sentence")
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
            img = lookup(coco.imgs, ref.get("image_id"))
            if img is None:
                raise BadRow("image_id", f"no image with id {ref.get('image_id')!r} in instances.json")
            fname = img.get("file_name")
            if not isinstance(fname, str) or not fname:
                raise BadRow("file_name", f"image {img.get('id')!r} has no file_name")
            ann_ids = ref.get("ann_id")
            if generalized:
                if _is_id(ann_ids):
                    ann_ids = [ann_ids]
                if not isinstance(ann_ids, list) or not ann_ids or not all(_is_id(a) for a in ann_ids):
                    raise BadRow("ann_id", f"ann_id must be a non-empty list of integers, got {ann_ids!r}"[:200])
                if -1 in ann_ids:
                    if len(ann_ids) > 1:
                        raise BadRow("ann_id", f"ann_id mixes -1 (no target) with object ids: {ann_ids}")
                    ann_ids = []
                if ref.get("no_target") is True and ann_ids:
                    raise BadRow("no_target", f"no_target is true but ann_id lists objects {ann_ids}")
                ann_ids = list(dict.fromkeys(ann_ids))
            else:
                if not _is_id(ann_ids):
                    raise BadRow("ann_id", f"ann_id must be an integer, got {ann_ids!r}"[:200])
                ann_ids = [ann_ids]
            path = os.path.abspath(os.path.join(image_dir, fname))
            size = images.size(path, image_entry_size(img), "width/height")
            targets = []
            for aid in ann_ids:
                ann = coco.anns.get(aid)
                if ann is None:
                    raise BadRow("ann_id", f"no annotation with id {aid!r} in instances.json")
                if ann.get("image_id") != img.get("id"):
                    raise BadRow("ann_id", f"annotation {aid} belongs to image {ann.get('image_id')}, "
                                         f"the ref to image {img.get('id')}")
                try:
                    targets.append(annotation_target(ann, img, size, task, max_fraction))
                except BadRow as bad:
                    raise BadRow(f"annotation {aid}.{bad.field}", bad.reason) from None
        except BadRow as bad:
            report(row, bad.field, bad.reason)
            continue
        if not report.first(f"{dataset}/{split_by}/{ref_id}", row):
            continue
        yield Sample(sample_id=f"{dataset}/{split_by}/{ref_id}", image_path=path, image_size=size,
                     expressions=exprs, targets=targets, task=task, image_key=fname,
                     split=str(ref.get("split", "")),
                     meta={"dataset": dataset, "split_by": split_by, "ref_id": ref_id,
                           "ann_ids": ann_ids, "image_id": img.get("id"),
                           "category_id": ref.get("category_id")})


def load_refcoco(root, dataset: str = "refcoco", split: str | None = None, split_by: str | None = None,
                 *, image_dir=None, task: str = "seg", skipped: list | None = None,
                 check_images: bool = True, max_mask_fraction: float = 1.0,
                 origins: dict | None = None) -> Iterator[Sample]:
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
    coco = coco_index(read_json(inst_file), inst_file)
    image_dir = str(image_dir) if image_dir else os.path.join(root, "images", "train2014")
    return _ref_samples(refs, coco, refs_file, dataset, split_by, image_dir, split, task,
                            Reporter(skipped, refs_file, origins), ImageSizes(check_images), max_mask_fraction,
                            generalized=False)


def load_grefcoco(root, split: str | None = None, split_by: str = "unc", *, image_dir=None,
                  task: str = "seg", skipped: list | None = None, check_images: bool = True,
                  max_mask_fraction: float = 1.0, origins: dict | None = None) -> Iterator[Sample]:
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
        refs_file, refs = jsn, read_json(jsn)
    else:
        raise FileNotFoundError(f"grefcoco: neither {pkl} nor {jsn} found")
    if not os.path.isfile(inst_file):
        raise FileNotFoundError(f"grefcoco: {inst_file} not found")
    coco = coco_index(read_json(inst_file), inst_file)
    image_dir = str(image_dir) if image_dir else os.path.join(root, "images", "train2014")
    return _ref_samples(refs, coco, refs_file, "grefcoco", split_by, image_dir, split, task,
                            Reporter(skipped, refs_file, origins), ImageSizes(check_images), max_mask_fraction,
                            generalized=True)


__all__ = ["DEFAULT_SPLIT_BY", "load_refcoco", "load_grefcoco"]
