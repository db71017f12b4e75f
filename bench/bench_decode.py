"""Benchmark of mask decoding for a GRPO-like batch: embedding cache + batched prompts vs a naive loop.

A GRPO step samples several responses per prompt, all on the same image. The batch here: 16
images (seeded synthetic scenes of photo sizes: 640 x 480, 480 x 640, 512 x 512, 640 x 427) x 8
responses x 3 instances. Each image has 3 objects; each response's instance for an object is a
jittered box and / or 1-6 seg points inside it (70 % box + points, 15 % points only, 15 % box only),
so responses differ as sampled answers do. Times, in one run on the same model:

  naive      SamPredictor.set_image + predict per instance, for every response (what a reward
             function that decodes each response on its own does: 8 encodings per image);
  ours       SamDecoder.decode on the whole batch (joint mode): one encoding per image, the
             image's prompts batched through predict_torch;
  ours-warm  the same batch again: every embedding from the cache (no encoder at all);
  ours-union SamDecoder in union mode (cold cache; more prompts: one per point);
  region     RegionDecoder (no weights; felzenszwalb), cold, then warm.

Models (``--encoder``): ``tiny``, the tiny random SAM of getok_core/decoders/tiny_sam.py (real
segment-anything code, a 256 px encoder of 2 narrow blocks), and ``vit_b_width``, the same SAM
with its encoder replaced by segment-anything's ``ImageEncoderViT`` of vit_b's width and depth
(still at 256 px, random weights). Both decode prompts at the same cost, which is identical for
ours and the naive loop (the same mask decoder and the same upscaling to the image's size, per
prompt): what ours saves is the encoder passes (16 instead of 128) and per-call overhead. So the
speedup is about (8 R + 24) / (R + 24) per image, R = one encoding's cost in prompt decodes: the
tiny encoder costs only a few prompt decodes (R ~ 3: ~2x), the vit_b-width one ~100 as real SAMs
do (vit_h on a GPU: R ~ 100; vit_b on a CPU: several hundred). The header of each table prints
the measured encoding and per-prompt decoding times.

SAM 2 (``--encoder sam2``, or ``all``): the tiny random SAM 2 of getok_core/decoders/tiny_sam.py
(``build_sam2`` of SAM 2's Hiera-T config with small widths, at SAM 2's 1024 px input; needs the
``sam2`` package), the same rows with ``Sam2Decoder`` and a naive loop over
``SAM2ImagePredictor.set_image`` + ``predict``.

Checks that ``ours`` gives the masks of the naive loop (IoU; pixels can differ where a logit is
within float noise of the threshold) and prints the tables. Usage: ``python bench/bench_decode.py
[--encoder tiny|vit_b_width|both|sam2|all] [--images 16] [--responses 8] [--instances 3] [--threads 1]
[--seed 0] [--repeat 1] [--skip-union]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


from getok_core.codec.instance import Instance  # noqa: E402
from getok_core.decoders.region import RegionDecoder  # noqa: E402
from getok_core.decoders.sam import Sam2Decoder, SamDecoder, instance_prompt_points  # noqa: E402

SIZES = [(480, 640), (640, 480), (512, 512), (427, 640)]  # (H, W)


def scene(h, w, rng):
    """A flat-coloured scene with 3 objects (ellipses / rectangles) and mild noise; their boxes."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(40, 220, 3)
    yy, xx = np.mgrid[:h, :w]
    boxes = []
    for _ in range(3):
        bw, bh = rng.uniform(0.15, 0.45) * w, rng.uniform(0.15, 0.45) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        if rng.random() < 0.5:
            m = ((xx + 0.5 - x0 - bw / 2) / (bw / 2)) ** 2 + ((yy + 0.5 - y0 - bh / 2) / (bh / 2)) ** 2 <= 1
        else:
            m = (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)
        img[m] = rng.integers(0, 256, 3)
        boxes.append((x0 / w, y0 / h, (x0 + bw) / w, (y0 + bh) / h))
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8), boxes


def response_instance(box, rng):
    """One sampled answer for an object: a jittered box and / or 1-6 points inside the box."""
    u1, v1, u2, v2 = box
    j = 0.05 * np.array([u2 - u1, v2 - v1, u2 - u1, v2 - v1])
    b = np.clip(np.array(box) + rng.normal(0, 1, 4) * j, 0, 1)
    b = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    pts = [(rng.uniform(u1, u2), rng.uniform(v1, v2)) for _ in range(rng.integers(1, 7))]
    r = rng.random()
    if r < 0.7:
        return Instance(box=b, points=pts)
    if r < 0.85:
        return Instance(points=pts)
    return Instance(box=b)


