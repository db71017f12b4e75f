"""``getok prepare``: annotations -> GETok training data for ms-swift, EasyR1 and verl.

Per image: mask proposals (one per grid point, cached on disk), then per referring expression
the greedy ``<seg>`` points (SPEC §4), the answer text, the refinement conversation (SPEC §5) and
the ground truth that GRPO rewards read. Results go to an append-only records file per shard
(resumable: kill it, rerun it, nothing is redone or duplicated); when every shard is done, the
final files are written atomically from the records, one per sample id, sorted by it, so their
bytes do not depend on interruptions, worker counts, shard order or a record written twice.

One run per shard at a time: each shard holds ``records/shard-I-of-N.lock``
(``data.store.FolderLock``: a second run refuses at once, naming the holder; a dead holder's lock
is taken over), and the outputs are written under ``outputs.lock``. A run first removes the
temporary files that killed runs left (``data.store.remove_stale_temps``).

Output folder::

    config.json                   the settings (a rerun with other settings is refused)
    proposals/                    cached proposals (gzip'd RLE JSON per image)
    records/shard-I-of-N.jsonl    one record per sample (ok or skipped, with the reason)
    records/shard-I-of-N.lock     the lock of the run preparing that shard (pid, host; empty: free)
    records/loader-skips.json     rows the dataset loader could not use
    swift/SPLIT.jsonl             SFT rows (question, answer)
    swift/SPLIT_refine.jsonl      SFT two-turn rows (proposal, then offsets)
    swift/SPLIT_grpo.jsonl        ms-swift GRPO rows (user turn, ground truth in `solution`)
    easyr1/SPLIT.jsonl            EasyR1 GRPO rows (prompt, ground-truth JSON)
    verl/SPLIT.parquet            verl GRPO rows (verl's single-turn agent loop)
    verl/SPLIT_refine.parquet     the same rows with ``agent_name: getok_refine`` (GETok's agent loop)
    summary.json                  counts, every skipped row with its reason, mean tokens per
                                  mask, mean achieved IoU, offset-category histogram
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data import groundtruth
from ..data import writers
from ..data.loaders import load_dataset
from ..data.offsets import CATEGORIES
from ..data.records import Sample, Skipped
from ..data.rows import skip_kind
from ..data.store import FolderLock, RecordStore, atomic_path, read_records, remove_stale_temps
from .config import FORMATS, PrepareConfig
from .worker import ImageWorker, init_process_worker, process_work, sample_from_dict


# ---------------------------------------------------------------------- the run
def _shard_of(image_key: str, shards: int) -> int:
    return zlib.crc32(image_key.encode("utf-8")) % shards


def _check_config(cfg: PrepareConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    ident = cfg.identity()
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("max_pixels", 0)  # written before the bound existed: no bound
        if old != ident:
            diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
            raise ValueError(f"{out} holds data prepared with other settings ({', '.join(diff)}); "
                             "use a new --out, or delete it")
    else:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(ident, indent=1, sort_keys=True) + "\n")


def _check_settings(cfg: PrepareConfig) -> None:
    i, n = cfg.shard
    if not (0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need 0 <= I < N")
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; choose from {FORMATS}")
    if isinstance(cfg.max_pixels, bool) or not isinstance(cfg.max_pixels, int) or cfg.max_pixels < 0:
        raise ValueError(f"--max-pixels must be an int >= 0 (0: no bound), got {cfg.max_pixels!r}")
    if cfg.engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {cfg.engine!r}: local or ray")
    if cfg.engine == "ray":
        from .ray_engine import check_ray_engine

        check_ray_engine(cfg)
    if "verl" in cfg.formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ValueError("--formats verl writes parquet and needs pyarrow (pip install pyarrow), "
                             "or leave verl out of --formats") from exc


#: The folders of OUT where runs write temporary files (``proposals`` with its subfolders).
TEMP_FOLDERS = (".", "records", "swift", "easyr1", "verl")


def remove_temps(out: Path) -> list[str]:
    """Remove the temporary files killed runs left in ``out`` (``data.store.remove_stale_temps``)."""
    removed = [p for d in TEMP_FOLDERS for p in remove_stale_temps(out / d)]
    return removed + remove_stale_temps(out / "proposals", recursive=True)


def prepare(cfg: PrepareConfig, log=print) -> dict | None:
    """Run (or resume) one shard; when all shards are done, write the outputs and return the
    summary (None while other shards are still missing). Raises ``data.store.LockHeld`` (an
    OSError) when another live run prepares this shard of ``cfg.out``."""
    _check_settings(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    i, n = cfg.shard
    with FolderLock(out / "records" / f"shard-{i:05d}-of-{n:05d}.lock", what=f"{out} (shard {i}/{n})") as lock:
        if lock.took_over:
            log(f"prepare: took over the lock of pid {lock.took_over.get('pid')} on host "
                f"{lock.took_over.get('host')}, which is gone")
        removed = remove_temps(out)
        if removed:
            log(f"prepare: removed {len(removed)} temporary file(s) left by an interrupted run")
        _check_config(cfg)
        return _run_shard(cfg, log)


def load_samples(cfg: PrepareConfig) -> tuple[list[Sample], list[Skipped], dict]:
    """The dataset's samples (one per sample id: a repeated id is a loader skip, the first row
    kept), the loader's skips, and where each sample comes from (id -> (file, row))."""
    skipped: list[Skipped] = []
    origins: dict = {}
    samples, seen = [], set()
    for s in load_dataset(cfg.dataset, cfg.root, cfg.split, skipped=skipped, origins=origins):
        if s.sample_id in seen:  # a loader that does not report repeats itself
            src, row = origins.get(s.sample_id, ("", ""))
            skipped.append(Skipped(source=src or s.image_path, row=row or s.sample_id, field="id",
                                   reason=f"duplicate sample id {s.sample_id!r}: this row is skipped"))
            continue
        seen.add(s.sample_id)
        samples.append(s)
    return samples, skipped, origins


