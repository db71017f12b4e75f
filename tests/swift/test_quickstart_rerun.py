"""recipes/quickstart.sh is rerunnable into the same output folder.

The real recipe runs twice into one folder, small (STEPS=2 swift sft steps, MAX_NEW_TOKENS=8), in
this environment (GETOK_SWIFT_VENV): every step runs for real, swift sft, swift infer --adapters
and getok eval included (and, on the second run, the constrained step: swift export, getok predict
--constrained, getok eval). ``swift infer --result_path`` appends to an existing file, so without the
recipe's cleanup the second run's infer.jsonl would hold every answer twice and getok eval would
refuse it. About 3.5 minutes on 2 CPU cores (the first run prepares the data and builds the model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.swift
import swift  # noqa: E402,F401  (the swift environment: a missing package fails)

REPO = Path(__file__).resolve().parents[2]


def run_quickstart(out: Path, constrained: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "GETOK_OUT": str(out), "STEPS": "2", "MAX_NEW_TOKENS": "8",
           "GETOK_SWIFT_VENV": sys.prefix, "CONSTRAINED": "1" if constrained else "0"}
    env.pop("GETOK_GRID_SIZE", None)
    return subprocess.run(["bash", str(REPO / "recipes" / "quickstart.sh")], env=env, cwd=out,
                          capture_output=True, text=True, timeout=600)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quickstart_runs_twice_into_one_folder(tmp_path):
    out = tmp_path / "quickstart"
    out.mkdir()
    counts, metrics = [], []
    for attempt in (1, 2):  # the constrained step (6) on the second run only
        proc = run_quickstart(out, constrained=attempt == 2)
        assert proc.returncode == 0, f"run {attempt} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "quickstart: done" in proc.stdout
        counts.append(len(rows(out / "infer.jsonl")))
        metrics.append(json.loads((out / "report" / "metrics.json").read_text()))
    n_val = len(rows(out / "data" / "easyr1" / "val.jsonl"))
    assert counts == [n_val, n_val]          # one answer per ground truth, both times
    assert metrics[1]["_meta"]["missing_predictions"] == 0
    assert len(list((out / "sft").glob("v*"))) == 1   # the rerun replaced swift sft's versioned folder
    # step 6: the same prompts under the grammar, every answer valid, one per ground truth
    assert "with the grammar on (getok predict --constrained)" in proc.stdout
    constrained = json.loads((out / "report_constrained" / "metrics.json").read_text())
    assert constrained["_meta"]["missing_predictions"] == 0
    tasks = {k: v for k, v in constrained.items() if not k.startswith("_")}
    assert sum(v["n"] for v in tasks.values()) == n_val
    assert all(v["format_validity"] == 1.0 for v in tasks.values()), tasks
    assert len(rows(out / "constrained" / "predictions.jsonl")) == n_val
