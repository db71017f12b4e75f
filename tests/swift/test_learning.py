"""Training learns (CI size): on a handful of toy images (``getok sample --toy``), the real
``swift sft`` brings the tiny model's format validity from 0 to >= 0.9 without constrained
decoding. It can fail: a broken label mask or GETok rows that do not train leave validity at 0.
(A GRPO check of the same size, mean sampled ``getok_grid`` reward rising over 8 steps, moved by
less than its step-to-step noise, so it is not here: ``bench/bench_learning.py`` measures GRPO.)
``bench/bench_learning.py`` is the full-size version (held-out images, grid vs text, seeds)."""

from __future__ import annotations

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


def test_sft_learns_the_answer_format_on_toy_images(toy, tiny_model):
    train = toy / "prep" / "swift" / "train.jsonl"
    assert 4 <= len(read_jsonl(train)) <= 12
    before = answers(tiny_model, train, toy / "before.jsonl", toy)
    assert validity(before) == 0.0, before  # the random model: no valid answer

    run_swift("sft", [*MODEL_ARGS, "--model", tiny_model, "--tuner_type", "full", "--freeze_vit", "false",
                      "--dataset", str(train), "--max_steps", "60", "--per_device_train_batch_size", "4",
                      "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
                      "--weight_decay", "0", "--save_steps", "60", *COMMON, "--logging_steps", "5",
                      "--output_dir", str(toy / "sft")],
              toy / "sft.log", timeout=1200)
    sft_ckpt = sorted((toy / "sft").glob("v*/checkpoint-60"))[-1]
    after_sft = answers(sft_ckpt, train, toy / "after_sft.jsonl", toy)
    assert validity(after_sft) >= 0.9, after_sft
    print(f"format validity {validity(before)} -> {validity(after_sft)} after 60 SFT steps")
