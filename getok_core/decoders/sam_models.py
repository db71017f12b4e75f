"""Loading SAM / SAM 2 checkpoints and wrapping the models in their predictors: what the SAM
decoders (``getok_core.decoders.sam``), the SAM service (``decoders.service``) and the SAM
proposals (``getok_core.prepare.proposals``) share.

- ``load_sam(model_type, checkpoint, device)``: a segment-anything ``Sam`` in eval mode
  (``model_type="tiny"``: a ``getok tiny-sam`` checkpoint, ``decoders.tiny_sam``).
- ``load_sam2(config, checkpoint, device)``: a SAM 2 model (``sam2.build_sam.build_sam2``).
- ``sam_predictor(model)`` / ``sam2_predictor(model)``: the model wrapped in segment-anything's
  ``SamPredictor`` / SAM 2's ``SAM2ImagePredictor``; a predictor is returned as it is.
- ``import_sam2_predictor()``: the ``SAM2ImagePredictor`` class, or an ImportError naming the
  optional ``sam2`` package.

The default device is CUDA when available, else CPU. Nothing is imported (torch,
segment-anything, sam2) until a function is called; no checkpoint is ever downloaded.
"""

from __future__ import annotations

import os


def _device(device):
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _checkpoint_path(checkpoint, what: str, example: str) -> str:
    if checkpoint is None:
        raise ValueError(f"a {what} checkpoint path is needed{example}; none is downloaded")
    path = os.fspath(checkpoint)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    return path


def load_sam(model_type: str, checkpoint, device=None):
    """``segment_anything.sam_model_registry[model_type](checkpoint=path)`` in eval mode on
    ``device`` (default: CUDA when available, else CPU), with clear errors for a bad type or path.
    ``model_type="tiny"`` loads a checkpoint of ``getok_core.decoders.tiny_sam`` (``getok tiny-sam``)."""
    from segment_anything import sam_model_registry

    if model_type not in sam_model_registry and model_type != "tiny":
        raise ValueError(f"unknown SAM model type {model_type!r}; known: {sorted(sam_model_registry) + ['tiny']}")
    path = _checkpoint_path(checkpoint, "SAM", " (e.g. sam_vit_h_4b8939.pth)")
    device = _device(device)
    if model_type == "tiny":
        from .tiny_sam import load_tiny_sam

        model = load_tiny_sam(path)
    else:
        model = sam_model_registry[model_type](checkpoint=path)
    return model.to(device).eval()


def load_sam2(config: str, checkpoint, device=None):
    """``sam2.build_sam.build_sam2(config, checkpoint, device)`` (default device: CUDA when
    available, else CPU), with clear errors for a missing package or path."""
    import_sam2_predictor()
    from sam2.build_sam import build_sam2

    path = _checkpoint_path(checkpoint, "SAM 2", "")
    return build_sam2(config, path, device=_device(device))


def import_sam2_predictor():
    """SAM 2's ``SAM2ImagePredictor`` class; ImportError naming the package when it is missing."""
    try:
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as exc:
        raise ImportError(
            "SAM 2 is not installed: install it from https://github.com/facebookresearch/sam2 "
            "(package `sam2`), or use segment-anything (SamProposer / SamDecoder) or the region "
            "proposer / decoder") from exc
    return SAM2ImagePredictor


def sam_predictor(model):
    """``model`` (a segment-anything ``Sam``) wrapped in a ``SamPredictor``; anything with
    ``set_image`` and ``predict_torch`` (a predictor already) is returned as it is."""
    if hasattr(model, "set_image") and hasattr(model, "predict_torch"):
        return model
    from segment_anything import SamPredictor

    return SamPredictor(model)


def sam2_predictor(model):
    """``model`` (a SAM 2 model) wrapped in a ``SAM2ImagePredictor``; a predictor (an instance
    of it, or anything with ``set_image`` and ``predict``) is returned as it is. Needs ``sam2``."""
    predictor_cls = import_sam2_predictor()
    if isinstance(model, predictor_cls) or (hasattr(model, "set_image") and hasattr(model, "predict")):
        return model
    return predictor_cls(model)


__all__ = ["load_sam", "load_sam2", "import_sam2_predictor", "sam_predictor", "sam2_predictor"]
