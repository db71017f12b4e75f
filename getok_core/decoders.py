"""Mask decoders: GETok instances (box and / or seg points) -> boolean masks (SPEC §3).

Every decoder takes requests grouped by image: an ``image_key`` (what embedding caches key on),
an image source (a path, an (H, W, 3) uint8 array, or a zero-argument callable returning one:
read only on a cache miss), and the instances to decode, in normalized coordinates. It returns
one boolean (H, W) mask per instance, in the original image frame.

Modes (SPEC §3): ``joint`` prompts once with all points (label 1) plus the box; ``union`` ORs the
masks of each point prompted alone, clipped to the box when there is one.

Implementations: ``RegionDecoder`` (no weights; ``getok_core.region_decoder``), ``SamDecoder``
and ``Sam2Decoder`` (``getok_core.sam_decoder``; torch and segment-anything / sam2 needed).
Use ``make_decoder(name, **kwargs)`` to build one by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np

from .instance import Instance

ImageSource = Union[str, np.ndarray, Callable[[], np.ndarray]]
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


def load_image(source: ImageSource) -> np.ndarray:
    """RGB uint8 (H, W, 3) pixels of an image source (EXIF orientation applied to files)."""
    if callable(source):
        source = source()
    if isinstance(source, np.ndarray):
        from .proposals import to_rgb

        return to_rgb(source)
    from PIL import Image, ImageOps

    try:
        with Image.open(source) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {source!r}: {exc}") from exc


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


def make_decoder(name: str, **kwargs) -> MaskDecoder:
    """A decoder by name: ``region``, ``sam`` (kwargs: checkpoint, model_type, device, ...),
    ``sam2`` (kwargs: config, checkpoint, device, ...)."""
    if name == "region":
        from .region_decoder import RegionDecoder

        return RegionDecoder(**kwargs)
    if name == "sam":
        from .sam_decoder import SamDecoder

        return SamDecoder.from_checkpoint(**kwargs)
    if name == "sam2":
        from .sam_decoder import Sam2Decoder

        return Sam2Decoder.from_checkpoint(**kwargs)
    raise ValueError(f"unknown decoder {name!r}: region, sam or sam2")
