"""The ground-truth JSON (round trip, validation, never raising on garbage) and the row writers."""

import json
import os
import stat
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from getok_core import GetokVocab, Instance
from getok_core.codec.answer import format_answer
from getok_core.data.groundtruth import (VERSION, GroundTruthError, dumps, loads, make_ground_truth, targets_of,
                                    validate)
from getok_core.data.masks import encode_rle
from getok_core.data.records import Sample, Target
from getok_core.data.writers import (PROMPT_TEMPLATES, REFINE_PROMPT, easyr1_row, easyr1_row_for, question,
                                sample_question, swift_row, swift_row_for, verl_row, verl_row_for,
                                write_jsonl, write_parquet, write_rows)

W, H = 10, 8


def _mask():
    m = np.zeros((H, W), bool)
    m[2:5, 3:7] = True
    return m


def _sample(targets=None, task="seg", ignore=None):
    if targets is None:
        targets = [Target(mask=encode_rle(_mask()), box=(0.3, 0.25, 0.7, 0.625), points=((0.5, 0.375),))]
    return Sample(sample_id="ds/1", image_path="/data/img 1.png", image_size=(W, H),
                  expressions=["the red cup", "cup on the left."], targets=targets, task=task,
                  image_key="img 1.png", ignore=ignore, split="val")


def _gt_dict():
    return make_ground_truth(_sample(ignore=encode_rle(np.eye(H, W, dtype=bool))))


# ---------------------------------------------------------------------- ground truth
def test_make_ground_truth_fields():
    gt = _gt_dict()
    assert gt == {
        "version": 1, "sample_id": "ds/1", "image_key": "img 1.png", "image_path": "/data/img 1.png",
        "image_size": [W, H], "task": "seg", "expression": "the red cup", "expression_index": 0, "no_target": False,
        "targets": [{"mask": encode_rle(_mask()), "box": [0.3, 0.25, 0.7, 0.625], "points": [[0.5, 0.375]],
                     "polyline": None}],
        "ignore": encode_rle(np.eye(H, W, dtype=bool)), "extra": {},
    }
    assert make_ground_truth(_sample(), expression_index=1)["expression"] == "cup on the left."
    assert make_ground_truth(_sample(), "custom", extra={"upper_iou": 0.93})["extra"] == {"upper_iou": 0.93}


def test_round_trip_and_targets():
    gt = _gt_dict()
    text = dumps(gt)
    assert json.loads(text)["version"] == VERSION and "\n" not in text
    assert loads(text) == gt and loads(text.encode()) == gt and loads(gt) == gt
    assert targets_of(loads(text)) == _sample().targets
    # no target, line and point tasks
    none = make_ground_truth(_sample(targets=[]))
    assert none["no_target"] is True and loads(dumps(none))["targets"] == []
    line = make_ground_truth(_sample([Target(polyline=((0.0, 1.0), (0.5, 0.2)))], task="line"))
    assert loads(dumps(line))["targets"][0] == {"mask": None, "box": None, "points": [],
                                                "polyline": [[0.0, 1.0], [0.5, 0.2]]}
    pts = make_ground_truth(_sample([Target(points=((0.1, 0.2),)), Target(points=((1.0, 1.0),))], task="point"))
    assert len(loads(dumps(pts))["targets"]) == 2


def test_loads_fills_defaults():
    minimal = {"version": 1, "image_size": [W, H], "task": "box", "targets": [{"box": [0, 0, 1, 1]}]}
    gt = loads(json.dumps(minimal))
    assert gt["no_target"] is False and gt["ignore"] is None and gt["extra"] == {} and gt["expression"] == ""
    assert gt["targets"][0] == {"mask": None, "box": [0.0, 0.0, 1.0, 1.0], "points": [], "polyline": None}


def _with(**changes):
    gt = _gt_dict()
    gt.update(changes)
    return gt


def _target(**changes):
    t = dict(_gt_dict()["targets"][0])
    t.update(changes)
    return t


