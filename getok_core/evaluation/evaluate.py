"""``getok eval``: score model outputs against prepared ground truth, with pictures.

Predictions: ``swift infer`` result JSONL (``response`` + the ``messages`` it answered, in the
order of the evaluated file) or a plain JSONL of ``{"id": "SAMPLE_ID#EXPRESSION_INDEX",
"response": ...}`` (``groundtruth.expression_id``). Ground truth: ``DATA/easyr1/SPLIT.jsonl``
written by ``getok prepare`` (the same rows, in the same order, as ``DATA/swift/SPLIT.jsonl``).

Matching: by ``id`` when any prediction row has one (then every row needs one); by file order only
when no row has one and the counts agree (the console says so). Every message names the file and
its 1-based line.

Every expression is scored: a missing or unparsable answer counts as an empty prediction (the
console gives their count and first ids). Predicted masks are decoded in calls of at most
``DECODE_PIXELS`` pixels and OR-ed into each expression's mask as they come, which is then kept as
an RLE: memory does not grow with the number of instances (answers are capped by
``codec.answer.MAX_INSTANCES`` / ``MAX_POINTS``). Outputs: ``metrics.json``,
``per_sample.jsonl``, overlays (``overlays/*.png``) of the first N and the worst N expressions,
and ``index.html`` showing them. The metric conventions (``metrics.MetricRules``: gIoU of empty on
empty, counting; the REC rule) are named in ``metrics.json`` (``_meta.conventions``) and above the
printed table; ``evaluation.tables`` lays several reports out as the paper's tables.
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
from ..data.masks import decode_rle, encode_rle
from ..data.store import atomic_path
from .viz import render_overlay, write_report
from ..codec.vocab import GetokVocab

#: Most mask pixels one decode call returns (a bool mask holds one byte per pixel: 32 MiB): each
#: image's instances are decoded in calls of at most max(1, DECODE_PIXELS // (H W)) instances.
DECODE_PIXELS = 2**25
#: Ids (or lines) listed in a console message before "...".
SHOW = 5


@dataclass
class GroundTruthRow:
    key: str          # expression_id
    question: str     # the user turn without <image>
    gt: dict
    line: int = 0     # 1-based line in the ground-truth file


def _json_lines(path):
    """(1-based line number, parsed JSON value) of every non-blank line of a JSONL file; a
    ValueError naming ``path:line`` for a line that is not UTF-8 or not JSON."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}"[:300]) from None


def read_ground_truth(path) -> list[GroundTruthRow]:
    """Rows of an EasyR1 file written by ``getok prepare`` (prompt, answer = ground-truth JSON)."""
    rows = []
    for n, row in _json_lines(path):
        if not isinstance(row, dict) or "answer" not in row:
            raise ValueError(f"{path}:{n}: field 'answer' missing (not a getok prepare EasyR1 row)")
        try:
            gt = groundtruth.loads(row["answer"], strict=True)
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: field 'answer': {exc}") from exc
        rows.append(GroundTruthRow(groundtruth.expression_id(gt), _question(row.get("prompt", "")), gt, n))
    return rows


def _question(text) -> str:
    if isinstance(text, list):  # chat messages
        text = next((m.get("content", "") for m in text if isinstance(m, dict) and m.get("role") == "user"), "")
    return str(text).replace("<image>", "").strip()


def read_predictions(path) -> list[dict]:
    """Prediction rows: {"response", "line" (1-based), optional "id", optional "question"}."""
    out = []
    for n, row in _json_lines(path):
        if not isinstance(row, dict) or "response" not in row:
            raise ValueError(f"{path}:{n}: field 'response' missing")
        pred = {"response": row["response"] if isinstance(row["response"], str) else "", "line": n}
        if "id" in row:
            pred["id"] = str(row["id"])
        if isinstance(row.get("messages"), list):
            pred["question"] = _question(row["messages"])
        out.append(pred)
    return out


def _lines_of(preds, limit: int = 10) -> str:
    return ", ".join(str(p["line"]) for p in preds[:limit]) + (", ..." if len(preds) > limit else "")


