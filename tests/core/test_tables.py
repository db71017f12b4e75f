"""The paper tables (getok_core.evaluation.tables): the published numbers as printed, the cells,
the differences and the layout, on metrics dicts written here."""

import json
import re
from pathlib import Path

import pytest

from getok_core.evaluation import tables
from getok_core.evaluation.metrics import MetricRules

PAPER_TEXT = Path("/work/shared/paper/getok-paper.txt")  # the plain-text paper, where this checkout has it


def _cells(text):
    return [c.strip() for c in text.strip().strip("|").split("|") if c.strip()]


def test_published_numbers_are_the_printed_rows():
    """Every stored number is the cell of its row's paper text (null for '-'), in column order;
    where the paper text is present, that row is its line ``line``."""
    paper = tables.load_paper()
    lines = PAPER_TEXT.read_text(encoding="utf-8").splitlines() if PAPER_TEXT.exists() else None
    n = 0
    for name, spec in paper["tables"].items():
        assert spec["paper_table"] in ("Table 1", "Table 4", "Table 7")
        for row in spec["rows"]:
            if row["paper_text"] is None:  # Table 7: not in the paper text
                assert all(v is None for v in row["values"].values()) and row["avg"] is None
                continue
            cells = _cells(row["paper_text"])
            assert cells[0] == row["method"]
            printed = cells[2:] if "flag" in row else cells[1:]
            assert len(printed) == len(spec["columns"]) + 1, row["method"]
            stored = [row["values"][c] for c in spec["columns"]] + [row["avg"]]
            assert stored == [None if c == "-" else float(c) for c in printed], row["method"]
            if lines is not None:
                assert lines[row["line"] - 1] == row["paper_text"]
            n += 1
    assert n == 31
    rec = {(r["method"], r["metric"]): r for r in paper["tables"]["rec"]["rows"]}
    assert rec[("GETok-SFT", "Acc@0.8")]["values"]["refcoco+/testA"] == 77.9
    assert rec[("GETok-R1", "Acc@0.5")]["values"]["refcoco/testB"] is None


def test_paper_averages_are_row_means_but_one():
    """Avg. is the mean of a row's reported cells (to the printed 0.1), except the one row the
    table's notes name."""
    off = []
    for name in ("res", "rec"):
        spec = tables.load_paper()["tables"][name]
        for r in spec["rows"]:
            vals = [v for v in r["values"].values() if v is not None]
            if r["avg"] is not None and abs(sum(vals) / len(vals) - r["avg"]) > 0.051:
                off.append((r["method"], r.get("metric")))
                assert any(r["method"] in note and str(r["avg"]) in note for note in spec["notes"])
    assert off == [("VisionReasoner† [37]", "Acc@0.8")]


def test_cell_keys():
    assert tables.cell_key("RefCOCO+", "testa") == "refcoco+/testA"
    assert tables.cell_key("refcocog", "TEST") == "refcocog/test"
    assert tables.cell_key("refcoco_plus", "val") == "refcoco+/val"
    with pytest.raises(ValueError, match=r"x.json: refcocog has no split 'testA'"):
        tables.cell_key("refcocog", "testA", "x.json: ")
    with pytest.raises(ValueError, match="benchmark 'coco' is not one of"):
        tables.cell_key("coco", "val")


def _metrics(ciou, giou, acc5, acc8, n_acc=None, t_acc=None, conv=None, bench=None, box_task=False):
    seg = {"segmentation": {"gIoU": giou, "cIoU": ciou, "N_acc": n_acc, "T_acc": t_acc}}
    box = {"box": {"Acc@0.5": acc5, "Acc@0.8": acc8, "N_acc": None}}
    m = {"seg": {**seg, **({} if box_task else box)}, "_meta": {"split": "val", "benchmark": bench,
                                                                 "conventions": conv}}
    if box_task:
        m["box"] = box
    return m