def make_batch(n_images, n_responses, n_instances, seed):
    rng = np.random.default_rng(seed)
    images, requests = {}, []
    for i in range(n_images):
        h, w = SIZES[i % len(SIZES)]
        img, boxes = scene(h, w, rng)
        key = f"img{i:03d}"
        images[key] = img
        for r in range(n_responses):
            for k in range(n_instances):
                requests.append((key, img, response_instance(boxes[k % len(boxes)], rng)))
    return images, requests


def predictor_of(sam):
    """The model's predictor: SamPredictor (SAM) or SAM2ImagePredictor (SAM 2)."""
    from getok_core.decoders.sam_models import sam2_predictor, sam_predictor

    return sam_predictor(sam) if hasattr(sam, "prompt_encoder") else sam2_predictor(sam)


def decoder_class(sam):
    return SamDecoder if hasattr(sam, "prompt_encoder") else Sam2Decoder


def naive(sam, requests, n_instances):
    """set_image + predict per instance, for every response (joint prompts, the same multimask
    rule as SamDecoder's default)."""
    predictor = predictor_of(sam)
    out = []
    for start in range(0, len(requests), n_instances):  # one response = n_instances requests
        response = requests[start:start + n_instances]
        img = response[0][1]
        h, w = img.shape[:2]
        predictor.set_image(img)
        for _, _, inst in response:
            pts = instance_prompt_points(inst)
            coords = np.array(pts, float) * [w, h] if pts else None
            labels = np.ones(len(pts), int) if pts else None
            box = None if inst.box is None else np.array(inst.box) * [w, h, w, h]
            multimask = len(pts) == 1 and box is None
            masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                 multimask_output=multimask)
            out.append(np.asarray(masks[int(np.argmax(scores))]) > 0)
    return out


