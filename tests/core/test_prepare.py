"""``getok prepare`` end to end on the sample dataset: outputs, resumability, shards, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import getok_core
from getok_core import GetokVocab, parse_answer, parse_offsets
from getok_core.data import groundtruth
from getok_core.prepare import PrepareConfig, prepare
from getok_core.prepare.worker import ImageWorker
from getok_core.data.sample_data import write_sample_dataset

V = GetokVocab()


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root)
    return root


@pytest.fixture(scope="module")
def reference(sample_root, tmp_path_factory):
    """One uninterrupted single-shard run: the bytes every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    summary = prepare(PrepareConfig(dataset="sample", root=str(sample_root), out=str(out), progress=False),
                      log=lambda *a: None)
    return out, summary


OUTPUTS = ["swift/train.jsonl", "swift/train_refine.jsonl", "swift/val.jsonl", "swift/val_refine.jsonl",
           "easyr1/train.jsonl", "easyr1/val.jsonl", "verl/train.parquet", "verl/val.parquet",
           "verl/train_refine.parquet", "verl/val_refine.parquet", "summary.json"]


def same_outputs(a: Path, b: Path):
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_outputs_are_consistent(reference):
    out, summary = reference
    assert summary["ok"] + summary["skipped"] == summary["samples"]
    assert summary["tasks"]["seg"] > 0 and summary["tasks"]["point"] > 0 and summary["tasks"]["line"] > 0
    assert summary["no_target"] > 0
    assert 0.5 < summary["mean_achieved_iou"] <= 1.0 and summary["mean_tokens_per_mask"] >= 1
    assert sum(summary["offset_categories"].values()) == 16 * summary["refinement_conversations"]
    assert len(summary["skipped_rows"]) == summary["skipped"]
    for r in summary["skipped_rows"]:
        assert r["reason"] and r["source"]
    sft = rows(out / "swift/train.jsonl") + rows(out / "swift/val.jsonl")
    assert len(sft) == summary["expressions"]
    n_none = 0
    for row in sft:
        user, answer = row["messages"]
        assert user["role"] == "user" and user["content"].startswith("<image>")
        parsed = parse_answer(answer["content"], V)
        assert parsed.valid, (answer["content"], parsed.errors)
        n_none += parsed.no_target
        assert os.path.exists(row["images"][0])
    assert n_none > 0
    for row in rows(out / "swift/train_refine.jsonl"):
        _, turn1, ask, turn2 = row["messages"]
        proposal = parse_answer(turn1["content"], V)
        offs = parse_offsets(turn2["content"], proposal.instances, V)
        assert proposal.valid and offs.valid, (turn1, turn2, offs.errors)
        assert "<offset>" in ask["content"]
    er = rows(out / "easyr1/train.jsonl")
    assert len(er) == sum(1 for r in rows(out / "swift/train.jsonl"))
    for row in er:
        gt = groundtruth.loads(row["answer"], strict=True)
        assert row["prompt"].startswith("<image>") and gt["image_size"][0] > 0
        assert gt["no_target"] == (not gt["targets"])


def test_verl_parquet_rows(reference):
    import pyarrow.parquet as pq  # a core dependency (--formats verl is a default)
    out, _ = reference
    table = pq.read_table(out / "verl/train.parquet").to_pylist()
    assert len(table) == len(rows(out / "easyr1/train.jsonl"))
    assert [r["extra_info"]["index"] for r in table] == list(range(len(table)))
    for r in table[:20]:
        assert r["prompt"][0]["role"] == "user" and r["reward_model"]["style"] == "rule"
        groundtruth.loads(r["reward_model"]["ground_truth"], strict=True)
    # the refinement rows: the same rows, chosen by GETok's verl agent loop
    refine = pq.read_table(out / "verl/train_refine.parquet").to_pylist()
    assert {r["agent_name"] for r in table} == {"single_turn_agent"}
    assert {r["agent_name"] for r in refine} == {"getok_refine"}
    assert [{**r, "agent_name": "getok_refine"} for r in table] == refine


