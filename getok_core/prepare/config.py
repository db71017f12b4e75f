"""Settings of one ``getok prepare`` run (``PrepareConfig``) and the output formats it writes
(``FORMATS``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Output formats: ms-swift JSONL, EasyR1 JSONL, verl parquet.
FORMATS = ("swift", "easyr1", "verl")


@dataclass
class PrepareConfig:
    """Settings of one preparation run. Everything but ``out``, ``workers``, ``shard``,
    ``progress`` and the engine settings (``engine``, ``ray_*``, ``*_per_actor``: see
    ``getok_core.prepare.ray_engine``) is part of the output's identity (``config.json``).

    ``max_pixels``: images of more pixels get their mask proposals computed downscaled to at most
    that many pixels and mapped back to the original frame (``getok_core.prepare.proposals``);
    0 means no bound. The default, 4 Mpx, kept one 12 Mpx image near 2.5 GB (docs/data.md,
    "Memory per image"; ``bench/bench_prepare_memory.py``)."""

    dataset: str
    root: str
    out: str
    split: str | None = None
    proposals: str = "region"            # region | sam | sam2
    region_method: str = "felzenszwalb"  # felzenszwalb | slic
    sam_checkpoint: str | None = None
    sam_model: str = "vit_h"             # segment-anything model type, or a SAM 2 config
    device: str = "cpu"
    max_pixels: int = 4_000_000          # proposals on images downscaled to this many pixels; 0: no bound
    grid_size: int = 32
    tau: float = 0.9
    max_points: int = 32
    refine_k: int = 16
    template: int | str = 0
    seed: int = 0
    formats: tuple[str, ...] = FORMATS
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    progress: bool = True
    engine: str = "local"                # local | ray (getok_core.prepare.ray_engine)
    ray_address: str | None = None       # ray.init address: "auto", "host:6379"; None: Ray's default
    ray_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def identity(self) -> dict:
        d = asdict(self)
        for k in ("out", "workers", "shard", "progress", "engine", "ray_address", "ray_actors",
                  "gpus_per_actor", "cpus_per_actor"):
            d.pop(k)
        d["formats"] = list(d["formats"])
        d["shards"] = self.shard[1]
        return d


__all__ = ["FORMATS", "PrepareConfig"]
