"""``getok predict``: ask a GETok model about images and write what it answered, decoded and drawn.

One model source: ``--model DIR`` (transformers), ``--server URL`` (an OpenAI-compatible endpoint:
``swift deploy``, ``vllm serve``) or ``--replay FILE`` (answers produced elsewhere, e.g. by
``swift infer``: a JSONL that names the images and queries too). Queries: ``--image`` (one or
more) with ``--query``, or ``--input X.jsonl`` of ``{"image", "query"[, "task"][, "prompt"]}``.
Per query ``OUT/NNNN-IMAGE-QUERY.*`` (``outputs``: answer text, JSON, mask PNGs, overlay PNG) and
one line of ``OUT/predictions.jsonl``; a summary line at the end (docs/predict.md).
``--constrained`` decodes every turn under the GETok grammar (``predictor.Constraint``;
docs/grammar.md): a logits processor with ``--model``, the text regex in the request with ``--server``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..codec.vocab import GetokVocab
from ..data.store import atomic_path
from .predictor import TASKS, Constraint, Predictor
from .replay import Query, read_queries, read_replay


def add_arguments(parser) -> None:
    """Options of ``getok predict``; ``getok_core.cli`` adds the decoder options of ``getok eval``
    (``--decoder``, ``--mode``, ``--sam-checkpoint``, ``--sam-model``, ``--device``)."""
    a = parser.add_argument
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder loaded with transformers (a merged GETok checkpoint)")
    src.add_argument("--server", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (swift deploy, "
                                      "vllm serve)")
    src.add_argument("--replay", help="JSONL of answered queries: {image, query[, task], answers: [turn texts]} "
                                      "or `swift infer` result rows; draws answers produced elsewhere")
    a("--served-model", help="model name the --server serves (default: the first it lists)")
    a("--image", nargs="+", help="image file(s) to ask --query about")
    a("--query", help="the referring expression, e.g. 'the dog on the left'")
    a("--input", help="JSONL of {image, query[, task][, prompt]} rows instead of --image / --query")
    a("--task", default="seg", choices=TASKS, help="what to answer with (default seg: box + seg points + mask)")
    a("--prompt", help="a question of your own instead of the task's training template")
    a("--template", type=int, default=0, help="training question template index (default 0)")
    a("--format-prompt", default="none",
      help="EasyR1 format_prompt Jinja file applied to the question (an EasyR1-trained model); 'default': "
           "easyr1_plugin/format_prompt/getok_grid.jinja; 'none' (default): the question as ms-swift trains it")
    a("--rounds", type=int, help="refinement rounds after turn 1 (default 0; --replay: the stored turns)")
    a("--out", required=True, help="output folder")
    a("--grid-size", type=int, default=32, help="grid side n of the model's vocabulary (default 32)")
    a("--max-new-tokens", type=int, default=1024, help="per model turn (default 1024)")
    a("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    a("--seed", type=int, default=0)
    a("--dtype", default="auto", help="torch dtype of --model (auto, float32, bfloat16...)")
    a("--constrained", action="store_true",
      help="grammar-constrained decoding (docs/grammar.md): every answer valid by construction; --model: the "
           "GETok logits processor, --server: the text regex in the request (vllm serve, swift deploy "
           "--infer_backend vllm)")
    a("--max-instances", type=int, default=8, help="--constrained: most answer lines (default 8)")
    a("--max-points", type=int, default=32, help="--constrained: most grid tokens of a seg / line element "
                                                 "(default 32)")
    a("--think", action="store_true", help="--constrained: the answer starts with a <think>...</think> block")
    a("--no-none", action="store_true", help="--constrained: forbid the <none> answer")
    a("--no-progress", action="store_true", help="no progress bar")


def _format_prompt(value: str) -> str | None:
    if value == "none":
        return None
    from ..models.rollout import default_format_prompt

    return Path(default_format_prompt() if value == "default" else value).read_text(encoding="utf-8")


def queries_of(args, format_prompt):
    """(queries, replay backend or None) from the arguments."""
    if args.replay:
        if args.image or args.input:
            raise ValueError("--replay names its images and queries: drop --image / --input")
        return read_replay(args.replay, args.task, args.template, format_prompt)
    if args.input:
        if args.image or args.query:
            raise ValueError("give --input, or --image with --query, not both")
        return read_queries(args.input, args.task), None
    if not args.image or not (args.query or args.prompt):
        raise ValueError("give --image IMAGE... --query TEXT, or --input X.jsonl")
    q = args.query or args.prompt
    return [Query(im, q, args.task, args.prompt, where=f"--image {im}") for im in args.image], None


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].strip("-") or "q"


def stem_of(k: int, q: Query) -> str:
    """``NNNN-IMAGE-QUERY``: the file name stem of query number ``k``."""
    return f"{k:04d}-{_slug(Path(q.image).stem, 24)}-{_slug(q.query)}"


def _decoder(args):
    """The mask decoder of ``--decoder`` and its checkpoint options, read by the ``decoder_kwargs``
    function ``getok_core.cli`` puts in the parsed arguments (the one reading ``getok eval`` uses)."""
    if args.decoder == "none":
        return None
    from ..decoders import make_decoder

    return make_decoder(args.decoder, **args.decoder_kwargs(args))


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="query", desc="predict", disable=not enabled)


def run(args) -> int:
    """``getok predict``: exit 0 when every query was answered and written, 1 when some failed (their
    errors are in predictions.jsonl and on stderr)."""
    from ..models.rollout import SamplingConfig
    from . import load_backend

    fp = _format_prompt(args.format_prompt)
    if args.constrained and args.replay:
        raise ValueError("--constrained constrains decoding: --replay decodes nothing (drop one of them)")
    constraint = Constraint(args.max_instances, args.max_points, args.think, not args.no_none) \
        if args.constrained else None
    queries, backend = queries_of(args, fp)
    vocab = GetokVocab(args.grid_size)
    for task in sorted({q.task for q in queries}) if constraint else ():
        constraint.turn1(vocab, task)  # a bad --max-instances / --max-points: one error before any model load
    if backend is None:
        backend = load_backend(args.model, args.server, args.served_model, device=args.device, dtype=args.dtype)
    cfg = SamplingConfig(num_samples=1, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                         seed=args.seed)
    predictor = Predictor(backend, _decoder(args), vocab, args.rounds or 0, cfg, fp,
                          args.template, constraint=constraint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"queries": len(queries), "valid": 0, "invalid": 0, "no_target": 0, "instances": 0, "rounds": 0,
              "failed": 0}
    records = []
    with _bar(len(queries), not args.no_progress) as bar:
        for k, q in enumerate(queries):
            rec = {"index": k, "image": q.image, "query": q.query, "task": q.task, "where": q.where}
            try:
                pred = predictor.predict(q.image, q.query, q.task, args.rounds if args.rounds is not None
                                         else q.rounds, q.prompt)
                files = pred.save(out, stem_of(k, q))
            except ValueError as exc:  # an unreadable image, a replay without that turn: count, go on
                counts["failed"] += 1
                rec["error"] = str(exc)
                print(f"getok predict: {q.where}: {exc}", file=sys.stderr)
            else:
                counts["valid" if pred.valid else "invalid"] += 1
                counts["no_target"] += pred.no_target
                counts["instances"] += len(pred.instances)
                counts["rounds"] += pred.rounds_done
                rec.update(valid=pred.valid, constrained=pred.constrained, no_target=pred.no_target,
                           instances=len(pred.instances), rounds_done=pred.rounds_done,
                           stop_reason=pred.stop_reason, response=pred.turns[0] if pred.turns else "",
                           turns=pred.turns,
                           files={kind: p.name for kind, p in files.items()})
            records.append(rec)
            bar.update(1)
    index = out / "predictions.jsonl"
    with atomic_path(index) as tmp:
        Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    c = counts
    how = " (grammar-constrained)" if constraint else ""
    print(f"predict: {c['queries']} queries{how} -> {out}: valid {c['valid']}, invalid {c['invalid']} "
          f"(no target {c['no_target']}), {c['instances']} instances, {c['rounds']} refinement rounds, "
          f"failed {c['failed']}; index {index}")
    return 1 if c["failed"] else 0


__all__ = ["add_arguments", "run", "queries_of", "stem_of"]
