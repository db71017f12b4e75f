"""``getok eval`` / ``getok viz`` on prepared sample data with oracle, shuffled and junk predictions."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from getok_core.data import groundtruth
from getok_core.decoders import make_decoder
from getok_core.evaluation.evaluate import evaluate, read_ground_truth
from getok_core.prepare import PrepareConfig, prepare
from getok_core.data.sample_data import write_sample_dataset

QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root)
    out = tmp_path_factory.mktemp("prepared")
    prepare(PrepareConfig(dataset="sample", root=str(root), out=str(out), formats=("swift", "easyr1"),
                          progress=False), **QUIET)
    return out


def swift_infer_style(data, responses=None):
    """Rows shaped like ``swift infer`` results on DATA/swift/val.jsonl."""
    rows = [json.loads(line) for line in (data / "swift" / "val.jsonl").read_text().splitlines()]
    out = []
    for k, r in enumerate(rows):
        resp = r["messages"][1]["content"] if responses is None else responses(k, r)
        out.append({"response": resp, "labels": r["messages"][1]["content"],
                    "messages": [r["messages"][0], {"role": "assistant", "content": resp}], "images": r["images"]})
    return out


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_oracle_predictions(data, tmp_path):
    pred = write(tmp_path / "pred.jsonl", swift_infer_style(data))
    res = evaluate(pred, data, tmp_path / "rep", make_decoder("region"), **QUIET)
    assert res["point"]["point"]["accuracy"] == 1.0
    assert res["line"]["polyline"]["F1"] == 1.0
    seg = res["seg"]["segmentation"]
    assert seg["N_acc"] == 1.0 and seg["T_acc"] == 1.0 and seg["n_no_target"] > 0
    assert 0.6 < seg["gIoU"] <= 1.0
    assert all(v["format_validity"] == 1.0 for k, v in res.items() if not k.startswith("_"))
    rep = tmp_path / "rep"
    html = (rep / "index.html").read_text()
    pngs = sorted((rep / "overlays").glob("*.png"))
    assert pngs and all(p.name in html for p in pngs)
    with Image.open(pngs[0]) as im:
        assert min(im.size) >= 384
    per = [json.loads(line) for line in (rep / "per_sample.jsonl").read_text().splitlines()]
    assert len(per) == len(read_ground_truth(data / "easyr1" / "val.jsonl"))
    assert json.loads((rep / "metrics.json").read_text())["seg"]["segmentation"]["gIoU"] == seg["gIoU"]


def test_ids_in_any_order_give_the_same_metrics(data, tmp_path):
    ordered = evaluate(write(tmp_path / "a.jsonl", swift_infer_style(data)), data, tmp_path / "a",
                       make_decoder("region"), n_first=0, n_worst=0, **QUIET)
    gts = read_ground_truth(data / "easyr1" / "val.jsonl")
    answers = [r["response"] for r in swift_infer_style(data)]
    rows = [{"id": g.key, "response": a} for g, a in zip(gts, answers)]
    random.Random(0).shuffle(rows)
    shuffled = evaluate(write(tmp_path / "b.jsonl", rows), data, tmp_path / "b", make_decoder("region"),
                        n_first=0, n_worst=0, **QUIET)
    for res in (ordered, shuffled):
        res.pop("_meta")
    assert ordered == shuffled


def test_missing_and_junk_predictions_count_as_empty(data, tmp_path):
    gts = read_ground_truth(data / "easyr1" / "val.jsonl")
    junk = ["", "<answer><box><grid1,1></box>", "\x00\xff<seg>", "<answer><none></answer>", "lorem ipsum"]
    rows = [{"id": g.key, "response": junk[k % len(junk)]} for k, g in enumerate(gts) if k % 3]
    res = evaluate(write(tmp_path / "j.jsonl", rows), data, tmp_path / "j", make_decoder("region"), **QUIET)
    assert res["_meta"]["missing_predictions"] == sum(1 for k in range(len(gts)) if k % 3 == 0)
    seg = res["seg"]["segmentation"]
    n_seg = res["seg"]["n"]
    # every prediction is empty: targets score 0, no-target expressions score 1
    assert seg["T_acc"] == 0.0 and seg["N_acc"] == 1.0
    assert seg["gIoU"] == pytest.approx(seg["n_no_target"] / n_seg)
    assert seg["n"] == n_seg  # nothing skipped


def test_mismatched_questions_are_refused(data, tmp_path):
    rows = swift_infer_style(data)
    rows[5]["messages"][0]["content"] = "<image>Please segment: something else."
    with pytest.raises(ValueError, match="row 5"):
        evaluate(write(tmp_path / "m.jsonl", rows), data, tmp_path / "m", make_decoder("region"), **QUIET)
    with pytest.raises(ValueError, match="rows without ids"):
        evaluate(write(tmp_path / "s.jsonl", rows[:10]), data, tmp_path / "s", make_decoder("region"), **QUIET)


def test_cli_eval_and_viz(data, tmp_path):
    exe = shutil.which("getok", path=str(Path(sys.executable).parent))
    pred = write(tmp_path / "pred.jsonl", swift_infer_style(data))
    out = subprocess.run([exe, "eval", "--pred", str(pred), "--data", str(data), "--out", str(tmp_path / "r"),
                          "--first", "2", "--worst", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "segmentation.gIoU=" in out.stdout and "index.html" in out.stdout
    row = json.loads((data / "easyr1" / "val.jsonl").read_text().splitlines()[0])
    gt = groundtruth.loads(row["answer"])
    answer = swift_infer_style(data)[0]["response"]
    png = tmp_path / "v.png"
    out = subprocess.run([exe, "viz", "--image", gt["image_path"], "--text", answer, "--gt", row["answer"],
                          "--out", str(png)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with Image.open(png) as im:
        w, h = gt["image_size"]
        assert im.size[0] / im.size[1] == pytest.approx(w / h, rel=0.02)
