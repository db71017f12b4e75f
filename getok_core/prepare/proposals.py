"""Mask proposals, one per grid point, computed once per image and cached on disk (SPEC §4).

The greedy mask-to-token conversion needs, for every image, one proposal mask P_k per grid
point g_k of the n x n grid: k = y * n + x (row-major), the point being the cell centre
((x + 0.5) W / n, (y + 0.5) H / n) in pixels of the original image (``grid_points``). Every
referring expression of the image reuses them, so they are computed once and cached.

Three ways to make them, all with the same interface ``proposer(image, grid_size) -> Proposals``
and a ``proposer.tag`` that names everything that changes the result (use it as the cache's
``method_tag``):

- ``RegionProposer`` / ``region_proposals``: no checkpoint needed. The image is segmented with
  scikit-image (Felzenszwalb's graph segmentation, or SLIC superpixels:
  ``getok_core.decoders.region.region_labels``, which the region decoder uses too) and each grid
  point's proposal is the region that contains it. A stand-in for machines without SAM weights.
- ``SamProposer``: segment-anything's ``SamPredictor``. The image is encoded once
  (``set_image``); the n^2 cell centres are then single positive point prompts, decoded in
  batches through ``predict_torch``, and each point keeps the best-scoring of its multimask
  outputs (the paper's proposals).
- ``Sam2Proposer``: the same with SAM 2's ``SAM2ImagePredictor`` (optional ``sam2`` package).

Bounded work (``max_pixels`` > 0, ``getok prepare --max-pixels``): an image of more pixels is
downscaled (``data.images.work_size`` / ``resize_rgb``) before it is segmented or encoded, and
the proposals are mapped back to the original frame by nearest-neighbour upsampling
(``nearest_index``): every original pixel takes the label (region) or mask value (SAM) of the
downscaled pixel containing its centre. That is exact in this sense: the original-frame masks
are a function of the downscaled ones, pixel by pixel, with no interpolation, and a grid point's
region contains the original pixel of the point. Images within the bound are untouched (the same
bytes as without a bound).

SAM / SAM 2 models are loaded and wrapped in their predictors by
``getok_core.decoders.sam_models`` (shared with the SAM decoders). Images are uint8 arrays
(H, W, 3) in RGB (or anything ``getok_core.data.images.to_rgb`` accepts). Masks are COCO RLE dicts
(``getok_core.data.masks``) in the original image frame. Nothing here imports torch,
segment-anything or scikit-image until it is used.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..codec.coords import points_pixels
from ..data.images import check_image_size, resize_rgb, to_rgb, work_size
from ..data.masks import decode_rle, encode_rle, rle_ious
from ..data.store import temp_prefix
from ..decoders.region import REGION_PARAMS, check_region_params, region_labels, region_params
from ..decoders.sam_models import load_sam, load_sam2, sam2_predictor, sam_predictor

logger = logging.getLogger(__name__)

#: Bumped whenever a proposer's algorithm changes in a way that changes its output; part of every
#: method tag, so caches written by an older version are never served.
PROPOSALS_VERSION = 1
#: On-disk format of ``ProposalCache`` files.
CACHE_FORMAT = "getok-proposals"
CACHE_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------- grid
def grid_points(image_size: tuple[int, int], grid_size: int) -> np.ndarray:
    """(n*n, 2) float64 pixel positions (x, y) of the cell centres, row-major (k = y * n + x).

    Point k = ((x + 0.5) W / n, (y + 0.5) H / n) for ``image_size`` = (W, H). SAM gets them as
    they are, as segment-anything's own automatic mask generator passes its point grids (its
    prompt encoder then adds half a pixel, reading coordinates as pixel indices).
    """
    w, h = check_image_size(image_size)
    n = _grid(grid_size)
    centres = np.arange(n, dtype=np.float64) + 0.5
    xs, ys = np.meshgrid(centres * w / n, centres * h / n)  # (n, n), [y, x]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def grid_pixels(image_size: tuple[int, int], grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int arrays of length n*n: the pixel that contains each grid point.

    ``codec.coords.points_pixels`` of the normalized cell centres: the pixel rule the rewards,
    the metrics and the decoders use.
    """
    w, h = check_image_size(image_size)
    n = _grid(grid_size)
    return points_pixels(grid_points((1, 1), n), (w, h))


