"""The records that dataset loaders yield and that data preparation consumes.

Geometry is normalized (u, v) in [0, 1] unless a name says pixels; masks are COCO RLE dicts
(``getok_core.data.masks``) in the original image frame; sizes are (W, H) in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Tasks a sample can train / evaluate: what its answer should contain.
TASKS = ("seg", "box", "point", "line")


@dataclass
class Target:
    """One ground-truth object. ``mask``: RLE or None; ``box``: normalized (u1, v1, u2, v2) or
    None; ``points``: normalized points (point datasets); ``polyline``: normalized vertices."""

    mask: dict | None = None
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    polyline: tuple[tuple[float, float], ...] | None = None


@dataclass
class Sample:
    """One image with its referring expression(s) and target objects.

    ``sample_id`` is unique and stable across runs (it keys resumable preparation).
    ``targets == []`` means no target (gRefCOCO). ``ignore`` is an RLE of pixels excluded from
    evaluation (ReasonSeg), or None. ``image_key`` identifies the image for embedding caches.
    """

    sample_id: str
    image_path: str
    image_size: tuple[int, int]
    expressions: list[str]
    targets: list[Target]
    task: str = "seg"
    image_key: str = ""
    ignore: dict | None = None
    split: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.image_key:
            self.image_key = self.image_path


@dataclass
class Skipped:
    """A row a loader or preparation step could not use: where it is and why."""

    source: str      # file the row came from
    row: str         # row id / index inside that file
    field: str       # offending field ("" when the whole row)
    reason: str
