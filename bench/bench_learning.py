"""Does GETok training learn? SFT, grid-vs-text and GRPO on the toy grounding task, on CPU.

Everything runs through the real command lines, on a tiny random model of ``--family`` (default
Qwen3-VL; ``getok tiny-model``, the family's real tokenizer):

1. data: ``getok sample --toy`` (1-3 shapes on a plain background, 4 x 4 merged visual tokens: 128 px
   for Qwen3-VL, 112 px for Qwen2.5-VL / Qwen2-VL, one expression per object, box task),
   ``getok prepare --dataset jsonl --grid-size G`` (swift, EasyR1 rows);
2. SFT, grid tokens: ``swift sft`` full-parameter with the GETok plugin (``getok_<family>``),
   a checkpoint every K steps; each is answered greedily on the held-out images by
   ``swift infer`` (no constrained decoding) and scored by ``getok eval`` (region decoder):
   format validity, box Acc@0.5, mean box IoU;
3. SFT, plain-text coordinates: the same rows, model, steps and seed, with the answer written
   ``{"bbox_2d": [x1, y1, x2, y2]}`` in the family's units (Qwen2.5-VL: absolute pixels; Qwen3-VL /
   Qwen2-VL: 0-1000) and the question asking for it; scored by the same ``metrics.box_accuracy``
   that ``getok eval`` calls (the paper's Table 9, grid vs text, in miniature);
4. GRPO: ``swift rlhf --rlhf_type grpo`` from the last grid SFT checkpoint with the ``getok_grid``
   ORM, one run per seed; the mean ``getok_grid`` reward (``rewards.score_grid_batch``) of greedy
   answers to the held-out prompts before and after, and the training reward per step.

Baseline: the best constant box (the training box with the highest training Acc@0.5), scored on
the held-out expressions. Writes ``OUT/results.md`` (the table), ``OUT/results.json`` and
``OUT/curves.png``; prints the table and the wall time of every phase.

Usage (swift environment; ``recipes/learning.sh`` runs it with the defaults):
    python bench/bench_learning.py --out /tmp/learn [--steps 2000 --eval-every 500 --seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REGISTER = REPO / "swift_plugin" / "register.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "USE_HF": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
#: family -> (toy image side: 4 x 4 merged visual tokens, plain-text box units: "pixels" (Qwen2.5-VL's
#: absolute coordinates) or 1000 (Qwen3-VL / Qwen2-VL's 0-1000 relative coordinates))
FAMILY_DEFAULTS = {"qwen2_5_vl": (112, "pixels"), "qwen3_vl": (128, 1000), "qwen2_vl": (112, 1000)}


def model_args(family: str) -> list[str]:
    """ms-swift's model arguments for the GETok model type / template of ``family``."""
    return ["--custom_register_path", str(REGISTER), "--model_type", f"getok_{family}", "--template",
            f"getok_{family}"]


COMMON = ["--torch_dtype", "float32", "--gradient_checkpointing", "false", "--dataloader_num_workers", "0",
          "--dataset_num_proc", "1", "--split_dataset_ratio", "0", "--report_to", "none", "--save_only_model", "true"]
TEXT_INSTRUCTION = {"pixels": 'Answer with its bounding box in pixels as JSON: {"bbox_2d": [x1, y1, x2, y2]}.',
                    1000: 'Answer with its bounding box in coordinates from 0 to 1000 as JSON: '
                          '{"bbox_2d": [x1, y1, x2, y2]}.'}
TEXT_BOX = re.compile(r'"bbox_2d"\s*:\s*\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,'
                      r'\s*(-?\d+(?:\.\d+)?)\s*\]')


