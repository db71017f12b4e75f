"""Tiny, randomly initialized SAM and SAM 2 models for tests and CPU demos (no weights, no network).

SAM (segment-anything): ``build_tiny_sam(seed)`` assembles a real ``segment_anything.modeling.Sam``
from the same classes ``segment_anything.build_sam`` uses, only much smaller, so every code path of
``SamPredictor`` (``ResizeLongestSide``, preprocessing and padding, prompt encoding, mask decoding,
upscaling to the original image size) runs as it does with vit_h, on CPU in milliseconds.

Config (``TINY_SAM_CONFIG``), checked against segment-anything 1.0's ``build_sam.py``:
- image encoder: ``ImageEncoderViT(img_size=256, patch_size=16, embed_dim=32, depth=2,
  num_heads=2, mlp_ratio=2, out_chans=32, use_rel_pos=True, window_size=4,
  global_attn_indexes=(1,))``: 16 x 16 image tokens, one windowed and one global block (as the
  real encoders alternate). ``SamPredictor`` resizes images to ``img_size`` on the long side.
- prompt encoder: ``PromptEncoder(embed_dim=32, image_embedding_size=(16, 16),
  input_image_size=(256, 256), mask_in_chans=8)``; ``embed_dim`` must equal the encoder's
  ``out_chans`` and the decoder's ``transformer_dim``.
- mask decoder: ``MaskDecoder(transformer_dim=32, TwoWayTransformer(depth=2, embedding_dim=32,
  num_heads=2, mlp_dim=64), num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=32)``;
  ``transformer_dim`` must be divisible by 8 (the upscaling path) and ``embedding_dim / 2`` by
  ``num_heads`` (attention downsample rate 2). Low-resolution masks are 64 x 64.

Weights: PyTorch's default init under ``torch.manual_seed(seed)`` (the global RNG state is
restored afterwards), then the zero-initialized absolute position embedding and the mask tokens
are redrawn from normal distributions so that the three multimask outputs differ, and the IoU
head's biases are balanced on a fixed probe (``_balance_scores``) so that which of the three
outputs scores best varies from point to point. Eval mode, CPU, float32.

SAM 2 (``sam2`` 1.1.0): ``build_tiny_sam2(seed)`` is ``sam2.build_sam.build_sam2`` of SAM 2's own
Hiera-T config (``TINY_SAM2_CONFIG``, ``configs/sam2.1/sam2.1_hiera_t.yaml``) with the hydra
overrides ``TINY_SAM2_OVERRIDES`` that shrink its widths and depths: the real ``SAM2Base``,
``Hiera`` trunk, ``FpnNeck``, memory attention / encoder, prompt encoder and mask decoder with
high-resolution features, at the real input size (1024 px: ``SAM2ImagePredictor`` assumes the
1024-px feature sizes 256 / 128 / 64). Widths: Hiera embed_dim 8 (stages 1, 1, 1, 2; one global
attention block, the last), neck / prompt / mask-decoder dim 32 (the mask decoder's 8 heads and
2048-wide MLP are fixed by ``SAM2Base``), memory dim 16. Image embedding 32 x 64 x 64, high-res
features 4 x 256 x 256 and 8 x 128 x 128; low-resolution masks 256 x 256. About 0.65M
parameters. Weights as for SAM: default init under the seed, the zero-initialized Hiera position
embeddings and the mask tokens redrawn, the IoU head balanced on a probe (in logit space: SAM 2's
IoU head ends in a sigmoid). On a CPU (one torch thread, a shared 2-core machine) one image
encoding takes ~0.37 s (the 1024-px input) and a prompt ~67 ms decoded in batches on a 640 x 480
image (``bench/bench_decode.py --encoder sam2``): keep the tests' prompt counts small.

``save_tiny_sam2(path, seed)`` writes a checkpoint ``build_sam2`` itself loads
(``{"model": state_dict}``) plus ``{"getok_tiny_sam2": {"config", "overrides", "seed"}}``;
``load_tiny_sam2(path)`` (and ``decoders.sam_models.load_sam2("tiny", path)``, so every SAM 2
option with config ``tiny``) rebuilds it through ``build_sam2(config, path,
hydra_overrides_extra=overrides)``. ``getok tiny-sam --sam2 OUT`` writes one.

Speed: on a loaded 2-core machine PyTorch's intra-op threads contend badly (one decoder call
~0.6 s with 2 threads vs ~10 ms with 1): tests should run it under ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

from functools import partial

TINY_SAM_CONFIG = dict(
    img_size=256, patch_size=16, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    encoder_mlp_ratio=2.0, encoder_window_size=4, encoder_global_attn_indexes=(1,),
    prompt_embed_dim=32, mask_in_chans=8, decoder_depth=2, decoder_num_heads=2, decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)


def build_tiny_sam(seed: int = 0):
    """A tiny random ``segment_anything.modeling.Sam`` (eval mode, CPU), deterministic in ``seed``."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    c = TINY_SAM_CONFIG
    emb = c["img_size"] // c["patch_size"]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=c["img_size"], patch_size=c["patch_size"], embed_dim=c["encoder_embed_dim"],
                depth=c["encoder_depth"], num_heads=c["encoder_num_heads"], mlp_ratio=c["encoder_mlp_ratio"],
                out_chans=c["prompt_embed_dim"], qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=c["encoder_window_size"], global_attn_indexes=c["encoder_global_attn_indexes"],
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=c["prompt_embed_dim"], image_embedding_size=(emb, emb),
                input_image_size=(c["img_size"], c["img_size"]), mask_in_chans=c["mask_in_chans"],
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=c["decoder_depth"], embedding_dim=c["prompt_embed_dim"],
                    num_heads=c["decoder_num_heads"], mlp_dim=c["decoder_mlp_dim"],
                ),
                transformer_dim=c["prompt_embed_dim"], iou_head_depth=3,
                iou_head_hidden_dim=c["iou_head_hidden_dim"],
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        with torch.no_grad():
            torch.nn.init.normal_(sam.image_encoder.pos_embed, std=0.5)
            torch.nn.init.normal_(sam.mask_decoder.mask_tokens.weight, std=1.0)
    finally:
        torch.random.set_rng_state(gen_state)
    sam = sam.eval().to("cpu")
    _balance_scores(sam)
    return sam


