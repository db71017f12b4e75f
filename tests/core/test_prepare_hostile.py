"""``getok prepare`` under hostile input (issue 18): concurrent runs into one OUT, stale locks,
large images (the pixel bound, set low on small images), truncated images for every task,
duplicate sample ids, stale temporary files, skip kinds in ``summary.json``."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import getok_core
from getok_core.data.images import work_size
from getok_core.data.masks import decode_rle
from getok_core.data.rows import SKIP_KINDS
from getok_core.data.sample_data import write_sample_dataset
from getok_core.data.store import STALE_AFTER_S, FolderLock, LockHeld, host_name
from getok_core.decoders.region import region_labels
from getok_core.prepare import PrepareConfig, prepare
from getok_core.prepare.proposals import (RegionProposer, grid_pixels, nearest_index,
                                          region_proposals)

QUIET = {"log": lambda *a: None}
REPO = str(Path(getok_core.__file__).resolve().parents[1])


def cli_env() -> dict:
    """The environment of a ``getok`` subprocess running this checkout (not another installed copy)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def getok_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "getok_core.cli", *args]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def picture(w=64, h=48, seed=0) -> np.ndarray:
    """Flat coloured rectangles (regions felzenszwalb separates at any scale) on a grey ground."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        img[y0:y0 + rng.integers(6, h // 2), x0:x0 + rng.integers(6, w // 2)] = rng.integers(0, 255, 3)
    return img


def jsonl_dataset(folder: Path, rows: list[dict], images: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        Image.fromarray(img).save(folder / name)
    with open(folder / "data.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return folder


def seg_row(rid, image="a.png", poly=((8, 8), (40, 8), (40, 30), (8, 30))):
    return {"id": rid, "image": image, "expressions": ["the thing"], "targets": [{"polygon": [list(p) for p in poly]}]}


def cfg(root, out, **kw) -> PrepareConfig:
    return PrepareConfig(dataset="jsonl", root=str(root), out=str(out), formats=("swift",), progress=False, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A two-image JSONL dataset (seg, box and point rows) and one uninterrupted run of it."""
    root = jsonl_dataset(tmp_path_factory.mktemp("small"), [
        seg_row("s1"), seg_row("s2", "b.png", ((20, 10), (60, 10), (60, 40))),
        {"id": "b1", "image": "a.png", "expressions": ["a box"], "targets": [{"box": [4, 4, 30, 20]}]},
        {"id": "p1", "image": "b.png", "expressions": ["a dot"], "targets": [{"points": [[10, 12]]}]},
    ], {"a.png": picture(), "b.png": picture(seed=1)})
    ref = tmp_path_factory.mktemp("small_ref")
    summary = prepare(cfg(root, ref), **QUIET)
    assert summary["ok"] == 4
    return root, ref


