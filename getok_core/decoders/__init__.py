"""Mask decoders: GETok instances -> boolean masks. The interface and shared caches (``base``),
the checkpoint-free region decoder (``region``), SAM / SAM 2 (``sam``), SAM as a Ray Serve app
and its client (``service``), a tiny random SAM for tests (``tiny_sam``)."""

from .base import ByteLRUCache, DecodeGroup, DecoderCounters, ImageSource, MaskDecoder, load_image, make_decoder

__all__ = ["ByteLRUCache", "DecodeGroup", "DecoderCounters", "ImageSource", "MaskDecoder", "load_image",
           "make_decoder"]
