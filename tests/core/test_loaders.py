"""Dataset loaders on small fixture files written here in each real format, masks checked by hand."""

import json
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from getok_core.data.groundtruth import rle_problem, rle_string_counts
from getok_core.data.images import load_image, to_rgb
from getok_core.data.loaders import (DATASETS, fill_polygon, image_size, load_coco, load_dataset, load_grefcoco,
                                load_jsonl, load_lanes, load_points, load_reasonseg, load_refcoco,
                                reasonseg_masks)
from getok_core.data.masks import decode_rle, encode_rle, uncompressed_counts
from getok_core.data.records import Sample, Skipped
from getok_core.data.rows import SKIP_KINDS, skip_kind

W, H = 10, 8


def _png(path, size=(W, H)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def _rect(x0, y0, x1, y1, size=(W, H)):
    """Boolean mask of pixel columns x0..x1-1, rows y0..y1-1."""
    m = np.zeros((size[1], size[0]), bool)
    m[y0:y1, x0:x1] = True
    return m


def _mask(sample_or_target):
    t = sample_or_target.targets[0] if isinstance(sample_or_target, Sample) else sample_or_target
    return decode_rle(t.mask)


def _reasons(skipped):
    return " | ".join(f"{s.row} {s.field}: {s.reason}" for s in skipped)


# ---------------------------------------------------------------------- RLE checks
def test_rle_string_counts_agrees_with_pycocotools():
    rng = np.random.default_rng(1)
    for k in range(200):
        h, w = (int(t) for t in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.random()
        rle = encode_rle(m)
        counts = rle_string_counts(rle["counts"])
        rebuilt = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool).reshape((w, h)).T
        assert (rebuilt == m).all(), k
        assert rle_problem(rle, (w, h)) is None


@pytest.mark.parametrize("rle, why", [
    ({"size": [2, 2], "counts": "zz"}, "corrupt"),
    ({"size": [2, 2], "counts": "0"}, "cover 0 pixels"),
    ({"size": [2, 2], "counts": [1, 2]}, "cover 3 pixels"),
    ({"size": [2, 2], "counts": [1, -1, 4]}, "non-negative"),
    ({"size": [2, 2], "counts": "\x7f"}, "corrupt"),
    ({"size": [2, 2], "counts": "P"}, "corrupt"),       # 'P' = more groups follow, then nothing
    ({"size": [2], "counts": "04"}, "size"),
    ({"size": [2, 2]}, "counts"),
    ("04", "object"),
])
def test_rle_problem_names_the_defect(rle, why):
    assert why in rle_problem(rle)


# ---------------------------------------------------------------------- COCO
def _coco_fixture(tmp_path, annotations, images=None):
    img_dir = tmp_path / "imgs"
    _png(str(img_dir / "a.png"))
    data = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "dots"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path), str(img_dir)