def reset(decoder):
    decoder.counters.reset()
    return decoder


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def iou(a, b):
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def vit_b_width_encoder(seed=0):
    """segment-anything's ImageEncoderViT with vit_b's width and depth (embed 768, 12 blocks, 12
    heads, global attention in blocks 2, 5, 8, 11) at the tiny SAM's 256 px input (16 x 16 tokens,
    window 4) and its 32-channel neck, random weights: a drop-in encoder for the tiny SAM whose
    cost relative to a prompt decode is closer to a real SAM's."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        enc = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                              out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              use_rel_pos=True, window_size=4, global_attn_indexes=(2, 5, 8, 11))
    finally:
        torch.random.set_rng_state(state)
    return enc.eval()


def build_model(encoder):
    from getok_core.decoders.tiny_sam import build_tiny_sam, build_tiny_sam2

    if encoder == "sam2":
        return build_tiny_sam2(0)
    sam = build_tiny_sam(0)
    if encoder == "vit_b_width":
        sam.image_encoder = vit_b_width_encoder()
    return sam


def bench_sam(sam, requests, args):
    """Rows (name, wall s, encoder passes, prompts) and (ours, naive) masks."""
    encoder = {"calls": 0}
    Decoder = decoder_class(sam)
    family = Decoder.__name__
    hook = sam.image_encoder.register_forward_hook(lambda *a: encoder.__setitem__("calls", encoder["calls"] + 1))
    rows = []
    try:
        def measure(name, make, run, prompts=None):
            best = None
            for _ in range(args.repeat):
                obj = make()
                encoder["calls"] = 0
                t, res = timed(lambda: run(obj))
                if best is None or t < best[0][1]:
                    counters = getattr(obj, "counters", None)
                    if counters is not None:
                        assert counters.encoder_calls == encoder["calls"], (name, counters, encoder)
                    best = (name, t, encoder["calls"], counters.prompts_decoded if counters else prompts), res
            rows.append(best[0])
            return best[1]

        # warm-up (allocator, first-call overheads); the encoder's cost alone, for the record
        naive(sam, requests[: args.instances], args.instances)
        Decoder(sam).decode(requests[: args.instances])
        predictor = predictor_of(sam)
        img = requests[0][1]
        enc_t = min(timed(lambda: predictor.set_image(img))[0] for _ in range(3))

        ref = measure("naive: set_image + predict per response", lambda: None,
                      lambda _: naive(sam, requests, args.instances), prompts=len(requests))
        ours = measure(f"ours: {family} joint, cold cache", lambda: Decoder(sam, mode="joint"),
                       lambda d: d.decode(requests))
        warm = Decoder(sam, mode="joint")
        warm.decode(requests)
        measure(f"ours: {family} joint, warm cache", lambda: reset(warm), lambda d: d.decode(requests))
        if not args.skip_union:
            measure(f"ours: {family} union, cold cache", lambda: Decoder(sam, mode="union"),
                    lambda d: d.decode(requests))
    finally:
        hook.remove()
    return rows, ours, ref, enc_t


def print_table(rows, n_resp, naive_t):
    print(f"| {'method':<42} | {'wall s':>7} | {'ms / response':>13} | {'encoder':>7} | {'prompts':>7} | "
          f"{'vs naive':>8} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 15}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for name, t, enc, prompts in rows:
        ratio = f"{naive_t / t:7.1f}x" if naive_t else "      -"
        print(f"| {name:<42} | {t:7.2f} | {1000 * t / n_resp:13.1f} | {enc:>7} | {prompts:>7} | {ratio:>8} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--responses", type=int, default=8)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--encoder", choices=["tiny", "vit_b_width", "both", "sam2", "all"], default="both",
                    help="tiny: the tiny SAM as built for the tests; vit_b_width: its encoder replaced by one of "
                         "vit_b's width and depth at 256 px (slower: ~2 min on one core); both: these two; sam2: "
                         "the tiny SAM 2 (1024 px input; needs sam2); all: the three")
    ap.add_argument("--skip-union", action="store_true", help="leave out the union-mode row")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: small shared machines)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="repeat each measurement, keep the fastest")
    args = ap.parse_args(argv)

    import torch

    images, requests = make_batch(args.images, args.responses, args.instances, args.seed)
    n_resp = args.images * args.responses
    print(f"batch: {args.images} images x {args.responses} responses x {args.instances} instances = "
          f"{len(requests)} instances, {n_resp} responses (image sizes {sorted(set(SIZES))} as (H, W)); "
          f"torch threads {args.threads}, best of {args.repeat}")
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        encoders = {"both": ["tiny", "vit_b_width"], "all": ["tiny", "vit_b_width", "sam2"]}.get(
            args.encoder, [args.encoder])
        for enc in encoders:
            sam = build_model(enc)
            rows, ours, ref, enc_t = bench_sam(sam, requests, args)
            warm_t = rows[2][1]
            print()
            print(("SAM = tiny SAM 2 (getok_core/decoders/tiny_sam.py, 1024 px input)" if enc == "sam2" else
                   "SAM = tiny SAM (getok_core/decoders/tiny_sam.py)"
                   + (" with a vit_b-width encoder (bench_decode.vit_b_width_encoder)" if enc != "tiny" else ""))
                  + f": set_image {1000 * enc_t:.1f} ms / image; warm decoding "
                  f"{1000 * warm_t / rows[2][3]:.2f} ms / prompt")
            print()
            print_table(rows, n_resp, rows[0][1])
            ious = np.array([iou(a, b) for a, b in zip(ours, ref)])
            differ = sum(np.count_nonzero(a != b) for a, b in zip(ours, ref))
            total = sum(a.size for a in ours)
            print()
            print(f"ours vs naive masks: mean IoU {ious.mean():.6f}, min IoU {ious.min():.4f}, "
                  f"pixels differing {differ} of {total} ({differ / total:.2e})")
    finally:
        torch.set_num_threads(before)

    rows = []
    for name, make in [("region: RegionDecoder, cold cache", RegionDecoder)]:
        d = make()
        t, _ = timed(lambda: d.decode(requests))
        rows.append((name, t, d.counters.encoder_calls, d.counters.prompts_decoded))
        d.counters.reset()
        t, _ = timed(lambda: d.decode(requests))
        rows.append(("region: RegionDecoder, warm cache", t, d.counters.encoder_calls, d.counters.prompts_decoded))
    print()
    print("RegionDecoder (no weights; felzenszwalb; 'encoder' = segmentations run):")
    print()
    print_table(rows, n_resp, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