def test_workers_and_shards_give_the_same_bytes(sample_root, reference, tmp_path):
    ref, _ = reference
    par = tmp_path / "par"
    prepare(PrepareConfig(dataset="sample", root=str(sample_root), out=str(par), workers=2, progress=False),
            log=lambda *a: None)
    same_outputs(ref, par)
    sh = tmp_path / "sh"
    cfgs = [PrepareConfig(dataset="sample", root=str(sample_root), out=str(sh), shard=(i, 2), progress=False)
            for i in (1, 0)]
    assert prepare(cfgs[0], log=lambda *a: None) is None  # shard 0 still missing
    summary = prepare(cfgs[1], log=lambda *a: None)
    assert summary is not None
    for name in OUTPUTS[:-1]:
        assert (ref / name).read_bytes() == (sh / name).read_bytes(), name


def test_interrupted_run_resumes_to_identical_bytes(sample_root, reference, tmp_path, monkeypatch):
    ref, _ = reference
    out = tmp_path / "out"
    cfg = PrepareConfig(dataset="sample", root=str(sample_root), out=str(out), progress=False)
    calls = {"n": 0}
    real_call = ImageWorker.__call__

    def dying(self, samples):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt("simulated kill")
        return real_call(self, samples)

    monkeypatch.setattr(ImageWorker, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, log=lambda *a: None)
    monkeypatch.setattr(ImageWorker, "__call__", real_call)
    records = out / "records" / "shard-00000-of-00001.jsonl"
    # also cut the last record in half, as a kill during a write would
    data = records.read_bytes()
    records.write_bytes(data[: len(data) - 25])
    done_before = len(data[: len(data) - 25].splitlines()) - 1
    assert done_before > 0
    logs = []
    prepare(cfg, log=logs.append)
    assert any("dropped a partial record" in m for m in logs)
    same_outputs(ref, out)
    ids = [json.loads(line)["sample_id"] for line in records.read_text().splitlines()]
    assert len(ids) == len(set(ids))


def test_killed_process_resumes_to_identical_bytes(sample_root, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "killed"
    exe = shutil.which("getok", path=str(Path(sys.executable).parent))
    cmd = [exe, "prepare", "--dataset", "sample", "--root", str(sample_root), "--out", str(out), "--no-progress"]
    env = dict(os.environ)  # the subprocess runs this checkout, whatever copy the console script names
    env["PYTHONPATH"] = str(Path(getok_core.__file__).resolve().parents[1]) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    records = out / "records" / "shard-00000-of-00001.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    same_outputs(ref, out)


def test_other_settings_are_refused(sample_root, reference, tmp_path):
    ref, _ = reference
    with pytest.raises(ValueError, match="tau"):
        prepare(PrepareConfig(dataset="sample", root=str(sample_root), out=str(ref), tau=0.8, progress=False),
                log=lambda *a: None)


def test_bad_images_are_skipped_with_reasons(sample_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(sample_root, root)
    images = sorted((root / "images" / "train2014").glob("*.png"))
    images[0].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")        # corrupt
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(images[1])   # wrong size
    images[2].unlink()                                                   # missing
    summary = prepare(PrepareConfig(dataset="sample", root=str(root), out=str(tmp_path / "o"), progress=False,
                                    formats=("swift",)), log=lambda *a: None)
    def about(image):
        return [r for r in summary["skipped_rows"] if image.name in r.get("source", "") + r["reason"]]

    assert any("unreadable" in r["reason"] for r in about(images[0]))
    assert set(summary["skip_reasons"]) <= {"image-unreadable", "image-size-mismatch", "image-missing", "no-proposal"}
    # the loader checks image headers against the annotated size (source = annotation file + row)
    assert sum("size mismatch" in r["reason"] and "12x10" in r["reason"] for r in summary["skipped_rows"]) >= 4
    assert any("not found" in r["reason"] for r in about(images[2]))
    assert all(r["reason"] and r.get("source") for r in summary["skipped_rows"])
    assert summary["ok"] + summary["skipped"] == summary["samples"]
