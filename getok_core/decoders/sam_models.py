"""Loading SAM / SAM 2 checkpoints and wrapping the models in their predictors: what the SAM
decoders (``getok_core.decoders.sam``), the SAM service (``decoders.service``) and the SAM
proposals (``getok_core.prepare.proposals``) share.

- ``load_sam(model_type, checkpoint, device)``: a segment-anything ``Sam`` in eval mode
  (``model_type="tiny"``: a ``getok tiny-sam`` checkpoint, ``decoders.tiny_sam``).
- ``load_sam2(config, checkpoint, device)``: a SAM 2 model (``sam2.build_sam.build_sam2``;
  ``config="tiny"``: a ``getok tiny-sam --sam2`` checkpoint); ``sam2_configs()`` the configs
  the installed ``sam2`` package has.
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


def sam2_configs() -> list[str]:
    """The config names ``build_sam2`` finds in the installed ``sam2`` package (its hydra search
    path), e.g. ``configs/sam2.1/sam2.1_hiera_l.yaml``."""
    import sam2

    root = os.path.dirname(sam2.__file__)
    out = []
    for folder, _, files in os.walk(os.path.join(root, "configs")):
        out += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".yaml")]
    return sorted(p.replace(os.sep, "/") for p in out)


def load_sam2(config: str, checkpoint, device=None):
    """``sam2.build_sam.build_sam2(config, checkpoint, device)`` in eval mode (default device:
    CUDA when available, else CPU), with clear errors for a missing package, an unknown config or
    a missing path. ``config``: a config of the ``sam2`` package (``sam2_configs()``, e.g.
    ``configs/sam2.1/sam2.1_hiera_l.yaml``), or ``"tiny"`` for a checkpoint of
    ``getok_core.decoders.tiny_sam.save_tiny_sam2`` (``getok tiny-sam --sam2``): its stored config
    and hydra overrides are built the same way."""
    import_sam2_predictor()
    from sam2.build_sam import build_sam2

    path = _checkpoint_path(checkpoint, "SAM 2", " (e.g. sam2.1_hiera_large.pt)")
    device = _device(device)
    if config == "tiny":
        from .tiny_sam import tiny_sam2_recipe

        config, overrides = tiny_sam2_recipe(path)
    else:
        overrides = []
    known = sam2_configs()
    if config not in known and f"{config}.yaml" not in known:
        raise ValueError(f"unknown SAM 2 config {config!r}; the sam2 package has {known} (or 'tiny' for a "
                         "`getok tiny-sam --sam2` checkpoint)")
    return build_sam2(config, path, device=device, hydra_overrides_extra=overrides)


def import_sam2_predictor():
    """SAM 2's ``SAM2ImagePredictor`` class; ImportError naming the package when it is missing."""
    try:
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as exc:
        raise ImportError(
            "SAM 2 is not installed: install the `sam2` package (the swift / verl environments have "
            "1.1.0; by hand: SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0), or use "
            "segment-anything (SamProposer / SamDecoder) or the region proposer / decoder") from exc
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


__all__ = ["load_sam", "load_sam2", "sam2_configs", "import_sam2_predictor", "sam_predictor", "sam2_predictor"]
