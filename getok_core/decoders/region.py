"""The checkpoint-free mask decoder: GETok instances -> masks from an image's regions (SPEC §3).

``RegionDecoder`` stands in for SAM where no weights are available (tests, CPU-only machines,
quick experiments). It segments each image with the same scikit-image segmentation as the region
proposals (``getok_core.prepare.proposals.region_labels``, same ``method`` and parameters, so a grid
point decodes to exactly the proposal the greedy conversion chose it for) and answers prompts
with those regions:

- seg points (and a ``<point>``): the union of the regions containing them (the region of a
  point is the label of the pixel containing it, ``codec.coords.point_pixel``), clipped to the box
  (``codec.coords.box_pixel_mask``) when the instance has one. ``joint`` and ``union`` give the same
  masks here (a region is the same whether points are prompted together or alone); they differ
  only in ``counters.prompts_decoded`` (one per instance vs one per point), as with SAM.
- a box alone: the regions of which at least half the pixels lie inside the box
  (``inside / area >= 0.5``), clipped to the box. A box wholly inside one larger region (no
  region mostly inside it) gives an empty mask.
- nothing to prompt (polyline / polygon only): an all-false mask (an image whose instances all
  have nothing to prompt is not segmented: only its size is read).

The label image of each image is cached per ``image_key`` in a least-recently-used cache bounded
by bytes (``cache_bytes``, default 256 MiB): one entry costs its label image (stored in the
smallest unsigned integer type that holds its labels: uint8 / uint16 / uint32) plus the region
areas (int64, one per region) plus ``ENTRY_OVERHEAD_BYTES``. ``counters.encoder_calls`` counts
segmentations run, ``cache_hits`` segmentations served from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codec.coords import box_pixel_mask, point_pixel
from .base import ByteLRUCache, DecodeGroup, MaskDecoder, load_image
from ..prepare.proposals import RegionProposer, region_labels

DEFAULT_CACHE_BYTES = 256 << 20
ENTRY_OVERHEAD_BYTES = 256
#: A region joins a box-only mask when at least this share of its pixels lies inside the box.
BOX_REGION_FRACTION = 0.5


@dataclass
class RegionEntry:
    """A cached segmentation: (H, W) labels 0..K-1 and each region's pixel count."""

    labels: np.ndarray
    areas: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.labels.nbytes + self.areas.nbytes + ENTRY_OVERHEAD_BYTES)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.labels.shape
        return w, h


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` (non-negative ints) in the smallest unsigned type that holds them."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.ascontiguousarray(labels, dtype=dtype)
    return np.ascontiguousarray(labels, dtype=np.int64)


class RegionDecoder(MaskDecoder):
    """Masks from an image's region segmentation, consistent with ``RegionProposer``.

    ``RegionDecoder(mode="joint", method="felzenszwalb", cache_bytes=256 MiB, **params)``:
    ``method`` and ``params`` as ``getok_core.prepare.proposals.region_proposals`` takes them
    (validated the same way). See the module's docstring for the decoding rules.
    """

    name = "region"

    def __init__(self, mode: str = "joint", method: str = "felzenszwalb",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, **params):
        super().__init__(mode)
        proposer = RegionProposer(method, **params)  # validates method and params
        self.method, self.params = proposer.method, proposer.params
        self.tag = proposer.tag
        self.cache = ByteLRUCache(cache_bytes)

    def segment(self, group: DecodeGroup) -> RegionEntry:
        """The cached segmentation of ``group``'s image, else a new one (cached)."""
        entry = self.cache.get(group.image_key)
        if entry is not None:
            self.counters.cache_hits += 1
            return entry
        rgb = load_image(group.image)
        labels = compact_labels(region_labels(rgb, self.method, **self.params))
        entry = RegionEntry(labels, np.bincount(labels.ravel()).astype(np.int64))
        self.counters.encoder_calls += 1
        self.cache.put(group.image_key, entry, entry.nbytes)
        return entry

    def decode_group(self, group: DecodeGroup) -> list[np.ndarray]:
        instances = list(group.instances)
        if not instances:
            return []
        if all(not inst.points and inst.point is None and inst.box is None for inst in instances):
            entry = self.cache.peek(group.image_key)  # nothing to prompt: only the size is needed
            w, h = entry.size if entry is not None else load_image(group.image).shape[1::-1]
            return [np.zeros((h, w), bool) for _ in instances]
        entry = self.segment(group)
        labels, areas = entry.labels, entry.areas
        size = entry.size
        out = []
        for inst in instances:
            pts = list(inst.points) + ([inst.point] if inst.point is not None else [])
            box = None if inst.box is None else box_pixel_mask(inst.box, size)
            if pts:
                chosen = np.zeros(len(areas), bool)
                for p in pts:
                    chosen[labels[point_pixel(p, size)]] = True
                mask = chosen[labels]
                if box is not None:
                    mask &= box
                self.counters.prompts_decoded += 1 if self.mode == "joint" else len(pts)
            elif box is not None:
                inside = np.bincount(labels[box], minlength=len(areas))
                chosen = inside >= BOX_REGION_FRACTION * areas
                chosen &= areas > 0
                mask = chosen[labels] & box
                self.counters.prompts_decoded += 1
            else:
                mask = np.zeros(labels.shape, bool)
            out.append(mask)
        return out

    def clear_cache(self) -> None:
        self.cache.clear()

    def __repr__(self) -> str:
        return f"RegionDecoder(mode={self.mode!r}, {self.tag}, cache={self.cache!r})"


__all__ = ["RegionDecoder", "RegionEntry", "compact_labels", "BOX_REGION_FRACTION"]
