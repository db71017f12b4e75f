"""Benchmark: one GRPO step's mask rewards from 4 concurrent callers, through the SAM Ray service
vs each caller with its own in-process SamDecoder (same run, tiny SAM, CPU).

The step: ``--images`` prompts (16) x ``--responses`` responses (8), one box + seg-points answer
each, scored with ``score_grid_batch`` (the mask component needs one decode per response). As
in verl / EasyR1, the step's samples are spread over ``--callers`` reward workers (4): each
worker scores 8 / 4 = 2 responses of every image. Rows:

  in-process   each worker its own ``SamDecoder`` (own model, own cache): every worker encodes
               every image (16 x 4 = 64 encodings);
  service      each worker a ``RaySamDecoder`` on one app of ``--replicas`` CPU replicas (2):
               every image encoded once over all workers (16), same rewards;
  service-warm the same step again: every embedding from the replicas' caches (0 encodings).

Workers are threads of this process (the in-process decoders run in parallel threads, torch
with one intra-op thread each, as the replicas). Serve start-up is not timed (the service runs
for the whole training); a warm-up step on other images precedes the timed ones. The tiny SAM's
encoder is cheap (a few ms), so wall time here mostly shows Ray's per-call overhead; with vit_h
(~0.5 s per encoding on a GPU, tens of seconds on a CPU) the saved 48 encodings dominate.
Checks that both give the same rewards. Usage: ``python bench/bench_sam_service.py [--images 16]
[--responses 8] [--callers 4] [--replicas 2] [--size 640x480]`` (the verl environment: ray[serve]).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
import zlib

import numpy as np


def scene(h, w, seed):
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(40, 220, 3)
    r, c = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    img[r:r + h // 3, c:c + w // 3] = rng.integers(0, 255, 3)
    return img, (c / w, r / h, (c + w // 3) / w, (r + h // 3) / h), (r, c)


def make_step(root, tag, n_images, n_responses, size, vocab):
    """(responses, ground truths) of one GRPO step; images written under root/tag."""
    from PIL import Image

    from getok_core import Instance, format_answer
    from getok_core.data.masks import encode_rle

    w, h = size
    res, gts = [], []
    os.makedirs(os.path.join(root, tag), exist_ok=True)
    for k in range(n_images):
        img, box, (r, c) = scene(h, w, zlib.crc32(f"{tag}/{k}".encode()))
        path = os.path.join(root, tag, f"{k}.png")
        Image.fromarray(img).save(path)
        m = np.zeros((h, w), bool)
        m[r:r + h // 3, c:c + w // 3] = True
        gt = json.dumps({"version": 1, "image_key": f"{tag}/{k}", "image_path": path, "image_size": [w, h],
                         "task": "seg", "no_target": False,
                         "targets": [{"mask": encode_rle(m), "box": list(box), "points": [], "polyline": None}],
                         "extra": {}})
        rng = np.random.default_rng(k)
        for _ in range(n_responses):
            jit = rng.normal(0, 0.03, 4)
            b = tuple(np.clip(np.array(box) + jit, 0, 1))
            pts = [tuple(rng.uniform(b[:2], b[2:])) for _ in range(rng.integers(1, 4))]
            res.append(format_answer([Instance(box=b, points=pts)], vocab, think="t"))
            gts.append(gt)
    return res, gts


def run_step(decoders, res, gts, vocab):
    """Score the step with one thread per decoder (worker c: samples c, c + C, ...); (results, s)."""
    from getok_core.rewards import score_grid_batch

    n = len(decoders)
    out = [None] * n

    def work(c):
        idx = list(range(c, len(res), n))
        out[c] = (idx, score_grid_batch([res[i] for i in idx], [gts[i] for i in idx], vocab, decoders[c]))

    threads = [threading.Thread(target=work, args=(c,)) for c in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [None] * len(res)
    for idx, rs in out:
        for i, r in zip(idx, rs):
            flat[i] = r
    return flat, wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--responses", type=int, default=8)
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--size", default="640x480")
    args = ap.parse_args(argv)
    size = tuple(int(x) for x in args.size.split("x"))

    import ray
    import torch
    from ray import serve

    from getok_core import GetokVocab
    from getok_core.decoders.sam import SamDecoder
    from getok_core.decoders.sam_models import load_sam
    from getok_core.decoders.service import RaySamDecoder, serve_sam
    from getok_core.decoders.tiny_sam import save_tiny_sam

    torch.set_num_threads(1)
    vocab = GetokVocab(grid_size=32)
    root = tempfile.mkdtemp(prefix="gsb")
    try:
        ckpt = save_tiny_sam(os.path.join(root, "tiny.pt"))
        ray.init(num_cpus=max(2, args.replicas), include_dashboard=False, _temp_dir=os.path.join(root, "r"),
                 log_to_driver=False)
        serve_sam(ckpt, name="getok-sam-bench", address=None, model_type="tiny", replicas=args.replicas,
                  gpus_per_replica=0, cpus_per_replica=0.5, torch_threads=1, cache_gb=0.5)
        warm = make_step(root, "warm", 2, args.responses, size, vocab)
        step = make_step(root, "step", args.images, args.responses, size, vocab)

        local = [SamDecoder(load_sam("tiny", ckpt, "cpu")) for _ in range(args.callers)]
        run_step(local, *warm, vocab)
        for d in local:
            d.counters.reset()
            d.clear_cache()
        want, t_local = run_step(local, *step, vocab)
        enc_local = sum(d.counters.encoder_calls for d in local)

        remote = [RaySamDecoder(app="getok-sam-bench", timeout_s=600) for _ in range(args.callers)]
        run_step(remote, *warm, vocab)
        for d in remote:
            d.counters.reset()
        got, t_svc = run_step(remote, *step, vocab)
        enc_svc = sum(d.counters.encoder_calls for d in remote)
        for d in remote:
            d.counters.reset()
        got2, t_warm = run_step(remote, *step, vocab)
        enc_warm = sum(d.counters.encoder_calls for d in remote)

        same = all(a.overall == b.overall and a.components == b.components for a, b in zip(got, want))
        same &= all(a.overall == b.overall for a, b in zip(got2, want))
        n = args.images * args.responses
        print(f"one GRPO step: {args.images} images x {args.responses} responses = {n} mask rewards, "
              f"{args.callers} concurrent callers, tiny SAM on CPU, {args.replicas} service replicas, "
              f"images {size[0]}x{size[1]}")
        print(f"{'setup':<14}{'encoder calls':>14}{'wall s':>9}{'encodings vs in-process':>25}{'time vs in-process':>20}")
        for name, enc, t in (("in-process", enc_local, t_local), ("service", enc_svc, t_svc),
                             ("service-warm", enc_warm, t_warm)):
            ratio = f"{enc / enc_local:.2f}x" if enc_local else "-"
            print(f"{name:<14}{enc:>14}{t:>9.2f}{ratio:>25}{t / t_local:>19.2f}x")
        print(f"same rewards as in-process: {same}")
        return 0 if same else 1
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
