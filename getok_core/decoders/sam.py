"""SAM mask decoders with an image-embedding cache (SPEC §3).

GRPO samples several responses per prompt on the same image, and an answer's ``<seg>`` points and
``<box>`` become masks through a promptable segmenter. The image encoder is by far the expensive
part (vit_h: ~0.5 s per image on a GPU, tens of seconds on a CPU); the prompt decoder is cheap.
So ``SamDecoder`` encodes each image once, keeps its embedding in a bounded LRU cache keyed by
``image_key``, and decodes all the prompts of an image in batches.

``SamDecoder`` (segment-anything 1.0, ``SamPredictor``):

- Cache miss: ``predictor.set_image(rgb)`` (one image-encoder pass), then the predictor's
  ``features``, ``original_size`` and ``input_size`` are stored. Hit: those are put back on the
  predictor (and ``is_image_set = True``) instead of running ``set_image``.
- Cache size: bounded by bytes (``cache_bytes``, default 2 GiB). One entry costs the real size of
  its features tensor (``untyped_storage().nbytes()``: what the tensor keeps alive; for vit_b/l/h
  1 x 256 x 64 x 64 float32 = 4 MiB, 2 MiB in float16) plus ``ENTRY_OVERHEAD_BYTES`` (a fixed
  256 bytes for the sizes and bookkeeping). The default 2 GiB therefore holds 511 float32 SAM
  embeddings. ``cache_bytes=0`` disables caching. Entries live on the model's device unless
  ``cache_device`` says otherwise (e.g. ``"cpu"`` to keep GPU memory for training; they are
  moved back on a hit).
- Prompts: normalized points and boxes become pixel positions of the original image (x = u W,
  y = v H; SAM itself adds half a pixel), then ``predictor.transform.apply_coords_torch`` /
  ``apply_boxes_torch``, then decoded in batches of ``batch_size`` prompts by the steps of
  ``SamPredictor.predict_torch`` (prompt encoder, mask decoder on the cached features,
  ``Sam.postprocess_masks``, threshold ``mask_threshold``), except that the multimask choice is
  made on the low-resolution outputs, so only the kept mask is upscaled to the image's size
  (``predict_torch`` upscales all three: 3x the work, and on a CPU from a strided slice, which
  measured ~10x slower). Prompts of one batch must have the same shape, so an image's prompts
  are grouped by (number of points, box or not, multimask) and each group is batched; the
  result equals prompting one by one with ``SamPredictor.predict`` (up to float noise).
- Modes (``mode``): ``joint``: one prompt per instance with all its seg points (label 1), its
  ``<point>`` if it has one, and its box; an instance with only a box is a box prompt, only
  points a points prompt. ``union``: one prompt per point (seg points and ``<point>``), masks
  ORed, then clipped to the box (``codec.coords.box_pixel_mask``) when there is one; an instance with
  only a box is the box prompt. An instance with nothing to prompt (a polyline or polygon only)
  gets an all-false mask and costs nothing.
- Multimask rule (``multimask="auto"``, the default): a prompt of exactly one point and no box is
  ambiguous (part / object / whole), so SAM returns its three masks and the best-scoring (highest
  predicted IoU, first on ties) is kept, as the proposals do; every other prompt (two or more
  points, or a box) uses ``multimask_output=False``, as SAM's authors recommend for unambiguous
  prompts. ``multimask=True`` / ``False`` forces one choice for every prompt.
- Precision: ``dtype`` float16 / bfloat16 runs encoder and decoder under ``torch.autocast`` on a
  CUDA device (the cached features are then half precision: half the bytes). On a CPU the
  request is ignored (logged) and everything stays float32.
- ``counters``: ``encoder_calls`` (image-encoder passes), ``cache_hits``, ``prompts_decoded``.

``Sam2Decoder``: the same over SAM 2's ``SAM2ImagePredictor`` (``sam2`` 1.1.0, in the swift and
verl environments; an ImportError naming it otherwise). A miss runs ``set_image``; the cache
keeps the predictor's ``_features`` (the image embedding and the two high-resolution feature maps
SAM 2's mask decoder uses: for the released models 256 x 64 x 64 + 32 x 256 x 256 + 64 x 128 x 128
float32 = 16 MiB, so the default 2 GiB holds 127 images) and ``_orig_hw``, and a hit puts them back
(``_is_image_set = True``). Prompts go through the predictor's public batched ``predict`` (pixel
coordinates, ``normalize_coords=True``: SAM 2 scales them to its 1024 px input and adds half a
pixel), which upscales every output to the image's size before the multimask choice. The same
prompt plan, multimask rule and modes as ``SamDecoder``; batched decoding equals prompting one by
one with ``predict`` (tests/swift/test_sam2.py, on the tiny SAM 2 of ``tiny_sam``).

Nothing here imports torch, segment-anything or sam2 until a decoder is built.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..codec.coords import box_pixel_mask
from ..codec.instance import Instance
from ..data.images import load_image
from .base import ByteLRUCache, DecodeGroup, MaskDecoder
from .sam_models import load_sam, load_sam2, sam2_predictor, sam_predictor

logger = logging.getLogger(__name__)

#: Default bound of the embedding cache.
DEFAULT_CACHE_BYTES = 2 << 30
#: What one cache entry costs besides its tensors (sizes, key, bookkeeping): a fixed estimate.
ENTRY_OVERHEAD_BYTES = 256
MULTIMASK_CHOICES = ("auto", True, False)


@dataclass(frozen=True)
class Prompt:
    """One prompt for the model: instance ``index``, positive ``points`` (k, 2) as normalized
    (u, v) (k may be 0), an optional normalized ``box`` and the multimask choice."""

    index: int
    points: tuple[tuple[float, float], ...]
    box: tuple[float, float, float, float] | None
    multimask: bool

    @property
    def signature(self) -> tuple[int, bool, bool]:
        """Prompts with the same signature can share a batch."""
        return len(self.points), self.box is not None, self.multimask


def instance_prompt_points(inst: Instance) -> list[tuple[float, float]]:
    """The positive points of an instance: its seg points, then its ``<point>`` if any."""
    pts = list(inst.points)
    if inst.point is not None:
        pts.append(inst.point)
    return pts


def plan_prompts(instances: Sequence[Instance], mode: str, multimask="auto") -> list[Prompt]:
    """The prompts that decode ``instances`` in ``mode`` (see the module's docstring)."""
    if multimask not in MULTIMASK_CHOICES:
        raise ValueError(f"multimask must be 'auto', True or False, got {multimask!r}")

    def choose(npoints: int, has_box: bool) -> bool:
        if multimask == "auto":
            return npoints == 1 and not has_box
        return bool(multimask)

    out: list[Prompt] = []
    for i, inst in enumerate(instances):
        pts = instance_prompt_points(inst)
        box = inst.box
        if box is not None:  # corners sorted: (left, top, right, bottom)
            u1, v1, u2, v2 = box
            box = (min(u1, u2), min(v1, v2), max(u1, u2), max(v1, v2))
        if mode == "joint" or not pts:
            if pts or box is not None:
                out.append(Prompt(i, tuple(pts), box, choose(len(pts), box is not None)))
        else:  # union: one single-point prompt per point
            out.extend(Prompt(i, (p,), None, choose(1, False)) for p in pts)
    return out


@dataclass
class CacheEntry:
    """A cached image embedding: the predictor state to restore, the original size (W, H), and
    what it costs in the cache."""

    state: dict
    size: tuple[int, int]
    nbytes: int


def tensors_nbytes(obj) -> int:
    """Bytes of the storages held by the tensors in ``obj`` (a tensor, or dicts / lists / tuples
    of them); each storage counted once."""
    seen: set = set()
    total = 0

    def walk(x):
        nonlocal total
        if hasattr(x, "untyped_storage"):
            st = x.untyped_storage()
            key = (st.data_ptr(), x.device.type, getattr(x.device, "index", None))
            if key not in seen:
                seen.add(key)
                total += max(st.nbytes(), x.numel() * x.element_size())
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return total


def _move(obj, device):
    """``obj`` (tensor, dict, list, tuple) with every tensor on ``device``."""
    if hasattr(obj, "to") and hasattr(obj, "untyped_storage"):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_move(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_move(v, device) for v in obj)
    return obj


def _parse_dtype(dtype):
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str):
        names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float32": None, "fp32": None, "float": None}
        if dtype.lower() not in names:
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
        return names[dtype.lower()]
    if dtype == torch.float32:
        return None
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype!r}")
    return dtype