@pytest.mark.parametrize("obj, needle", [
    (_with(version=2), "version must be 1"),
    (_with(version=True), "version must be 1"),
    (_with(colour="red"), "unknown key"),
    (_with(task="mask"), "task must be one of"),
    (_with(image_size=[W, 0]), "image_size"),
    (_with(image_size=[W, H, 3]), "image_size"),
    (_with(no_target=True), "no_target is true but there are 1 target"),
    (_with(no_target="no"), "no_target must be"),
    (_with(targets={}), "targets must be a list"),
    (_with(targets=[_target(box=[0.7, 0.25, 0.3, 0.625])]), "inverted"),
    (_with(targets=[_target(box=[0.3, 0.25, 1.2, 0.625])]), "outside [0, 1]"),
    (_with(targets=[_target(box=[0.3, 0.25, float("nan"), 0.625])]), "finite"),
    (_with(targets=[_target(points=[[0.5]])]), "[u, v]"),
    (_with(targets=[_target(polyline=[[0.5, 0.5]])]), "at least 2"),
    (_with(targets=[_target(mask={"size": [H, W + 1], "counts": "0" + "1" * 3})]), "does not match the image"),
    (_with(targets=[_target(mask={"size": [H, W], "counts": "%%%"})]), "corrupt"),
    (_with(targets=[_target(mask=None)]), "which a 'seg' task needs"),
    (_with(targets=[{"mask": None, "box": None}]), "no mask, box"),
    (_with(targets=[_target(area=3)]), "unknown key"),
    (_with(ignore={"size": [H, W], "counts": [1]}), "ignore: RLE counts cover 1"),
    (_with(extra=[1]), "extra must be an object"),
    (_with(extra={"a": [float("nan")]}), "extra must hold plain JSON"),
    (_with(expression="\ud800"), "not valid Unicode"),
    (_with(expression=3), "expression must be a string"),
    ([1, 2], "must be a JSON object"),
    ({"version": 1}, "missing key"),
])
def test_validation_names_the_problem(obj, needle):
    errors = validate(obj)
    assert errors and any(needle in e for e in errors), errors
    with pytest.raises(GroundTruthError) as info:
        loads(json.dumps(obj) if "nan" not in repr(obj) else obj)
    assert needle in str(info.value)
    assert loads(obj, strict=False) is None
    with pytest.raises(GroundTruthError):
        dumps(obj)


def test_make_ground_truth_refuses_invalid_samples():
    with pytest.raises(GroundTruthError, match="seg"):
        make_ground_truth(_sample([Target(box=(0.1, 0.1, 0.5, 0.5))], task="seg"))


@pytest.mark.parametrize("text", ["", "{", "null", "[]", "1e999", "\"x\"", "{\"version\": 1}",
                                  "[" * 100000, b"\xff\xfe", None, 3.5, object()])
def test_loads_garbage(text):
    assert loads(text, strict=False) is None
    with pytest.raises(GroundTruthError):
        loads(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
_KEYS = ["version", "image_size", "task", "targets", "no_target", "ignore", "extra", "expression", "image_key"]
_TKEYS = ["mask", "box", "points", "polyline"]
_RLE_CHARS = "".join(chr(c) for c in range(48, 112))  # the alphabet of COCO compressed RLE strings


@st.composite
def _mutated(draw):
    """A valid ground truth with a few fields replaced by arbitrary JSON values."""
    gt = json.loads(dumps(_gt_dict()))
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            gt[draw(st.sampled_from(_KEYS))] = draw(_json)
        elif isinstance(gt.get("targets"), list) and gt["targets"] and isinstance(gt["targets"][0], dict):
            t = gt["targets"][0]
            key = draw(st.sampled_from(_TKEYS))
            if key == "mask" and draw(st.booleans()):
                size = draw(st.just([H, W]) | _json)
                counts = st.text(max_size=30) | st.text(_RLE_CHARS, max_size=12) | _json
                t["mask"] = {"size": size, "counts": draw(counts)}
            else:
                t[key] = draw(_json)
    if draw(st.booleans()):
        gt["extra"] = {"x": draw(_json)}
    return json.dumps(gt, allow_nan=True) if draw(st.booleans()) else gt


@settings(max_examples=600)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), _json, _json.map(json.dumps), _mutated()))
def test_loads_never_raises_when_not_strict(garbage):
    out = loads(garbage, strict=False)
    assert out is None or (isinstance(out, dict) and out["version"] == 1)
    if out is not None:  # whatever passes validation serializes and reloads to itself
        assert loads(dumps(out)) == out
    errors = validate(garbage if not isinstance(garbage, (str, bytes)) else None)
    assert isinstance(errors, list)


