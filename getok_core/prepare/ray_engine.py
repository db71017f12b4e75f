"""``getok prepare --engine ray``: the per-image work of ``prepare`` on a Ray cluster, with Ray Data.

``prepare`` (the driver) loads the dataset, leaves out the samples its records file already holds
and hands the remaining image groups to ``ray_records``. Each group (the samples of one image) is
one row of ``ray.data.from_items``, in a block of its own; ``map_batches`` sends the rows, one at a
time, to a fixed pool of ``ray_actors`` actors (``ActorPoolStrategy``), each reserving
``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs and holding one ``ImageWorker``
(``getok_core.prepare.worker``): the very code of the local engine, its proposer loaded once per
actor, its proposals cached in ``OUT/proposals``. The records of each image stream back to the driver as soon as it is done (in
completion order) and the driver appends them to the same records file, so an interrupted run
resumes exactly as a local one, and the final files, written from the records sorted by sample id,
are byte-identical to ``--engine local`` whatever the actor count (given the same device: SAM on a
GPU does not give the CPU's bits). Only the records file's line order depends on the engine.

Every node must see the dataset's images and ``OUT`` at the same paths (shared storage) and have
GETok installed. Ray is imported only here, when the engine is used.
"""

from __future__ import annotations

import pickle
from typing import Iterator

from .worker import ImageWorker

#: Rows of the Ray dataset: the pickled ``list[Sample]`` of one image, and its pickled records.
SAMPLES, RECORDS = "samples", "records"


def import_ray():
    """``ray`` with Ray Data, or ImportError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (a bare `ray` install lacks Ray Data's dependencies)
    except ImportError as exc:
        raise ImportError("getok prepare --engine ray needs Ray Data: pip install 'ray[data]' "
                          f"(or use --engine local) [{type(exc).__name__}: {exc}]") from exc
    return ray


def check_ray_engine(cfg) -> None:
    """ValueError for settings the Ray engine cannot honour, ImportError without Ray Data (both
    before any cluster is touched)."""
    if isinstance(cfg.ray_actors, bool) or not isinstance(cfg.ray_actors, int) or cfg.ray_actors < 1:
        raise ValueError(f"--ray-actors must be an int >= 1, got {cfg.ray_actors!r}")
    if not cfg.gpus_per_actor >= 0 or not cfg.cpus_per_actor >= 0:
        raise ValueError(f"--gpus-per-actor and --cpus-per-actor must be >= 0, got "
                         f"{cfg.gpus_per_actor!r} and {cfg.cpus_per_actor!r}")
    if cfg.workers != 1:
        raise ValueError("--workers is the local engine's process count; with --engine ray use --ray-actors")
    on_gpu = str(cfg.device).startswith("cuda")
    if cfg.gpus_per_actor > 0 and not on_gpu:
        raise ValueError(f"--gpus-per-actor {cfg.gpus_per_actor} reserves GPUs but --device is {cfg.device!r}: "
                         "pass --device cuda (each actor sees its own GPU as cuda:0)")
    if on_gpu and cfg.gpus_per_actor <= 0:
        raise ValueError(f"--device {cfg.device} needs --gpus-per-actor > 0 (Ray hides GPUs from actors "
                         "that reserve none); e.g. 0.5 puts two actors on each GPU")
    import_ray()


class RayImageWorker:
    """The ``map_batches`` callable class: one ``ImageWorker`` per actor; a batch holds pickled
    image groups, the result their pickled records (one list per group, same order)."""

    def __init__(self, cfg):
        self.worker = ImageWorker(cfg)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = [pickle.dumps(self.worker(pickle.loads(blob)), protocol=pickle.HIGHEST_PROTOCOL)
               for blob in batch[SAMPLES]]
        return {RECORDS: np.array(out, dtype=object)}


def ray_records(cfg, groups: list, log=print) -> Iterator[list[dict]]:
    """Yield ``ImageWorker(cfg)(group)`` for every group of ``groups`` (lists of ``Sample``), computed
    on Ray actors, in the order they finish.

    Calls ``ray.init(address=cfg.ray_address)`` ("auto": the running cluster; None: Ray's default,
    the running cluster if any, else a local one) unless this process already did; a connection made
    here is closed (``ray.shutdown``, which also stops a local cluster started here) when the
    generator ends or is closed, and closing it early stops the actors either way.
    """
    check_ray_engine(cfg)
    if not groups:
        return
    import ray
    joined = not ray.is_initialized()
    if joined:
        ray.init(address=cfg.ray_address)
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start")}
    rows = None
    try:
        # the driver shows prepare's own progress bar; Ray Data's would print over it
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        log(f"prepare: Ray engine: {len(groups)} images over {cfg.ray_actors} actor(s), "
            f"{cfg.cpus_per_actor:g} CPU / {cfg.gpus_per_actor:g} GPU each")
        ds = ray.data.from_items([{SAMPLES: pickle.dumps(g, protocol=pickle.HIGHEST_PROTOCOL)} for g in groups],
                                 override_num_blocks=len(groups))  # one image per block: per-image streaming
        ds = ds.map_batches(RayImageWorker, fn_constructor_args=(cfg,), batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=cfg.ray_actors),
                            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None)
        rows = iter(ds.iter_rows())
        for row in rows:
            yield pickle.loads(row[RECORDS])
    finally:
        if rows is not None and hasattr(rows, "close"):
            rows.close()  # stops the streaming executor and its actors
        for k, v in saved.items():
            setattr(ctx, k, v)
        if joined:
            ray.shutdown()


__all__ = ["ray_records", "RayImageWorker", "check_ray_engine", "import_ray"]
