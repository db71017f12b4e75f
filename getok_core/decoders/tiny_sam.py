"""A tiny, randomly initialized segment-anything SAM for tests and CPU demos (no weights, no network).

``build_tiny_sam(seed)`` assembles a real ``segment_anything.modeling.Sam`` from the same classes
``segment_anything.build_sam`` uses, only much smaller, so every code path of ``SamPredictor``
(``ResizeLongestSide``, preprocessing and padding, prompt encoding, mask decoding, upscaling to
the original image size) runs as it does with vit_h, on CPU in milliseconds.

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