# ---------------------------------------------------------------------- questions
def test_question_templates():
    assert set(PROMPT_TEMPLATES) == {"seg", "box", "point", "line"}
    assert question("seg", "the red cup.") == ("Please segment: the red cup. Answer with <box> and <seg> GETok "
                                               "tokens for each object, or <none> if there is no such object.")
    assert question("box", "x", 1).startswith("Where is x?")
    assert question("point", "x", "auto", key="k") == question("point", "x", "auto", key="k")
    for bad in (("mask", "x", 0), ("seg", "", 0), ("seg", "x", 5)):
        with pytest.raises(ValueError):
            question(*bad)
    assert sample_question(_sample(), 1) == question("seg", "cup on the left.")
    assert "<offset>" in REFINE_PROMPT and "<DELETE>" in REFINE_PROMPT


def test_auto_template_uses_every_template():
    seen = {question("seg", f"object {i}", "auto", key="k") for i in range(40)}
    firsts = {q.split(":")[0].split(" ")[0] for q in seen}
    assert firsts == {"Please", "Find"}


# ---------------------------------------------------------------------- rows
def test_swift_row():
    vocab = GetokVocab()
    inst = [Instance(box=(0.3, 0.25, 0.7, 0.625), points=[(0.5, 0.375)])]
    row = swift_row_for(_sample(), inst, vocab, think="a cup")
    answer = format_answer(inst, vocab, think="a cup")
    assert row == {"messages": [
        {"role": "user", "content": "<image>" + question("seg", "the red cup")},
        {"role": "assistant", "content": answer}], "images": ["/data/img 1.png"]}
    none = swift_row_for(_sample(targets=[]), [], vocab)
    assert none["messages"][1]["content"] == "<answer><none></answer>"
    two = swift_row("/i.png", "Q", "A1", followups=[(REFINE_PROMPT, "A2")])
    assert [m["content"] for m in two["messages"]] == ["<image>Q", "A1", REFINE_PROMPT, "A2"]
    with pytest.raises(ValueError, match="<image>"):
        swift_row("/i.png", "<image>Q", "A")


def test_easyr1_and_verl_rows():
    gt = make_ground_truth(_sample())
    row = easyr1_row_for(_sample())
    assert row == {"prompt": "<image>" + question("seg", "the red cup"), "answer": dumps(gt),
                   "images": ["/data/img 1.png"]}
    assert easyr1_row("/data/img 1.png", question("seg", "the red cup"), dumps(gt)) == row
    assert isinstance(row["answer"], str) and loads(row["answer"]) == gt
    with pytest.raises(GroundTruthError):
        easyr1_row("/i.png", "Q", "{}")
    v = verl_row_for(_sample(), index=7, expression_index=1, agent_name="getok_refine", data_source="getok/ds")
    assert v == {
        "data_source": "getok/ds",
        "prompt": [{"role": "user", "content": "<image>" + question("seg", "cup on the left")}],
        "images": ["/data/img 1.png"],
        "reward_model": {"style": "rule", "ground_truth": dumps(make_ground_truth(_sample(), expression_index=1))},
        "extra_info": {"index": 7, "sample_id": "ds/1", "expression_index": 1, "split": "val"},
        "agent_name": "getok_refine",
    }
    plain = verl_row("/i.png", "Q", gt)
    assert plain["extra_info"] == {"index": 0} and plain["agent_name"] == "single_turn_agent"


