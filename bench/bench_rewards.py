"""Benchmark of the GRPO rewards (SPEC §6) for one GRPO step.

One step: 16 images (640 x 480, seeded synthetic scenes), 3 target objects each (ellipses and
polygons, COCO RLE masks in the ground-truth JSON), 8 responses per image (128 in all). Responses
are realistic answers with noise: a short think text, one line per object with the quantized box
jittered by up to a cell and 4-14 seg points mostly inside the mask (some outside); now and then
an object is missed, a spurious instance added, or the answer broken. Times, on one core:

  grid, no mask       ``score_grid_batch`` without a decoder (the goal: < 20 ms per step)
  grid, cold / warm   the same; cold = ground truths never seen before (every step of a run),
                      warm = ground truths in the reward's cache (the same batch again: what a
                      second per-component reward function of ms-swift, or verl's per-sample
                      calls after the first of a group, pay); the loads row is the part of cold
                      spent in ``groundtruth.loads`` (JSON + RLE validation)
  grid + mask         with a mask decoder: the region decoder (``make_decoder("region")``) when it
                      is installed, and a trivial box-fill decoder that only measures the reward's
                      own overhead around decoding (IoU, grouping)
  refine              ``score_refine_batch`` on offset answers (no mask)
  huge inputs         ``score_grid`` + ``score_refine`` of one huge or degenerate response each
                      (5000 answer lines, 50000 repeated cells, 300000 ``<``, ...): time linear in
                      the input, each well under 10 s (tests/core/test_rewards.py checks their
                      values, this row their time)

Every time is the best of a few runs (the machine may be shared), the median over steps is shown.
Usage: ``python bench/bench_rewards.py [--steps 5] [--seed 0] [--quick]``. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from getok_core import GetokVocab, Instance, format_answer, format_offsets
from getok_core.decoders import DecodeGroup, MaskDecoder, make_decoder
from getok_core.data.masks import encode_rle, mask_box
from getok_core.data import groundtruth
from getok_core.rewards import clear_cache, score_grid, score_grid_batch, score_refine, score_refine_batch

W, H = 640, 480
THINKS = ["The target is the object described.", "I look for the shape on the left side.",
          "There are several objects; the query names the large one.", "It is near the centre.",
          "The red object is partly hidden behind another one."]


def _scene(rng: np.random.Generator, n_obj: int = 3):
    """(image (H, W, 3) uint8, [mask (H, W) bool] * n_obj)."""
    from skimage import draw

    img = (rng.random((H, W, 3)) * 40 + 100).astype(np.uint8)
    masks = []
    for _ in range(n_obj):
        m = np.zeros((H, W), bool)
        cy, cx = rng.uniform(60, H - 60), rng.uniform(60, W - 60)
        if rng.random() < 0.5:
            rr, cc = draw.ellipse(cy, cx, rng.uniform(25, 110), rng.uniform(25, 150), shape=(H, W),
                                  rotation=rng.uniform(0, np.pi))
        else:
            k = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = rng.uniform(30, 130, k)
            rr, cc = draw.polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), shape=(H, W))
        m[rr, cc] = True
        if not m.any():
            m[int(cy), int(cx)] = True
        masks.append(m)
        img[m] = rng.integers(0, 255, 3)
    return img, masks


def _ground_truth(i: int, path: str, masks, size=(W, H)) -> str:
    targets = [{"mask": encode_rle(m), "box": [round(float(t), 6) for t in mask_box(m)], "points": [],
                "polyline": None} for m in masks]
    return json.dumps({"version": 1, "sample_id": f"bench/{i}", "image_key": os.path.basename(path),
                       "image_path": path, "image_size": list(size), "task": "seg", "expression": "the object",
                       "no_target": False, "targets": targets, "ignore": None, "extra": {}})


def _instance(rng, m: np.ndarray, vocab: GetokVocab) -> Instance:
    n = vocab.grid_size
    u1, v1, u2, v2 = mask_box(m)
    jit = rng.integers(-1, 2, 4) / n * (rng.random(4) < 0.4)
    box = tuple(float(np.clip(t + d, 0, 1)) for t, d in zip((u1, v1, u2, v2), jit))
    box = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]) + 1e-6, max(box[1], box[3]) + 1e-6)
    ys, xs = np.nonzero(m)
    k = int(rng.integers(4, 15))
    pick = rng.integers(0, len(xs), k)
    pts = [((xs[p] + 0.5) / W, (ys[p] + 0.5) / H) for p in pick]
    if rng.random() < 0.3:  # a point off the object
        pts.append((float(rng.random()), float(rng.random())))
    return Instance(box=box, points=pts)


def _response(rng, masks, vocab: GetokVocab) -> str:
    insts = [_instance(rng, m, vocab) for m in masks]
    r = rng.random()
    if r < 0.1:
        insts = insts[:-1]  # a missed object
    elif r < 0.15:
        insts.append(Instance(box=(0.05, 0.05, 0.2, 0.2), points=[(0.1, 0.1)]))  # a spurious one
    order = rng.permutation(len(insts))
    text = format_answer([insts[k] for k in order], vocab, think=str(rng.choice(THINKS)))
    if rng.random() < 0.03:
        text = text[: int(len(text) * rng.random())]  # truncated: falls back to the full parser
    return text


def build_step(rng, vocab: GetokVocab, image_dir: str, step: int, images: int = 16, per_image: int = 8):
    """(responses, ground_truths, proposals, offset answers, scene masks)."""
    from PIL import Image

    responses, gts, props, offs = [], [], [], []
    for i in range(images):
        img, masks = _scene(rng)
        path = os.path.join(image_dir, f"step{step}_img{i}.png")
        Image.fromarray(img).save(path)
        gt = _ground_truth(step * 1000 + i, path, masks)
        prop = _response(np.random.default_rng(rng.integers(1 << 30)), masks, vocab)
        prop = prop if "</answer>" in prop else format_answer([_instance(rng, m, vocab) for m in masks], vocab)
        n_prop = prop.count("<box>")
        n_anchor = [2 + line.count("<grid") - 2 for line in prop.split("<answer>")[-1].split("\n")]
        for _ in range(per_image):
            responses.append(_response(rng, masks, vocab))
            gts.append(gt)
            props.append(prop)
            rows = [[tuple(int(t) for t in rng.integers(-1, 2, 2)) if rng.random() > 0.1 or j < 2 else None
                     for j in range(k)] for k in n_anchor[:n_prop]]
            offs.append(format_offsets(rows, vocab))
    return responses, gts, props, offs


class BoxFillDecoder(MaskDecoder):
    """A decoder with no model: the mask is the instance's box (or 3 x 3 px around each point).
    Measures the reward's own cost around decoding."""

    name = "boxfill"

    def decode_group(self, group: DecodeGroup):
        out = []
        for inst in group.instances:
            m = np.zeros((H, W), bool)
            if inst.box is not None:
                u1, v1, u2, v2 = inst.box
                m[int(v1 * H):int(np.ceil(v2 * H)), int(u1 * W):int(np.ceil(u2 * W))] = True
            for u, v in inst.points:
                x, y = int(u * W), int(v * H)
                m[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
            out.append(m)
        self.counters.prompts_decoded += len(group.instances)
        return out


def _time(fn, repeat: int = 1):
    """(best wall time of ``repeat`` runs, the last result)."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 steps")
    args = ap.parse_args(argv)
    steps = 2 if args.quick else args.steps
    vocab = GetokVocab()
    rng = np.random.default_rng(args.seed)
    try:  # one core: what "per core" means here
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    region = None
    region_note = ""
    try:
        region = make_decoder("region")
    except Exception as exc:  # not installed yet, or it needs arguments
        region_note = f"region decoder unavailable: {type(exc).__name__}: {exc}"
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for step in range(steps):
            responses, gts, props, offs = build_step(rng, vocab, tmp, step)
            unique = list(dict.fromkeys(gts))
            t, _ = _time(lambda: [groundtruth.loads(g, strict=False) for g in unique], repeat=3)
            rows.setdefault("  of which groundtruth.loads (16 JSON, 48 RLE checks)", []).append(t)
            def cold_run():
                clear_cache()
                return score_grid_batch(responses, gts, vocab)

            cold, res = _time(cold_run, repeat=3)
            warm, _ = _time(lambda: score_grid_batch(responses, gts, vocab), repeat=3)
            rows.setdefault("grid, no mask, cold (new ground truths)", []).append(cold)
            rows.setdefault("grid, no mask, warm (ground truths cached)", []).append(warm)
            fill, _ = _time(lambda: score_grid_batch(responses, gts, vocab, decoder=BoxFillDecoder()))
            rows.setdefault("grid + mask, box-fill decoder (reward overhead)", []).append(fill)
            if region is not None:
                t, _ = _time(lambda: score_grid_batch(responses, gts, vocab, decoder=region))
                rows.setdefault("grid + mask, region decoder (first sight of the images)", []).append(t)
                t, _ = _time(lambda: score_grid_batch(responses, gts, vocab, decoder=region))
                rows.setdefault("grid + mask, region decoder (images cached)", []).append(t)
            def refine_cold():
                clear_cache()
                return score_refine_batch(offs, gts, vocab, proposals=props)

            t, _ = _time(refine_cold, repeat=3)
            rows.setdefault("refine, no mask, cold", []).append(t)
            t, _ = _time(lambda: score_refine_batch(offs, gts, vocab, proposals=props, decoder=BoxFillDecoder()))
            rows.setdefault("refine + mask_gain, box-fill decoder", []).append(t)
            if step == 0:
                mean = np.mean([r.overall for r in res])
                fmt = np.mean([r.components["format"] for r in res])
                print(f"sanity: mean overall {mean:.3f}, format ok {fmt:.2f}, responses {len(responses)}",
                      file=sys.stderr)
    print(f"GRPO step: 128 responses, 16 images ({W}x{H}), 3 targets each; {steps} steps; one core")
    print(f"{'case':58s} {'median ms':>10s} {'max ms':>8s} {'per response us':>16s}")
    for name, ts in rows.items():
        ts = np.asarray(ts) * 1e3
        print(f"{name:58s} {np.median(ts):10.1f} {ts.max():8.1f} {np.median(ts) / 128 * 1e3:16.0f}")
    if region_note:
        print(region_note)
    print(f"\n{'huge input (score_grid + score_refine)':58s} {'ms':>10s}")
    for name, t in huge_inputs():
        print(f"{name:58s} {t * 1e3:10.1f}")
    return 0


PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"


def huge_inputs() -> list[tuple[str, float]]:
    """(case, seconds) of scoring each huge or degenerate response once, grid and refine stage,
    against a one-target ground truth on a 10 x 10 grid."""
    vocab = GetokVocab(grid_size=10)
    m = np.zeros((100, 100), bool)
    m[35:65, 25:55] = True
    gt = _ground_truth(0, "huge.png", [m], size=(100, 100))
    proposal = format_answer([Instance(box=(0.25, 0.35, 0.55, 0.65), points=[(0.35, 0.45), (0.45, 0.55)])], vocab,
                             think="t")
    cases = {"5000 answer lines": "<think>a</think><answer>" + (PERFECT + "\n") * 5000 + "</answer>",
             "a 20000-vertex line": "<answer><line>" + "".join(f"<grid{i % 10},{i * 7 % 10}>" for i in range(20000))
             + "</line></answer>",
             "50000 repeated seg cells": "<answer><box><grid1,1><grid2,2></box><seg>" + "<grid1,1>" * 50000
             + "</seg></answer>",
             "100000 repeated sentences": "It is. " * 100000, "300000 '<'": "<" * 300000,
             "50000 bare grid tokens": "<grid1,1>" * 50000}
    out = []
    for name, text in cases.items():
        clear_cache()
        t, _ = _time(lambda: (score_grid(text, gt, vocab), score_refine(text, gt, vocab, proposal=proposal)))
        out.append((name, t))
    return out


if __name__ == "__main__":
    sys.exit(main())
