"""Trainable parameters and AdamW state of the ``getok_lora`` tuner vs LoRA + ``--modules_to_save
embed_tokens lm_head`` (ms-swift's documented way to train new tokens under LoRA).

The models are Qwen2.5-VL-7B (untied embeddings, the paper's model) and -3B (tied), from their
published config.json values written below, instantiated on torch's ``meta`` device (no weights,
no memory), given the GETok vocabulary the way the ``getok_qwen2_5_vl`` model type does it
(1047 tokens after the 151665 Qwen tokens; the embeddings resized to a multiple of 128), then
wrapped by peft exactly as the tuners do (``swift_plugin.getok_tuner.build_lora_config`` for
getok_lora; the same LoRA config with ``modules_to_save`` for the baseline). Counts come from the
wrapped models' ``requires_grad`` parameters. Optimizer state: AdamW keeps 2 fp32 tensors (exp_avg,
exp_avg_sq) per trainable parameter, 8 bytes each.

Usage: ``python bench/bench_tuner.py [--rank 64] [--alpha 128] [--models 7b,3b]`` (swift environment).
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

# Published Qwen2.5-VL config.json values (text + vision), as on the Hugging Face hub.
VISION_7B = dict(depth=32, hidden_size=1280, hidden_act="silu", intermediate_size=3420, num_heads=16, in_channels=3,
                 patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
                 out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31])
CONFIGS = {
    "7b": dict(
        name="Qwen2.5-VL-7B-Instruct",
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=128000,
                  rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                      "mrope_section": [16, 24, 24]}),
        vision=VISION_7B, tie=False),
    "3b": dict(
        name="Qwen2.5-VL-3B-Instruct",
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000,
                  rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                      "mrope_section": [16, 24, 24]}),
        vision=dict(VISION_7B, out_hidden_size=2048), tie=True),
}
QWEN_TOKENIZER_LEN = 151665  # 151643 BPE + 22 added tokens
ADAM_BYTES = 8  # two fp32 states per trainable parameter


def meta_model(key: str, grid_size: int = 32):
    """The model on the meta device, with the GETok vocabulary's rows (and ``getok_info``)."""
    import math

    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from getok_core.codec.vocab import GetokVocab
    from swift.model import MODEL_MAPPING

    spec = CONFIGS[key]
    cfg = Qwen2_5_VLConfig(text_config=dict(spec["text"], tie_word_embeddings=spec["tie"]),
                           vision_config=spec["vision"], tie_word_embeddings=spec["tie"])
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    n_tokens = len(GetokVocab(grid_size).tokens)
    tokenizer_len = QWEN_TOKENIZER_LEN + n_tokens
    rows = spec["text"]["vocab_size"]
    if rows < tokenizer_len:
        rows = math.ceil(tokenizer_len / 128) * 128
        model.resize_token_embeddings(rows, mean_resizing=False)
    ids = list(range(QWEN_TOKENIZER_LEN, tokenizer_len))
    model.getok_info = {"ids": ids, "grid_size": grid_size, "n_tokens": n_tokens, "vocab_rows": rows,
                        "tied": spec["tie"]}
    model.model_meta = MODEL_MAPPING["getok_qwen2_5_vl"]
    return model


def count(model) -> dict:
    lora = emb = other = 0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_" in n:
            lora += p.numel()
        elif "embed_tokens" in n or "lm_head" in n:
            emb += p.numel()
        else:
            other += p.numel()
    return {"lora": lora, "embedding": emb, "other": other, "total": lora + emb + other}


def run(key: str, rank: int, alpha: float) -> list[dict]:
    import copy

    from peft import get_peft_model

    import swift_plugin.register  # noqa: F401  (registers getok_qwen2_5_vl, getok_lora)
    from swift_plugin.getok_tuner import build_lora_config

    args = SimpleNamespace(target_modules=["all-linear"], freeze_llm=False, freeze_vit=True, freeze_aligner=True,
                           lora_rank=rank, lora_alpha=alpha, lora_dropout=0.05, lora_bias="none", modules_to_save=[],
                           use_rslora=False, use_dora=False, init_weights=True)
    rows = []
    model = meta_model(key)
    getok_cfg = build_lora_config(args, model)
    base_cfg = copy.deepcopy(getok_cfg)
    base_cfg.trainable_token_indices = None
    base_cfg.modules_to_save = ["embed_tokens", "lm_head"]
    info = model.getok_info
    for label, cfg in (("LoRA + modules_to_save embed_tokens lm_head", base_cfg), ("getok_lora", getok_cfg)):
        m = get_peft_model(meta_model(key), cfg)
        c = count(m)
        c.update(setup=label, model=CONFIGS[key]["name"], tied=info["tied"], vocab_rows=info["vocab_rows"],
                 n_tokens=info["n_tokens"], adam_bytes=c["total"] * ADAM_BYTES)
        rows.append(c)
        del m
    return rows


def fmt_n(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def fmt_b(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64, the paper's)")
    p.add_argument("--alpha", type=float, default=128.0, help="LoRA alpha (does not change counts)")
    p.add_argument("--models", default="7b,3b", help="comma list of 7b, 3b")
    a = p.parse_args(argv)
    results = []
    for key in [k for k in a.models.split(",") if k]:
        results += run(key, a.rank, a.alpha)
    print(f"\nLoRA rank {a.rank} on the language model's linear layers; GETok grid 32 (1047 tokens). "
          "AdamW state = 2 fp32 values per trainable parameter.\n")
    head = ("| model | setup | trainable embedding / lm_head params | LoRA params | total trainable | "
            "AdamW state |")
    print(head)
    print("|" + "---|" * 6)
    for r in results:
        print(f"| {r['model']} ({'tied' if r['tied'] else 'untied'}, {r['vocab_rows']} rows) | {r['setup']} | "
              f"{fmt_n(r['embedding'])} | {fmt_n(r['lora'])} | {fmt_n(r['total'])} | {fmt_b(r['adam_bytes'])} |")
    print()
    for i in range(0, len(results), 2):
        base, ours = results[i], results[i + 1]
        print(f"{base['model']}: getok_lora trains {base['embedding'] / ours['embedding']:.0f}x fewer embedding "
              f"parameters, {base['total'] / ours['total']:.1f}x fewer in total; AdamW state "
              f"{fmt_b(base['adam_bytes'])} -> {fmt_b(ours['adam_bytes'])}")
    ok = all(results[i]["embedding"] >= 100 * results[i + 1]["embedding"] for i in range(0, len(results), 2))
    print("goal (>= 100x fewer trainable embedding parameters):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