# ---------------------------------------------------------------------- files
def test_write_jsonl_exact_lines(tmp_path):
    rows = [swift_row("/a.png", "Q\u00e9", "A"), easyr1_row_for(_sample())]
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(path, iter(rows)) == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == rows
    assert "Q\u00e9" in lines[0]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert os.listdir(path.parent) == ["out.jsonl"]


def _failing(rows, after):
    for i, r in enumerate(rows):
        if i == after:
            raise RuntimeError("boom")
        yield r


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_jsonl(path, _failing([swift_row("/a.png", "Q", "A")] * 5, 3))
    assert os.listdir(tmp_path) == []                       # no partial file, no temp file
    write_jsonl(path, [swift_row("/a.png", "Q", "old")])
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write_jsonl(path, _failing([swift_row("/a.png", "Q", "new")] * 5, 2))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.jsonl"]
    with pytest.raises(ValueError):                        # NaN is not JSON: nothing written
        write_jsonl(tmp_path / "nan.jsonl", [{"x": float("nan")}])
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_write_parquet_verl_rows(tmp_path):
    import pyarrow.parquet as pq
    rows = [verl_row_for(_sample(), index=i, expression_index=i) for i in range(2)]
    rows.append(verl_row_for(_sample(targets=[]), index=2))
    path = tmp_path / "train.parquet"
    assert write_rows(path, rows) == 3
    back = pq.read_table(path).to_pylist()
    assert back == rows
    assert all(isinstance(r["extra_info"], dict) for r in back)
    assert loads(back[2]["reward_model"]["ground_truth"])["no_target"] is True
    bad = dict(rows[0], extra_info={})
    with pytest.raises(ValueError, match="extra_info"):
        write_parquet(tmp_path / "bad.parquet", [bad])
    with pytest.raises(ValueError):
        write_parquet(tmp_path / "empty.parquet", [])
    assert sorted(os.listdir(tmp_path)) == ["train.parquet"]


def test_write_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        write_parquet(tmp_path / "x.parquet", [verl_row("/i.png", "Q", _gt_dict())])
    assert os.listdir(tmp_path) == []


_unit = st.floats(0, 1, allow_nan=False)


@st.composite
def _valid_sample(draw):
    task = draw(st.sampled_from(["seg", "box", "point", "line"]))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    targets = []
    for _ in range(draw(st.integers(0, 3))):
        u1, u2 = sorted(draw(st.lists(_unit, min_size=2, max_size=2, unique=True)))
        v1, v2 = sorted(draw(st.lists(_unit, min_size=2, max_size=2, unique=True)))
        m = np.asarray(draw(st.lists(st.booleans(), min_size=w * h, max_size=w * h))).reshape(h, w)
        targets.append(Target(
            mask=encode_rle(m) if task == "seg" or draw(st.booleans()) else None,
            box=(u1, v1, u2, v2) if task == "box" or draw(st.booleans()) else None,
            points=tuple(draw(st.lists(st.tuples(_unit, _unit), min_size=task == "point", max_size=3))),
            polyline=tuple(draw(st.lists(st.tuples(_unit, _unit), min_size=2, max_size=4)))
            if task == "line" or draw(st.booleans()) else None))
    return Sample(sample_id=draw(st.text(max_size=8)), image_path="/x.png", image_size=(w, h),
                  expressions=[draw(st.text(max_size=20))], targets=targets, task=task)


@settings(max_examples=200)
@given(_valid_sample())
def test_valid_ground_truths_round_trip(sample):
    gt = make_ground_truth(sample)
    assert loads(dumps(gt)) == gt and loads(dumps(gt), strict=False) == gt
    assert targets_of(gt) == [Target(mask=t.mask, box=t.box, points=t.points, polyline=t.polyline)
                              for t in sample.targets]
