"""``getok eval``: score model outputs against prepared ground truth, with pictures.

Predictions: ``swift infer`` result JSONL (``response`` + the ``messages`` it answered, in the
order of the evaluated file) or a plain JSONL of ``{"id": "SAMPLE_ID#EXPRESSION_INDEX",
"response": ...}`` (``groundtruth.expression_id``). Ground truth: ``DATA/easyr1/SPLIT.jsonl``
written by ``getok prepare`` (the same rows, in the same order, as ``DATA/swift/SPLIT.jsonl``).

Every expression is scored: a missing or unparsable answer counts as an empty prediction.
Outputs: ``metrics.json``, ``per_sample.jsonl``, overlays (``overlays/*.png``) of the first N and
the worst N expressions, and ``index.html`` showing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import groundtruth
from . import metrics
from ..codec.answer import parse_answer
from ..data.images import load_image
from ..decoders.base import MaskDecoder
from ..data.masks import decode_rle
from ..data.store import atomic_path
from .viz import render_overlay, write_report
from ..codec.vocab import GetokVocab


@dataclass
class GroundTruthRow:
    key: str          # expression_id
    question: str     # the user turn without <image>
    gt: dict


def read_ground_truth(path) -> list[GroundTruthRow]:
    """Rows of an EasyR1 file written by ``getok prepare`` (prompt, answer = ground-truth JSON)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                gt = groundtruth.loads(row["answer"], strict=True)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}: row {i}: field 'answer': {exc}") from exc
            rows.append(GroundTruthRow(groundtruth.expression_id(gt), _question(row.get("prompt", "")), gt))
    return rows


def _question(text) -> str:
    if isinstance(text, list):  # chat messages
        text = next((m.get("content", "") for m in text if m.get("role") == "user"), "")
    return str(text).replace("<image>", "").strip()