# ---------------------------------------------------------------------- running things
def run(cmd: list[str], log: Path, env: dict, timeout: int = 3600) -> float:
    """Run ``cmd`` (output to ``log``); the wall time in s; raises with the log tail on failure."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(log.parent))
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}), {log}:\n"
                           + log.read_text(errors="replace")[-4000:])
    return time.time() - t0


def swift(sub: str, args: list[str], log: Path, env: dict) -> float:
    return run([str(Path(sys.executable).with_name("swift")), sub, *args], log, env)


def getok(args: list[str], log: Path, env: dict) -> float:
    return run([sys.executable, "-m", "getok_core.cli", *args], log, env)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ---------------------------------------------------------------------- data
def text_scale(units, size: tuple[int, int]) -> tuple[float, float]:
    """(x, y) units per normalized coordinate: the image's pixels, or 1000."""
    return (float(size[0]), float(size[1])) if units == "pixels" else (float(units), float(units))


def text_rows(swift_rows: list[dict], easyr1_rows: list[dict], units="pixels") -> list[dict]:
    """The swift rows with plain-text coordinate answers: ``{"bbox_2d": [x1, y1, x2, y2]}`` in
    ``units``: absolute pixels of the image (Qwen2.5-VL style; the toy images are not resized) or
    0-1000 relative coordinates (Qwen3-VL / Qwen2-VL style), the question's answer instruction
    replaced by ``TEXT_INSTRUCTION[units]``. Same order, same images."""
    out = []
    for row, er in zip(swift_rows, easyr1_rows, strict=True):
        gt = json.loads(er["answer"])
        sx, sy = text_scale(units, gt["image_size"])
        u1, v1, u2, v2 = gt["targets"][0]["box"]
        box = [round(u1 * sx), round(v1 * sy), round(u2 * sx), round(v2 * sy)]
        q = row["messages"][0]["content"]
        q = q[:q.index(". Answer with") + 1] + " " + TEXT_INSTRUCTION[units]
        out.append({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": json.dumps({"bbox_2d": box})}],
                    "images": row["images"]})
    return out


def prepare_data(out: Path, args, env: dict) -> dict:
    toy, prep = out / "toy", out / "prep"
    if not (prep / "swift" / "val.jsonl").exists():
        getok(["sample", "--toy", "--out", str(toy), "--toy-images", str(args.images), "--toy-val", str(args.val),
               "--toy-size", str(args.toy_size), "--seed", "0"], out / "sample.log", env)
        getok(["prepare", "--dataset", "jsonl", "--root", str(toy / "data.jsonl"), "--out", str(prep),
               "--grid-size", str(args.grid_size), "--formats", "swift,easyr1", "--no-progress"],
              out / "prepare.log", env)
    d = {"prep": prep, "train": prep / "swift" / "train.jsonl", "val": prep / "swift" / "val.jsonl",
         "grpo": prep / "swift" / "train_grpo.jsonl",
         "val_gt": [json.loads(r["answer"]) for r in read_jsonl(prep / "easyr1" / "val.jsonl")],
         "train_gt": [json.loads(r["answer"]) for r in read_jsonl(prep / "easyr1" / "train.jsonl")]}
    for split in ("train", "val"):
        rows = text_rows(read_jsonl(d[split]), read_jsonl(prep / "easyr1" / f"{split}.jsonl"), args.text_units)
        d[f"text_{split}"] = out / f"text_{split}.jsonl"
        write_jsonl(d[f"text_{split}"], rows)
    n_of = shapes_per_image(toy / "data.jsonl")
    d["val_n"] = [n_of[Path(r["images"][0]).name] for r in read_jsonl(d["val"])]
    for name in ("train", "text_train"):  # the curriculum's first stage: images with one shape
        single = [r for r in read_jsonl(d[name]) if n_of[Path(r["images"][0]).name] == 1]
        d[f"single_{name}"] = out / f"single_{name}.jsonl"
        write_jsonl(d[f"single_{name}"], single)
    return d


def shapes_per_image(data_jsonl: Path) -> dict[str, int]:
    """Image file name -> number of shapes on it (the toy records' ``meta.n_objects``)."""
    return {Path(r["image"]).name: int(r["meta"]["n_objects"]) for r in read_jsonl(data_jsonl)}