# ---------------------------------------------------------------------- 1. locks
def test_two_concurrent_prepares_never_change_the_bytes(tmp_path_factory):
    """The issue's repro (two `getok prepare` into one OUT at once), on the sample's val split."""
    sample = tmp_path_factory.mktemp("sample")
    write_sample_dataset(sample)
    ref = tmp_path_factory.mktemp("sample_ref")
    prepare(PrepareConfig(dataset="sample", root=str(sample), out=str(ref), split="val", formats=("swift",),
                          progress=False), **QUIET)
    out = tmp_path_factory.mktemp("sample_two") / "o"
    cmd = getok_cmd("prepare", "--dataset", "sample", "--root", str(sample), "--out", str(out), "--split", "val",
                    "--formats", "swift", "--no-progress")
    procs = [subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    refused = [err for rc, err in results if rc == 2]
    for err in refused:  # the second one refuses at once, naming the holder
        assert "in use by pid" in err and f"on host {host_name()}" in err, err
    for name in ("swift/val.jsonl", "swift/val_refine.jsonl", "swift/val_grpo.jsonl", "summary.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert len((out / "swift/val.jsonl").read_text().splitlines()) == json.loads(
        (ref / "summary.json").read_text())["rows"]["swift/val.jsonl"]


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(small, tmp_path):
    root, ref = small
    out = tmp_path / "o"
    lock = out / "records" / "shard-00000-of-00001.lock"
    with FolderLock(lock):  # a live holder (this process)
        with pytest.raises(LockHeld, match=f"in use by pid {os.getpid()} on host {host_name()}"):
            prepare(cfg(root, out), **QUIET)
    # a lock file naming a dead process of this host: taken over at once
    lock.write_text(json.dumps({"pid": dead_pid(), "host": host_name(), "started": "then"}))
    logs = []
    assert prepare(cfg(root, out), log=logs.append) is not None
    assert any("took over the lock" in m for m in logs)
    assert (out / "swift/all.jsonl").read_bytes() == (ref / "swift/all.jsonl").read_bytes()
    assert lock.read_text() == ""  # released: emptied, not removed


def test_another_hosts_lock_is_taken_over_only_after_its_heartbeat_is_stale(small, tmp_path):
    root, _ = small
    out = tmp_path / "o"
    lock = out / "records" / "shard-00000-of-00001.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "started": "now"}))
    with pytest.raises(LockHeld, match="pid 1 on host another-host"):
        prepare(cfg(root, out), **QUIET)
    old = time.time() - STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    assert prepare(cfg(root, out), **QUIET) is not None


def test_shards_have_their_own_locks(small, tmp_path):
    root, ref = small
    out = tmp_path / "o"
    with FolderLock(out / "records" / "shard-00000-of-00002.lock"):  # shard 0 busy elsewhere
        assert prepare(cfg(root, out, shard=(1, 2)), **QUIET) is None
    assert prepare(cfg(root, out, shard=(0, 2)), **QUIET) is not None
    assert (out / "swift/all.jsonl").read_bytes() == (ref / "swift/all.jsonl").read_bytes()


def test_records_written_twice_give_each_row_once(small, tmp_path):
    """An OUT doubled by the old bug (records appended by two runs): a rerun writes single rows."""
    root, ref = small
    out = tmp_path / "o"
    prepare(cfg(root, out), **QUIET)
    records = out / "records" / "shard-00000-of-00001.jsonl"
    records.write_bytes(records.read_bytes() * 2)
    (out / "swift" / "all.jsonl").unlink()
    logs = []
    prepare(cfg(root, out), log=logs.append)
    assert any("written twice" in m for m in logs)
    for name in ("swift/all.jsonl", "summary.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


# ---------------------------------------------------------------------- 2. the pixel bound
def test_work_size_keeps_the_aspect_within_the_bound():
    assert work_size((64, 48), 0) == (64, 48) and work_size((64, 48), 64 * 48) == (64, 48)
    w, h = work_size((4000, 3000), 4_000_000)
    assert w * h <= 4_000_000 and abs(w / h - 4 / 3) < 1e-3 and (w, h) == (2309, 1732)
    assert work_size((100000, 1), 10) == (10, 1)


def test_nearest_index_takes_the_pixel_containing_each_centre():
    for n_full, n_small in ((48, 17), (5, 5), (7, 1), (1000, 333)):
        idx = nearest_index(n_full, n_small)
        centre = (np.arange(n_full) + 0.5) * n_small / n_full
        assert np.array_equal(idx, np.floor(centre).astype(int))
    assert np.array_equal(nearest_index(9, 9), np.arange(9))


def test_bounded_region_proposals_map_back_exactly():
    img = picture(96, 72)
    n, bound = 8, 40 * 30
    p = region_proposals(img, n, max_pixels=bound)
    sw, sh = work_size((96, 72), bound)
    assert p.image_size == (96, 72) and p.meta["work_size"] == [sw, sh] and "max_pixels=1200" in p.method
    small = np.asarray(Image.fromarray(img).resize((sw, sh), Image.Resampling.BOX))
    labels = region_labels(small)[nearest_index(72, sh)[:, None], nearest_index(96, sw)[None, :]]
    rows, cols = grid_pixels((96, 72), n)
    for k in range(n * n):  # each proposal: the upsampled region of its grid point's pixel
        m = decode_rle(p.rles[k])
        assert np.array_equal(m, labels == labels[rows[k], cols[k]]) and m[rows[k], cols[k]]
    # within the bound, or no bound: the unbounded result, bit for bit
    assert region_proposals(img, n, max_pixels=96 * 72).rles == region_proposals(img, n).rles
    assert RegionProposer(max_pixels=0).tag == RegionProposer().tag != RegionProposer(max_pixels=5).tag


# bounded SAM proposals (a real tiny SAM): tests/swift/test_sam_proposals.py


def test_prepare_with_a_low_bound(small, tmp_path):
    root, ref = small
    out = tmp_path / "o"
    summary = prepare(cfg(root, out, max_pixels=500), **QUIET)
    assert summary["ok"] == 4 and summary["config"]["max_pixels"] == 500
    assert json.loads((out / "config.json").read_text())["max_pixels"] == 500
    # within the bound the output is the unbounded one
    same = prepare(cfg(root, tmp_path / "big", max_pixels=64 * 48), **QUIET)
    assert (tmp_path / "big" / "swift/all.jsonl").read_bytes() == (ref / "swift/all.jsonl").read_bytes()
    assert same["ok"] == 4
    with pytest.raises(ValueError, match="max-pixels"):
        prepare(cfg(root, tmp_path / "neg", max_pixels=-1), **QUIET)


# ---------------------------------------------------------------------- 6, 7, 10. skips
def truncated_png(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not


def test_truncated_image_skips_rows_of_every_task_with_file_and_line(tmp_path):
    rows = [{"id": "box", "image": "cut.png", "expressions": ["a box"], "targets": [{"box": [4, 4, 30, 20]}]},
            {"id": "pt", "image": "cut.png", "expressions": ["a dot"], "targets": [{"points": [[10, 12]]}]},
            seg_row("seg", "cut.png"), seg_row("fine", "a.png")]
    root = jsonl_dataset(tmp_path / "d", rows, {"a.png": picture()})
    truncated_png(root / "cut.png", picture(seed=2))
    summary = prepare(cfg(root, tmp_path / "o"), **QUIET)
    assert summary["ok"] == 1 and summary["skipped"] == 3
    assert summary["skip_reasons"] == {"image-unreadable": 3}
    entries = {e["sample_id"]: e for e in summary["skipped_rows"]}
    for sid, line in (("data/box", 1), ("data/pt", 2), ("data/seg", 3)):
        e = entries[sid]
        assert e["stage"] == "image" and e["field"] == "image" and e["row"] == f"line {line}"
        assert e["source"] == str(root / "data.jsonl") and e["image"].endswith("cut.png")
        assert "truncated" in e["reason"] or "cannot read" in e["reason"]


def test_duplicate_ids_skip_the_later_rows_with_their_lines(tmp_path):
    rows = [seg_row("r1"), {"id": "r1", "image": "a.png", "expressions": ["again"], "targets": [{"box": [1, 1, 9, 9]}]},
            seg_row("r2"), seg_row("r1")]
    root = jsonl_dataset(tmp_path / "d", rows, {"a.png": picture()})
    summary = prepare(cfg(root, tmp_path / "o"), **QUIET)
    assert (tmp_path / "o" / "summary.json").exists()
    assert summary["ok"] == 2 and summary["skipped"] == 2 and summary["skip_reasons"] == {"duplicate-id": 2}
    dups = [e for e in summary["skipped_rows"] if e["kind"] == "duplicate-id"]
    assert [e["row"] for e in dups] == ["line 2", "line 4"]
    assert all(e["stage"] == "loader" and e["field"] == "id" and "first at line 1" in e["reason"] for e in dups)
    sft = (tmp_path / "o" / "swift" / "all.jsonl").read_text()  # rows without a split: "all"
    assert "again" not in sft  # the first row of r1 is the one kept


def test_skip_reasons_are_kinds_with_values_in_the_rows(tmp_path):
    rows = [{"id": "inv", "image": "a.png", "expressions": ["x"], "targets": [{"box": [30, 4, 10, 20]}]},
            {"id": "inv2", "image": "a.png", "expressions": ["x"], "targets": [{"box": [31, 5, 11, 21]}]},
            {"id": "gone", "image": "missing.png", "expressions": ["x"], "targets": [{"box": [1, 1, 5, 5]}]},
            {"id": "pt", "image": "a.png", "expressions": ["x"], "targets": [{"points": [[500, 1]]}]},
            seg_row("ok")]
    root = jsonl_dataset(tmp_path / "d", rows, {"a.png": picture()})
    (root / "data.jsonl").write_text((root / "data.jsonl").read_text() + "{not json\n")
    summary = prepare(cfg(root, tmp_path / "o"), **QUIET)
    assert summary["skip_reasons"] == {"bad-box": 2, "image-missing": 1, "bad-point": 1, "not-json": 1}
    assert set(summary["skip_reasons"]) <= set(SKIP_KINDS)
    reasons = [e["reason"] for e in summary["skipped_rows"]]
    assert any("[30, 4, 10, 20]" in r for r in reasons) and any("[31, 5, 11, 21]" in r for r in reasons)
    assert any("missing.png" in r for r in reasons)


# ---------------------------------------------------------------------- 9. temporary files
def test_stale_temporary_files_are_removed_and_only_those(small, tmp_path):
    root, ref = small
    out = tmp_path / "o"
    prepare(cfg(root, out), **QUIET)
    host, dead = host_name(), dead_pid()
    stale = [out / "swift" / f".all.jsonl.{dead}@{host}.abc12345.tmp",
             out / f".summary.json.{dead}@{host}.x_y.tmp",
             out / "proposals" / "ab" / f".cd.json.gz.{dead}@{host}.q1w2e3r4.tmp",
             out / "records" / ".loader-skips.json.k2j3h4g5.tmp"]          # an older version's, old
    live = [out / "swift" / f".all.jsonl.{os.getpid()}@{host}.zzzzzzzz.tmp",  # a live writer's
            out / "swift" / f".all.jsonl.{dead}@another-host.zzzzzzzz.tmp",  # another host's, recent
            out / "swift" / ".mine.tmp", out / "swift" / "notes.txt"]          # not ours
    for p in stale + live:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("partial")
    old = time.time() - STALE_AFTER_S - 5
    os.utime(stale[-1], (old, old))
    logs = []
    prepare(cfg(root, out), log=logs.append)
    assert not any(p.exists() for p in stale), [p for p in stale if p.exists()]
    assert all(p.exists() for p in live)
    assert any("removed 4 temporary" in m for m in logs)
    assert (out / "swift/all.jsonl").read_bytes() == (ref / "swift/all.jsonl").read_bytes()