def _locate(records: list[dict], origins: dict) -> list[dict]:
    """Skip records with the file and row of their sample (``source``, ``row``)."""
    for r in records:
        if r["status"] != "ok":
            r["source"], r["row"] = origins.get(r["sample_id"], ("", ""))
    return records


def _run_shard(cfg: PrepareConfig, log) -> dict | None:
    out = Path(cfg.out)
    i, n = cfg.shard
    t0 = time.time()
    samples, skipped, origins = load_samples(cfg)
    with atomic_path(out / "records" / "loader-skips.json") as tmp:
        Path(tmp).write_text(json.dumps([asdict(s) for s in skipped], indent=1) + "\n")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.sample_id):
        if _shard_of(s.image_key, n) == i:
            groups[s.image_key].append(s)
    store = RecordStore(out / "records" / f"shard-{i:05d}-of-{n:05d}.jsonl")
    if store.truncated_bytes:
        log(f"prepare: resumed; dropped a partial record ({store.truncated_bytes} bytes) cut by an interruption")
    todo = [g for _, g in sorted(groups.items()) if not all(s.sample_id in store.done for s in g)]
    todo = [[s for s in g if s.sample_id not in store.done] for g in todo]
    n_done = sum(len(g) for g in groups.values()) - sum(len(g) for g in todo)
    log(f"prepare: {cfg.dataset} shard {i}/{n}: {len(groups)} images, {n_done} samples already done, "
        f"{sum(len(g) for g in todo)} to do ({len(skipped)} loader skips)")
    bar = _progress(len(todo), cfg.progress and sys.stderr.isatty())
    for recs in _image_records(cfg, todo, log):
        store.write(_locate(recs, origins))
        bar.update(1)
    bar.close()
    store.close()
    with atomic_path(out / "records" / f"shard-{i:05d}-of-{n:05d}.done") as tmp:
        Path(tmp).write_text(f"{len(store.done)}\n")
    missing = [k for k in range(n) if not (out / "records" / f"shard-{k:05d}-of-{n:05d}.done").exists()]
    if missing:
        log(f"prepare: shard {i}/{n} done; waiting for shard(s) {missing}: rerun any shard once they finish")
        return None
    with FolderLock(out / "outputs.lock", wait=True):  # shards finishing together write in turn
        summary = write_outputs(cfg, skipped, log=log)
    log(f"prepare: wrote {out} in {time.time() - t0:.1f} s: {summary['rows']}")
    return summary


def _image_records(cfg: PrepareConfig, todo: list[list[Sample]], log):
    """The records of every image group of ``todo``, by the configured engine."""
    if cfg.engine == "ray":
        from .ray_engine import ray_records

        yield from ray_records(cfg, todo, log=log)
    elif cfg.workers > 1 and cfg.proposals == "region":
        import multiprocessing as mp

        with mp.get_context("fork").Pool(cfg.workers, init_process_worker, (cfg,)) as pool:
            yield from pool.imap(process_work, todo, chunksize=1)
    else:
        worker = ImageWorker(cfg)
        for g in todo:
            yield worker(g)


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="image", desc="prepare")