def match(preds: list[dict], gts: list[GroundTruthRow], pred_path="predictions", gt_path="ground truth",
          log=print) -> list[str | None]:
    """The response for each ground-truth row (None when missing). By ``id`` when any prediction
    has one (rows without one are then an error listing their lines); by file order only when no
    row has an id and there is one row per expression (questions, when present, must agree;
    ``log`` says that order was used)."""
    if any("id" in p for p in preds):
        return _match_by_id(preds, gts, pred_path, gt_path)
    if len(preds) != len(gts):
        raise ValueError(f"{pred_path}: {len(preds)} rows without ids for {len(gts)} ground-truth rows in "
                         f"{gt_path}: give every row an 'id' (SAMPLE_ID#EXPRESSION_INDEX) or predict the whole file")
    for p, g in zip(preds, gts):
        if "question" in p and p["question"] != g.question:
            raise ValueError(f"{pred_path}:{p['line']}: field 'messages': question {p['question'][:60]!r} "
                             f"differs from {gt_path}:{g.line} ({g.key}: {g.question[:60]!r})")
    if preds:
        log(f"eval: no row of {pred_path} has an 'id': its {len(preds)} rows are matched to {gt_path} "
            "by file order")
    return [p["response"] for p in preds]


def _match_by_id(preds, gts, pred_path, gt_path) -> list[str | None]:
    without = [p for p in preds if "id" not in p]
    if without:
        raise ValueError(f"{pred_path}: {len(without)} of {len(preds)} rows have no 'id' while others do "
                         f"(rows are matched by id then): line(s) {_lines_of(without)}")
    by_id: dict = {}
    for p in preds:
        if p["id"] in by_id:
            raise ValueError(f"{pred_path}:{p['line']}: duplicate id {p['id']!r} (first on line "
                             f"{by_id[p['id']]['line']})")
        by_id[p["id"]] = p
    seen: dict = {}
    for g in gts:
        if g.key in seen:
            raise ValueError(f"{gt_path}:{g.line}: duplicate expression id {g.key!r} (first on line "
                             f"{seen[g.key]}): predictions cannot be matched by id")
        seen[g.key] = g.line
    unknown = [p for p in preds if p["id"] not in seen]
    if unknown:
        listed = ", ".join(f"line {p['line']} {p['id']!r}" for p in unknown[:SHOW])
        raise ValueError(f"{pred_path}: {len(unknown)} id(s) not in {gt_path}: {listed}"
                         + (", ..." if len(unknown) > SHOW else ""))
    return [by_id[g.key]["response"] if g.key in by_id else None for g in gts]


