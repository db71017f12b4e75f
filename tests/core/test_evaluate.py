"""``getok eval`` / ``getok viz`` on prepared sample data with oracle, shuffled and junk predictions."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import ground_truth, target

from getok_core import Instance
from getok_core.codec.coords import box_pixel_mask
from getok_core.data import groundtruth
from getok_core.data.masks import decode_rle
from getok_core.decoders import MaskDecoder, make_decoder
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
    with pytest.raises(ValueError, match=r"m.jsonl:6: field .messages."):
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


# ---------------------------------------------------------------------- hostile input (issue 18)
class FillDecoder(MaskDecoder):
    """Every instance decodes to the full (H, W) mask of its box (or of the whole image): what a
    real decoder returns, without its cost. Records the number of requests of each call."""

    name = "fill"

    def __init__(self):
        super().__init__()
        self.calls = []

    def decode(self, requests):
        self.calls.append(len(requests))
        out = []
        for key, src, inst in requests:
            h, w = self.sizes[key]
            out.append(box_pixel_mask(inst.box, (w, h)) if inst.box else np.ones((h, w), bool))
        return out


def tiny_split(tmp_path, n=4, size=(64, 48), task="seg", lines=None):
    """DATA/easyr1/val.jsonl of ``n`` expressions (one image each, one square target), written
    directly (no ``getok prepare``); returns (data folder, expression ids)."""
    w, h = size
    rows, keys = [], []
    for k in range(n):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
        m = np.zeros((h, w), bool)
        m[h // 4:3 * h // 4, w // 4:3 * w // 4] = True
        g = ground_truth([target(m, (0.25, 0.25, 0.75, 0.75), points=[(0.5, 0.5)])], size=size, task=task,
                         image_path=str(path), image_key=f"img{k}", sample_id=f"s{k}", expression=f"thing {k}")
        rows.append(json.dumps({"prompt": f"<image>Find thing {k}.", "answer": g}))
        keys.append(f"s{k}#0")
    (tmp_path / "data" / "easyr1").mkdir(parents=True)
    (tmp_path / "data" / "easyr1" / "val.jsonl").write_text("\n".join(lines or rows) + "\n")
    return tmp_path / "data", keys, rows


GOOD = "<answer><box><grid8,8><grid23,23></box><seg><grid15,15></seg></answer>"


def test_predicted_masks_are_unions_decoded_in_bounded_calls():
    """``predicted_masks`` ORs each expression's instance masks in calls of at most
    ``budget`` pixels: the same masks as one call for everything, far less alive at once."""
    from getok_core.evaluation.evaluate import predicted_masks

    dec = FillDecoder()
    dec.sizes = {"a": (48, 64), "b": (48, 64)}
    boxes = [(0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 1.0, 1.0), (0.1, 0.6, 0.3, 0.9)]
    reqs = [(k, "a" if k < 3 else "b", None, (48, 64), Instance(box=boxes[(k + j) % 3]))
            for k in range(5) for j in range(k + 1)]
    got = predicted_masks(dec, reqs, 6, budget=3 * 64 * 48)
    assert max(dec.calls) == 3 and sum(dec.calls) == len(reqs)
    for k in range(5):
        want = np.zeros((48, 64), bool)
        for j in range(k + 1):
            want |= box_pixel_mask(boxes[(k + j) % 3], (64, 48))
        assert np.array_equal(decode_rle(got[k]), want)
    assert got[5] is None


def test_huge_answers_keep_eval_memory_bounded(tmp_path):
    """The issue's reproduction: 8000 <point>s per answer on 640 x 480 images (2.5 GB before).
    The parser keeps the first MAX_INSTANCES, masks are OR-ed as they are decoded: the peak of
    traced memory stays far below even one expression's 8000 masks."""
    import tracemalloc

    from getok_core.codec.answer import MAX_INSTANCES

    data, keys, _ = tiny_split(tmp_path, n=3, size=(640, 480))
    huge = "<answer>" + "\n".join(f"<point><grid{i % 32},{i // 32 % 32}></point>" for i in range(8000)) + "</answer>"
    pred = write(tmp_path / "p.jsonl", [{"id": key, "response": huge} for key in keys])
    dec = FillDecoder()
    dec.sizes = {f"img{k}": (480, 640) for k in range(3)}
    tracemalloc.start()
    try:
        res = evaluate(pred, data, tmp_path / "r", dec, n_first=1, n_worst=0, **QUIET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(dec.calls) == 3 * MAX_INSTANCES  # 300 masks of 300 KB were decoded, not 24,000
    assert peak < 90 * 2**20, peak              # 3 x 100 masks held at once would be 92 MB
    assert res["seg"]["format_validity"] == 0.0
    per = [json.loads(line) for line in (tmp_path / "r" / "per_sample.jsonl").read_text().splitlines()]
    assert all(p["errors"][0].startswith(f"more than {MAX_INSTANCES} instances") for p in per)


def test_one_row_without_id_is_an_error_listing_it(tmp_path):
    data, keys, _ = tiny_split(tmp_path)
    rows = [{"id": key, "response": GOOD} for key in keys]
    del rows[2]["id"]
    with pytest.raises(ValueError, match=r"p.jsonl: 1 of 4 rows have no 'id' while others do .*line\(s\) 3$"):
        evaluate(write(tmp_path / "p.jsonl", rows), data, tmp_path / "r", FillDecoder(), **QUIET)


def test_order_matching_only_without_ids_and_said_on_the_console(tmp_path):
    data, keys, _ = tiny_split(tmp_path)
    dec = FillDecoder()
    dec.sizes = {f"img{k}": (48, 64) for k in range(4)}
    said = []
    res = evaluate(write(tmp_path / "p.jsonl", [{"response": GOOD}] * 4), data, tmp_path / "r", dec,
                   n_first=0, n_worst=0, log=said.append)
    assert res["seg"]["segmentation"]["gIoU"] > 0.8  # the decoded box: cell centres
    assert any("has an 'id'" in s and "by file order" in s and "4 rows" in s for s in said)
    with pytest.raises(ValueError, match=r"3 rows without ids for 4 ground-truth rows"):
        evaluate(write(tmp_path / "q.jsonl", [{"response": GOOD}] * 3), data, tmp_path / "r", dec, **QUIET)
    said.clear()
    by_id = evaluate(write(tmp_path / "i.jsonl", [{"id": key, "response": GOOD} for key in keys]), data,
                     tmp_path / "r", dec, n_first=0, n_worst=0, log=said.append)
    assert not any("file order" in s for s in said)
    assert by_id["seg"]["segmentation"] == res["seg"]["segmentation"]


def test_id_errors_name_file_and_line(tmp_path):
    data, keys, _ = tiny_split(tmp_path)
    rows = [{"id": key, "response": GOOD} for key in keys] + [{"id": keys[1], "response": ""}]
    with pytest.raises(ValueError, match=r"p.jsonl:5: duplicate id 's1#0' \(first on line 2\)"):
        evaluate(write(tmp_path / "p.jsonl", rows), data, tmp_path / "r", FillDecoder(), **QUIET)
    rows[-1]["id"] = "nope#0"
    with pytest.raises(ValueError, match=r"p.jsonl: 1 id\(s\) not in .*val.jsonl: line 5 'nope#0'"):
        evaluate(write(tmp_path / "p.jsonl", rows), data, tmp_path / "r", FillDecoder(), **QUIET)


def test_unreadable_lines_name_file_and_line(tmp_path):
    data, keys, gt_rows = tiny_split(tmp_path)
    good = "".join(json.dumps({"id": key, "response": GOOD}) + "\n" for key in keys[:2])
    (tmp_path / "u.jsonl").write_bytes(good.encode() + b'{"id": "s2#0", "response": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"u.jsonl:3: not UTF-8 text \(byte 0xff at column 29\)"):
        evaluate(tmp_path / "u.jsonl", data, tmp_path / "r", FillDecoder(), **QUIET)
    (tmp_path / "j.jsonl").write_text(good + "\n{oops\n")
    with pytest.raises(ValueError, match=r"j.jsonl:4: not JSON"):
        evaluate(tmp_path / "j.jsonl", data, tmp_path / "r", FillDecoder(), **QUIET)
    (tmp_path / "n.jsonl").write_text(good + '{"id": "s2#0"}\n')
    with pytest.raises(ValueError, match=r"n.jsonl:3: field 'response' missing"):
        evaluate(tmp_path / "n.jsonl", data, tmp_path / "r", FillDecoder(), **QUIET)
    gt_file = data / "easyr1" / "val.jsonl"
    gt_file.write_bytes(gt_file.read_bytes() + b"\xc3\n")
    with pytest.raises(ValueError, match=r"val.jsonl:5: not UTF-8"):
        read_ground_truth(gt_file)
    bad_gt = json.loads(gt_rows[1])
    bad_gt["answer"] = bad_gt["answer"].replace('"image_size":[64,48]', '"image_size":[70000,70000]')
    gt_file.write_text("\n".join([gt_rows[0], json.dumps(bad_gt)]) + "\n")
    with pytest.raises(ValueError, match=r"val.jsonl:2: field 'answer': .*image_size: size 70000x70000 .*MAX_PIXELS"):
        read_ground_truth(gt_file)


def test_missing_predictions_are_printed(tmp_path):
    data, keys, _ = tiny_split(tmp_path, n=8)
    dec = FillDecoder()
    dec.sizes = {f"img{k}": (48, 64) for k in range(8)}
    said = []
    res = evaluate(write(tmp_path / "p.jsonl", [{"id": keys[0], "response": GOOD}]), data, tmp_path / "r", dec,
                   n_first=0, n_worst=0, log=said.append)
    assert res["_meta"]["missing_predictions"] == 7 and res["_meta"]["missing_ids"] == keys[1:]
    line = next(s for s in said if "no prediction" in s)
    assert line.startswith("eval: 7 of 8 expressions have no prediction in") and "s1#0, s2#0" in line
    assert line.endswith(", ...") and "s7#0" not in line


def test_cli_eval_errors_name_file_and_line(tmp_path, capsys):
    from getok_core.cli import main

    data, keys, _ = tiny_split(tmp_path)
    pred = write(tmp_path / "p.jsonl", [{"id": keys[0], "response": GOOD}, {"response": GOOD}])
    assert main(["eval", "--pred", str(pred), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "getok eval: error:" in err and "p.jsonl: 1 of 2 rows have no 'id'" in err and "line(s) 2" in err


# ---------------------------------------------------------------------- metric rules, paper tables (issue 16)
def test_rec_rule_held_out_case_through_getok_eval(tmp_path):
    """One no-target expression answered <none>, one miss, one hit, scored by the real command:
    Acc@0.5 = 0.5 over the two expressions with a target; the rejection is box N_acc; the
    conventions are named in metrics.json and on the console."""
    from getok_core.cli import main

    size = (64, 48)
    rows = []
    for k, targets in enumerate([[], [target(box=(0.25, 0.25, 0.75, 0.75))], [target(box=(0.25, 0.25, 0.75, 0.75))]]):
        g = ground_truth(targets, size=size, task="box", image_path=str(tmp_path / "img.png"), image_key="img",
                         sample_id=f"s{k}", expression=f"thing {k}")
        rows.append(json.dumps({"prompt": f"<image>Find thing {k}.", "answer": g}))
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "data" / "easyr1").mkdir(parents=True)
    (tmp_path / "data" / "easyr1" / "val.jsonl").write_text("\n".join(rows) + "\n")
    answers = ["<answer><none></answer>",
               "<answer><box><grid0,0><grid3,3></box></answer>",     # far from the target: a miss
               "<answer><box><grid8,8><grid23,23></box></answer>"]   # the target's cells: a hit
    pred = write(tmp_path / "p.jsonl", [{"id": f"s{k}#0", "response": a} for k, a in enumerate(answers)])
    assert main(["eval", "--pred", str(pred), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"),
                 "--decoder", "none", "--first", "0", "--worst", "0"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    box = m["box"]["box"]
    assert box["Acc@0.5"] == 0.5 and box["N_acc"] == 1.0 and (box["n_target"], box["n_no_target"]) == (2, 1)
    conv = m["_meta"]["conventions"]
    assert conv["giou_empty"] == "one" and conv["counting"] == "per-expression" and "with a target" in conv["rec"]


def test_suite_on_the_sample_writes_the_paper_tables(data, tmp_path):
    """``getok eval --suite`` on the prepared sample, its val split standing for three paper
    cells: tables.md / tables.json in the layout of Tables 1, 4 and 7 with the published
    numbers, this run's row and the differences; ``--tables`` rebuilds them from the reports."""
    exe = shutil.which("getok", path=str(Path(sys.executable).parent))
    pred = write(tmp_path / "oracle.jsonl", swift_infer_style(data))
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"runs": [
        {"benchmark": "refcoco", "split": "val", "pred": "oracle.jsonl", "data": str(data)},
        {"benchmark": "ReasonSeg", "split": "test", "pred": "oracle.jsonl", "data": str(data), "data_split": "val"},
        {"benchmark": "grefcoco", "split": "val", "pred": "oracle.jsonl", "data": str(data)}]}))
    out = subprocess.run([exe, "eval", "--suite", str(suite), "--out", str(tmp_path / "t"), "--first", "0",
                          "--worst", "0"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "t" / "tables.md").read_text()
    assert "## Table 1:" in md and "## Table 4:" in md and "## Table 7:" in md and "### Acc@0.8" in md
    assert "| GETok-R1 | 65.9 | 64.2 | - | 80.8 |" in md and "Δ vs GETok-SFT" in md
    assert "Conventions: gIoU of an empty prediction on an empty ground truth = 1" in md and "Conventions" in out.stdout
    tab = json.loads((tmp_path / "t" / "tables.json").read_text())
    seg = json.loads((tmp_path / "t" / "refcoco-val" / "metrics.json").read_text())["seg"]
    res = tab["tables"]["res"]["blocks"][0]
    assert res["measured"]["refcoco/val"] == pytest.approx(100 * seg["segmentation"]["cIoU"])
    assert res["measured"]["reasonseg/test"] == pytest.approx(100 * seg["segmentation"]["gIoU"])
    assert res["compare"]["GETok-SFT"]["delta"]["refcoco/val"] == pytest.approx(100 * seg["segmentation"]["cIoU"] - 76.1)
    rec = tab["tables"]["rec"]["blocks"]
    assert rec[0]["measured"]["refcoco/val"] == pytest.approx(100 * seg["box"]["Acc@0.5"])
    assert rec[1]["compare"]["GETok-SFT"]["values"]["refcoco/val"] == 74.9
    grc = tab["tables"]["grefcoco"]["blocks"][0]["measured"]
    assert grc["grefcoco/val/N-acc"] == 100.0 and grc["grefcoco/testA/gIoU"] is None
    again = subprocess.run([exe, "eval", "--tables", str(tmp_path / "t" / "refcoco-val"),
                            f"reasonseg/test={tmp_path / 't' / 'reasonseg-test'}", "--out", str(tmp_path / "u")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    rebuilt = json.loads((tmp_path / "u" / "tables.json").read_text())
    assert rebuilt["tables"]["res"]["blocks"][0]["measured"] == {
        k: (v if k in ("refcoco/val", "reasonseg/test") else None) for k, v in res["measured"].items()}