def by_shapes(ious, val_n: list[int]) -> dict[int, float]:
    """Acc@0.5 of per-expression IoUs, by the number of shapes on the image (1, 2, 3)."""
    ious, n = np.asarray(ious, float), np.asarray(val_n)
    return {int(k): float((ious[n == k] >= 0.5).mean()) for k in sorted(set(val_n))}


def constant_box_baseline(train_gt: list[dict], val_gt: list[dict], val_n: list[int]) -> dict:
    """The best constant box: the training box with the highest training Acc@0.5, and its
    held-out Acc@0.5 / mean IoU (normalized boxes, ``metrics.box_accuracy``), overall and by the
    number of shapes on the image."""
    from getok_core.codec.geometry import box_iou_matrix
    from getok_core.evaluation.metrics import box_accuracy

    tb = np.array([g["targets"][0]["box"] for g in train_gt])
    iou = box_iou_matrix(tb, tb)
    best = tb[int(np.argmax((iou >= 0.5).mean(1)))]
    acc = box_accuracy([list(best)] * len(val_gt), [[t["box"] for t in g["targets"]] for g in val_gt])
    return {"box": [round(float(v), 3) for v in best], "Acc@0.5": acc["Acc@0.5"], "mean_iou": acc["mean_iou"],
            "by_shapes": by_shapes(acc["per_sample"], val_n)}


