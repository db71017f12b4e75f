"""The toy grounding dataset (``getok sample --toy``): deterministic bytes, expressions that name
one object, annotations that match the pixels, and a grid size under which a box is learnable."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from getok_core import GetokVocab, parse_answer
from getok_core.codec.geometry import box_iou
from getok_core.data.loaders import load_dataset
from getok_core.data.masks import decode_rle
from getok_core.data.toy import TOY_COLORS, TOY_SHAPES, write_toy_dataset


def getok(*args):
    exe = shutil.which("getok", path=str(Path(sys.executable).parent))
    assert exe, "the getok console script is not installed in this environment"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    res = getok("sample", "--toy", "--out", str(out), "--toy-images", "40", "--toy-val", "8", "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert "40 images (112 px)" in res.stdout
    return out


@pytest.fixture(scope="module")
def samples(toy):
    skipped = []
    got = list(load_dataset("jsonl", toy / "data.jsonl", skipped=skipped))
    assert skipped == [] and got
    return got


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def test_same_seed_same_bytes_other_seed_other_bytes(toy, tmp_path):
    write_toy_dataset(tmp_path / "a", n_images=40, n_val=8, seed=3)
    assert _files(toy) == _files(tmp_path / "a")
    _, mismatch, errors = filecmp.cmpfiles(toy, tmp_path / "a", _files(toy), shallow=False)
    assert mismatch == [] and errors == []
    write_toy_dataset(tmp_path / "b", n_images=40, n_val=8, seed=4)
    assert (tmp_path / "b" / "data.jsonl").read_bytes() != (toy / "data.jsonl").read_bytes()


def test_splits_sizes_and_tasks(toy, samples):
    recs = [json.loads(line) for line in (toy / "data.jsonl").read_text().splitlines()]
    assert len(recs) == len(samples)
    val_images = {r["image"] for r in recs if r["split"] == "val"}
    assert val_images == {f"images/toy_{i:05d}.png" for i in range(32, 40)}  # the last 8 images
    assert all(s.task == "box" and len(s.targets) == 1 and len(s.expressions) == 1 for s in samples)
    per_image = {}
    for r in recs:
        per_image.setdefault(r["image"], []).append(r)
    assert {len(v) for v in per_image.values()} == {1, 2, 3}
    assert all(Image.open(toy / img).size == (112, 112) for img in per_image)


def test_pixels_match_the_annotations_and_the_expression_names_one_object(toy, samples):
    recs = [json.loads(line) for line in (toy / "data.jsonl").read_text().splitlines()]
    by_image = {}
    for r in recs:
        by_image.setdefault(r["image"], []).append(r["meta"])
    for s, rec in zip(samples, recs):
        arr = np.asarray(Image.open(s.image_path).convert("RGB"))
        t = s.targets[0]
        mask = decode_rle(t.mask)
        assert np.all(arr[mask] == TOY_COLORS[rec["meta"]["color"]])  # painted from the mask, exactly
        x, y = (int(v * 112) for v in t.points[0])
        assert mask[y, x]  # the point lies on the shape
        ys, xs = np.nonzero(mask)
        assert np.allclose(t.box, (xs.min() / 112, ys.min() / 112, (xs.max() + 1) / 112, (ys.max() + 1) / 112))
        words = s.expressions[0].split()
        others = [m for m in by_image[rec["image"]] if m is not rec["meta"] and m != rec["meta"]]
        assert len(others) == len(by_image[rec["image"]]) - 1
        color = next((w for w in words if w in TOY_COLORS), None)
        shape = next((w for w in words if w in TOY_SHAPES), None)
        assert color in (None, rec["meta"]["color"]) and shape in (None, rec["meta"]["shape"])
        if color or shape:  # no other object fits the named colour / shape
            assert not [m for m in others if color in (None, m["color"]) and shape in (None, m["shape"])]
        else:
            assert others and any(w in words for w in ("leftmost", "rightmost", "top", "bottom"))


def test_grid_16_answers_reach_the_boxes(toy, tmp_path):
    """getok prepare at grid 16 writes box answers whose decoded box keeps IoU >= 0.5 with the
    target for every toy shape: Acc@0.5 is reachable with two grid tokens."""
    res = getok("prepare", "--dataset", "jsonl", "--root", str(toy / "data.jsonl"), "--out", str(tmp_path / "p"),
                "--grid-size", "16", "--formats", "swift,easyr1", "--no-progress")
    assert res.returncode == 0, res.stderr
    vocab = GetokVocab(16)
    swift_rows = [json.loads(x) for x in (tmp_path / "p" / "swift" / "train.jsonl").read_text().splitlines()]
    gts = [json.loads(json.loads(x)["answer"]) for x in (tmp_path / "p" / "easyr1" / "train.jsonl").read_text()
           .splitlines()]
    assert len(swift_rows) == len(gts) > 20
    ious = []
    for row, gt in zip(swift_rows, gts):
        parsed = parse_answer(row["messages"][1]["content"], vocab)
        assert parsed.valid and len(parsed.instances) == 1
        ious.append(box_iou(parsed.instances[0].box, gt["targets"][0]["box"]))
    assert min(ious) >= 0.5, min(ious)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="task"):
        write_toy_dataset(tmp_path, n_images=2, n_val=0, task="mask")
    with pytest.raises(ValueError, match="n_val"):
        write_toy_dataset(tmp_path, n_images=2, n_val=3)
    with pytest.raises(ValueError, match="28"):
        write_toy_dataset(tmp_path, n_images=2, n_val=0, image_size=20)
