"""GETok core: the spatial vocabulary, geometry <-> token codecs and a never-raising parser.

No training framework is imported here (ms-swift, verl, torch): plugins adapt this package.
"""

from .codec.answer import Parsed, ParsedOffsets, format_answer, format_offsets, parse_answer, parse_offsets
from .codec.coords import (box_norm_to_pixel, box_pixel_to_norm, input_to_original, norm_to_pixel,
                     original_to_input, pixel_to_norm, smart_resize)
from .codec.instance import (Instance, InstanceCells, anchors, apply_offsets, decode_instance, encode_instance,
                       instance_from_dict, instance_to_dict, quantize)
from .data.greedy import PackedProposals, greedy_select
from .data.offsets import offset_targets, sample_refinement
from .data.records import Sample, Skipped, Target
from .codec.vocab import DELETE, ELEMENTS, NONE, STRUCTURAL_TAGS, GetokVocab

__version__ = "0.1.0"

__all__ = [
    "GetokVocab", "Instance", "InstanceCells", "Parsed", "ParsedOffsets",
    "format_answer", "parse_answer", "format_offsets", "parse_offsets",
    "encode_instance", "decode_instance", "quantize", "anchors", "apply_offsets",
    "instance_from_dict", "instance_to_dict",
    "pixel_to_norm", "norm_to_pixel", "box_pixel_to_norm", "box_norm_to_pixel",
    "smart_resize", "original_to_input", "input_to_original",
    "greedy_select", "PackedProposals", "offset_targets", "sample_refinement", "Sample", "Target", "Skipped",
    "DELETE", "NONE", "ELEMENTS", "STRUCTURAL_TAGS", "__version__",
]
