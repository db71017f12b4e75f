"""The checkpoint-free mask decoder: GETok instances -> masks from an image's regions (SPEC §3).

``RegionDecoder`` stands in for SAM where no weights are available (tests, CPU-only machines,
quick experiments). It segments each image with ``region_labels`` (scikit-image's Felzenszwalb
graph segmentation or SLIC superpixels, with the size-dependent defaults of ``region_params``):
the segmentation the region proposals use too (``getok_core.prepare.proposals.RegionProposer``,
same ``method`` and parameters, so a grid point decodes to exactly the proposal the greedy
conversion chose it for), and answers prompts with those regions:

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

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..codec.coords import box_pixel_mask, point_pixel
from ..data.images import check_image_size, load_image, to_rgb
from .base import ByteLRUCache, DecodeGroup, MaskDecoder

#: The segmentations ``region_labels`` runs.
REGION_METHODS = ("felzenszwalb", "slic")
#: The parameters of each method (``region_params``).
REGION_PARAMS = {
    "felzenszwalb": ("scale", "sigma", "min_size"),
    "slic": ("n_segments", "compactness", "sigma"),
}
DEFAULT_CACHE_BYTES = 256 << 20
ENTRY_OVERHEAD_BYTES = 256
#: A region joins a box-only mask when at least this share of its pixels lies inside the box.
BOX_REGION_FRACTION = 0.5


# ---------------------------------------------------------------------------------------- regions
def check_region_params(method: str, params: dict) -> tuple[str, dict]:
    """(method, params) validated: a known method, its own parameter names (TypeError
    otherwise), finite numbers in range (ValueError otherwise); ``None`` / ``"auto"`` values are
    left out (their size-dependent defaults apply)."""
    if method not in REGION_METHODS:
        raise ValueError(f"region method must be one of {REGION_METHODS}, got {method!r}")
    allowed = REGION_PARAMS[method]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {method} parameter(s) {unknown}; allowed: {list(allowed)}")
    out = {}
    for name, value in params.items():
        if value is None or value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{method} parameter {name} must be a finite number, got {value!r}")
        if name in ("min_size", "n_segments"):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            value = int(value)
        elif name == "sigma":
            if value < 0:
                raise ValueError(f"sigma must be >= 0, got {value!r}")
            value = float(value)
        elif value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
        else:
            value = float(value)
        out[name] = value
    return method, out


def region_params(method: str, image_size: tuple[int, int], **params) -> dict:
    """The parameters ``region_labels`` uses for an image of ``image_size`` = (W, H).

    With L = max(W, H) and a = W * H / 512**2 (the image's area relative to a 512 x 512 photo):

    - felzenszwalb: ``scale`` = 300 a (Felzenszwalb's k: sets the size of a region, so it grows
      with the pixel count; 300 at 512 x 512, ~350 at 640 x 480); ``sigma`` = 0.8 min(1, L / 512)
      (the paper's smoothing for photos, shrinking with resolution so that small synthetic images
      with flat colours are not blurred into boundary strips: 0.1 at 64 px); ``min_size`` =
      max(4, round(50 a)).
    - slic: ``n_segments`` = 100 (scikit-image's default), ``compactness`` = 10, ``sigma`` as
      above.

    Explicit values override these. ``scale`` > 0, ``sigma`` >= 0, ``min_size`` >= 1,
    ``n_segments`` >= 1, ``compactness`` > 0.
    """
    method, params = check_region_params(method, params)
    w, h = check_image_size(image_size)
    area = w * h / 512.0**2
    sigma = 0.8 * min(1.0, max(w, h) / 512.0)
    if method == "felzenszwalb":
        auto = {"scale": 300.0 * area, "sigma": sigma, "min_size": max(4, round(50 * area))}
    else:
        auto = {"n_segments": 100, "compactness": 10.0, "sigma": sigma}
    return {**auto, **params}


def region_labels(image, method: str = "felzenszwalb", **params) -> np.ndarray:
    """The (H, W) int label image of scikit-image's segmentation (``region_params`` rules) of
    ``image`` (anything ``to_rgb`` accepts)."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    resolved = region_params(method, (w, h), **params)
    if method == "felzenszwalb":
        from skimage.segmentation import felzenszwalb

        return felzenszwalb(rgb, scale=float(resolved["scale"]), sigma=float(resolved["sigma"]),
                            min_size=int(resolved["min_size"]), channel_axis=-1)
    from skimage.segmentation import slic

    return slic(rgb, n_segments=int(resolved["n_segments"]), compactness=float(resolved["compactness"]),
                sigma=float(resolved["sigma"]), start_label=0, channel_axis=-1)


# ---------------------------------------------------------------------------------------- decoder
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
    ``method`` and ``params`` as ``region_labels`` takes them (``check_region_params``). See the
    module's docstring for the decoding rules.
    """

    name = "region"

    def __init__(self, mode: str = "joint", method: str = "felzenszwalb",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, **params):
        super().__init__(mode)
        self.method, self.params = check_region_params(method, params)
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
            w, h = self.image_size(group)  # nothing to prompt: only the size is needed
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
        return (f"RegionDecoder(mode={self.mode!r}, method={self.method!r}, params={self.params!r}, "
                f"cache={self.cache!r})")


__all__ = ["RegionDecoder", "RegionEntry", "compact_labels", "BOX_REGION_FRACTION", "REGION_METHODS",
           "REGION_PARAMS", "check_region_params", "region_params", "region_labels"]