def _ann(i, seg, **kw):
    d = {"id": i, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": 0, "bbox": [0, 0, 1, 1]}
    d.update(kw)
    return d


def test_coco_polygons_rle_uncompressed_and_crowd(tmp_path):
    rle_mask = _rect(5, 0, 9, 2)
    unc_mask = _rect(0, 6, 3, 8)
    anns = [
        # two polygons for one object: cols 1..3 x rows 1..2 and cols 6..7 x rows 5..6
        _ann(10, [[1, 1, 4, 1, 4, 3, 1, 3], [6, 5, 8, 5, 8, 7, 6, 7]]),
        _ann(11, encode_rle(rle_mask)),
        _ann(12, {"size": [H, W], "counts": uncompressed_counts(unc_mask)}),
        _ann(13, {"size": [H, W], "counts": uncompressed_counts(unc_mask)}, iscrowd=1, category_id=2),
    ]
    ann_file, img_dir = _coco_fixture(tmp_path, anns)
    skipped = []
    samples = list(load_coco(ann_file, img_dir, skipped=skipped))
    assert [s.sample_id for s in samples] == ["coco/instances/10", "coco/instances/11", "coco/instances/12"]
    poly, rle, unc = samples
    want = _rect(1, 1, 4, 3) | _rect(6, 5, 8, 7)
    assert (_mask(poly) == want).all()
    assert poly.targets[0].box == pytest.approx((0.1, 1 / 8, 0.8, 7 / 8))
    assert poly.expressions == ["square"] and poly.task == "seg"
    assert poly.image_size == (W, H) and poly.image_key == "a.png"
    assert poly.image_path == os.path.abspath(os.path.join(img_dir, "a.png"))
    assert (_mask(rle) == rle_mask).all()
    assert rle.targets[0].box == pytest.approx((0.5, 0.0, 0.9, 0.25))
    assert (_mask(unc) == unc_mask).all()
    assert isinstance(unc.targets[0].mask["counts"], str)
    assert len(skipped) == 1 and skipped[0].field == "iscrowd" and "13" in skipped[0].row
    assert skipped[0].source == ann_file
    # include_crowd keeps it
    assert len(list(load_coco(ann_file, img_dir, include_crowd=True))) == 4


@pytest.mark.parametrize("seg, field, reason", [
    ([[1, 1, 4, 1, 4]], "segmentation[0]", "odd number"),
    ([[1, 1, 4, 1]], "segmentation[0]", "needs at least 3"),
    ([[1, 1, 4, 1, 4, float("nan"), 1, 3]], "segmentation[0]", "finite"),
    ([[1, 1, 4, 1, 4, 3, 1, 3], ["a", 1, 2, 3, 4, 5]], "segmentation[1]", "finite"),
    ([], "segmentation", "no segmentation"),
    ({"size": [H, W], "counts": "zzzz"}, "segmentation", "corrupt RLE"),
    ({"size": [H, W], "counts": [5, 3]}, "segmentation", "cover 8 pixels"),
    ({"size": [H + 1, W], "counts": [90]}, "segmentation", "does not match the image size"),
    ([[20, 20, 30, 20, 30, 30]], "segmentation", "empty mask"),
    ({"size": [H, W], "counts": [W * H]}, "segmentation", "empty mask"),
    (5, "segmentation", "list of polygons or an RLE"),
])
def test_coco_bad_segmentations_are_skipped(tmp_path, seg, field, reason):
    ann_file, img_dir = _coco_fixture(tmp_path, [_ann(1, seg), _ann(2, [[1, 1, 4, 1, 4, 3, 1, 3]])])
    skipped = []
    samples = list(load_coco(ann_file, img_dir, skipped=skipped))
    assert [s.meta["ann_id"] for s in samples] == [2]  # the good row still loads
    assert len(skipped) == 1, _reasons(skipped)
    assert skipped[0].field == field and reason in skipped[0].reason, _reasons(skipped)
    assert "annotation id 1" in skipped[0].row
    assert skip_kind(skipped[0].field, skipped[0].reason) == "bad-mask"


def test_coco_polygon_partly_outside_is_clipped(tmp_path):
    ann_file, img_dir = _coco_fixture(tmp_path, [_ann(1, [[-5, -5, 3, -5, 3, 2, -5, 2]])])
    (s,) = load_coco(ann_file, img_dir)
    assert (_mask(s) == _rect(0, 0, 3, 2)).all()


def test_coco_all_image_mask_kept_or_skipped_by_fraction(tmp_path):
    ann_file, img_dir = _coco_fixture(tmp_path, [_ann(1, [[0, 0, W, 0, W, H, 0, H]])])
    (s,) = load_coco(ann_file, img_dir)
    assert _mask(s).all() and s.targets[0].box == (0.0, 0.0, 1.0, 1.0)
    skipped = []
    assert list(load_coco(ann_file, img_dir, skipped=skipped, max_mask_fraction=0.99)) == []
    assert "whole image" in skipped[0].reason


def test_coco_box_only_annotations(tmp_path):
    anns = [
        _ann(1, [], bbox=[1, 2, 4, 4]),
        _ann(2, [], bbox=[8, 6, 5, 5]),       # partly outside: clipped to (8, 6)-(10, 8)
        _ann(3, [], bbox=[1, 2, -3, 4]),      # inverted (negative width)
        _ann(4, [], bbox=[1, 2, 0, 4]),       # zero area
        _ann(5, [], bbox=[20, 20, 4, 4]),     # outside the image
        _ann(6, [], bbox=None),
    ]
    ann_file, img_dir = _coco_fixture(tmp_path, anns)
    skipped = []
    samples = list(load_coco(ann_file, img_dir, task="box", skipped=skipped))
    assert [s.targets[0].box for s in samples] == [(0.1, 0.25, 0.5, 0.75), (0.8, 0.75, 1.0, 1.0)]
    assert all(s.targets[0].mask is None and s.task == "box" for s in samples)
    reasons = {s.row.split()[2]: s.reason for s in skipped}
    assert "inverted" in reasons["3"] and "zero-area" in reasons["4"]
    assert "outside the image" in reasons["5"] and "no usable bbox" in reasons["6"]
    # a seg task needs masks
    skipped = []
    assert list(load_coco(ann_file, img_dir, task="seg", skipped=skipped)) == []
    assert all("seg sample needs" in s.reason for s in skipped) and len(skipped) == 6


def test_coco_row_problems(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": W, "height": H},
              {"id": 2, "file_name": "missing.png", "width": W, "height": H},
              {"id": 3, "file_name": "a.png", "width": W + 1, "height": H},
              {"id": 4, "file_name": "bad.png", "width": W, "height": H},
              {"id": 5, "file_name": "a.png"}]
    poly = [[1, 1, 4, 1, 4, 3, 1, 3]]
    anns = [_ann(1, poly, image_id=2), _ann(2, poly, image_id=3), _ann(3, poly, image_id=4),
            _ann(4, poly, image_id=99), _ann(5, poly, category_id=7), _ann(6, poly, image_id=5)]
    ann_file, img_dir = _coco_fixture(tmp_path, anns, images)
    (tmp_path / "imgs" / "bad.png").write_text("not an image")
    skipped = []
    samples = list(load_coco(ann_file, img_dir, skipped=skipped))
    by = {s.row.split()[2]: s for s in skipped}
    assert "not found" in by["1"].reason and by["1"].field == "image"
    assert "size mismatch" in by["2"].reason and "11x8" in by["2"].reason
    assert "unreadable image" in by["3"].reason
    assert by["4"].field == "image_id" and by["5"].field == "category_id"
    # image 5 has no width / height: the size comes from the image header
    assert [s.meta["ann_id"] for s in samples] == [6] and samples[0].image_size == (W, H)
    # without image checks, annotation sizes are trusted and missing images are fine
    skipped = []
    samples = list(load_coco(ann_file, img_dir, skipped=skipped, check_images=False))
    assert sorted(s.meta["ann_id"] for s in samples) == [1, 2, 3, 6]


def test_missing_dataset_files_raise_at_call(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_refcoco(tmp_path, "refcoco")
    with pytest.raises(FileNotFoundError):
        load_grefcoco(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_points(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError):
        load_reasonseg(tmp_path, "val")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("refclef", tmp_path)


def test_skips_are_logged_without_a_list(tmp_path, caplog):
    ann_file, img_dir = _coco_fixture(tmp_path, [_ann(1, [[1, 1, 4]])])
    with caplog.at_level(logging.WARNING, logger="getok_core.data.loaders"):
        assert list(load_coco(ann_file, img_dir)) == []
    assert "odd number" in caplog.text and "instances.json" in caplog.text


# ---------------------------------------------------------------------- image sizes
def test_image_size_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed size swaps
    Image.new("RGB", (10, 6)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    exif[0x0112] = 3  # rotate 180: no swap
    Image.new("RGB", (10, 6)).save(tmp_path / "u.jpg", exif=exif.tobytes())
    Image.new("RGB", (10, 6)).save(tmp_path / "p.png")
    assert image_size(tmp_path / "r.jpg") == (6, 10)
    assert image_size(tmp_path / "u.jpg") == (10, 6)
    assert image_size(tmp_path / "p.png") == (10, 6)
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError):
        image_size(tmp_path / "x.png")


def test_load_image_pixels_are_in_the_frame_image_size_reports(tmp_path):
    """The one image loader (prepare, the decoders, evaluation): EXIF applied as in image_size."""
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = np.zeros((6, 10, 3), np.uint8)
    pixels[:, :5] = 255  # left half white: after a 90 degree turn, a top or bottom half
    Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif.tobytes())
    rgb = load_image(str(tmp_path / "r.png"))
    assert rgb.shape == (10, 6, 3) and rgb.dtype == np.uint8
    assert image_size(tmp_path / "r.png") == (rgb.shape[1], rgb.shape[0])
    assert (rgb[:5] == 255).all() != (rgb[5:] == 255).all()
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(load_image(gray), to_rgb(gray))
    assert np.array_equal(load_image(lambda: gray), to_rgb(gray))  # read only when called
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(str(tmp_path / "x.png"))


# ---------------------------------------------------------------------- RefCOCO / gRefCOCO
def _refer_fixture(tmp_path, dataset="refcoco", split_by="unc"):
    _png(str(tmp_path / "images" / "train2014" / "COCO_1.png"))
    inst = {
        "images": [{"id": 1, "file_name": "COCO_1.png", "width": W, "height": H}],
        "annotations": [_ann(101, [[1, 1, 4, 1, 4, 3, 1, 3]]), _ann(102, encode_rle(_rect(6, 4, 9, 8))),
                        _ann(103, [[0, 5, 2, 5, 2, 8, 0, 8]], image_id=2)],
        "categories": [{"id": 1, "name": "square"}],
    }
    inst["images"].append({"id": 2, "file_name": "COCO_1.png", "width": W, "height": H})
    folder = tmp_path / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(inst))

    def sent(i, t):
        return {"sent_id": i, "sent": t, "raw": t.capitalize(), "tokens": t.split()}

    refs = [
        {"ref_id": 1, "ann_id": 101, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [sent(1, "left square"), sent(2, "the small square top left")], "sent_ids": [1, 2]},
        {"ref_id": 2, "ann_id": 102, "image_id": 1, "category_id": 1, "split": "val",
         "sentences": [sent(3, "right one")], "sent_ids": [3]},
        {"ref_id": 3, "ann_id": 999, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [sent(4, "ghost")], "sent_ids": [4]},
        {"ref_id": 4, "ann_id": 101, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [sent(5, "  ")], "sent_ids": [5]},
        {"ref_id": 5, "ann_id": 103, "image_id": 1, "category_id": 1, "split": "train",
         "sentences": [sent(6, "wrong image")], "sent_ids": [6]},
    ]
    with open(folder / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return tmp_path


def test_refcoco_refs_pickle(tmp_path):
    root = _refer_fixture(tmp_path)
    skipped = []
    samples = list(load_refcoco(root, "refcoco", skipped=skipped))
    assert [s.sample_id for s in samples] == ["refcoco/unc/1", "refcoco/unc/2"]
    a, b = samples
    assert a.expressions == ["left square", "the small square top left"] and a.split == "train"
    assert (_mask(a) == _rect(1, 1, 4, 3)).all() and len(a.targets) == 1
    assert (_mask(b) == _rect(6, 4, 9, 8)).all() and b.split == "val"
    assert a.image_key == "COCO_1.png" and a.image_path.endswith(os.path.join("images", "train2014", "COCO_1.png"))
    by = {s.row.split()[1]: s for s in skipped}
    assert by["3"].field == "ann_id" and "999" in by["3"].reason
    assert by["4"].field == "sentences"
    assert by["5"].field == "ann_id" and "belongs to image 2" in by["5"].reason
    assert all(s.source.endswith("refs(unc).p") for s in skipped)
    # split filter
    assert [s.sample_id for s in load_refcoco(root, "refcoco", split="val")] == ["refcoco/unc/2"]
    assert [s.sample_id for s in load_dataset("refcoco", root, "train")] == ["refcoco/unc/1"]


def test_refcocog_default_split_by_is_umd(tmp_path):
    root = _refer_fixture(tmp_path, "refcocog", "umd")
    assert [s.sample_id for s in load_dataset("refcocog", root, "val")] == ["refcocog/umd/2"]


def test_refs_pickle_with_code_is_refused(tmp_path):
    root = _refer_fixture(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(pickle.UnpicklingError, match="only plain"):
        load_refcoco(root, "refcoco")


def _gref_fixture(tmp_path, as_pickle=False):
    _refer_fixture(tmp_path, "grefcoco")
    os.remove(tmp_path / "grefcoco" / "refs(unc).p")

    def ref(i, ann_id, split="train", **kw):
        d = {"ref_id": i, "ann_id": ann_id, "image_id": 1, "category_id": [1], "split": split,
             "sentences": [{"sent_id": i, "sent": f"expr {i}", "raw": f"Expr {i}", "tokens": []}],
             "sent_ids": [i]}
        d.update(kw)
        return d

    grefs = [ref(1, [-1], no_target=True), ref(2, [101, 102]), ref(3, [102], "val"), ref(4, [-1, 101]),
             ref(5, [101], no_target=True), ref(6, 101), ref(7, []), ref(8, [101, 101])]
    if as_pickle:
        with open(tmp_path / "grefcoco" / "grefs(unc).p", "wb") as f:
            pickle.dump(grefs, f, protocol=2)
    else:
        (tmp_path / "grefcoco" / "grefs(unc).json").write_text(json.dumps(grefs))
    return tmp_path


@pytest.mark.parametrize("as_pickle", [False, True])
def test_grefcoco_no_target_and_multi_target(tmp_path, as_pickle):
    root = _gref_fixture(tmp_path, as_pickle)
    skipped = []
    samples = {s.meta["ref_id"]: s for s in load_grefcoco(root, skipped=skipped)}
    assert sorted(samples) == [1, 2, 3, 6, 8]
    assert samples[1].targets == [] and samples[1].expressions == ["expr 1"]
    assert [decode_rle(t.mask).sum() for t in samples[2].targets] == [6, 12]
    assert (decode_rle(samples[2].targets[1].mask) == _rect(6, 4, 9, 8)).all()
    assert len(samples[6].targets) == 1                      # a bare id is a one-element list
    assert len(samples[8].targets) == 1                      # repeated ids count once
    by = {s.row.split()[1]: s for s in skipped}
    assert "mixes -1" in by["4"].reason and by["5"].field == "no_target" and "non-empty" in by["7"].reason
    assert [s.meta["ref_id"] for s in load_dataset("grefcoco", root, "val")] == [3]


# ---------------------------------------------------------------------- ReasonSeg
def _labelme(shapes, text=("what is the tool for cutting?",), **kw):
    d = {"text": list(text), "is_sentence": True, "shapes": shapes}
    d.update(kw)
    return d


def _shape(label, pts, kind="polygon"):
    return {"label": label, "points": pts, "shape_type": kind}


def test_reasonseg_masks_fill_outline_and_ignore_rules():
    big = [[2, 2], [7, 2], [7, 6], [2, 6]]      # pixels cols 2..7, rows 2..6: 30 px with outline
    small = [[4, 3], [5, 3], [5, 4], [4, 4]]    # 2 x 2 = 4 px
    target, ignore = reasonseg_masks([_shape("target", big), _shape("ignore_region", small),
                                      _shape("Flag", [[0, 0], [9, 0], [9, 7], [0, 7]])], (W, H))
    assert target.sum() == 26 and ignore.sum() == 4
    assert (ignore == _rect(4, 3, 6, 5)).all() and (target | ignore == _rect(2, 2, 8, 7)).all()
    # largest first whatever the file order: a small target inside a large ignore region wins
    target, ignore = reasonseg_masks([_shape("target", small), _shape("IGNORE", big)], (W, H))
    assert target.sum() == 4 and ignore.sum() == 26
    # fractional vertices are floored to the pixel they lie in
    assert (fill_polygon([(2.9, 2.2), (7.99, 2.5), (7.5, 6.7), (2.1, 6.0)], (W, H)) == _rect(2, 2, 8, 7)).all()


def test_reasonseg_loader(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    big = [[2, 2], [7, 2], [7, 6], [2, 6]]
    for n in (1, 2, 3, 4, 5, 6, 7):
        if n != 4:
            Image.new("RGB", (W, H)).save(folder / f"image_{n}.jpg")
    (folder / "image_1.json").write_text(json.dumps(_labelme(
        [_shape("target", big), _shape("ignore", [[4, 3], [5, 3], [5, 4], [4, 4]]), _shape("flag", big)],
        imageWidth=W, imageHeight=H)), encoding="utf-8")
    # cp1252 bytes (0xe9 = e-acute): not UTF-8
    (folder / "image_2.json").write_bytes(json.dumps(_labelme([_shape("target", big)], text=["caf\u00e9 sign"]),
                                                     ensure_ascii=False).encode("cp1252"))
    (folder / "image_3.json").write_text(json.dumps(_labelme([_shape("flag", big), _shape("ignore", big)])))
    (folder / "image_4.json").write_text(json.dumps(_labelme([_shape("target", big)])))  # no image
    (folder / "image_5.json").write_text(json.dumps(_labelme([_shape("target", [[1, 1], [5, 5]], "circle")])))
    (folder / "image_6.json").write_bytes(b"{not json")
    (folder / "image_7.json").write_text(json.dumps(_labelme([_shape("target", big)], imageWidth=W + 2,
                                                             imageHeight=H)))
    skipped = []
    samples = list(load_reasonseg(tmp_path, "val", skipped=skipped))
    assert [s.sample_id for s in samples] == ["reasonseg/val/image_1", "reasonseg/val/image_2"]
    one, two = samples
    assert _mask(one).sum() == 26 and decode_rle(one.ignore).sum() == 4 and one.meta["is_sentence"] is True
    assert one.targets[0].box == pytest.approx((0.2, 0.25, 0.8, 7 / 8))
    assert two.expressions == ["caf\u00e9 sign"] and two.ignore is None and _mask(two).sum() == 30
    assert one.image_key == "val/image_1.jpg"
    by = {s.row: s for s in skipped}
    assert "no target pixels" in by["image_3.json"].reason
    assert by["image_4.json"].field == "image"
    assert "not supported" in by["image_5.json"].reason
    assert "not JSON" in by["image_6.json"].reason
    assert "size mismatch" in by["image_7.json"].reason
    assert len(skipped) == 5 and all(s.source.endswith(s.row) for s in skipped)


def test_reasonseg_exif_rotated_image_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (8, 10)).save(tmp_path / "r.jpg", exif=exif.tobytes())  # displayed 10 x 8
    (tmp_path / "r.json").write_text(json.dumps(_labelme([_shape("t", [[2, 2], [7, 2], [7, 6], [2, 6]])])))
    (s,) = load_dataset("reasonseg", tmp_path)
    assert s.image_size == (10, 8) and _mask(s).shape == (8, 10)


# ---------------------------------------------------------------------- points
def test_points_pixmo_style(tmp_path):
    _png(str(tmp_path / "img" / "a.png"))
    _png(str(tmp_path / "abc123.png"))
    recs = [
        {"image": "img/a.png", "label": "the cups", "points": [{"x": 2.5, "y": 4.0}, {"x": 10, "y": 8}],
         "count": 2, "collection_method": "counting", "split": "train"},
        {"image_sha256": "abc123", "image_url": "http://x/y.jpg", "label": "a dog", "points": [],
         "count": 0, "split": "train"},
        {"image": "img/a.png", "label": "cat", "points": [[1, 1]], "size": [W, H], "split": "val"},
        {"image": "img/a.png", "label": "far", "points": [{"x": 11, "y": 1}]},
        {"image": "img/none.png", "label": "x", "points": []},
        {"image": "img/a.png", "label": "", "points": []},
        {"image": "img/a.png", "label": "bad", "points": [{"x": "1", "y": 2}]},
    ]
    path = tmp_path / "points.json"
    path.write_text(json.dumps(recs))
    skipped = []
    samples = list(load_points(path, skipped=skipped))
    assert [s.sample_id for s in samples] == ["points/0", "points/1", "points/2"]
    cups, dog, cat = samples
    assert cups.task == "point" and [t.points for t in cups.targets] == [((0.25, 0.5),), ((1.0, 1.0),)]
    assert cups.meta == {"count": 2, "collection_method": "counting"} and cups.image_key == "img/a.png"
    assert dog.targets == [] and dog.image_key == "abc123.png" and dog.meta["image_url"] == "http://x/y.jpg"
    assert cat.targets[0].points == ((0.1, 0.125),) and cat.split == "val"
    by = {s.row: s for s in skipped}
    assert "outside the image" in by["3"].reason and by["3"].field == "points[0]"
    assert "not found" in by["4"].reason and by["5"].field == "label" and "finite" in by["6"].reason
    assert [s.sample_id for s in load_dataset("points", tmp_path, "val")] == ["points/2"]


def test_points_jsonl_and_units(tmp_path):
    _png(str(tmp_path / "a.png"))
    lines = [json.dumps({"id": "p1", "image": "a.png", "label": "x", "points": [{"x": 50, "y": 25}]}), "{oops"]
    (tmp_path / "pts.jsonl").write_text("\n".join(lines) + "\n")
    skipped = []
    (s,) = load_points(tmp_path / "pts.jsonl", units="percent", skipped=skipped)
    assert s.sample_id == "pts/p1" and s.targets[0].points == ((0.5, 0.25),)
    assert skipped[0].row == "line 2" and "not a JSON object" in skipped[0].reason
    with pytest.raises(ValueError):
        load_points(tmp_path / "pts.jsonl", units="inch")


# ---------------------------------------------------------------------- lanes
def test_lanes(tmp_path):
    _png(str(tmp_path / "road.png"), (20, 10))
    recs = [
        {"id": "r1", "image": "road.png", "size": [20, 10],
         "lanes": [[[2, 9], [4, 5], [4, 5], [6, 1]], [[10, 9], [14, 4], [24, -1]]], "split": "train"},
        {"id": "r2", "image": "road.png", "lanes": []},
        {"id": "r3", "image": "road.png", "lanes": [[[1, 1]]]},
        {"id": "r4", "image": "road.png", "lanes": [[[1, 5], [25, 5], [25, 6], [1, 6]]]},
        {"id": "r5", "image": "road.png", "lanes": [[[30, 5], [40, 5]]]},
        {"id": "r6", "image": "road.png", "lanes": [[[0.1, 0.9], [0.3, 0.1]]], "normalized": True,
         "expression": "the left lane"},
    ]
    (tmp_path / "lanes.json").write_text(json.dumps({"samples": recs}))
    skipped = []
    samples = {s.sample_id: s for s in load_dataset("lanes", tmp_path, skipped=skipped)}
    assert sorted(samples) == ["lanes/r1", "lanes/r2", "lanes/r6"]
    r1 = samples["lanes/r1"]
    assert r1.task == "line" and r1.expressions == ["the lane markings"]
    assert r1.targets[0].polyline == ((0.1, 0.9), (0.2, 0.5), (0.3, 0.1))      # duplicate vertex dropped
    # clipped where it leaves the image: (14, 4) -> (24, -1) crosses x = 20 at y = 1
    assert np.allclose(r1.targets[1].polyline, ((0.5, 0.9), (0.7, 0.4), (1.0, 0.1)))
    assert samples["lanes/r2"].targets == []
    assert samples["lanes/r6"].targets[0].polyline == ((0.1, 0.9), (0.3, 0.1))
    by = {s.row: s for s in skipped}
    assert "distinct vertex" in by["2"].reason and "comes back" in by["3"].reason
    assert "outside the image" in by["4"].reason and by["4"].field == "lanes[0]"


# ---------------------------------------------------------------------- generic JSONL
def test_jsonl_targets_and_bad_rows(tmp_path):
    _png(str(tmp_path / "a.png"))
    m = _rect(2, 2, 5, 4)
    rows = [
        {"id": "box", "image": "a.png", "expression": "the box", "targets": [{"box": [1, 2, 5, 6]}]},
        {"id": "nbox", "image": "a.png", "expressions": ["n"], "normalized": True,
         "targets": [{"box": [0.1, 0.25, 0.5, 0.75]}]},
        {"id": "clip", "image": "a.png", "expressions": ["c"], "targets": [{"box": [-3, -1, 5, 20]}]},
        {"id": "poly", "image": "a.png", "expressions": ["p"], "targets": [{"polygon": [[1, 1], [4, 1], [4, 3], [1, 3]]}]},
        {"id": "npoly", "image": "a.png", "expressions": ["p"], "normalized": True,
         "targets": [{"polygons": [[[0.1, 0.125], [0.4, 0.125], [0.4, 0.375], [0.1, 0.375]]]}]},
        {"id": "mask", "image": "a.png", "expressions": ["m"], "targets": [{"mask": encode_rle(m), "points": [[3, 3]]}],
         "ignore": {"size": [H, W], "counts": uncompressed_counts(_rect(0, 0, 1, 1))}},
        {"id": "pts", "image": "a.png", "expressions": ["q"], "targets": [{"points": [[5, 4]]}]},
        {"id": "line", "image": "a.png", "expressions": ["l"], "targets": [{"polyline": [[0, 0], [10, 8]]}]},
        {"id": "none", "image": "a.png", "expressions": ["nothing"], "task": "box", "targets": []},
        {"id": "inv", "image": "a.png", "expressions": ["x"], "targets": [{"box": [5, 2, 1, 6]}]},
        {"id": "zero", "image": "a.png", "expressions": ["x"], "targets": [{"box": [1, 2, 1, 6]}]},
        {"id": "out", "image": "a.png", "expressions": ["x"], "targets": [{"box": [11, 2, 15, 6]}]},
        {"id": "bbox", "image": "a.png", "expressions": ["x"], "targets": [{"bbox": [1, 2, 3, 4]}]},
        {"id": "notargets", "image": "a.png", "expressions": ["x"]},
        {"id": "needmask", "image": "a.png", "expressions": ["x"], "task": "seg", "targets": [{"box": [1, 2, 5, 6]}]},
        {"id": "badrle", "image": "a.png", "expressions": ["x"], "targets": [{"mask": {"size": [H, W], "counts": "!!"}}]},
        {"id": "emptymask", "image": "a.png", "expressions": ["x"], "targets": [{"mask": encode_rle(_rect(0, 0, 0, 0))}]},
        {"id": "noimg", "image": "b.png", "expressions": ["x"], "targets": []},
        {"id": "noexpr", "image": "a.png", "expressions": [], "targets": []},
        {"id": "badflag", "image": "a.png", "expressions": ["x"], "normalized": "yes", "targets": []},
        {"id": "ptout", "image": "a.png", "expressions": ["x"], "targets": [{"points": [[-1, 3]]}]},
        {"id": "badpoly", "image": "a.png", "expressions": ["x"], "targets": [{"polygon": [[1, 1], [4, 1]]}]},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n\n[1, 2]\n"
    (tmp_path / "data.jsonl").write_text(text)
    skipped = []
    got = {s.sample_id.split("/")[1]: s for s in load_dataset("jsonl", tmp_path, skipped=skipped)}
    assert sorted(got) == sorted(["box", "nbox", "clip", "poly", "npoly", "mask", "pts", "line", "none"])
    assert got["box"].task == "box" and got["box"].targets[0].box == (0.1, 0.25, 0.5, 0.75)
    assert got["nbox"].targets[0].box == (0.1, 0.25, 0.5, 0.75)
    assert got["clip"].targets[0].box == (0.0, 0.0, 0.5, 1.0)
    assert got["poly"].task == "seg" and (_mask(got["poly"]) == _rect(1, 1, 4, 3)).all()
    assert got["poly"].targets[0].box == pytest.approx((0.1, 0.125, 0.4, 0.375))
    assert (_mask(got["npoly"]) == _rect(1, 1, 4, 3)).all()
    assert (_mask(got["mask"]) == m).all() and got["mask"].targets[0].points == ((0.3, 0.375),)
    assert decode_rle(got["mask"].ignore).sum() == 1 and isinstance(got["mask"].ignore["counts"], str)
    assert got["pts"].task == "point" and got["pts"].targets[0].points == ((0.5, 0.5),)
    assert got["line"].task == "line" and got["line"].targets[0].polyline == ((0.0, 0.0), (1.0, 1.0))
    assert got["none"].targets == [] and got["none"].task == "box"
    reasons = {s.row: f"{s.field}: {s.reason}" for s in skipped}
    want = {"line 10": "inverted", "line 11": "zero-area", "line 12": "outside the image",
            "line 13": "use 'box'", "line 14": "targets must be a list", "line 15": "needs a mask",
            "line 16": "corrupt RLE", "line 17": "empty mask", "line 18": "not found",
            "line 19": "no non-empty expression", "line 20": "normalized must be",
            "line 21": "outside the image", "line 22": "needs at least 3", "line 24": "not a JSON object"}
    assert set(reasons) == set(want), reasons
    for row, needle in want.items():
        assert needle in reasons[row], (row, reasons[row])
    assert all(isinstance(s, Skipped) and s.source.endswith("data.jsonl") for s in skipped)


def test_load_dataset_names_and_coco_paths(tmp_path):
    assert set(DATASETS) == {"refcoco", "refcoco+", "refcocog", "grefcoco", "reasonseg", "coco", "points",
                             "lanes", "jsonl", "sample"}
    ann_file, img_dir = _coco_fixture(tmp_path, [_ann(1, [[1, 1, 4, 1, 4, 3, 1, 3]])])
    (s,) = load_dataset("COCO", tmp_path, annotation_file="instances.json", image_dir="imgs")
    assert s.targets and s.split == ""
    os.makedirs(tmp_path / "annotations")
    os.replace(ann_file, tmp_path / "annotations" / "instances_val2017.json")
    os.replace(img_dir, tmp_path / "val2017")
    (s,) = load_dataset("coco", tmp_path, "val2017")
    assert s.split == "val2017" and s.image_path.endswith(os.path.join("val2017", "a.png"))


def test_malformed_ids(tmp_path):
    root = _refer_fixture(tmp_path)
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    refs[0]["ann_id"] = [101]            # a gRefCOCO-style list in a RefCOCO file
    refs[1]["image_id"] = [1]            # unhashable
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    skipped = []
    assert list(load_refcoco(root, "refcoco", skipped=skipped)) == []
    by = {s.row.split()[1]: s for s in skipped}
    assert "must be an integer" in by["1"].reason and by["2"].field == "image_id"
    ann_file, img_dir = _coco_fixture(tmp_path, [{"image_id": 1, "category_id": 1, "segmentation": []}])
    with pytest.raises(ValueError, match="not a COCO instances file"):
        load_coco(ann_file, img_dir)


def test_duplicate_ids_skip_later_rows_with_their_lines(tmp_path):
    _png(str(tmp_path / "a.png"))
    rows = [{"id": "r1", "image": "a.png", "expressions": ["x"], "targets": [{"box": [1, 1, 5, 5]}]},
            {"id": "r1", "image": "a.png", "expressions": ["y"], "targets": [{"box": [2, 2, 6, 6]}]},
            {"id": "r2", "image": "a.png", "expressions": ["z"], "targets": [{"box": [2, 2, 6, 6]}]},
            {"id": "r1", "image": "a.png", "expressions": ["w"], "targets": [{"box": [2, 2, 6, 6]}]}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skipped, origins = [], {}
    samples = list(load_jsonl(str(path), skipped=skipped, origins=origins))
    assert [(s.sample_id, s.expressions) for s in samples] == [("data/r1", ["x"]), ("data/r2", ["z"])]
    assert [(k.row, k.field) for k in skipped] == [("line 2", "id"), ("line 4", "id")]
    assert all("first at line 1" in k.reason and skip_kind(k.field, k.reason) == "duplicate-id" for k in skipped)
    assert origins == {"data/r1": (str(path), "line 1"), "data/r2": (str(path), "line 3")}
    # COCO: a repeated annotation id
    ann_file, img_dir = _coco_fixture(tmp_path / "c", [_ann(1, [[1, 1, 4, 1, 4, 3, 1, 3]]),
                                                       _ann(1, [[1, 1, 5, 1, 5, 3, 1, 3]])])
    skipped = []
    assert len(list(load_dataset("coco", ann_file, image_dir=img_dir, skipped=skipped))) == 1
    assert len(skipped) == 1 and "annotations[1]" in skipped[0].row and "duplicate" in skipped[0].reason


def test_skip_kinds_of_loader_reasons():
    cases = {
        ("image", "image file not found: /x/a.png"): "image-missing",
        ("image", "unreadable image /x/a.png: not a readable image"): "image-unreadable",
        ("image", "image size mismatch: the annotation says 640x480, ..."): "image-size-mismatch",
        ("", "not a JSON object: Expecting value"): "not-json",
        ("iscrowd", "crowd annotation (iscrowd=1) left out"): "crowd",
        ("image_id", "no image with id 7"): "missing-reference",
        ("ann_id", "no annotation with id 3 in instances.json"): "missing-reference",
        ("size", "size must be [width, height], got 3"): "bad-size",
        ("sentences", "no non-empty sentence"): "bad-expression",
        ("targets[0].box", "inverted box [3, 1, 1, 2] (needs x1 <= x2 and y1 <= y2)"): "bad-box",
        ("targets[0].points[0]", "point [50, 1] outside the image"): "bad-point",
        ("lanes[0]", "polyline lies outside the image"): "bad-polyline",
        ("segmentation", "corrupt RLE: bad characters"): "bad-mask",
        ("task", "task must be one of ..."): "bad-field",
    }
    for (field, reason), kind in cases.items():
        assert skip_kind(field, reason) == kind, (field, reason)
        assert kind in SKIP_KINDS
