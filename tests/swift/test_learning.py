"""Training learns (CI size): on a handful of toy images (``getok sample --toy``), the real
``swift sft`` brings the tiny model's format validity from 0 to >= 0.9 without constrained
decoding, and the real ``swift rlhf --rlhf_type grpo`` with the ``getok_grid`` ORM raises the
greedy ``getok_grid`` reward on its own prompts. Both can fail: a broken label mask or GETok rows
that do not train leave validity at 0; a reward of the wrong sign, advantages that do not reach the
loss or a response mask off by the answer leave the reward where it was or lower it.
GRPO starts from the SFT checkpoint of step 40, whose greedy answers are still partly malformed
(room to improve; measured 0.907 -> 1.12 (seed 0) and 1.14 (seed 1) after 10 GRPO steps). The sampled
training reward is too noisy at this size to assert on (0.79 -> 0.87 first / last 3 steps), so the
greedy reward is the check. ``bench/bench_learning.py`` is the full-size version (held-out images,
grid vs text, seeds)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import swift  # noqa: F401  (the swift environment)

from conftest import REGISTER, read_jsonl, run_swift
from getok_core import GetokVocab, parse_answer

GRID = 16
MODEL_ARGS = ["--custom_register_path", str(REGISTER), "--model_type", "getok_qwen2_5_vl", "--template",
              "getok_qwen2_5_vl"]
COMMON = ["--torch_dtype", "float32", "--gradient_checkpointing", "false", "--dataloader_num_workers", "0",
          "--dataset_num_proc", "1", "--split_dataset_ratio", "0", "--report_to", "none", "--save_only_model", "true",
          "--seed", "0", "--data_seed", "0"]


@pytest.fixture(scope="module")
def toy(work):
    """4 toy images prepared at grid 16; one torch thread per process (a loaded CPU runs many
    threads far slower) and the run's grid size, restored afterwards."""
    import subprocess
    import sys

    old = {k: os.environ.get(k) for k in ("GETOK_GRID_SIZE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(GETOK_GRID_SIZE=str(GRID), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    d = work / "learning"
    d.mkdir(exist_ok=True)
    getok = [sys.executable, "-m", "getok_core.cli"]
    subprocess.run([*getok, "sample", "--toy", "--out", str(d / "toy"), "--toy-images", "4", "--toy-val", "0"],
                   check=True, capture_output=True)
    subprocess.run([*getok, "prepare", "--dataset", "jsonl", "--root", str(d / "toy" / "data.jsonl"), "--out",
                    str(d / "prep"), "--grid-size", str(GRID), "--formats", "swift,easyr1", "--no-progress"],
                   check=True, capture_output=True)
    yield d
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def answers(model, rows_file, out, log_dir) -> list[str]:
    """Greedy ``swift infer`` answers (no constrained decoding) to the prompts of ``rows_file``."""
    out.unlink(missing_ok=True)
    run_swift("infer", [*MODEL_ARGS, "--model", str(model), "--val_dataset", str(rows_file), "--max_new_tokens",
                        "16", "--temperature", "0", "--max_batch_size", "16", "--torch_dtype", "float32",
                        "--result_path", str(out)], log_dir / f"{out.stem}.log", timeout=900)
    return [r["response"] for r in read_jsonl(out)]


def validity(responses) -> float:
    vocab = GetokVocab(GRID)
    return float(np.mean([parse_answer(r, vocab).valid for r in responses]))


def greedy_reward(responses, rows) -> float:
    """Mean ``getok_grid`` reward (``think`` false: the SFT answers hold no thinking) of ``responses``
    to ``rows`` (GRPO rows: their ``solution``)."""
    from getok_core.rewards import setup_from_kwargs
    from getok_core.rewards.frameworks import score_batch

    setup = setup_from_kwargs({"think": False, "grid_size": GRID})
    return float(np.mean([r.overall for r in score_batch(setup, responses, [r["solution"] for r in rows])]))


@pytest.fixture(scope="module")
def sft(toy, tiny_model):
    """60 full-parameter ``swift sft`` steps on the toy rows (checkpoints at 20, 40, 60) and the
    greedy answers of the random model before them."""
    train = toy / "prep" / "swift" / "train.jsonl"
    assert 4 <= len(read_jsonl(train)) <= 12
    before = answers(tiny_model, train, toy / "before.jsonl", toy)
    run_swift("sft", [*MODEL_ARGS, "--model", tiny_model, "--tuner_type", "full", "--freeze_vit", "false",
                      "--dataset", str(train), "--max_steps", "60", "--per_device_train_batch_size", "4",
                      "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
                      "--weight_decay", "0", "--save_steps", "20", *COMMON, "--logging_steps", "5",
                      "--output_dir", str(toy / "sft")],
              toy / "sft.log", timeout=1200)
    return {"before": before, "ckpt": {s: sorted((toy / "sft").glob(f"v*/checkpoint-{s}"))[-1] for s in (20, 40, 60)}}


def test_sft_learns_the_answer_format_on_toy_images(toy, sft):
    train = toy / "prep" / "swift" / "train.jsonl"
    assert validity(sft["before"]) == 0.0, sft["before"]  # the random model: no valid answer
    after_sft = answers(sft["ckpt"][60], train, toy / "after_sft.jsonl", toy)
    assert validity(after_sft) >= 0.9, after_sft
    print(f"format validity {validity(sft['before'])} -> {validity(after_sft)} after 60 SFT steps")


def test_grpo_raises_the_reward_on_its_own_prompts(toy, sft, monkeypatch):
    train, rows = toy / "prep" / "swift" / "train.jsonl", read_jsonl(toy / "prep" / "swift" / "train_grpo.jsonl")
    assert [r["images"] for r in read_jsonl(train)] == [r["images"] for r in rows]  # one order: answers <-> solutions
    start = sft["ckpt"][40]
    before = greedy_reward(answers(start, train, toy / "before_grpo.jsonl", toy), rows)
    assert before < 1.5, before  # room to improve: the start's answers are not all well formed
    monkeypatch.setenv("GETOK_REWARD_KWARGS", json.dumps({"think": False}))
    run_swift("rlhf", ["--rlhf_type", "grpo", "--use_vllm", "false", *MODEL_ARGS, "--model", str(start),
                       "--tuner_type", "full", "--reward_funcs", "getok_grid",
                       "--dataset", str(toy / "prep" / "swift" / "train_grpo.jsonl"), "--max_steps", "10",
                       "--num_generations", "8", "--per_device_train_batch_size", "32",
                       "--gradient_accumulation_steps", "1", "--max_completion_length", "16", "--temperature", "1.0",
                       "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
                       "--beta", "0", "--save_steps", "10", "--logging_steps", "1", *COMMON,
                       "--output_dir", str(toy / "grpo")],
              toy / "grpo.log", timeout=1200)
    ckpt = sorted((toy / "grpo").glob("v*/checkpoint-10"))[-1]
    after = greedy_reward(answers(ckpt, train, toy / "after_grpo.jsonl", toy), rows)
    assert after > before + 0.1, (before, after)
    print(f"greedy getok_grid reward on its own prompts {before:.3f} -> {after:.3f} after 10 GRPO steps")