def _balance_scores(sam) -> None:
    """Shift the IoU head's output biases so the three multimask scores have mean 0 over a fixed
    probe (an 8 x 8 grid of single points on a colour-gradient image).

    With random weights the IoU token barely depends on the prompt, so each output's score is
    dominated by a constant and one output would win at every point; after the shift the winner
    varies from point to point, which is what tests of "keep the best-scoring mask" need.
    """
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    side, n = 64, 8
    ramp = np.arange(side, dtype=np.uint8) * 4
    probe = np.empty((side, side, 3), np.uint8)
    probe[..., 0], probe[..., 1], probe[..., 2] = ramp[None, :], ramp[:, None], 128
    predictor = SamPredictor(sam)
    predictor.set_image(probe)
    centres = (np.arange(n) + 0.5) * side / n
    points = torch.as_tensor([(x, y) for y in centres for x in centres], dtype=torch.float)
    coords = predictor.transform.apply_coords_torch(points, predictor.original_size)[:, None, :]
    labels = torch.ones(len(points), 1, dtype=torch.int)
    _, scores, _ = predictor.predict_torch(coords, labels, multimask_output=True)
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[-1].bias[1:] -= scores.mean(0)


def save_tiny_sam(path, seed: int = 0) -> str:
    """Write the state dict of ``build_tiny_sam(seed)`` to ``path`` (atomically); return the path."""
    import os

    import torch

    from ..data.store import atomic_path

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(build_tiny_sam(seed).state_dict(), tmp)
    return path


def load_tiny_sam(checkpoint):
    """The tiny SAM architecture with the state dict saved at ``checkpoint`` (eval mode, CPU)."""
    import torch

    sam = build_tiny_sam(0)
    sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.eval()


# ---------------------------------------------------------------------------------------- SAM 2
#: SAM 2's own config the tiny SAM 2 is built from (the ``sam2`` package's Hiera-T).
TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
#: Hydra overrides of ``TINY_SAM2_CONFIG`` (widths and depths only; see the module docstring).
TINY_SAM2_OVERRIDES = (
    "++model.image_encoder.trunk.embed_dim=8", "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,1,2]", "++model.image_encoder.trunk.global_att_blocks=[4]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.d_model=32", "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.memory_attention.d_model=32", "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=32", "++model.memory_attention.layer.dim_feedforward=64",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16", "++model.memory_encoder.in_dim=32",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "++model.memory_encoder.fuser.layer.dim=32", "++model.memory_encoder.fuser.num_layers=1",
    "++model.num_maskmem=2",
)
#: Key of the build recipe in a tiny SAM 2 checkpoint.
TINY_SAM2_KEY = "getok_tiny_sam2"


