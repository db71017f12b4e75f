"""The bundled sample dataset: deterministic bytes, and the content it promises."""

import filecmp
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.morphology import convex_hull_image

from getok_core.data import groundtruth
from getok_core.data.loaders import load_coco, load_dataset
from getok_core.data.masks import decode_rle
from getok_core.data.sample_data import COLORS, write_sample_dataset


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample_a")
    summary = write_sample_dataset(out, seed=0)
    return out, summary


@pytest.fixture(scope="module")
def samples(sample_dir):
    skipped = []
    got = list(load_dataset("sample", sample_dir[0], skipped=skipped))
    assert skipped == []
    return got


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def test_same_seed_same_bytes(sample_dir, tmp_path):
    first, summary = sample_dir
    write_sample_dataset(tmp_path, seed=0)
    files = _files(first)
    assert files == _files(tmp_path) == summary["files"]
    match, mismatch, errors = filecmp.cmpfiles(first, tmp_path, files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)


def test_other_seed_differs(sample_dir, tmp_path):
    write_sample_dataset(tmp_path, seed=1)
    first = sample_dir[0]
    assert (first / "points.json").read_bytes() != (tmp_path / "points.json").read_bytes()


def test_layout_and_images(sample_dir):
    root, summary = sample_dir
    files = summary["files"]
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == 36
    for f in ("README.txt", "refcoco/instances.json", "refcoco/refs(unc).p", "grefcoco/instances.json",
              "grefcoco/grefs(unc).json", "points.json", "lanes.json"):
        assert f in files
    for f in pngs:
        with Image.open(root / f) as im:
            assert im.mode == "RGB" and im.format == "PNG"
            assert 160 <= im.size[0] <= 320 and 120 <= im.size[1] <= 240
    readme = (root / "README.txt").read_text()
    assert "multi-target" in readme and "no-target" in readme and "2 px" in readme
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    assert {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id"} <= set(refs[0])
    assert {"sent", "raw", "tokens", "sent_id"} <= set(refs[0]["sentences"][0])


def test_content_kinds(samples):
    seg = [s for s in samples if s.task == "seg"]
    assert any(len(s.targets) >= 2 for s in seg), "multi-target"
    assert any(s.targets == [] for s in seg), "no-target"
    assert any(s.task == "point" and len(s.targets) == 1 for s in samples)
    assert any(s.task == "point" and s.targets == [] for s in samples)
    lanes = [s for s in samples if s.task == "line"]
    assert len(lanes) == 6 and any(len(s.targets) >= 2 for s in lanes) and any(not s.targets for s in lanes)
    assert {s.split for s in samples} == {"train", "val"}
    assert any(e.startswith("the red") or " on the left" in e for s in seg for e in s.expressions)

    thin = concave = holes = 0
    for s in (s for s in seg if s.sample_id.startswith("refcoco/")):
        m = decode_rle(s.targets[0].mask)
        if not ndimage.binary_erosion(m, np.ones((3, 3))).any():
            thin += 1                                   # nothing survives a 3x3 erosion: <= 2 px wide
        if ndimage.binary_fill_holes(m).sum() > m.sum():
            holes += 1                                  # rings, square frames
        if "L shape" in s.expressions[0] or "C shape" in s.expressions[0]:
            assert m.sum() < 0.85 * convex_hull_image(m).sum()      # concave: far from its hull
            concave += 1
    assert thin >= 3 and concave >= 3 and holes >= 3


def test_pixels_match_annotations(samples):
    """Each named colour is what the image shows inside the object's mask."""
    checked = 0
    for s in samples:
        if not s.sample_id.startswith("refcoco/"):
            continue
        color = s.expressions[0].split()[1]
        img = np.asarray(Image.open(s.image_path).convert("RGB"), float)
        m = decode_rle(s.targets[0].mask)
        assert m.shape == (s.image_size[1], s.image_size[0])
        assert np.abs(img[m].mean(0) - COLORS[color]).max() < 6, s.sample_id
        ring = ndimage.binary_dilation(m, iterations=1) & ~m
        assert np.abs(img[ring].mean(0) - COLORS[color]).max() > 20      # the background differs
        checked += 1
    assert checked >= 80


def test_points_fall_inside_their_objects(sample_dir, samples):
    by_image = {}
    for s in samples:
        if s.sample_id.startswith(("refcoco/", "grefcoco/")):
            for t in s.targets:
                by_image.setdefault(s.image_key, []).append(decode_rle(t.mask))
    n = 0
    for s in samples:
        if s.task != "point":
            continue
        w, h = s.image_size
        for t in s.targets:
            (u, v), = t.points
            x, y = int(u * w), int(v * h)
            assert any(m[y, x] for m in by_image[os.path.basename(s.image_path)])
            n += 1
    assert n > 100


def test_coco_loader_reads_the_instances(sample_dir):
    root = sample_dir[0]
    skipped = []
    got = list(load_coco(root / "refcoco" / "instances.json", root / "images" / "train2014", skipped=skipped))
    data = json.loads((root / "refcoco" / "instances.json").read_text())
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert crowd >= 3 and len(skipped) == crowd and all(s.field == "iscrowd" for s in skipped)
    assert len(got) == len(data["annotations"]) - crowd
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}
    assert any(isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], list)
               for a in data["annotations"])


def test_every_sample_makes_a_ground_truth(samples):
    for s in samples:
        for i in range(len(s.expressions)):
            gt = groundtruth.make_ground_truth(s, expression_index=i)
            assert groundtruth.loads(groundtruth.dumps(gt)) == gt


def test_split_filter(sample_dir):
    val = list(load_dataset("sample", sample_dir[0], "val"))
    assert val and all(s.split == "val" for s in val)