class _PromptableDecoder(MaskDecoder):
    """Cache and prompt logic shared by the SAM and SAM 2 decoders; subclasses say how to wrap a
    model in its predictor (``wrap``), encode an image, restore a cached state and run one batch
    of same-shaped prompts."""

    name = "promptable"
    #: model (or predictor) -> predictor (``sam_models.sam_predictor`` / ``sam2_predictor``).
    wrap = staticmethod(lambda model: model)

    def __init__(self, model, mode: str = "joint", cache_bytes: int = DEFAULT_CACHE_BYTES,
                 batch_size: int = 32, multimask="auto", dtype=None, cache_device=None):
        super().__init__(mode)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if multimask not in MULTIMASK_CHOICES:
            raise ValueError(f"multimask must be 'auto', True or False, got {multimask!r}")
        self.predictor = self.wrap(model)
        self.batch_size = batch_size
        self.multimask = multimask
        self.cache = ByteLRUCache(cache_bytes)
        self.cache_device = cache_device
        amp = _parse_dtype(dtype)
        if amp is not None and self.device.type != "cuda":
            logger.info("%s: dtype %s ignored on device %s: running in float32", type(self).__name__, amp,
                        self.device)
            amp = None
        self.amp_dtype = amp

    @property
    def model(self):
        return self.predictor.model

    # -------------------------------------------------------------- subclass hooks
    @property
    def device(self):
        return self.predictor.device

    def _encode(self, rgb: np.ndarray) -> dict:
        """Run the image encoder on ``rgb``; return the predictor state to cache."""
        raise NotImplementedError

    def _restore(self, state: dict) -> None:
        raise NotImplementedError

    def _predict(self, prompts: Sequence[Prompt], size: tuple[int, int]) -> np.ndarray:
        """Bool (B, H, W) masks of ``prompts`` (all of one signature) on the current image."""
        raise NotImplementedError

    # -------------------------------------------------------------- machinery
    def autocast(self):
        """The autocast context of ``dtype`` on CUDA, else a no-op."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _set_image(self, group: DecodeGroup) -> tuple[int, int]:
        """Make the predictor hold ``group``'s image: from the cache, else by encoding it.
        Returns the image size (W, H)."""
        entry = self.cache.get(group.image_key)
        if entry is not None:
            self.counters.cache_hits += 1
            state = entry.state if self.cache_device is None else _move(entry.state, self.device)
            self._restore(state)
            return entry.size
        rgb = load_image(group.image)
        h, w = rgb.shape[:2]
        with self.autocast():
            state = self._encode(rgb)
        self.counters.encoder_calls += 1
        stored = state if self.cache_device is None else _move(state, self.cache_device)
        nbytes = tensors_nbytes(stored) + ENTRY_OVERHEAD_BYTES
        self.cache.put(group.image_key, CacheEntry(stored, (w, h), nbytes), nbytes)
        return w, h

    def decode_group(self, group: DecodeGroup) -> list[np.ndarray]:
        instances = list(group.instances)
        if not instances:
            return []
        prompts = plan_prompts(instances, self.mode, self.multimask)
        if prompts:
            w, h = self._set_image(group)
        else:  # nothing to prompt: only the size is needed
            w, h = self.image_size(group)
        out = [np.zeros((h, w), bool) for _ in instances]
        by_sig: dict[tuple, list[Prompt]] = {}
        for p in prompts:
            by_sig.setdefault(p.signature, []).append(p)
        for sig_prompts in by_sig.values():
            for start in range(0, len(sig_prompts), self.batch_size):
                chunk = sig_prompts[start:start + self.batch_size]
                with self.autocast():
                    masks = self._predict(chunk, (w, h))
                self.counters.prompts_decoded += len(chunk)
                for p, m in zip(chunk, masks):
                    out[p.index] |= m
        if self.mode == "union":
            for i, inst in enumerate(instances):
                if inst.box is not None and instance_prompt_points(inst):
                    out[i] &= box_pixel_mask(inst.box, (w, h))
        return out

    def clear_cache(self) -> None:
        self.cache.clear()


class SamDecoder(_PromptableDecoder):
    """Masks from segment-anything's ``SamPredictor`` with an image-embedding cache.

    ``SamDecoder(model, mode="joint", cache_bytes=2 GiB, batch_size=32, multimask="auto",
    dtype=None, cache_device=None)``: ``model`` is a ``segment_anything.Sam`` (wrapped in a
    ``SamPredictor``) or a ``SamPredictor``. See the module's docstring for the cache, the modes
    and the multimask rule. ``batch_size`` trades memory for speed: a batch holds (batch, 1 or 3,
    H, W) float logits at the image's full size.
    """

    name = "sam"
    wrap = staticmethod(sam_predictor)

    @classmethod
    def from_checkpoint(cls, model_type: str = "vit_h", checkpoint=None, device=None, dtype=None,
                        cache_bytes: int = DEFAULT_CACHE_BYTES, **kwargs) -> "SamDecoder":
        """``segment_anything.sam_model_registry[model_type](checkpoint=path)`` in eval mode on
        ``device`` (default: CUDA when available, else CPU), wrapped in a decoder. ``dtype``
        (float16 / bfloat16) applies on CUDA only. Other keyword arguments (mode, batch_size,
        multimask, cache_device) go to the constructor."""
        return cls(load_sam(model_type, checkpoint, device), dtype=dtype, cache_bytes=cache_bytes, **kwargs)

    def _encode(self, rgb: np.ndarray) -> dict:
        p = self.predictor
        p.set_image(rgb)
        return {"features": p.features, "original_size": tuple(p.original_size),
                "input_size": tuple(p.input_size)}

    def _restore(self, state: dict) -> None:
        p = self.predictor
        p.reset_image()
        p.features = state["features"]
        p.original_size = state["original_size"]
        p.input_size = state["input_size"]
        p.is_image_set = True

    def _predict(self, prompts: Sequence[Prompt], size: tuple[int, int]) -> np.ndarray:
        import torch

        p = self.predictor
        w, h = size
        device = p.device
        npoints, has_box, multimask = prompts[0].signature
        scale = np.array([w, h], np.float64)
        coords = labels = boxes = None
        if npoints:
            pts = np.array([q.points for q in prompts], np.float64) * scale  # (B, k, 2) pixels
            coords = p.transform.apply_coords_torch(torch.as_tensor(pts, dtype=torch.float32, device=device),
                                                    p.original_size)
            labels = torch.ones(pts.shape[:2], dtype=torch.int, device=device)
        if has_box:
            bx = np.array([q.box for q in prompts], np.float64) * np.tile(scale, 2)  # (B, 4) pixels
            boxes = p.transform.apply_boxes_torch(torch.as_tensor(bx, dtype=torch.float32, device=device),
                                                  p.original_size)
        model = p.model
        with torch.no_grad():
            # predict_torch's steps, with the multimask choice made before upscaling: predict_torch
            # upscales all three outputs to the full image (from a strided slice: on a CPU ~10x
            # the cost of upscaling one mask), then we would keep one
            sparse, dense = model.prompt_encoder(points=None if coords is None else (coords, labels),
                                                 boxes=boxes, masks=None)
            low_res, scores = model.mask_decoder(image_embeddings=p.features,
                                                 image_pe=model.prompt_encoder.get_dense_pe(),
                                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                 multimask_output=multimask)
            if low_res.shape[1] > 1:
                rows = torch.arange(len(prompts), device=low_res.device)
                low_res = low_res[rows, scores.argmax(dim=1)][:, None]
            masks = model.postprocess_masks(low_res, p.input_size, p.original_size)[:, 0] > model.mask_threshold
        return masks.cpu().numpy()

    def __repr__(self) -> str:
        return (f"SamDecoder(mode={self.mode!r}, batch_size={self.batch_size}, multimask={self.multimask!r}, "
                f"cache={self.cache!r})")


class Sam2Decoder(_PromptableDecoder):
    """Masks from SAM 2's ``SAM2ImagePredictor`` with an image-embedding cache (same interface
    as ``SamDecoder``). ``model``: a ``SAM2ImagePredictor`` or a SAM 2 model. The cache stores
    the predictor's ``_features`` (image embedding and high-resolution features: their real
    storage bytes + ``ENTRY_OVERHEAD_BYTES``) and ``_orig_hw``; prompts go through the public
    batched ``predict`` (pixel coordinates, ``normalize_coords=True``). Needs the ``sam2``
    package: ImportError otherwise."""

    name = "sam2"
    wrap = staticmethod(sam2_predictor)

    @classmethod
    def from_checkpoint(cls, config: str = "configs/sam2.1/sam2.1_hiera_l.yaml", checkpoint=None, device=None,
                        dtype=None, cache_bytes: int = DEFAULT_CACHE_BYTES, **kwargs) -> "Sam2Decoder":
        """``sam2.build_sam.build_sam2(config, checkpoint, device)`` wrapped in a decoder."""
        return cls(load_sam2(config, checkpoint, device), dtype=dtype, cache_bytes=cache_bytes, **kwargs)

    def _encode(self, rgb: np.ndarray) -> dict:
        p = self.predictor
        p.set_image(rgb)
        return {"_features": p._features, "_orig_hw": list(p._orig_hw)}

    def _restore(self, state: dict) -> None:
        p = self.predictor
        p.reset_predictor()
        p._features = state["_features"]
        p._orig_hw = list(state["_orig_hw"])
        p._is_batch = False
        p._is_image_set = True

    def _predict(self, prompts: Sequence[Prompt], size: tuple[int, int]) -> np.ndarray:
        w, h = size
        npoints, has_box, multimask = prompts[0].signature
        b = len(prompts)
        scale = np.array([w, h], np.float64)
        coords = labels = boxes = None
        if npoints:
            coords = (np.array([q.points for q in prompts], np.float64) * scale).astype(np.float32)
            labels = np.ones(coords.shape[:2], np.int32)
        if has_box:
            boxes = (np.array([q.box for q in prompts], np.float64) * np.tile(scale, 2)).astype(np.float32)
        masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels, box=boxes,
                                                  multimask_output=multimask, normalize_coords=True)
        masks = np.asarray(masks).reshape(b, -1, h, w)  # predict squeezes a batch of one
        scores = np.asarray(scores, np.float64).reshape(b, -1)
        best = scores.argmax(axis=1) if masks.shape[1] > 1 else np.zeros(b, int)
        return masks[np.arange(b), best] > 0.5

    def __repr__(self) -> str:
        return (f"Sam2Decoder(mode={self.mode!r}, batch_size={self.batch_size}, multimask={self.multimask!r}, "
                f"cache={self.cache!r})")


__all__ = ["SamDecoder", "Sam2Decoder", "Prompt", "CacheEntry", "plan_prompts", "instance_prompt_points",
           "tensors_nbytes", "DEFAULT_CACHE_BYTES", "ENTRY_OVERHEAD_BYTES"]
