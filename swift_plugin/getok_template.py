"""ms-swift templates ``getok_qwen2_5_vl``, ``getok_qwen2_vl``, ``getok_qwen3_vl``: ms-swift's
Qwen-VL templates whose grounding hooks write GETok tokens.

A standard ms-swift grounding row::

    {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                  {"role": "assistant", "content": "<bbox>"}],
     "images": ["cat.jpg"],
     "objects": {"ref": ["the cat"], "bbox": [[120, 80, 400, 360]], "bbox_type": "real"}}

renders ``<ref-object>`` as the plain expression (``the cat``) and ``<bbox>`` as GETok tokens of the
box normalized by the ORIGINAL image size: ``<box><grid6,5><grid19,23></box>`` for a 640 x 480
image (4 values = box, 2 values = ``<point>``). ``bbox_type``: ``real`` (pixels, the default),
``norm1`` (already in [0, 1]) or ``norm1000``. GETok tokens are normalized, so no rescaling to the
resized model input is needed (ms-swift's ``norm_bbox`` has no effect here). Text that already
holds GETok tokens (``getok prepare`` output) passes through unchanged.

Options (environment variables, also settable with ``--model_kwargs '{"GETOK_IMAGE_SIZE": "448"}'``
because ms-swift exports model_kwargs to the environment):

- ``GETOK_GRID_SIZE`` (default 32): the grid of the tokens written for ``<bbox>``.
- ``GETOK_IMAGE_SIZE``: ``S`` or ``W,H``: resize every image plainly (no aspect ratio kept) to that
  size, rounded to a multiple of the vision patch x merge size (28 for Qwen2/2.5-VL, 32 for
  Qwen3-VL), the paper's preprocessing. Unset (default): Qwen's dynamic resolution.
"""

from __future__ import annotations

import copy
import dataclasses
import os

from swift.template import TEMPLATE_MAPPING, register_template
from swift.template.templates.qwen import Qwen2_5VLTemplate, Qwen2VLTemplate, Qwen3VLTemplate
from swift.utils import get_logger

from getok_core.codec.answer import format_cells
from getok_core.codec.instance import Instance, encode_instance

from .getok_tokens import vocab_from_env

logger = get_logger()