def nearest_index(n_full: int, n_small: int) -> np.ndarray:
    """(n_full,) int: for every pixel index i of an axis of ``n_full`` pixels, the index of the
    pixel of a ``n_small``-pixel axis over the same extent that contains its centre:
    floor((i + 0.5) n_small / n_full) (integer arithmetic, exact)."""
    i = np.arange(n_full, dtype=np.int64)
    return np.minimum((2 * i + 1) * n_small // (2 * n_full), n_small - 1)


def bound_tag(tag: str, max_pixels: int) -> str:
    """A proposer's cache tag with its pixel bound (unchanged when there is none)."""
    return f"{tag}|max_pixels={int(max_pixels)}" if max_pixels and max_pixels > 0 else tag


# ---------------------------------------------------------------------------------------- proposals
@dataclass
class Proposals:
    """The n*n proposal masks of one image, one per grid point (row-major: k = y * n + x).

    ``image_size`` is (W, H); ``method`` names how they were made (a proposer's ``tag``);
    ``rles`` are COCO RLE dicts of size [H, W]; ``scores`` the model's predicted quality of each
    (SAM's IoU prediction) or None; ``meta`` free JSON-able details (e.g. resolved parameters).
    """

    image_size: tuple[int, int]
    grid_size: int
    method: str
    rles: list[dict]
    scores: list[float] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        w, h = self.image_size = check_image_size(self.image_size)
        n = self.grid_size = _grid(self.grid_size)
        self.rles = list(self.rles)
        if len(self.rles) != n * n:
            raise ValueError(f"expected {n * n} proposals for a {n}x{n} grid, got {len(self.rles)}")
        for k, rle in enumerate(self.rles):
            if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
                raise ValueError(f"proposal {k} is not an RLE dict")
            if [int(t) for t in rle["size"]] != [h, w]:
                raise ValueError(f"proposal {k} has size {rle['size']}, the image is [H, W] = [{h}, {w}]")
        if self.scores is not None:
            self.scores = [float(s) for s in self.scores]
            if len(self.scores) != n * n:
                raise ValueError(f"expected {n * n} scores, got {len(self.scores)}")

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def from_masks(cls, masks, grid_size: int, method: str, scores=None, meta: dict | None = None) -> "Proposals":
        """Build from a bool array (n*n, H, W) of masks in grid order."""
        m = np.asarray(masks)
        if m.ndim != 3:
            raise ValueError(f"masks must be (K, H, W), got shape {m.shape}")
        m = m.astype(bool, copy=False)
        return cls(image_size=(m.shape[2], m.shape[1]), grid_size=grid_size, method=method,
                   rles=[encode_rle(mk) for mk in m],
                   scores=None if scores is None else [float(s) for s in np.asarray(scores).ravel()],
                   meta=dict(meta or {}))

    def masks(self) -> np.ndarray:
        """Bool array (n*n, H, W): every proposal decoded (K * H * W bytes: mind large images)."""
        w, h = self.image_size
        out = np.empty((len(self.rles), h, w), bool)
        for k, rle in enumerate(self.rles):
            out[k] = decode_rle(rle)
        return out

    def mask(self, k: int) -> np.ndarray:
        """Bool (H, W) proposal of grid point k (k = y * n + x)."""
        return decode_rle(self.rles[k])

    def points(self) -> np.ndarray:
        """(n*n, 2) pixel positions (x, y) of the grid points (``grid_points``)."""
        return grid_points(self.image_size, self.grid_size)

    def ious(self, target) -> np.ndarray:
        """(n*n,) float IoU of every proposal with ``target`` (bool (H, W) mask or RLE); 0 where
        both are empty. Computed on the RLEs (pycocotools), without decoding."""
        t = target if isinstance(target, dict) else encode_rle(np.asarray(target, bool))
        w, h = self.image_size
        if [int(v) for v in t["size"]] != [h, w]:
            raise ValueError(f"target size {t['size']} differs from the image's [H, W] = [{h}, {w}]")
        return rle_ious(self.rles, t)

    def to_dict(self) -> dict:
        """JSON-able dict (``from_dict`` inverts it)."""
        return {"image_size": list(self.image_size), "grid_size": self.grid_size, "method": self.method,
                "rles": [{"size": [int(t) for t in r["size"]], "counts": _counts_str(r["counts"])}
                         for r in self.rles],
                "scores": self.scores, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Proposals":
        return cls(image_size=tuple(d["image_size"]), grid_size=d["grid_size"], method=d["method"],
                   rles=d["rles"], scores=d.get("scores"), meta=d.get("meta") or {})


# ---------------------------------------------------------------------------------------- regions
def region_method_tag(method: str = "felzenszwalb", **params) -> str:
    """The cache tag of ``region_proposals(image, n, method, **params)``.

    Parameters left out are written as ``auto`` (their size-dependent defaults are a fixed rule of
    this version), so the tag fully determines the output.
    """
    method, params = check_region_params(method, params)
    shown = {name: params.get(name, "auto") for name in REGION_PARAMS[method]}
    return f"region-{method}-v{PROPOSALS_VERSION}:" + json.dumps(shown, sort_keys=True, separators=(",", ":"))


def region_proposals(image, grid_size: int = 32, method: str = "felzenszwalb", *, max_pixels: int = 0,
                     **params) -> Proposals:
    """Checkpoint-free proposals: each grid point's proposal is the image region containing it.

    ``image``: uint8 (H, W, 3) RGB, or grayscale / RGBA / PIL as ``to_rgb`` converts them.
    ``method``: ``"felzenszwalb"`` (default; scikit-image's ``felzenszwalb``, graph-based regions
    that follow colour edges) or ``"slic"`` (``slic`` superpixels, more compact and regular).
    ``params``: that method's parameters (``getok_core.decoders.region.region_params`` documents
    them and their size-dependent defaults). The region of grid point k is the label of the
    pixel containing it (``grid_pixels``). Deterministic: the same image and parameters give the
    same proposals. ``max_pixels`` > 0: an image of more pixels is segmented downscaled to at
    most that many (size-dependent parameters follow the downscaled size) and its label image
    mapped back by ``nearest_index`` (module docstring).
    """
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    n = _grid(grid_size)
    sw, sh = work_size((w, h), max_pixels)
    labels = region_labels(resize_rgb(rgb, (sw, sh)), method, **params)
    ri, ci = nearest_index(h, sh), nearest_index(w, sw)   # original pixel -> downscaled pixel
    rows, cols = grid_pixels((w, h), n)
    point_labels = labels[ri[rows], ci[cols]]
    scaled = (sw, sh) != (w, h)
    by_label = {int(lab): encode_rle((labels == lab)[ri[:, None], ci[None, :]] if scaled else labels == lab)
                for lab in np.unique(point_labels)}
    rles = [by_label[int(lab)] for lab in point_labels]
    resolved = region_params(method, (sw, sh), **params)
    meta = {"params": {k: _jsonable(v) for k, v in resolved.items()}, "regions": int(len(np.unique(labels)))}
    if scaled:
        meta["work_size"] = [sw, sh]
    return Proposals(image_size=(w, h), grid_size=n, rles=rles, meta=meta,
                     method=bound_tag(region_method_tag(method, **params), max_pixels))


class RegionProposer:
    """``region_proposals`` as a proposer object: ``RegionProposer(method, max_pixels=0,
    **params)(image, n)``."""

    def __init__(self, method: str = "felzenszwalb", *, max_pixels: int = 0, **params):
        self.method, self.params = check_region_params(method, params)
        self.max_pixels = int(max_pixels)

    @property
    def tag(self) -> str:
        return bound_tag(region_method_tag(self.method, **self.params), self.max_pixels)

    def __call__(self, image, grid_size: int = 32) -> Proposals:
        return region_proposals(image, grid_size, self.method, max_pixels=self.max_pixels, **self.params)

    def __repr__(self) -> str:
        return f"RegionProposer({self.tag})"


# ---------------------------------------------------------------------------------------- SAM
class SamProposer:
    """Proposals from segment-anything (SAM 1): one single-point prompt per grid point.

    ``model``: a ``segment_anything.SamPredictor`` or a ``Sam`` model (wrapped in a predictor:
    ``decoders.sam_models.sam_predictor``).
    ``__call__(image, grid_size)`` calls ``set_image`` once (one image-encoder pass), then prompts
    all n^2 cell centres (label 1, ``grid_points``) through ``predict_torch`` in batches of
    ``batch_size``, coordinates mapped by ``predictor.transform.apply_coords_torch``, and keeps
    per point the best-scoring (highest predicted IoU; first on ties) of the three multimask
    outputs, or the single output when ``multimask=False``. Runs on the model's device.
    ``batch_size`` only trades memory for speed: each batch holds (batch, 3, H, W) logits at the
    image's full size.

    ``tag`` names the proposer for caches: version, model class, ``multimask`` and the model's
    identity, which is ``model_id`` when given (e.g. "vit_h:sam_vit_h_4b8939") or else a SHA-256
    fingerprint of the model's state dict (computed on first use; seconds for vit_h).
    ``max_pixels`` > 0: a larger image is encoded downscaled (module docstring), its masks
    upsampled to the original frame by ``nearest_index``.
    """

    family = "sam"
    #: model (or predictor) -> predictor.
    wrap = staticmethod(sam_predictor)

    def __init__(self, model, batch_size: int = 64, multimask: bool = True, model_id: str | None = None,
                 max_pixels: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.predictor = self.wrap(model)
        self.batch_size = batch_size
        self.multimask = bool(multimask)
        self.model_id = model_id
        self.max_pixels = int(max_pixels)
        self._fingerprint: str | None = None

    @property
    def model(self):
        return self.predictor.model

    @classmethod
    def from_checkpoint(cls, model_type: str, checkpoint, device=None, **kwargs) -> "SamProposer":
        """Build ``segment_anything.sam_model_registry[model_type](checkpoint=path)`` on ``device``
        (default: CUDA when available, else CPU) in eval mode. The cache identity is the loaded
        weights' fingerprint (two checkpoints with the same file name never share cache entries)
        unless ``model_id`` is given. Other keyword arguments go to the constructor."""
        return cls(load_sam(model_type, checkpoint, device), **kwargs)

    @property
    def tag(self) -> str:
        ident = self.model_id if self.model_id is not None else f"sha256={self.fingerprint()[:16]}"
        return bound_tag(f"{self.family}-v{PROPOSALS_VERSION}:{type(self.model).__name__}:{ident}"
                         f":multimask={int(self.multimask)}", self.max_pixels)

    def fingerprint(self) -> str:
        """SHA-256 of the model's state dict (names, dtypes, shapes and bytes), cached."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def __call__(self, image, grid_size: int = 32) -> Proposals:
        rgb = to_rgb(image)
        h, w = rgb.shape[:2]
        n = _grid(grid_size)
        sw, sh = work_size((w, h), self.max_pixels)
        self.predictor.set_image(resize_rgb(rgb, (sw, sh)))
        points = grid_points((sw, sh), n)
        ri, ci = nearest_index(h, sh), nearest_index(w, sw)
        scaled = (sw, sh) != (w, h)
        rles: list[dict] = []
        scores: list[float] = []
        for start in range(0, len(points), self.batch_size):
            masks, best = self._best_masks(points[start:start + self.batch_size], (sw, sh))
            rles.extend(encode_rle(m[ri[:, None], ci[None, :]] if scaled else m) for m in masks)
            scores.extend(best)
        return Proposals(image_size=(w, h), grid_size=n, method=self.tag, rles=rles, scores=scores)

    def _best_masks(self, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
        """Bool (B, H, W) masks of single-point prompts at ``points`` ((B, 2) pixels (x, y) of the
        image set on the predictor), each the best-scoring multimask output, and their scores."""
        import torch

        p = self.predictor
        device = p.device
        pts = torch.as_tensor(points, dtype=torch.float32, device=device)
        coords = p.transform.apply_coords_torch(pts, p.original_size)[:, None, :]  # (B, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=device)
        masks, iou_pred, _ = p.predict_torch(coords, labels, multimask_output=self.multimask)
        best = iou_pred.argmax(dim=1)
        rows = torch.arange(len(coords), device=device)
        return masks[rows, best].cpu().numpy(), iou_pred[rows, best].float().cpu().tolist()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model_id={self.model_id!r}, batch_size={self.batch_size}, "
                f"multimask={self.multimask})")


class Sam2Proposer(SamProposer):
    """Proposals from SAM 2 (``sam2.sam2_image_predictor.SAM2ImagePredictor``), same interface.

    ``model``: a ``SAM2ImagePredictor`` or a SAM 2 model (``sam2.build_sam.build_sam2``).
    ``set_image`` once, then the cell centres as batched single-point prompts through the
    predictor's public ``predict`` (pixel coordinates, ``normalize_coords=True``), best-scoring
    multimask output per point. Needs the optional ``sam2`` package: ImportError otherwise.
    """

    family = "sam2"
    wrap = staticmethod(sam2_predictor)

    @classmethod
    def from_checkpoint(cls, config: str, checkpoint, device=None, **kwargs) -> "Sam2Proposer":
        """``sam2.build_sam.build_sam2(config, checkpoint, device)`` wrapped in a proposer (cache
        identity: the weights' fingerprint unless ``model_id`` is given)."""
        return cls(load_sam2(config, checkpoint, device), **kwargs)

    def _best_masks(self, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
        w, h = size
        b = len(points)
        batch = points.astype(np.float32)[:, None, :]  # (B, 1, 2)
        labels = np.ones(batch.shape[:2], np.int32)
        masks, iou_pred, _ = self.predictor.predict(point_coords=batch, point_labels=labels,
                                                    multimask_output=self.multimask, normalize_coords=True)
        masks = np.asarray(masks).reshape(b, -1, h, w)  # predict squeezes a batch of one
        iou_pred = np.asarray(iou_pred, np.float64).reshape(b, -1)
        best = iou_pred.argmax(axis=1)
        rows = np.arange(b)
        return masks[rows, best] > 0, [float(x) for x in iou_pred[rows, best]]


def model_fingerprint(model) -> str:
    """Hex SHA-256 of a torch module's state dict: every entry's name, dtype, shape and bytes."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- cache
class ProposalCache:
    """Proposals on disk: one gzip'd JSON file per (image key, method tag, grid size).

    File: ``<directory>/<h[:2]>/<h>.json.gz`` with h = SHA-256 of the three (the key never
    appears in a file name). Content: format name and version, the key, tag and grid size (checked
    on read, so a file never answers another question), and the ``Proposals`` as compressed RLE.
    Writes are atomic (a temp file in the same folder, then ``os.replace``), so concurrent writers
    and interrupted runs never leave a half-written entry.

    A file that cannot be read (truncated, bad gzip CRC, bad JSON, wrong fields) is a miss: it is
    logged as a warning, its path appended to ``corrupt``, and ``get_or_compute`` recomputes and
    overwrites it. ``hits`` / ``misses`` count lookups.

    The method tag must name everything that changes the result (use ``proposer.tag``):
    proposals made differently are never served.
    """

    def __init__(self, directory, compresslevel: int = 6):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compresslevel = compresslevel
        self.hits = 0
        self.misses = 0
        self.corrupt: list[str] = []

    def path(self, image_key: str, method_tag: str, grid_size: int) -> Path:
        ident = json.dumps([str(image_key), str(method_tag), int(grid_size)], separators=(",", ":"))
        h = hashlib.sha256(ident.encode("utf-8")).hexdigest()
        return self.directory / h[:2] / f"{h}.json.gz"

    def get(self, image_key: str, method_tag: str, grid_size: int) -> Proposals | None:
        """The cached proposals, or None (absent, written by another format version, or corrupt)."""
        path = self.path(image_key, method_tag, grid_size)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
                raise ValueError("not a proposals cache file")
            if doc.get("version") != CACHE_FORMAT_VERSION:
                logger.info("proposal cache %s: format version %r, expected %r: recomputing",
                            path, doc.get("version"), CACHE_FORMAT_VERSION)
                self.misses += 1
                return None
            if (doc.get("image_key"), doc.get("method_tag"), doc.get("grid_size")) != (
                    str(image_key), str(method_tag), int(grid_size)):
                raise ValueError("entry is for another image key / method tag / grid size")
            proposals = Proposals.from_dict(doc["proposals"])
            if proposals.grid_size != int(grid_size):
                raise ValueError("proposals' grid size differs from the entry's")
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # OSError covers gzip.BadGzipFile and CRC errors; ValueError covers JSON errors
            logger.warning("proposal cache: unreadable entry %s (%s: %s); it will be recomputed",
                           path, type(exc).__name__, exc)
            self.corrupt.append(str(path))
            self.misses += 1
            return None
        self.hits += 1
        return proposals

    def put(self, image_key: str, method_tag: str, grid_size: int, proposals: Proposals) -> Path:
        """Store ``proposals`` atomically; returns the file's path."""
        if not isinstance(proposals, Proposals):
            raise TypeError(f"expected Proposals, got {type(proposals).__name__}")
        if proposals.grid_size != int(grid_size):
            raise ValueError(f"proposals are for a {proposals.grid_size}x{proposals.grid_size} grid, "
                             f"the entry for {grid_size}x{grid_size}")
        path = self.path(image_key, method_tag, grid_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": CACHE_FORMAT, "version": CACHE_FORMAT_VERSION, "image_key": str(image_key),
               "method_tag": str(method_tag), "grid_size": int(grid_size), "proposals": proposals.to_dict()}
        data = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=self.compresslevel,
                                   mtime=0) as gz:
                    gz.write(data)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    def get_or_compute(self, image_key: str, method_tag: str, grid_size: int,
                       compute_fn: Callable[[], Proposals]) -> Proposals:
        """The cached proposals, else ``compute_fn()`` stored and returned."""
        found = self.get(image_key, method_tag, grid_size)
        if found is not None:
            return found
        proposals = compute_fn()
        self.put(image_key, method_tag, grid_size, proposals)
        return proposals


# ---------------------------------------------------------------------------------------- helpers
def _grid(grid_size) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 1:
        raise ValueError(f"grid_size must be an int >= 1, got {grid_size!r}")
    return int(grid_size)


def _counts_str(counts) -> str | list:
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


__all__ = ["PROPOSALS_VERSION", "CACHE_FORMAT", "CACHE_FORMAT_VERSION", "grid_points", "grid_pixels",
           "nearest_index", "bound_tag", "Proposals",
           "region_method_tag", "region_proposals", "RegionProposer", "SamProposer", "Sam2Proposer",
           "model_fingerprint", "ProposalCache"]