def read_predictions(path) -> list[dict]:
    """Prediction rows: {"response", optional "id", optional "question"}."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: row {i}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or "response" not in row:
                raise ValueError(f"{path}: row {i}: field 'response' missing")
            pred = {"response": row["response"] if isinstance(row["response"], str) else "", "row": i}
            if "id" in row:
                pred["id"] = str(row["id"])
            if isinstance(row.get("messages"), list):
                pred["question"] = _question(row["messages"])
            out.append(pred)
    return out


def match(preds: list[dict], gts: list[GroundTruthRow], pred_path="predictions") -> list[str | None]:
    """The response for each ground-truth row (None when missing). By ``id`` when every
    prediction has one, else by order (then the file must have one row per expression, and
    questions, when present, must agree)."""
    if preds and all("id" in p for p in preds):
        by_id = {}
        for p in preds:
            if p["id"] in by_id:
                raise ValueError(f"{pred_path}: row {p['row']}: duplicate id {p['id']!r}")
            by_id[p["id"]] = p["response"]
        unknown = set(by_id) - {g.key for g in gts}
        if unknown:
            raise ValueError(f"{pred_path}: {len(unknown)} id(s) not in the ground truth, e.g. {sorted(unknown)[:3]}")
        return [by_id.get(g.key) for g in gts]
    if len(preds) != len(gts):
        raise ValueError(f"{pred_path}: {len(preds)} rows without ids for {len(gts)} ground-truth rows: "
                         "give every row an 'id' (SAMPLE_ID#EXPRESSION_INDEX) or predict the whole file")
    for p, g in zip(preds, gts):
        if "question" in p and p["question"] != g.question:
            raise ValueError(f"{pred_path}: row {p['row']}: field 'messages': question {p['question'][:60]!r} "
                             f"differs from ground-truth row {g.key} ({g.question[:60]!r})")
    return [p["response"] for p in preds]


def evaluate(pred_path, data_dir, out_dir, decoder: MaskDecoder | None, split: str = "val",
             vocab: GetokVocab | None = None, n_first: int = 12, n_worst: int = 12, strict: bool = False,
             log=print) -> dict:
    """Score ``pred_path`` against ``data_dir/easyr1/split.jsonl``; write metrics, per-sample
    scores, overlays and an HTML page into ``out_dir``; return the metrics."""
    vocab = vocab or GetokVocab()
    gts = read_ground_truth(Path(data_dir) / "easyr1" / f"{split}.jsonl")
    responses = match(read_predictions(pred_path), gts, str(pred_path))
    parsed = [parse_answer(r or "", vocab) for r in responses]

    # one decode call for every seg instance: each image is encoded once
    requests, owners = [], []
    for k, (g, p) in enumerate(zip(gts, parsed)):
        if g.gt["task"] == "seg" and p.instances and (p.valid or not strict):
            for inst in p.instances:
                requests.append((g.gt["image_key"] or g.gt["image_path"], g.gt["image_path"], inst))
                owners.append(k)
    pred_masks: list[np.ndarray | None] = [None] * len(gts)
    if requests:
        if decoder is None:
            raise ValueError("seg predictions need a mask decoder (--decoder region|sam|sam2)")
        for k, m in zip(owners, decoder.decode(requests)):
            pred_masks[k] = m if pred_masks[k] is None else (pred_masks[k] | m)
    records = [{"task": g.gt["task"], "parsed": p, "pred_masks": m, "gt": g.gt}
               for g, p, m in zip(gts, parsed, pred_masks)]
    result = metrics.evaluate_predictions(records, strict=strict)
    scores = _per_sample(records)
    result["_meta"] = {"predictions": str(pred_path), "data": str(data_dir), "split": split,
                       "decoder": getattr(decoder, "name", None), "mode": getattr(decoder, "mode", None),
                       "missing_predictions": sum(r is None for r in responses)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1, default=float) + "\n")
    with atomic_path(out / "per_sample.jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for g, r, p, s in zip(gts, responses, parsed, scores):
                f.write(json.dumps({"id": g.key, "task": g.gt["task"], "score": s, "valid": p.valid,
                                    "errors": p.errors[:5], "response": r}) + "\n")
    _report(out, gts, responses, parsed, pred_masks, scores, result, vocab, n_first, n_worst)
    log(format_table(result))
    log(f"eval: wrote {out / 'metrics.json'} and {out / 'index.html'}")
    return result


def _per_sample(records) -> list[float]:
    """One score per expression for ranking overlays: mask IoU (seg), box IoU (box), point hit
    rate (point), vertex F1 (line)."""
    out = []
    for r in records:
        gt, p = r["gt"], r["parsed"]
        if r["task"] == "seg":
            gtm = [t["mask"] for t in gt["targets"]]
            g = metrics.union_masks(gtm)
            s = metrics.segmentation_scores([r["pred_masks"]], [g])["per_sample"][0]
        elif r["task"] == "box":
            box = next((i.box for i in p.instances if i.box is not None), None)
            s = metrics.box_accuracy([box], [[t["box"] for t in gt["targets"]]])["per_sample"][0]
        elif r["task"] == "point":
            pts = [i.point for i in p.instances if i.point is not None]
            gpts = [tuple(q) for t in gt["targets"] for q in t["points"]]
            s = metrics.point_accuracy([pts], [gpts], image_size=[tuple(gt["image_size"])])["per_sample"][0]
        else:
            lines = [i.polyline for i in p.instances if i.polyline]
            glines = [t["polyline"] for t in gt["targets"]]
            res = metrics.polyline_scores([lines], [glines], tuple(gt["image_size"]))
            s = res["F1"] if res["F1"] is not None else 1.0
        out.append(float(s))
    return out


def _report(out: Path, gts, responses, parsed, pred_masks, scores, result, vocab, n_first, n_worst):
    order = list(range(len(gts)))
    first = order[:n_first]
    worst = sorted(order, key=lambda k: (scores[k], k))[:n_worst]
    (out / "overlays").mkdir(exist_ok=True)
    sections, drawn = [], set()  # an expression in both lists is drawn once; earlier runs' files are redrawn
    for heading, idx in ((f"First {len(first)}", first), (f"Worst {len(worst)}", worst)):
        entries = []
        for k in idx:
            g = gts[k].gt
            name = f"overlays/{k:05d}.png"
            if k not in drawn:
                drawn.add(k)
                image = load_image(g["image_path"])
                gt_masks = [decode_rle(t["mask"]) for t in g["targets"] if t.get("mask")]
                img = render_overlay(image, vocab, parsed[k].instances,
                                     pred_masks=[pred_masks[k]] if pred_masks[k] is not None else [],
                                     gt_masks=gt_masks, gt_boxes=[t["box"] for t in g["targets"] if t.get("box")],
                                     caption=f"{g['expression']}  [{g['task']} {scores[k]:.2f}]")
                img.save(out / name)
            entries.append({"image": name, "caption": f"{gts[k].key}: {g['expression']} "
                                                      f"({g['task']}, score {scores[k]:.3f})",
                            "details": (responses[k] or "(no prediction)")[:600]
                            + ("" if parsed[k].valid else "\nerrors: " + "; ".join(parsed[k].errors[:3]))})
        sections.append((heading, entries))
    summary = "<pre>" + format_table(result).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
    write_report(out, sections, summary_html=summary)


def format_table(result: dict) -> str:
    """A plain-text table of the headline metrics per task."""
    lines = [f"{'task':<6} {'n':>5} {'valid':>6}  metrics"]
    for task, res in sorted((k, v) for k, v in result.items() if not k.startswith("_")):
        parts = []
        for fam, vals in res.items():
            if isinstance(vals, dict):
                for key, v in vals.items():
                    if isinstance(v, float) and key not in ("intersection", "union"):
                        parts.append(f"{fam}.{key}={v:.4f}")
        fv = res.get("format_validity")
        lines.append(f"{task:<6} {res.get('n', 0):>5} {'-' if fv is None else f'{fv:.3f}':>6}  " + " ".join(parts))
    return "\n".join(lines)


__all__ = ["evaluate", "read_ground_truth", "read_predictions", "match", "format_table", "GroundTruthRow"]