ENV_IMAGE_SIZE = "GETOK_IMAGE_SIZE"


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"448"`` -> (448, 448); ``"640,480"`` -> (640, 480); empty / None / "0" -> None."""
    if text is None or not str(text).strip() or str(text).strip() in ("0", "none", "None"):
        return None
    parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{ENV_IMAGE_SIZE} must be S or W,H in pixels, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise ValueError(f"{ENV_IMAGE_SIZE} must be S or W,H in pixels, got {text!r}")
    return vals[0], vals[1]


def normalize_objects(objects: dict, sizes: list[tuple[int, int]] | None) -> list[list[float]]:
    """The ``objects['bbox']`` entries as normalized [0, 1] coordinates.

    ``sizes``: the (width, height) of each image (original size), indexed by ``objects['image_id']``
    (default 0). ``bbox_type``: ``real`` (default), ``norm1``, ``norm1000``."""
    bbox_type = objects.get("bbox_type") or "real"
    image_ids = list(objects.get("image_id") or [])
    out = []
    for k, box in enumerate(objects.get("bbox") or []):
        vals = [float(v) for v in box]
        if bbox_type == "norm1":
            w = h = 1.0
        elif bbox_type == "norm1000":
            w = h = 1000.0
        elif bbox_type == "real":
            if not sizes:
                raise ValueError("objects with bbox_type 'real' need the image to normalize the boxes")
            iid = int(image_ids[k]) if k < len(image_ids) else 0
            w, h = sizes[iid]
        else:
            raise ValueError(f"unknown bbox_type {bbox_type!r} (real, norm1 or norm1000)")
        out.append([v / (w if i % 2 == 0 else h) for i, v in enumerate(vals)])
    return out


def bbox_text(bbox, vocab) -> str:
    """GETok text of one normalized bbox: 4 values -> ``<box>``, 2 values -> ``<point>``."""
    if len(bbox) == 4:
        inst = Instance(box=tuple(bbox))
    elif len(bbox) == 2:
        inst = Instance(point=tuple(bbox))
    else:
        raise ValueError(f"a bbox has 2 (point) or 4 (box) values, got {len(bbox)}")
    return format_cells(encode_instance(inst, vocab), vocab)


class GetokTemplateMixin:
    """Grounding hooks writing GETok tokens, and the optional plain resize."""

    def init_env_args(self):
        super().init_env_args()
        self.getok_vocab = vocab_from_env()
        self.getok_image_size = self._round_image_size(parse_image_size(os.environ.get(ENV_IMAGE_SIZE)))

    def _round_image_size(self, size):
        if size is None:
            return None
        ip = getattr(self.processor, "image_processor", None)
        factor = int(getattr(ip, "patch_size", 14) or 14) * int(getattr(ip, "merge_size", 2) or 2)
        w, h = (max(factor, round(v / factor) * factor) for v in size)
        if (w, h) != tuple(size):
            logger.info(f"GETok: {ENV_IMAGE_SIZE} {size} rounded to {(w, h)} (multiples of {factor})")
        logger.info(f"GETok: images are resized plainly to {w}x{h}")
        return w, h

    # -------------------------------------------------------------- images
    def replace_tag(self, media_type, index, inputs):
        if media_type == "image" and self.getok_image_size is not None:
            from PIL import Image

            from swift.template import load_image

            img = inputs.images[index]
            if not isinstance(img, Image.Image):
                img = load_image(img)
            if img.size != self.getok_image_size:
                img = img.convert("RGB").resize(self.getok_image_size, Image.BICUBIC)
            inputs.images[index] = img
        return super().replace_tag(media_type, index, inputs)

    # -------------------------------------------------------------- grounding
    def normalize_bbox(self, inputs) -> None:
        """Replace ms-swift's norm1000 / pixel rescaling: boxes become normalized [0, 1] floats
        of the original image (GETok needs no rescaling to the model's input size)."""
        objects = inputs.objects
        sizes = list(zip(objects.get("width") or [], objects.get("height") or []))
        objects["bbox"] = normalize_objects(objects, sizes)
        objects.pop("bbox_type", None)
        objects.pop("image_id", None)
        inputs.getok_normalized = True

    def replace_ref(self, ref, index, inputs):
        return [ref]

    def replace_bbox(self, bbox, index, inputs):
        if not getattr(inputs, "getok_normalized", False):
            # no image in the row: ms-swift skipped normalize_bbox
            bbox = normalize_objects({"bbox": [bbox], "bbox_type": inputs.objects.get("bbox_type")}, None)[0]
        return [bbox_text(bbox, self.getok_vocab)]


class GetokQwen2VLTemplate(GetokTemplateMixin, Qwen2VLTemplate):
    pass


class GetokQwen2_5VLTemplate(GetokTemplateMixin, Qwen2_5VLTemplate):
    pass


class GetokQwen3VLTemplate(GetokTemplateMixin, Qwen3VLTemplate):
    pass


#: GETok template -> (ms-swift template it extends, class)
TEMPLATES = {
    "getok_qwen2_5_vl": ("qwen2_5_vl", GetokQwen2_5VLTemplate),
    "getok_qwen2_vl": ("qwen2_vl", GetokQwen2VLTemplate),
    "getok_qwen3_vl": ("qwen3_vl", GetokQwen3VLTemplate),
}


def register() -> list[str]:
    """Register the GETok templates (idempotent): each is its ms-swift template's meta (system
    prompt, stop words, thinking prefix...) with the GETok class."""
    for name, (base, cls) in TEMPLATES.items():
        meta = dataclasses.replace(copy.deepcopy(TEMPLATE_MAPPING[base]), template_type=name, template_cls=cls)
        register_template(meta, exist_ok=True)
    return list(TEMPLATES)


__all__ = ["GetokTemplateMixin", "GetokQwen2VLTemplate", "GetokQwen2_5VLTemplate", "GetokQwen3VLTemplate",
           "TEMPLATES", "register", "normalize_objects", "bbox_text", "parse_image_size", "ENV_IMAGE_SIZE"]
