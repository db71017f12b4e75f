"""``getok prepare --engine ray`` (Ray Data actors) against the local engine: same bytes, same resume.

One local cluster (``ray.init(num_cpus=2)``) for the module. The data: the sample dataset's
``val`` split (14 images, 59 samples, 6 of the images with masks) with proposals from a tiny
random SAM checkpoint (``getok_core.decoders.tiny_sam``) on a 16 x 16 grid: 4-6 s per mask image on a
busy core, nearly all in segment-anything's mask upsampling, so the resume test starts from the
local run's proposals cache and only its second half runs SAM. Torch runs one thread in this
process (``set_num_threads``) and in the actors (Ray sets ``OMP_NUM_THREADS`` from their one CPU),
so both engines run the same kernels.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.verl
import ray  # noqa: E402  (tests/verl run in the verl environment: a missing package fails)
import segment_anything  # noqa: E402,F401
import torch  # noqa: E402

from getok_core.data.sample_data import write_sample_dataset  # noqa: E402
from getok_core.data.store import RecordStore  # noqa: E402
from getok_core.prepare import PrepareConfig, prepare  # noqa: E402
from getok_core.prepare.worker import ImageWorker  # noqa: E402
from getok_core.decoders.tiny_sam import save_tiny_sam  # noqa: E402

RECORDS = "records/shard-00000-of-00001.jsonl"


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def cluster():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    temp = tempfile.mkdtemp(prefix="gpr")  # short: Ray's socket paths live under _temp_dir
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root)
    ckpt = save_tiny_sam(root / "tiny_sam.pt")
    return root, ckpt


def config(data, out, **kw) -> PrepareConfig:
    root, ckpt = data
    base = dict(dataset="sample", root=str(root), out=str(out), split="val", proposals="sam", sam_model="tiny",
                sam_checkpoint=str(ckpt), grid_size=16, progress=False)
    return PrepareConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(cluster, data, tmp_path_factory):
    """``--engine local``, uninterrupted: the bytes every Ray run must give."""
    out = tmp_path_factory.mktemp("local")
    summary = prepare(config(data, out), log=quiet)
    assert summary["masks"] > 0 and summary["ok"] > 0
    return out


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(ref: Path, out: Path):
    """Every file byte for byte, except the records log, whose lines come in completion order."""
    a, b = files(ref), files(out)
    assert sorted(a) == sorted(b)
    for name in a:
        if name == RECORDS:
            assert sorted(a[name].splitlines()) == sorted(b[name].splitlines())
        else:
            assert a[name] == b[name], name


def wait_for_idle_cluster(timeout=60.0):
    """The actors of a finished or abandoned Ray Data run give their CPUs back."""
    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.time() < deadline, f"actors still hold CPUs: {ray.available_resources()}"
        time.sleep(0.5)


def test_ray_engine_gives_the_local_bytes(cluster, data, reference, tmp_path, monkeypatch):
    def not_here(self, samples):  # the driver hands every image to the actors (other processes)
        raise AssertionError("the Ray engine ran an image in the driver")

    monkeypatch.setattr(ImageWorker, "__call__", not_here)
    out = tmp_path / "ray"
    logs = []
    summary = prepare(config(data, out, engine="ray", ray_actors=2), log=logs.append)
    assert any("Ray engine: 14 images over 2 actor(s)" in m for m in logs), logs
    assert summary["ok"] == json.loads((reference / "summary.json").read_text())["ok"]
    assert len(list((out / "proposals").rglob("*.json.gz"))) == 6
    assert_same_tree(reference, out)
    wait_for_idle_cluster()


def test_interrupted_ray_run_resumes_without_redoing_images(cluster, data, reference, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    shutil.copytree(reference / "proposals", out / "proposals")  # a shared cache: no SAM work before the kill
    real_write = RecordStore.write
    calls = {"n": 0}

    def killed_after_three_images(self, records):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated kill of the driver")
        real_write(self, records)

    monkeypatch.setattr(RecordStore, "write", killed_after_three_images)
    with pytest.raises(KeyboardInterrupt):
        prepare(config(data, out, engine="ray", ray_actors=1), log=quiet)
    monkeypatch.setattr(RecordStore, "write", real_write)
    wait_for_idle_cluster()  # closing the run stopped its actors
    assert not (out / "summary.json").exists()
    first = (out / RECORDS).read_bytes()
    done = [json.loads(line) for line in first.splitlines()]
    done_keys = {r["sample"]["image_key"] for r in done}
    assert len(done_keys) == 3
    # proposals are cached per image: with the cache gone, the files the rerun writes count the
    # mask images it sends to the actors; the first run's part must hold mask images, or this could not fail
    assert any(r["sample"]["task"] == "seg" and r["sample"]["targets"] for r in done)
    shutil.rmtree(out / "proposals")

    logs = []
    prepare(config(data, out, engine="ray", ray_actors=2), log=logs.append)
    assert any(f"{len(done)} samples already done, {59 - len(done)} to do" in m for m in logs), logs
    assert any("Ray engine: 11 images over 2 actor(s)" in m for m in logs), logs
    final = (out / RECORDS).read_bytes()
    assert final.startswith(first)
    ids = [json.loads(line)["sample_id"] for line in final.splitlines()]
    assert len(ids) == len(set(ids)) == 59
    redone = [json.loads(line) for line in final[len(first):].splitlines()]
    assert not {r["sample"]["image_key"] for r in redone} & done_keys
    mask_images = {r["sample"]["image_key"] for r in redone if r["sample"]["task"] == "seg" and r["sample"]["targets"]}
    assert len(list((out / "proposals").rglob("*.json.gz"))) == len(mask_images)
    a, b = (files(d) for d in (reference, out))
    outputs = sorted(k for k in a if not k.startswith("proposals/") and k != RECORDS)
    assert "summary.json" in outputs and "verl/val.parquet" in outputs
    assert outputs == sorted(k for k in b if not k.startswith("proposals/") and k != RECORDS)
    for name in outputs:
        assert a[name] == b[name], name


def test_cli_joins_a_running_cluster_with_region_proposals(cluster, data, tmp_path):
    root, _ = data
    local = tmp_path / "local"
    prepare(PrepareConfig(dataset="sample", root=str(root), out=str(local), split="val", grid_size=16,
                          progress=False), log=quiet)
    out = tmp_path / "cli"
    exe = shutil.which("getok", path=str(Path(sys.executable).parent))
    cmd = [exe, "prepare", "--dataset", "sample", "--root", str(root), "--out", str(out), "--split", "val",
           "--grid-size", "16", "--no-progress", "--engine", "ray", "--address", cluster, "--ray-actors", "2",
           "--cpus-per-actor", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Ray engine: 14 images over 2 actor(s), 1 CPU / 0 GPU each" in run.stdout
    assert_same_tree(local, out)
    assert ray.is_initialized()  # the CLI left the cluster it joined running
    wait_for_idle_cluster()


@pytest.mark.parametrize("kw, message", [
    (dict(gpus_per_actor=0.5), "pass --device cuda"),
    (dict(device="cuda"), "needs --gpus-per-actor > 0"),
    (dict(workers=2), "use --ray-actors"),
    (dict(ray_actors=0), "--ray-actors must be an int >= 1"),
    (dict(cpus_per_actor=-1.0), "must be >= 0"),
])
def test_bad_ray_settings_fail_before_anything_is_written(data, tmp_path, kw, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        prepare(config(data, out, engine="ray", **kw), log=quiet)
    assert not out.exists()


def test_missing_ray_is_a_clear_error(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    out = tmp_path / "out"
    with pytest.raises(ImportError, match=r"pip install 'ray\[data\]'"):
        prepare(config(data, out, engine="ray"), log=quiet)
    assert not out.exists()
    assert PrepareConfig(dataset="d", root="r", out="o", engine="ray").identity() == \
        PrepareConfig(dataset="d", root="r", out="o").identity()  # the engine is no setting of the data