def predicted_masks(decoder: MaskDecoder, requests, n: int, budget: int | None = None) -> list[dict | None]:
    """The RLE of the OR of each expression's instance masks: ``requests`` are (expression
    index, image_key, image source, (H, W), Instance); an expression without requests gets None.

    Each image's requests are decoded in calls returning at most ``budget`` (default
    ``DECODE_PIXELS``) mask pixels, and each mask is OR-ed into its expression's mask at once; an
    expression's mask becomes an RLE as soon as its last request is decoded. So at most one call's
    masks and the masks of the expressions it spans are alive, whatever the instances."""
    budget = DECODE_PIXELS if budget is None else budget
    out: list[dict | None] = [None] * n
    by_image: dict = {}
    for r in requests:
        by_image.setdefault(r[1], []).append(r)
    for key, reqs in by_image.items():
        h, w = reqs[0][3]
        step = max(1, budget // max(1, h * w))
        last = {r[0]: i for i, r in enumerate(reqs)}
        unions: dict[int, np.ndarray] = {}
        for i in range(0, len(reqs), step):
            chunk = reqs[i:i + step]
            masks = decoder.decode([(key, src, inst) for _, key, src, _, inst in chunk])
            if len(masks) != len(chunk):
                raise ValueError(f"mask decoder returned {len(masks)} masks for {len(chunk)} requests")
            for (k, *_), m in zip(chunk, masks):
                m = np.asarray(m, bool)
                if m.shape != (h, w):
                    raise ValueError(f"mask decoder returned shape {m.shape} for image {key!r} of (H, W) = {(h, w)}")
                if k in unions:
                    unions[k] |= m
                else:
                    unions[k] = m.copy()
            del masks
            for k in [k for k in unions if last[k] < i + len(chunk)]:
                out[k] = encode_rle(unions.pop(k))
    return out


def _seg_requests(gts, parsed, strict: bool) -> list:
    """The decode requests of every seg expression's instances (``predicted_masks``' input)."""
    requests = []
    for k, (g, p) in enumerate(zip(gts, parsed)):
        if g.gt["task"] == "seg" and p.instances and (p.valid or not strict):
            w, h = g.gt["image_size"]
            for inst in p.instances:
                requests.append((k, g.gt["image_key"] or g.gt["image_path"], g.gt["image_path"], (h, w), inst))
    return requests


def evaluate(pred_path, data_dir, out_dir, decoder: MaskDecoder | None, split: str = "val",
             vocab: GetokVocab | None = None, n_first: int = 12, n_worst: int = 12, strict: bool = False,
             log=print, rules: metrics.MetricRules | None = None, benchmark: str | None = None) -> dict:
    """Score ``pred_path`` against ``data_dir/easyr1/split.jsonl``; write metrics, per-sample
    scores, overlays and an HTML page into ``out_dir``; return the metrics. ``rules``: the metric
    conventions (named in ``_meta.conventions`` and on the console); ``benchmark``: the paper
    benchmark this split stands for (``_meta.benchmark``, read by ``evaluation.tables``)."""
    vocab = vocab or GetokVocab()
    rules = rules or metrics.MetricRules()
    gt_path = Path(data_dir) / "easyr1" / f"{split}.jsonl"
    gts = read_ground_truth(gt_path)
    responses = match(read_predictions(pred_path), gts, str(pred_path), str(gt_path), log=log)
    missing = [g.key for g, r in zip(gts, responses) if r is None]
    if missing:
        log(f"eval: {len(missing)} of {len(gts)} expressions have no prediction in {pred_path} (scored as "
            f"empty): {', '.join(missing[:SHOW])}" + (", ..." if len(missing) > SHOW else ""))
    parsed = [parse_answer(r or "", vocab) for r in responses]

    requests = _seg_requests(gts, parsed, strict)
    if requests and decoder is None:
        raise ValueError("seg predictions need a mask decoder (--decoder region|sam|sam2)")
    pred_masks = predicted_masks(decoder, requests, len(gts)) if requests else [None] * len(gts)
    records = [{"task": g.gt["task"], "parsed": p, "pred_masks": m, "gt": g.gt}
               for g, p, m in zip(gts, parsed, pred_masks)]
    result = metrics.evaluate_predictions(records, strict=strict, rules=rules)
    scores = _per_sample(records, rules.empty_iou)
    result["_meta"] = {"predictions": str(pred_path), "data": str(data_dir), "split": split,
                       "decoder": getattr(decoder, "name", None), "mode": getattr(decoder, "mode", None),
                       "missing_predictions": len(missing), "missing_ids": missing[:100],
                       "benchmark": benchmark, "conventions": rules.describe()}
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


def _per_sample(records, empty_iou: float = 1.0) -> list[float]:
    """One score per expression for ranking overlays: mask IoU (seg), box IoU (box), point hit
    rate (point), vertex F1 (line)."""
    out = []
    for r in records:
        gt, p = r["gt"], r["parsed"]
        if r["task"] == "seg":
            gtm = [t["mask"] for t in gt["targets"]]
            g = metrics.union_masks(gtm)
            s = metrics.segmentation_scores([r["pred_masks"]], [g], empty_iou=empty_iou)["per_sample"][0]
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
                                     pred_masks=[decode_rle(pred_masks[k])] if pred_masks[k] is not None else [],
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
    """A plain-text table of the headline metrics per task, under a line naming the conventions."""
    conv = result.get("_meta", {}).get("conventions")
    lines = [] if not conv else [f"conventions: gIoU empty/empty {conv['giou_empty']} ({conv['giou_empty_rule']}); "
                                 f"counting {conv['counting']}; REC: {conv['rec']}"]
    lines.append(f"{'task':<6} {'n':>5} {'valid':>6}  metrics")
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


__all__ = ["evaluate", "read_ground_truth", "read_predictions", "match", "predicted_masks", "format_table",
           "GroundTruthRow", "DECODE_PIXELS"]