def test_build_tables_differences_and_averages():
    cells = {"refcoco/val": _metrics(0.80, 0.70, 0.95, 0.75), "reasonseg/val": _metrics(0.5, 0.60, None, None),
             "grefcoco/val": _metrics(0.6, 0.65, None, None, n_acc=0.5, t_acc=0.9)}
    t = tables.build_tables(cells, MetricRules().describe())
    res = t["tables"]["res"]["blocks"][0]
    assert res["measured"]["refcoco/val"] == pytest.approx(80.0)       # cIoU for RefCOCO
    assert res["measured"]["reasonseg/val"] == pytest.approx(60.0)     # gIoU for ReasonSeg
    assert res["measured"]["refcoco/testA"] is None
    sft = res["compare"]["GETok-SFT"]
    assert sft["delta"]["refcoco/val"] == pytest.approx(80.0 - 76.1) and sft["delta"]["reasonseg/val"] == pytest.approx(0.8)
    assert sft["measured_avg"] is None and sft["avg_delta"] is None    # 2 of its 10 cells: no Avg. to compare
    assert res["compare"]["GETok-R1"]["delta"]["refcoco/val"] is None  # the paper has no R1 refcoco/val
    rec = t["tables"]["rec"]["blocks"]
    assert [b["metric"] for b in rec] == ["Acc@0.5", "Acc@0.8"]
    assert rec[0]["measured"]["refcoco/val"] == pytest.approx(95.0) and rec[1]["measured"]["refcoco/val"] == pytest.approx(75.0)
    assert set(rec[1]["compare"]) == {"GETok-SFT"}                    # the R1 Acc@0.8 row is printed RefEdit-R1
    grc = t["tables"]["grefcoco"]["blocks"][0]
    assert grc["measured"]["grefcoco/val/N-acc"] == pytest.approx(50.0) and grc["measured_avg"] is None
    md = tables.render_markdown(t)
    assert "| **this run** | 60.0 | · | 80.0 | · |" in md
    assert f"| Δ vs GETok-SFT | +0.8 | · | {80.0 - 76.1:+.1f} | · |" in md
    assert "| refCOCO val | 80.0 | 76.1 | +3.9 | - | · |" in md


def test_avg_compared_only_on_the_rows_cells():
    """The Avg. difference needs this run to have exactly the cells the paper row reports."""
    r1_cells = ["reasonseg/val", "reasonseg/test", "refcoco/testA", "refcoco+/testA", "refcocog/test"]
    cells = {c: _metrics(0.7, 0.7, 0.9, 0.8) for c in r1_cells}
    block = tables.build_tables(cells)["tables"]["res"]["blocks"][0]
    r1 = block["compare"]["GETok-R1"]
    assert r1["measured_avg"] == pytest.approx(70.0) and r1["avg_delta"] == pytest.approx(70.0 - 72.7)
    assert block["compare"]["GETok-SFT"]["avg_delta"] is None


def test_rec_prefers_the_box_task():
    m = _metrics(0.8, 0.7, 0.5, 0.25, box_task=True)
    m["seg"]["box"] = {"Acc@0.5": 0.99, "Acc@0.8": 0.99}
    assert tables.measured(m)["Acc@0.5"] == 0.5


def test_read_reports_names_cells_and_refuses_mixed_conventions(tmp_path):
    lisa, segzero = MetricRules().describe(), MetricRules(giou_empty="zero").describe()
    for name, m in {"a": _metrics(0.8, 0.7, 0.9, 0.8, conv=lisa, bench="refcoco"),
                    "b": _metrics(0.5, 0.6, None, None, conv=lisa),
                    "c": _metrics(0.5, 0.6, None, None, conv=segzero, bench="reasonseg/test")}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    cells, sources, conv = tables.read_reports([str(tmp_path / "a"), f"reasonseg/val={tmp_path / 'b'}"])
    assert set(cells) == {"refcoco/val", "reasonseg/val"} and conv == lisa
    with pytest.raises(ValueError, match=r"b/metrics.json: no _meta.benchmark: name the cell as BENCHMARK/SPLIT="):
        tables.read_reports([str(tmp_path / "b")])
    with pytest.raises(ValueError, match="different metric conventions.*zero"):
        tables.read_reports([str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(ValueError, match="cell refcoco/val is given twice"):
        tables.read_reports([str(tmp_path / "a"), f"refcoco/val={tmp_path / 'b'}"])
    with pytest.raises(ValueError, match="no metrics.json there"):
        tables.read_reports([str(tmp_path / "nothing")])


def test_read_suite_errors_name_file_and_run(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"runs": [{"benchmark": "refcoco", "split": "testB", "pred": "p.jsonl", "data": "d"}]}))
    (run,) = tables.read_suite(f)
    assert run == {"cell": "refcoco/testB", "pred": str(tmp_path / "p.jsonl"), "data": str(tmp_path / "d"),
                   "data_split": "testB"}
    f.write_text(json.dumps([{"benchmark": "refcoco", "split": "val", "pred": "p"}]))
    with pytest.raises(ValueError, match=re.escape(f"{f}: runs[0]: field(s) data missing")):
        tables.read_suite(f)
    f.write_text(json.dumps({"runs": [{"benchmark": "refcoco", "split": "val", "pred": "p", "data": "d"}] * 2}))
    with pytest.raises(ValueError, match=r"runs\[1\]: cell refcoco/val again \(runs\[0\]\)"):
        tables.read_suite(f)
    f.write_text("{oops")
    with pytest.raises(ValueError, match="s.json"):
        tables.read_suite(f)
