"""Mask decoders: GETok instances (box and / or seg points) -> boolean masks (SPEC §3).

Every decoder takes requests grouped by image: an ``image_key`` (what embedding caches key on),
an image source (a path, an (H, W, 3) uint8 array, or a zero-argument callable returning one:
read only on a cache miss), and the instances to decode, in normalized coordinates. It returns
one boolean (H, W) mask per instance, in the original image frame.

Modes (SPEC §3): ``joint`` prompts once with all points (label 1) plus the box; ``union`` ORs the
masks of each point prompted alone, clipped to the box when there is one.

Implementations: ``RegionDecoder`` (no weights; ``getok_core.decoders.region``), ``SamDecoder``
and ``Sam2Decoder`` (``getok_core.decoders.sam``; torch and segment-anything / sam2 needed),
``RaySamDecoder`` (``getok_core.decoders.service``: SAM served by a Ray Serve app; ray needed).
Use ``getok_core.decoders.make_decoder(name, **kwargs)`` to build one by name (the registry
``getok_core.decoders.DECODERS``).

Shared helpers: ``ByteLRUCache`` (the per-image caches of the decoders: least-recently-used,
bounded by bytes). Image sources are read by ``getok_core.data.images.load_image`` (re-exported
here). How a normalized box / point meets the pixel grid of the original image is
``codec.coords.box_pixel_mask`` / ``point_pixel``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Sequence

import numpy as np

from ..codec.instance import Instance
from ..data.images import ImageSource, load_image

MODES = ("joint", "union")


@dataclass
class DecoderCounters:
    """What a decoder did, for tests and benchmarks: image encodings run, encodings served from
    the cache, prompts decoded (one per instance in ``joint`` mode, one per point in ``union``)."""

    encoder_calls: int = 0
    cache_hits: int = 0
    prompts_decoded: int = 0

    def reset(self) -> None:
        self.encoder_calls = self.cache_hits = self.prompts_decoded = 0


@dataclass
class DecodeGroup:
    """The instances of one image to decode."""

    image_key: str
    image: ImageSource
    instances: Sequence[Instance] = field(default_factory=list)


class ByteLRUCache:
    """A mapping bounded by bytes that evicts the least recently used entries.

    ``put(key, value, nbytes)`` stores ``value`` with its size (the caller says what one entry
    costs) and evicts least-recently-used entries until the total fits ``max_bytes``; an entry
    larger than ``max_bytes`` on its own is not stored (``put`` returns False), so
    ``max_bytes = 0`` disables the cache. ``get`` marks an entry as most recently used; ``peek``
    does not. ``keys()`` lists keys from least to most recently used. ``nbytes`` is the sum of
    the stored entries' sizes, never above ``max_bytes``; ``evictions`` counts evicted entries.
    """

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._data))

    def keys(self) -> list:
        """Keys, least recently used first."""
        return list(self._data)

    def get(self, key, default=None):
        """The value of ``key`` (now the most recently used), or ``default``."""
        item = self._data.get(key)
        if item is None:
            return default
        self._data.move_to_end(key)
        return item[0]

    def peek(self, key, default=None):
        """The value of ``key`` without touching its recency, or ``default``."""
        item = self._data.get(key)
        return default if item is None else item[0]

    def entry_nbytes(self, key) -> int:
        return self._data[key][1]

    def put(self, key, value, nbytes: int) -> bool:
        """Store ``value`` (size ``nbytes``) as the most recently used entry; False if it alone
        exceeds ``max_bytes`` (then nothing is stored and an old entry of that key is dropped)."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self.pop(key)
        if nbytes > self.max_bytes:
            return False
        while self._data and self.nbytes + nbytes > self.max_bytes:
            _, (_, size) = self._data.popitem(last=False)
            self.nbytes -= size
            self.evictions += 1
        self._data[key] = (value, nbytes)
        self.nbytes += nbytes
        return True

    def pop(self, key, default=None):
        item = self._data.pop(key, None)
        if item is None:
            return default
        self.nbytes -= item[1]
        return item[0]

    def clear(self) -> None:
        self._data.clear()
        self.nbytes = 0

    def __repr__(self) -> str:
        return f"ByteLRUCache({len(self)} entries, {self.nbytes}/{self.max_bytes} bytes)"


class MaskDecoder:
    """Base class. Subclasses implement ``decode_group``; ``decode`` groups requests by image so
    that each image is encoded once per call (and, with a cache, once across calls)."""

    name = "base"

    def __init__(self, mode: str = "joint"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.counters = DecoderCounters()

    def decode_group(self, group: DecodeGroup) -> list[np.ndarray]:
        """Masks of ``group.instances`` (bool (H, W) each) for one image."""
        raise NotImplementedError

    def image_size(self, group: DecodeGroup) -> tuple[int, int]:
        """(W, H) of ``group``'s image without encoding it (for instances with nothing to
        prompt): the ``size`` of its entry in the decoder's ``cache`` when there is one, else the
        shape of its pixels."""
        cache = getattr(self, "cache", None)
        entry = cache.peek(group.image_key) if cache is not None else None
        if entry is not None:
            return entry.size
        h, w = load_image(group.image).shape[:2]
        return w, h

    def decode(self, requests: Sequence[tuple[str, ImageSource, Instance]]) -> list[np.ndarray]:
        """Masks for (image_key, image source, instance) requests, in request order; requests of
        the same image_key are decoded together."""
        order: dict[str, list[int]] = {}
        for i, (key, _, _) in enumerate(requests):
            order.setdefault(key, []).append(i)
        out: list[np.ndarray | None] = [None] * len(requests)
        for key, idx in order.items():
            group = DecodeGroup(key, requests[idx[0]][1], [requests[i][2] for i in idx])
            for i, m in zip(idx, self.decode_group(group)):
                out[i] = m
        return out  # type: ignore[return-value]


__all__ = ["MODES", "ImageSource", "DecoderCounters", "DecodeGroup", "ByteLRUCache", "MaskDecoder", "load_image"]