# ---------------------------------------------------------------------- outputs
def write_outputs(cfg: PrepareConfig, loader_skips: list[Skipped], log=None) -> dict:
    """Write the training files and ``summary.json`` from every shard's records (one per sample
    id: a record appended twice is used once)."""
    out = Path(cfg.out)
    n = cfg.shard[1]
    repeated: list[str] = []
    records = read_records([out / "records" / f"shard-{k:05d}-of-{n:05d}.jsonl" for k in range(n)],
                           repeated=repeated)
    if repeated and log is not None:
        log(f"prepare: {len(repeated)} record(s) were written twice (e.g. {repeated[0]!r}); each is used once")
    ok = [r for r in records if r["status"] == "ok"]
    by_split: dict[str, list[dict]] = defaultdict(list)
    for r in ok:
        by_split[r["sample"]["split"] or "all"].append(r)

    rows: dict[str, int] = {}
    for split, recs in sorted(by_split.items()):
        samples = [sample_from_dict(r["sample"]) for r in recs]
        if "swift" in cfg.formats:
            sft, ref = [], []
            for r, s in zip(recs, samples):
                for e in range(len(s.expressions)):
                    q = writers.sample_question(s, e, cfg.template)
                    sft.append(writers.swift_row(s.image_path, q, r["answer"]))
                    if r["refine"]:
                        ref.append(writers.swift_row(s.image_path, q, r["refine"]["turn1"],
                                                     [(writers.REFINE_PROMPT, r["refine"]["turn2"])]))
            rows[f"swift/{split}.jsonl"] = writers.write_jsonl(out / "swift" / f"{split}.jsonl", sft)
            rows[f"swift/{split}_refine.jsonl"] = writers.write_jsonl(out / "swift" / f"{split}_refine.jsonl", ref)
        extra = [{"seg_upper_bound_iou": r["achieved_iou"]} if r["achieved_iou"] else None for r in recs]
        if "swift" in cfg.formats:
            grpo = [writers.swift_grpo_row(s.image_path, writers.sample_question(s, e, cfg.template),
                                           groundtruth.make_ground_truth(s, expression_index=e, extra=x))
                    for s, x in zip(samples, extra) for e in range(len(s.expressions))]
            rows[f"swift/{split}_grpo.jsonl"] = writers.write_jsonl(out / "swift" / f"{split}_grpo.jsonl", grpo)
        if "easyr1" in cfg.formats:
            er = [writers.easyr1_row_for(s, expression_index=e, template=cfg.template, extra=x)
                  for s, x in zip(samples, extra) for e in range(len(s.expressions))]
            rows[f"easyr1/{split}.jsonl"] = writers.write_jsonl(out / "easyr1" / f"{split}.jsonl", er)
        if "verl" in cfg.formats:
            vr, index = [], 0
            for s, x in zip(samples, extra):
                for e in range(len(s.expressions)):
                    vr.append(writers.verl_row_for(s, index=index, expression_index=e, template=cfg.template,
                                                   data_source=f"getok_{cfg.dataset}", extra=x))
                    index += 1
            if vr:
                rows[f"verl/{split}.parquet"] = writers.write_parquet(out / "verl" / f"{split}.parquet", vr)
                vr = [{**r, "agent_name": writers.REFINE_AGENT} for r in vr]
                rows[f"verl/{split}_refine.parquet"] = writers.write_parquet(
                    out / "verl" / f"{split}_refine.parquet", vr)

    summary = summarize(records, loader_skips, rows)
    summary["config"] = cfg.identity()
    with atomic_path(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def summarize(records: list[dict], loader_skips: list[Skipped], rows: dict[str, int]) -> dict:
    """Counts, skipped rows with reasons, mean tokens per mask, mean achieved IoU, histogram.

    ``skip_reasons``: the number of skipped rows per kind (``data.rows.SKIP_KINDS``);
    ``skipped_rows``: one entry per skipped row: ``stage`` (loader, image or sample), ``kind``,
    the row's ``source`` file and ``row`` (e.g. ``line 3``), ``field`` (as the row names it),
    ``reason`` (with the values), and for the image and sample stages ``sample_id`` and ``image``."""
    ok = [r for r in records if r["status"] == "ok"]
    skipped = [r for r in records if r["status"] != "ok"]
    ppm = [p for r in ok for p in r["points_per_mask"]]
    ious = [x for r in ok for x in r["achieved_iou"]]
    hist = Counter(c for r in ok if r["refine"] for c in r["refine"]["categories"])
    entries = [_skip_entry(r) for r in skipped] + [
        {"stage": "loader", "kind": skip_kind(s.field, s.reason), **asdict(s)} for s in loader_skips]
    reasons = Counter(e["kind"] for e in entries)
    tasks = Counter(r["sample"]["task"] for r in ok)
    return {
        "samples": len(records) + len(loader_skips),
        "ok": len(ok),
        "skipped": len(skipped) + len(loader_skips),
        "skip_reasons": dict(sorted(reasons.items())),
        "tasks": dict(sorted(tasks.items())),
        "no_target": sum(1 for r in ok if not r["sample"]["targets"]),
        "expressions": sum(len(r["sample"]["expressions"]) for r in ok),
        "masks": len(ppm),
        "mean_tokens_per_mask": round(float(np.mean(ppm)), 4) if ppm else None,
        "mean_achieved_iou": round(float(np.mean(ious)), 4) if ious else None,
        "refinement_conversations": sum(1 for r in ok if r["refine"]),
        "offset_categories": {c: hist.get(c, 0) for c in CATEGORIES},
        "rows": rows,
        "skipped_rows": entries,
    }


def _skip_entry(r: dict) -> dict:
    """The summary entry of a skip record (records of older versions lack stage, kind, row)."""
    return {"stage": r.get("stage", "sample"), "kind": r.get("kind") or skip_kind(r.get("field", ""), r["reason"]),
            "sample_id": r["sample_id"], "source": r.get("source", ""), "row": r.get("row", ""),
            "field": r.get("field", ""), "reason": r["reason"], "image": r.get("image", "")}


__all__ = ["prepare", "load_samples", "write_outputs", "summarize", "remove_temps", "TEMP_FOLDERS", "FORMATS",
           "PrepareConfig", "ImageWorker"]