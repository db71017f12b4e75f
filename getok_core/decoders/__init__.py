"""Mask decoders: GETok instances -> boolean masks. The interface and shared caches (``base``),
the checkpoint-free region decoder and the region segmentation it shares with the region
proposals (``region``), SAM / SAM 2 checkpoints and predictors (``sam_models``), the SAM / SAM 2
decoders (``sam``), SAM as a Ray Serve app and its client (``service``), a tiny random SAM for
tests (``tiny_sam``).

``make_decoder(name, **kwargs)`` builds a decoder by name from the registry ``DECODERS`` (name ->
factory): ``region`` (``RegionDecoder``), ``sam`` (``SamDecoder.from_checkpoint``: checkpoint,
model_type, device, ...), ``sam2`` (``Sam2Decoder.from_checkpoint``: config, checkpoint, device,
...), ``ray`` (``RaySamDecoder``, the SAM service client: app, address, timeout_s, retries,
fallback, ... and optional start arguments: checkpoint, model_type, replicas, gpus_per_replica,
...). ``register_decoder`` adds one. Importing this package imports no torch, segment-anything,
sam2 or ray: they load when a decoder needing them is built.
"""

from __future__ import annotations

from typing import Callable

from .base import MODES, ByteLRUCache, DecodeGroup, DecoderCounters, ImageSource, MaskDecoder, load_image
from .region import RegionDecoder
from .sam import Sam2Decoder, SamDecoder
from .service import RaySamDecoder

#: Decoder name -> factory (keyword arguments -> ``MaskDecoder``).
DECODERS: dict[str, Callable[..., MaskDecoder]] = {
    "region": RegionDecoder,
    "sam": SamDecoder.from_checkpoint,
    "sam2": Sam2Decoder.from_checkpoint,
    "ray": RaySamDecoder,
}


def register_decoder(name: str, factory: Callable[..., MaskDecoder]) -> None:
    """Make ``make_decoder(name, **kwargs)`` return ``factory(**kwargs)`` (replacing any decoder
    of that name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a decoder name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    DECODERS[name] = factory


def make_decoder(name: str, **kwargs) -> MaskDecoder:
    """The decoder ``DECODERS[name](**kwargs)``; ValueError naming the known ones otherwise."""
    factory = DECODERS.get(name)
    if factory is None:
        raise ValueError(f"unknown decoder {name!r}: {', '.join(DECODERS)}")
    return factory(**kwargs)


__all__ = ["MODES", "ByteLRUCache", "DecodeGroup", "DecoderCounters", "ImageSource", "MaskDecoder", "load_image",
           "DECODERS", "register_decoder", "make_decoder", "RegionDecoder", "SamDecoder", "Sam2Decoder",
           "RaySamDecoder"]