def _build_sam2(checkpoint=None, overrides=TINY_SAM2_OVERRIDES, config=TINY_SAM2_CONFIG):
    """``sam2.build_sam.build_sam2`` of ``config`` + ``overrides`` on CPU (eval mode)."""
    import sam2  # noqa: F401  (initializes hydra's config search path: the sam2 package)
    from sam2.build_sam import build_sam2

    return build_sam2(config, None if checkpoint is None else str(checkpoint), device="cpu",
                      hydra_overrides_extra=list(overrides))


def build_tiny_sam2(seed: int = 0):
    """A tiny random SAM 2 (``sam2.modeling.sam2_base.SAM2Base``; eval mode, CPU), deterministic in
    ``seed``; the global RNG state is left as it was. Needs the ``sam2`` package."""
    import torch

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _build_sam2()
        with torch.no_grad():
            trunk = model.image_encoder.trunk
            torch.nn.init.normal_(trunk.pos_embed, std=0.5)
            torch.nn.init.normal_(trunk.pos_embed_window, std=0.5)
            torch.nn.init.normal_(model.sam_mask_decoder.mask_tokens.weight, std=1.0)
    finally:
        torch.random.set_rng_state(gen_state)
    model = model.eval()
    _balance_sam2_scores(model)
    return model


def _balance_sam2_scores(model) -> None:
    """As ``_balance_scores``, for SAM 2: shift the IoU head's output biases so that the three
    multimask scores' logits (the head ends in a sigmoid) have mean 0 over a fixed probe (a 4 x 4
    grid of single points on a colour-gradient image), so the best output varies by point."""
    import numpy as np
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    side, n = 64, 4
    ramp = np.arange(side, dtype=np.uint8) * 4
    probe = np.empty((side, side, 3), np.uint8)
    probe[..., 0], probe[..., 1], probe[..., 2] = ramp[None, :], ramp[:, None], 128
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(probe)
    centres = (np.arange(n) + 0.5) * side / n
    points = np.array([[(x, y)] for y in centres for x in centres], np.float32)
    _, scores, _ = predictor.predict(point_coords=points, point_labels=np.ones((len(points), 1), np.int32),
                                     multimask_output=True)
    p = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(p) - np.log1p(-p)
    head = model.sam_mask_decoder.iou_prediction_head
    with torch.no_grad():
        head.layers[-1].bias[1:] -= torch.as_tensor(logits.mean(0), dtype=head.layers[-1].bias.dtype)


def save_tiny_sam2(path, seed: int = 0) -> str:
    """Write ``build_tiny_sam2(seed)`` as a checkpoint (atomically; see the module docstring);
    return the path."""
    import os

    import torch

    from ..data.store import atomic_path

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    recipe = {"config": TINY_SAM2_CONFIG, "overrides": list(TINY_SAM2_OVERRIDES), "seed": int(seed)}
    with atomic_path(path) as tmp:
        torch.save({"model": build_tiny_sam2(seed).state_dict(), TINY_SAM2_KEY: recipe}, tmp)
    return path


def tiny_sam2_recipe(checkpoint) -> tuple[str, list[str]]:
    """(config, hydra overrides) stored in a ``save_tiny_sam2`` checkpoint; ValueError naming the
    file when it is not one."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    recipe = ckpt.get(TINY_SAM2_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(recipe, dict) or "config" not in recipe or "overrides" not in recipe:
        raise ValueError(f"{checkpoint}: not a tiny SAM 2 checkpoint (no {TINY_SAM2_KEY!r} entry; write one "
                         "with `getok tiny-sam --sam2 PATH`)")
    return str(recipe["config"]), [str(o) for o in recipe["overrides"]]


def load_tiny_sam2(checkpoint):
    """The tiny SAM 2 saved at ``checkpoint``, rebuilt and loaded by ``build_sam2`` (eval, CPU)."""
    config, overrides = tiny_sam2_recipe(checkpoint)
    return _build_sam2(checkpoint, overrides, config)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(sp) -> None:
    """The options of ``getok tiny-sam``."""
    sp.add_argument("out", help="checkpoint path to write (.pt)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--sam2", action="store_true",
                    help="a tiny SAM 2 (sam2 package; load it with config 'tiny') instead of a tiny SAM")


def run(args) -> int:
    """``getok tiny-sam [--sam2] OUT``."""
    if args.sam2:
        print(f"wrote {save_tiny_sam2(args.out, args.seed)} (tiny SAM 2, seed {args.seed}; "
              "--sam-model tiny / config 'tiny')")
    else:
        print(f"wrote {save_tiny_sam(args.out, args.seed)} (tiny SAM, seed {args.seed}; --model-type tiny)")
    return 0
