"""Mask decoding for the rewards: the per-call batch of decode requests (each distinct
(image, instance) decoded once, one ``decoder.decode`` call per batch), the mask IoU against a
target, and the process-wide cache of shared decoders (``cached_decoder``).

Masks are (H, W) bool arrays of the ground truth's image.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from ..codec.instance import Instance
from .truth import Truth, TruthTarget

#: ``cached_decoder`` names meaning "no decoder".
NO_DECODER = (None, "", "none", "None", "null", False)


class DecodeBatch:
    """Collects (image_key, image source, Instance) requests, deduplicated, and decodes them with
    one ``decoder.decode`` call (falling back to one call per image when that call fails).

    A decoder with ``decode_flagged`` and a ``fallback`` configured (``decoders.service.RaySamDecoder``
    with ``fallback="region"``) may decode some masks with the fallback and says which:
    ``reports_fallback`` is then True and ``fallback`` holds the request indices so decoded (the
    rewards' ``mask_fallback`` detail, present exactly when a fallback is configured)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.index: dict = {}
        self.requests: list = []
        self.shapes: list = []
        self.results: list = []
        self.failures: dict[int, str] = {}
        self.reports_fallback = hasattr(decoder, "decode_flagged") and getattr(decoder, "fallback", None) is not None
        self.fallback: set[int] = set()

    def _decode(self, idx) -> list:
        reqs = [self.requests[i] for i in idx]
        if not self.reports_fallback:
            return list(self.decoder.decode(reqs))
        out, flags = self.decoder.decode_flagged(reqs)
        self.fallback.update(i for i, f in zip(idx, flags) if f)
        return list(out)

    def fallback_share(self, idxs) -> float:
        """Share of the requests ``idxs`` decoded by the decoder's fallback (0 when none)."""
        idxs = [i for i in idxs if i is not None and i >= 0]
        return sum(i in self.fallback for i in idxs) / len(idxs) if idxs else 0.0

    def add(self, truth: Truth, inst: Instance) -> int:
        """The request index of ``inst`` on the image of ``truth`` (added once)."""
        key = (truth.image_key, inst)
        idx = self.index.get(key)
        if idx is None:
            idx = len(self.requests)
            self.index[key] = idx
            self.requests.append((truth.image_key, truth.image_path, inst))
            self.shapes.append((truth.size[1], truth.size[0]))
        return idx

    def run(self) -> None:
        """Decode every request: one call; when it fails, one call per image (a failing image
        leaves its requests without a mask, with the reason in ``failures``)."""
        n = len(self.requests)
        self.results = [None] * n
        if not n:
            return
        try:
            self._decode_store(range(n))
            return
        except Exception as exc:
            first = f"{type(exc).__name__}: {exc}"[:200]
        groups: dict[str, list[int]] = {}
        for i, (key, _, _) in enumerate(self.requests):
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            try:
                self._decode_store(idx)
            except Exception as exc:
                why = f"mask decoder failed on image {key!r}: {type(exc).__name__}: {exc}"[:300]
                if len(groups) == 1 and first:
                    why = f"mask decoder failed on image {key!r}: {first}"
                for i in idx:
                    self.failures[i] = why

    def _decode_store(self, idx) -> None:
        out = self._decode(idx)
        if len(out) != len(idx):
            raise ValueError(f"decoder returned {len(out)} masks for {len(idx)} requests")
        for i, m in zip(idx, out):
            try:
                arr = np.asarray(m).astype(bool, copy=False)
            except Exception as exc:
                self.failures[i] = f"mask decoder returned a non-array: {type(exc).__name__}"
                continue
            if arr.shape != self.shapes[i]:
                self.failures[i] = (f"mask decoder returned shape {arr.shape} for image "
                                    f"{self.requests[i][0]!r} of (H, W) = {self.shapes[i]}")
                continue
            self.results[i] = arr

    def mask(self, idx: int):
        """(mask or None, error or "")."""
        return self.results[idx], self.failures.get(idx, "")


def mask_iou(pred: np.ndarray | None, target: TruthTarget, ignore: np.ndarray | None) -> float:
    """IoU of a predicted mask with the target's mask, pixels of ``ignore`` left out; 0 when
    either is missing or the union is empty. The intersection is counted inside the target's
    bounding box only (the rest of the image cannot intersect)."""
    gt = target.mask()
    if pred is None or gt is None:
        return 0.0
    r0, r1, c0, c1 = target.pixel_bbox()
    if ignore is None:
        n_pred = np.count_nonzero(pred)
        n_gt = target.mask_count()
        inter = np.count_nonzero(pred[r0:r1, c0:c1] & gt[r0:r1, c0:c1]) if r1 > r0 else 0
    else:
        keep = ~ignore
        n_pred = np.count_nonzero(pred & keep)
        gt_k = gt[r0:r1, c0:c1] & keep[r0:r1, c0:c1]
        n_gt = np.count_nonzero(gt_k)
        inter = np.count_nonzero(pred[r0:r1, c0:c1] & gt_k) if r1 > r0 else 0
    union = n_pred + n_gt - inter
    return float(inter / union) if union else 0.0


def decodable(inst: Instance) -> bool:
    """Whether a decoder has a prompt for ``inst`` (a box or a point)."""
    return inst.box is not None or bool(inst.points)


# ---------------------------------------------------------------------- shared decoders
class LockedDecoder:
    """A shared decoder whose ``decode`` runs one call at a time (verl scores samples in a thread
    pool; SAM predictors keep per-image state)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self._lock = threading.Lock()

    def decode(self, requests):
        with self._lock:
            return self.decoder.decode(requests)

    def __getattr__(self, name):
        return getattr(self.decoder, name)


class DecoderCache:
    """Mask decoders built once per (name, kwargs) and shared; thread-safe."""

    def __init__(self):
        self._items: dict = {}
        self._lock = threading.Lock()

    def get(self, name, **kwargs):
        """The decoder ``decoders.make_decoder(name, **kwargs)``, built on first use (its
        ``decode`` serialized unless the decoder says it is ``thread_safe``); None for a name of
        ``NO_DECODER``."""
        if name in NO_DECODER:
            return None
        key = (str(name), json.dumps(kwargs, sort_keys=True, default=repr))
        with self._lock:
            dec = self._items.get(key)
            if dec is None:
                from ..decoders import make_decoder

                dec = make_decoder(str(name), **kwargs)
                if not getattr(dec, "thread_safe", False):
                    dec = LockedDecoder(dec)
                self._items[key] = dec
        return dec

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: The process-wide decoders of ``cached_decoder``.
SHARED_DECODERS = DecoderCache()


def cached_decoder(name, **kwargs):
    """The mask decoder ``decoders.make_decoder(name, **kwargs)``, built once per process for
    each (name, kwargs) and shared (its ``decode`` serialized unless the decoder says it is
    ``thread_safe``, as the SAM service client does); None for no decoder (``None``, ``""``,
    ``"none"``)."""
    return SHARED_DECODERS.get(name, **kwargs)


__all__ = ["NO_DECODER", "DecodeBatch", "mask_iou", "decodable", "LockedDecoder", "DecoderCache", "SHARED_DECODERS",
           "cached_decoder"]