# ---------------------------------------------------------------------- training and scoring
def sft(model: str, data: Path, out: Path, args, seed: int, env: dict, steps: int) -> list[tuple[int, Path]]:
    """Full-parameter ``swift sft`` of ``steps`` steps; (step, checkpoint) every ``eval_every`` steps."""
    out.mkdir(parents=True, exist_ok=True)
    if not list(out.glob(f"v*/checkpoint-{steps}")):
        swift("sft", [*model_args(args.family), "--model", model, "--tuner_type", "full", "--freeze_vit", "false",
                      "--freeze_aligner", "false",  # ms-swift freezes the aligner by default: here it is random
                      "--dataset", str(data), "--max_steps", str(steps), "--per_device_train_batch_size",
                      str(args.batch), "--gradient_accumulation_steps", "1", "--learning_rate", str(args.lr),
                      "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05", "--weight_decay", "0",
                      "--max_grad_norm", str(args.max_grad_norm), "--adam_beta2", str(args.adam_beta2),
                      "--save_steps", str(args.eval_every), "--logging_steps", "10", "--seed", str(seed),
                      "--data_seed", str(seed), *COMMON, *shlex.split(args.sft_args), "--output_dir", str(out)],
              out / "sft.log", env)
    ckpts = sorted(out.glob("v*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [(int(p.name.split("-")[1]), p) for p in ckpts]


def sft_curriculum(model: str, data: dict, name: str, out: Path, args, seed: int, env: dict) -> list[tuple[int, Path]]:
    """``--single-first`` K > 0: K steps on the images with one shape (``out/single``), then the
    remaining ``steps - K`` on all images from that checkpoint (``out/all``, a new cosine
    schedule); else one run of ``steps`` on all images. (step counted from the start, checkpoint)."""
    key = "train" if name == "grid" else "text_train"
    k = args.single_first
    if not k:
        return sft(model, data[key], out, args, seed, env, args.steps)
    first = sft(model, data[f"single_{key}"], out / "single", args, seed, env, k)
    if args.steps <= k:
        return first
    rest = sft(str(first[-1][1]), data[key], out / "all", args, seed, env, args.steps - k)
    return first + [(k + step, ck) for step, ck in rest]


def infer(model: Path | str, val: Path, result: Path, env: dict, family: str, max_new_tokens: int = 32) -> list[str]:
    """Greedy ``swift infer`` answers to ``val``'s questions (no constrained decoding)."""
    result.unlink(missing_ok=True)  # --result_path appends
    swift("infer", [*model_args(family), "--model", str(model), "--val_dataset", str(val), "--max_new_tokens",
                    str(max_new_tokens), "--temperature", "0", "--max_batch_size", "32", "--torch_dtype", "float32",
                    "--result_path", str(result)], result.with_suffix(".log"), env)
    return [r["response"] for r in read_jsonl(result)]


def score_grid_answers(result: Path, prep: Path, grid_size: int, env: dict, val_n: list[int]) -> dict:
    """``getok eval`` (region decoder) of a swift infer result: validity, Acc@0.5, mean IoU, and
    Acc@0.5 by the number of shapes on the image (from its ``per_sample.jsonl`` IoUs)."""
    rep = result.with_suffix("")
    getok(["eval", "--pred", str(result), "--data", str(prep), "--split", "val", "--out", str(rep),
           "--grid-size", str(grid_size), "--decoder", "region", "--first", "4", "--worst", "4"],
          result.with_suffix(".eval.log"), env)
    m = json.loads((rep / "metrics.json").read_text())
    m = m.get("box", m.get("tasks", {}).get("box", m))
    ious = [r["score"] for r in read_jsonl(rep / "per_sample.jsonl")]
    return {"valid": m["format_validity"], "Acc@0.5": m["box"]["Acc@0.5"], "mean_iou": m["box"]["mean_iou"],
            "by_shapes": by_shapes(ious, val_n)}


def parse_text_box(text: str, size: tuple[int, int], units="pixels"):
    """(normalized box or None, valid) of a plain-text answer: valid when the whole answer is one
    ``{"bbox_2d": [x1, y1, x2, y2]}`` with x1 < x2, y1 < y2 inside the image (``units``: pixels or
    1000, as ``text_rows`` wrote them). Never raises."""
    w, h = text_scale(units, size)
    m = TEXT_BOX.search(text or "")
    if m is None:
        return None, False
    x1, y1, x2, y2 = (float(v) for v in m.groups())
    try:
        whole = json.loads(text).keys() == {"bbox_2d"}
    except (ValueError, AttributeError):
        whole = False
    valid = whole and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    return [x1 / w, y1 / h, x2 / w, y2 / h], valid


def score_text_answers(responses: list[str], val_gt: list[dict], val_n: list[int], units="pixels") -> dict:
    from getok_core.evaluation.metrics import box_accuracy

    parsed = [parse_text_box(r, tuple(g["image_size"]), units) for r, g in zip(responses, val_gt, strict=True)]
    acc = box_accuracy([p for p, _ in parsed], [[t["box"] for t in g["targets"]] for g in val_gt])
    return {"valid": sum(v for _, v in parsed) / len(parsed), "Acc@0.5": acc["Acc@0.5"], "mean_iou": acc["mean_iou"],
            "by_shapes": by_shapes(acc["per_sample"], val_n)}


def held_out_reward(responses: list[str], val_gt: list[dict], grid_size: int, reward_kwargs: str) -> float:
    """Mean ``getok_grid`` reward (overall, no mask decoder: a box task) of ``responses``, with the
    reward arguments GRPO trains with (``reward_kwargs``, the JSON of ``GETOK_REWARD_KWARGS``)."""
    from getok_core.rewards import setup_from_kwargs
    from getok_core.rewards.frameworks import kwargs_from_json, score_batch

    setup = setup_from_kwargs({**kwargs_from_json(reward_kwargs, "--reward-kwargs"), "grid_size": grid_size})
    return float(np.mean([r.overall for r in score_batch(setup, responses, val_gt)]))


def grpo(ckpt: Path, data: Path, out: Path, args, seed: int, env: dict) -> tuple[Path, list[float]]:
    """``swift rlhf --rlhf_type grpo`` (getok_grid ORM) from ``ckpt``; the final checkpoint and
    the logged mean training reward per step."""
    out.mkdir(parents=True, exist_ok=True)
    if not list(out.glob(f"v*/checkpoint-{args.grpo_steps}")):
        swift("rlhf", ["--rlhf_type", "grpo", "--use_vllm", "false", *model_args(args.family), "--model", str(ckpt),
                       "--tuner_type", "full", "--reward_funcs", "getok_grid", "--dataset", str(data),
                       "--max_steps", str(args.grpo_steps), "--num_generations", str(args.generations),
                       "--per_device_train_batch_size", str(args.grpo_prompts * args.generations),
                       "--gradient_accumulation_steps", "1", "--max_completion_length", "24", "--temperature", "1.0",
                       "--learning_rate", str(args.grpo_lr), "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
                       "--beta", "0", "--seed", str(seed), "--data_seed", str(seed), "--save_steps",
                       str(args.grpo_steps), "--logging_steps", "1", *COMMON, *shlex.split(args.grpo_args),
                       "--output_dir", str(out)],
              out / "grpo.log", env)
    last = sorted(out.glob(f"v*/checkpoint-{args.grpo_steps}"))[-1]
    return last, logged_rewards(out / "grpo.log")


def logged_rewards(log: Path) -> list[float]:
    """The per-step ``rewards/GetokGrid/mean`` values ms-swift logged."""
    vals = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r"'rewards/GetokGrid/mean': '?([0-9.eE+-]+)", line)
        if m:
            vals.append(float(m.group(1)))
    return vals


# ---------------------------------------------------------------------- the report
def fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def shapes(scores: dict) -> str:
    """'a / b / c': Acc@0.5 on the images with 1, 2, 3 shapes."""
    return " / ".join(fmt(v) for _, v in sorted((int(k), v) for k, v in scores.get("by_shapes", {}).items()))


def table(res: dict) -> str:
    """The Markdown report of ``res`` (what ``main`` collected)."""
    lines = [f"# Does it learn? (toy grounding, {res['config']})", "",
             f"Held-out: {res['n_val']} expressions on {res['args']['val']} images. Best constant box "
             f"{res['baseline']['box']}: Acc@0.5 {fmt(res['baseline']['Acc@0.5'])}, mean IoU "
             f"{fmt(res['baseline']['mean_iou'])}; Acc@0.5 by shapes on the image {shapes(res['baseline'])}.", "",
             "| answer | seed | step | format valid | box Acc@0.5 | mean IoU | Acc@0.5 on 1 / 2 / 3 shapes |",
             "|---|---|---|---|---|---|---|"]
    for name in ("grid", "text"):
        for seed, curve in res.get(name, {}).items():
            for p in curve:
                lines.append(f"| {name} | {seed} | {p['step']} | {fmt(p['valid'])} | {fmt(p['Acc@0.5'])} | "
                             f"{fmt(p['mean_iou'])} | {shapes(p)} |")
    if res.get("grpo"):
        lines += ["", "| GRPO seed | held-out getok_grid reward before | after | train reward first 5 steps | "
                  "last 5 steps |", "|---|---|---|---|---|"]
        for seed, g in res["grpo"].items():
            tr = g["train_rewards"]
            lines.append(f"| {seed} | {fmt(res['grpo_before'])} | {fmt(g['after'])} | {fmt(np.mean(tr[:5]))} | "
                         f"{fmt(np.mean(tr[-5:]))} |")
        after = [g["after"] for g in res["grpo"].values()]
        lines.append(f"\nGRPO: mean after {fmt(np.mean(after))} (spread across seeds {fmt(np.ptp(after))}) vs "
                     f"before {fmt(res['grpo_before'])}; after - before = {fmt(np.mean(after) - res['grpo_before'])}.")
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["wall"].items())]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """curves.png: Acc@0.5 and format validity per SFT step (grid, text), GRPO reward per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, style in (("grid", "-"), ("text", "--")):
        for seed, curve in res.get(name, {}).items():
            steps = [p["step"] for p in curve]
            axes[0].plot(steps, [p["valid"] for p in curve], style, marker="o", label=f"{name} s{seed}")
            axes[1].plot(steps, [p["Acc@0.5"] for p in curve], style, marker="o", label=f"{name} s{seed}")
    axes[1].axhline(res["baseline"]["Acc@0.5"], color="gray", lw=1, label="best constant box")
    for seed, g in res.get("grpo", {}).items():
        axes[2].plot(range(1, len(g["train_rewards"]) + 1), g["train_rewards"], lw=1, label=f"train s{seed}")
        axes[2].axhline(g["after"], ls=":", lw=1)
    if res.get("grpo_before") is not None:
        axes[2].axhline(res["grpo_before"], color="k", lw=1, label="held-out before")
    for ax, title in zip(axes, ("SFT: format validity", "SFT: held-out box Acc@0.5",
                                "GRPO: getok_grid reward (dotted: held-out after)")):
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[2].set_xlabel("GRPO step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------- main
def curve(name: str, ckpts, d: dict, work: Path, args, env: dict, model: str) -> list[dict]:
    """Scores of the untrained model (step 0) and of every checkpoint of one SFT run."""
    out = []
    val = d["val"] if name == "grid" else d["text_val"]
    for step, ck in [(0, Path(model)), *ckpts]:
        result = work / f"infer_{step}.jsonl"
        done = result.exists() and len(read_jsonl(result)) == len(d["val_gt"])  # a rerun reuses answers
        responses = [r["response"] for r in read_jsonl(result)] if done else infer(ck, val, result, env, args.family)
        s = (score_grid_answers(result, d["prep"], args.grid_size, env, d["val_n"]) if name == "grid"
             else score_text_answers(responses, d["val_gt"], d["val_n"], args.text_units))
        out.append({"step": step, **s})
        print(f"  {name} step {step}: {s}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=1000, help="toy images (default 1000)")
    p.add_argument("--val", type=int, default=50, help="held-out toy images (default 50)")
    p.add_argument("--grid-size", type=int, default=16)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=600, help="SFT steps (default 600)")
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sft-seeds", default="0", help="comma list (default 0)")
    p.add_argument("--seeds", default="0", help="GRPO seeds, comma list (default 0)")
    p.add_argument("--grpo-steps", type=int, default=8)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--grpo-lr", type=float, default=1e-4)
    p.add_argument("--family", default="qwen3_vl", choices=sorted(FAMILY_DEFAULTS),
                   help="tiny model family (default qwen3_vl: its vision tower has learned absolute positions)")
    p.add_argument("--toy-size", type=int, default=None,
                   help="toy image side in px (default: 4 x 4 merged visual tokens, 128 for qwen3_vl, else 112)")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads per process (default 2; more threads than free cores run far slower)")
    p.add_argument("--single-first", type=int, default=0, metavar="K",
                   help="curriculum: the first K SFT steps on the images with one shape, the rest on all (default 0)")
    p.add_argument("--vision-position-code", type=float, default=0.0, metavar="S",
                   help="qwen3_vl: start the vision position table at S x a 2-D sine-cosine code "
                        "(getok tiny-model --vision-position-code; default 0: N(0, 0.02))")
    p.add_argument("--grid-code", type=float, default=1.0, metavar="S",
                   help="GETOK_GRID_CODE: new grid rows start at the text mean + S x the 2-D cell code "
                        "(docs/swift.md; default 1.0, 0: the text mean alone)")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="SFT gradient clipping (default 0: none; ms-swift's default is 1.0, docs/training.md)")
    p.add_argument("--adam-beta2", type=float, default=0.999,
                   help="SFT AdamW beta2 (default 0.999, PyTorch's; ms-swift's default is 0.95, docs/training.md)")
    p.add_argument("--sft-args", default="", metavar="ARGS",
                   help="more `swift sft` arguments, one shell-quoted string (e.g. \"--warmup_ratio 0.1\")")
    p.add_argument("--grpo-prompts", type=int, default=2, help="GRPO prompts per step (default 2)")
    p.add_argument("--grpo-args", default="", metavar="ARGS", help="more `swift rlhf` arguments, as --sft-args")
    p.add_argument("--reward-kwargs", default='{"think": false}', metavar="JSON",
                   help="GETOK_REWARD_KWARGS of GRPO and of the held-out reward (default: think false, the SFT "
                        "answers hold no <think>)")
    p.add_argument("--no-text", action="store_true", help="skip the plain-text coordinate run")
    args = p.parse_args(argv)
    args.toy_size = args.toy_size or FAMILY_DEFAULTS[args.family][0]
    args.text_units = FAMILY_DEFAULTS[args.family][1]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **OFFLINE, GETOK_GRID_SIZE=str(args.grid_size), GETOK_GRID_CODE=str(args.grid_code),
               MODELSCOPE_CACHE=str(out / ".ms"), GETOK_CACHE=str(out / ".getok-cache"), PYTHONPATH=str(REPO),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    wall: dict[str, float] = {}
    t0 = time.time()
    d = prepare_data(out, args, env)
    wall["data"] = time.time() - t0
    res = {"args": vars(args), "wall": wall, "n_val": len(d["val_gt"]),
           "config": f"{len(d['train_gt'])} train rows, {args.images - args.val} images, grid {args.grid_size}, "
                     f"{args.toy_size} px, tiny {args.family} hidden {args.hidden_size} x {args.layers} layers (tied), "
                     f"vision {args.vision_hidden} (position code {args.vision_position_code}), batch {args.batch}, "
                     f"lr {args.lr}, AdamW beta2 {args.adam_beta2}, max grad norm {args.max_grad_norm}, "
                     f"grid code {args.grid_code}, "
                     + (f"first {args.single_first} steps on one-shape images" if args.single_first
                        else "no curriculum"),
           "baseline": constant_box_baseline(d["train_gt"], d["val_gt"], d["val_n"])}
    print(f"baseline: {res['baseline']}", flush=True)
    last_grid = None
    for seed in [int(s) for s in args.sft_seeds.split(",")]:
        model = out / f"tiny_s{seed}"
        if not (model / "config.json").exists():
            getok(["tiny-model", "--out", str(model), "--family", args.family, "--seed", str(seed), "--hidden-size",
                   str(args.hidden_size), "--layers", str(args.layers), "--vision-hidden", str(args.vision_hidden),
                   "--vision-position-code", str(args.vision_position_code), "--tie-word-embeddings"],
                  out / "tiny.log", env)
        for name in ("grid",) + (() if args.no_text else ("text",)):
            t = time.time()
            work = out / f"{name}_s{seed}"
            ckpts = sft_curriculum(str(model), d, name, work, args, seed, env)
            wall[f"sft {name} s{seed}"] = time.time() - t
            t = time.time()
            res.setdefault(name, {})[seed] = curve(name, ckpts, d, work, args, env, str(model))
            wall[f"eval {name} s{seed}"] = time.time() - t
            if name == "grid" and last_grid is None:  # the GRPO start and its held-out answers
                last_grid = ckpts[-1][1], work / f"infer_{ckpts[-1][0]}.jsonl"
            (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    t = time.time()
    env["GETOK_REWARD_KWARGS"] = args.reward_kwargs
    last_grid, before_answers = last_grid
    before = read_jsonl(before_answers)
    res["grpo_before"] = held_out_reward([r["response"] for r in before], d["val_gt"], args.grid_size,
                                         args.reward_kwargs)
    res["grpo"] = {}
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        ck, rewards = grpo(last_grid, d["grpo"], out / f"grpo_s{seed}", args, seed, env)
        responses = infer(ck, d["val"], out / f"grpo_s{seed}" / "infer.jsonl", env, args.family)
        res["grpo"][seed] = {"after": held_out_reward(responses, d["val_gt"], args.grid_size, args.reward_kwargs),
                             "train_rewards": rewards}
        print(f"  GRPO seed {seed}: before {res['grpo_before']:.3f} after {res['grpo'][seed]['after']:.3f}",
              flush=True)
        wall["grpo"] = time.time() - t
        (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    wall["total"] = time.time() - t0
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    report = table(res)
    (out / "results.md").write_text(report)
    plot(res, out / "curves.png")
    print(report)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
