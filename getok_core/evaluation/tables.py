"""The paper's tables from ``getok eval`` reports: measured numbers next to the published ones.

A **cell** is one benchmark split, ``BENCHMARK/SPLIT`` (``refcoco/val``, ``refcoco+/testA``,
``refcocog/test``, ``reasonseg/val``, ``grefcoco/testB``, ...): the names of the paper's columns.
Each cell is scored by one ``getok eval`` report (its ``metrics.json``); any prepared split can
stand for a cell (the bundled sample's ``val`` split can be named ``refcoco/val``: the layout is
then the paper's, the numbers the sample's).

Which number fills which column (docs/evaluation.md):

- ``res`` (paper Table 1): RefCOCO / + / g cells: ``seg.segmentation.cIoU``; ReasonSeg cells:
  ``seg.segmentation.gIoU``.
- ``rec`` (paper Table 4): ``box.box.Acc@0.5`` / ``Acc@0.8`` of the ``box`` task, else the box
  family of the ``seg`` task (its first instance's box).
- ``grefcoco`` (paper Table 7): ``seg.segmentation`` gIoU, cIoU, N_acc, T_acc.

The published numbers live in ``paper_results.json`` (each row with its paper table, its line of
the paper text, null where the paper has none). Values are percentages (measured fractions x 100);
Delta = measured - published, in points. Outputs: ``tables.md`` (Markdown) and ``tables.json``.

Suite file (JSON; ``getok eval --suite FILE``): ``{"runs": [{"benchmark": "refcoco", "split":
"val", "pred": "refcoco_val.jsonl", "data": "data/refcoco", "data_split": "val"}, ...]}``
(``data_split`` defaults to ``split``; relative paths are relative to the suite file's folder).
Each run is scored into ``OUT/BENCHMARK-SPLIT/``, then the tables are written into ``OUT``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..data.store import atomic_path
from .metrics import COUNTING, GIOU_EMPTY, MetricRules

#: Benchmarks and their splits, as the paper names them.
BENCHMARKS = {"refcoco": ("val", "testA", "testB"), "refcoco+": ("val", "testA", "testB"),
              "refcocog": ("val", "test"), "reasonseg": ("val", "test"), "grefcoco": ("val", "testA", "testB")}
_ALIASES = {"refcocoplus": "refcoco+", "refcoco_plus": "refcoco+", "refcocop": "refcoco+", "grefcocog": "grefcoco",
            "grefcoco+": "grefcoco"}
#: Methods whose published numbers get a Delta column.
COMPARE = ("GETok-SFT", "GETok-R1")
GRC_METRICS = {"gIoU": "gIoU", "cIoU": "cIoU", "N-acc": "N_acc", "T-acc": "T_acc"}
_LABEL = {"reasonseg": "ReasonSeg", "refcoco": "refCOCO", "refcoco+": "refCOCO+", "refcocog": "refCOCOg",
          "grefcoco": "gRefCOCO"}


def load_paper() -> dict:
    """The published numbers (``paper_results.json``)."""
    return json.loads(resources.files("getok_core.evaluation").joinpath("paper_results.json").read_text("utf-8"))


def cell_key(benchmark: str, split: str, where: str = "") -> str:
    """``BENCHMARK/SPLIT`` in the paper's spelling (case and "testa" forgiven); ValueError naming
    ``where`` for a benchmark or split the paper does not have."""
    b = str(benchmark).strip().lower().replace(" ", "")
    b = _ALIASES.get(b, b)
    if b not in BENCHMARKS:
        raise ValueError(f"{where}benchmark {benchmark!r} is not one of {list(BENCHMARKS)}")
    s = {x.lower(): x for x in BENCHMARKS[b]}.get(str(split).strip().lower())
    if s is None:
        raise ValueError(f"{where}{b} has no split {split!r} in the paper (splits: {list(BENCHMARKS[b])})")
    return f"{b}/{s}"


def measured(metrics: dict) -> dict:
    """The table quantities (fractions) a ``getok eval`` metrics dict holds: cIoU, gIoU, N-acc,
    T-acc of the seg task; Acc@0.5, Acc@0.8, box N-acc of the box task (else the seg task's boxes)."""
    out = {}
    seg = metrics.get("seg", {}).get("segmentation")
    if seg:
        out.update({k: seg.get(v) for k, v in GRC_METRICS.items()})
    box = metrics.get("box", {}).get("box") or metrics.get("seg", {}).get("box")
    if box:
        out.update({"Acc@0.5": box.get("Acc@0.5"), "Acc@0.8": box.get("Acc@0.8"), "box N-acc": box.get("N_acc")})
    return out


def _pct(v):
    return None if v is None else 100.0 * v


def _column_value(table: str, column: str, cell_values: dict, metric: str | None):
    """The measured percentage for one paper column (None when the cell was not run or lacks it)."""
    if table == "grefcoco":
        bench, split, metric = column.split("/")
        return _pct(cell_values.get(f"{bench}/{split}", {}).get(metric))
    vals = cell_values.get(column)
    if vals is None:
        return None
    if table == "res":
        return _pct(vals.get("gIoU" if column.startswith("reasonseg/") else "cIoU"))
    return _pct(vals.get(metric))


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _block(table: str, spec: dict, cell_values: dict, metric: str | None) -> dict:
    """One block of a table (a metric of Table 4, or the whole of Tables 1 / 7): the paper's rows,
    this run's row and the comparison with ``COMPARE``."""
    cols = spec["columns"]
    rows = [r for r in spec["rows"] if metric is None or r.get("metric") == metric]
    ours = {c: _column_value(table, c, cell_values, metric) for c in cols}
    done = [c for c in cols if ours[c] is not None]
    compare = {}
    for r in rows:
        if r["method"] not in COMPARE:
            continue
        delta = {c: (None if ours[c] is None or r["values"][c] is None else ours[c] - r["values"][c]) for c in cols}
        reported = [c for c in cols if r["values"][c] is not None]
        same = bool(reported) and set(reported) == set(done)
        avg = _mean(ours[c] for c in reported) if same else None
        compare[r["method"]] = {"values": r["values"], "delta": delta, "avg": r["avg"], "measured_avg": avg,
                                "avg_delta": None if avg is None or r["avg"] is None else avg - r["avg"]}
    return {"metric": metric, "columns": cols, "measured": ours,
            "measured_avg": None if table == "grefcoco" else _mean(ours.values()),
            "measured_cells": len(done), "paper_rows": rows, "compare": compare}


def build_tables(cells: dict, conventions: dict | None = None, sources: dict | None = None) -> dict:
    """The tables (JSON-ready) from ``cells``: ``{"BENCHMARK/SPLIT": metrics dict of getok eval}``.
    ``conventions``: the metrics' ``_meta.conventions``; ``sources``: cell -> where it came from."""
    paper = load_paper()
    cell_values = {c: measured(m) for c, m in cells.items()}
    tables = {}
    for name, spec in paper["tables"].items():
        metrics = ["Acc@0.5", "Acc@0.8"] if name == "rec" else [None]
        head = {k: spec[k] for k in ("paper_table", "title") if k in spec}
        head["notes"] = [n for n in [spec.get("metric_source"), spec.get("avg"), spec.get("flag_column")] if n] \
            + list(spec.get("notes", []))
        head["blocks"] = [_block(name, spec, cell_values, m) for m in metrics]
        tables[name] = head
    used = {c.rsplit("/", 1)[0] if c.count("/") == 2 else c
            for spec in paper["tables"].values() for c in spec["columns"]}
    return {"conventions": conventions, "cells": {c: {"source": (sources or {}).get(c), "values": v}
                                                  for c, v in sorted(cell_values.items())},
            "unused_cells": sorted(set(cells) - used), "tables": tables,
            "legend": {"-": "not reported in the paper", "·": "not evaluated in this run"},
            "scale": "percent; Delta = this run - paper, in points"}


# ---------------------------------------------------------------------- Markdown
def _fmt(v, signed=False) -> str:
    return "·" if v is None else (f"{v:+.1f}" if signed else f"{v:.1f}")


def _paper(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _col_label(c: str) -> str:
    parts = c.split("/")
    return " ".join([_LABEL.get(parts[0], parts[0])] + parts[1:])


def _block_md(block: dict) -> list[str]:
    cols = block["columns"]
    lines = ["| Methods | " + " | ".join(_col_label(c) for c in cols) + " | Avg. |",
             "|---|" + "---:|" * (len(cols) + 1)]
    group = None
    for r in block["paper_rows"]:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"| *{group}* |" + " |" * (len(cols) + 1))
        lines.append(f"| {r['method']} | " + " | ".join(_paper(r["values"][c]) for c in cols)
                     + f" | {_paper(r['avg'])} |")
    n = block["measured_cells"]
    lines.append("| **this run** | " + " | ".join(_fmt(block["measured"][c]) for c in cols)
                 + f" | {_fmt(block['measured_avg'])}{f' ({n} of {len(cols)})' if n else ''} |")
    for method, cmp in block["compare"].items():
        lines.append(f"| Δ vs {method} | " + " | ".join(_fmt(cmp["delta"][c], True) for c in cols)
                     + f" | {_fmt(cmp['avg_delta'], True)} |")
    comp = [(c, block["measured"][c]) for c in cols if block["measured"][c] is not None]
    if comp and block["compare"]:
        names = list(block["compare"])
        lines += ["", "| cell | this run | " + " | ".join(f"{m} | Δ" for m in names) + " |",
                  "|---|---:|" + "---:|---:|" * len(names)]
        for c, v in comp:
            lines.append(f"| {_col_label(c)} | {v:.1f} | " + " | ".join(
                f"{_paper(block['compare'][m]['values'][c])} | {_fmt(block['compare'][m]['delta'][c], True)}"
                for m in names) + " |")
    return lines


def render_markdown(result: dict) -> str:
    """``tables.md``: the conventions, the cells' sources, then each table in the paper's layout
    with this run's row, Delta rows and a this run / paper / Delta comparison."""
    conv = result.get("conventions") or {}
    out = ["# GETok: this run in the layout of the paper's tables", ""]
    if conv:
        out.append(f"Conventions: gIoU of an empty prediction on an empty ground truth = "
                   f"{1 if conv.get('giou_empty') == 'one' else 0} ({conv.get('giou_empty_rule')}); counting "
                   f"{conv.get('counting')} ({conv.get('counting_rule')}); REC: {conv.get('rec')}.")
    out += ["Percent; Δ = this run − paper, in points. `-`: not reported in the paper; `·`: not evaluated "
            "in this run.", "", "Cells of this run:", ""]
    for c, info in result["cells"].items():
        vals = ", ".join(f"{k} {_fmt(_pct(v))}" for k, v in info["values"].items() if v is not None)
        out.append(f"- `{c}`: {vals or 'no table quantity'} ({info['source'] or 'source not recorded'})")
    if result["unused_cells"]:
        out.append(f"- not in any table: {', '.join(result['unused_cells'])}")
    for name, t in result["tables"].items():
        out += ["", f"## {t['paper_table']}: {t['title']}", ""]
        out += [f"> {n}" for n in t["notes"]]
        for block in t["blocks"]:
            if block["metric"]:
                out += ["", f"### {block['metric']}"]
            out += [""] + _block_md(block)
    return "\n".join(out) + "\n"


def write_tables(result: dict, out_dir, log=print) -> None:
    """``tables.json`` and ``tables.md`` into ``out_dir``; prints the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = render_markdown(result)
    with atomic_path(out / "tables.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    with atomic_path(out / "tables.md") as tmp:
        Path(tmp).write_text(md, encoding="utf-8")
    log(md)
    log(f"eval: wrote {out / 'tables.md'} and {out / 'tables.json'}")


# ---------------------------------------------------------------------- inputs
def _one_conventions(items) -> dict | None:
    """The shared ``_meta.conventions`` of several reports; ValueError when they differ."""
    seen = {json.dumps(c, sort_keys=True): (c, where) for where, c in items if c is not None}
    if len(seen) > 1:
        listed = "; ".join(f"{w}: {c.get('giou_empty')}, {c.get('counting')}" for c, w in seen.values())
        raise ValueError(f"the reports use different metric conventions ({listed}): rerun them with the same "
                         "--giou-empty / --counting")
    return next(iter(seen.values()))[0] if seen else None


def read_reports(specs) -> tuple[dict, dict, dict | None]:
    """Cells from report folders (or metrics.json files), each ``PATH`` (the cell is the report's
    ``_meta.benchmark`` / ``_meta.split``) or ``BENCHMARK/SPLIT=PATH``. Returns (cells, sources,
    conventions)."""
    cells, sources, convs = {}, {}, []
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        p = Path(path)
        f = p / "metrics.json" if p.is_dir() else p
        if not f.is_file():
            raise ValueError(f"{spec}: no metrics.json there (a getok eval --out folder is needed)")
        m = json.loads(f.read_text(encoding="utf-8"))
        meta = m.get("_meta", {})
        if name:
            bench, _, split = name.partition("/")
        elif meta.get("benchmark"):
            bench, _, split = str(meta["benchmark"]).partition("/")
            split = split or meta.get("split", "")
        else:
            raise ValueError(f"{f}: no _meta.benchmark: name the cell as BENCHMARK/SPLIT={path} (or rerun getok "
                             "eval with --benchmark)")
        key = cell_key(bench, split, f"{f}: ")
        if key in cells:
            raise ValueError(f"{f}: cell {key} is given twice (also by {sources[key]})")
        cells[key], sources[key] = m, str(f)
        convs.append((str(f), meta.get("conventions")))
    return cells, sources, _one_conventions(convs)


def read_suite(path) -> list[dict]:
    """The runs of a suite file (module docstring), paths resolved; errors name the file and run."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    runs = doc.get("runs") if isinstance(doc, dict) else doc
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{path}: expected {{\"runs\": [{{benchmark, split, pred, data}}, ...]}}")
    out, seen = [], {}
    for k, r in enumerate(runs):
        where = f"{path}: runs[{k}]: "
        if not isinstance(r, dict):
            raise ValueError(f"{where}must be an object")
        missing = [f for f in ("benchmark", "split", "pred", "data") if f not in r]
        if missing:
            raise ValueError(f"{where}field(s) {', '.join(missing)} missing")
        key = cell_key(r["benchmark"], r["split"], where)
        if key in seen:
            raise ValueError(f"{where}cell {key} again (runs[{seen[key]}])")
        seen[key] = k
        out.append({"cell": key, "pred": str(path.parent / r["pred"]), "data": str(path.parent / r["data"]),
                    "data_split": str(r.get("data_split", r["split"]))})
    return out


# ---------------------------------------------------------------------- command line
def add_arguments(sp) -> None:
    """The ``getok eval`` options for the conventions and the paper tables."""
    sp.add_argument("--giou-empty", default="one", choices=list(GIOU_EMPTY),
                    help="gIoU of an empty prediction on an empty ground truth: one (LISA / ReLA, default) "
                         "or zero (Seg-Zero)")
    sp.add_argument("--counting", default="per-expression", choices=list(COUNTING),
                    help="per-expression (default: every expression weighs 1) or per-instance (every annotated "
                         "object weighs 1)")
    sp.add_argument("--benchmark", help="the paper cell this split stands for: BENCHMARK (refcoco, refcoco+, refcocog, "
                                        "reasonseg, grefcoco; the split is --split) or BENCHMARK/SPLIT; recorded "
                                        "in metrics.json for --tables")
    sp.add_argument("--suite", help="JSON file of runs {benchmark, split, pred, data[, data_split]}: score each into "
                                    "OUT/BENCHMARK-SPLIT and write the paper tables (tables.md, tables.json) into OUT")
    sp.add_argument("--tables", nargs="+", metavar="REPORT",
                    help="only build the paper tables into OUT from getok eval report folders "
                         "(REPORT, or BENCHMARK/SPLIT=REPORT)")


def rules_of(args) -> MetricRules:
    return MetricRules(giou_empty=args.giou_empty, counting=args.counting)


def run_tables(args, log=print) -> int:
    cells, sources, conv = read_reports(args.tables)
    write_tables(build_tables(cells, conv, sources), args.out, log=log)
    return 0


def run_suite(args, decoder, vocab, log=print) -> int:
    from .evaluate import evaluate

    rules = rules_of(args)
    cells, sources = {}, {}
    for run in read_suite(args.suite):
        bench, split = run["cell"].split("/")
        out = Path(args.out) / f"{bench}-{split}"
        log(f"eval: {run['cell']} <- {run['pred']} on {run['data']} ({run['data_split']})")
        cells[run["cell"]] = evaluate(run["pred"], run["data"], out, decoder, split=run["data_split"], vocab=vocab,
                                      n_first=args.first, n_worst=args.worst, strict=args.strict, log=log,
                                      rules=rules, benchmark=run["cell"])
        sources[run["cell"]] = str(out / "metrics.json")
    write_tables(build_tables(cells, rules.describe(), sources), args.out, log=log)
    return 0


__all__ = ["BENCHMARKS", "COMPARE", "load_paper", "cell_key", "measured", "build_tables", "render_markdown",
           "write_tables", "read_reports", "read_suite", "add_arguments", "rules_of", "run_tables", "run_suite"]
