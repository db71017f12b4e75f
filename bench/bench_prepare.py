"""Data preparation on the bundled sample dataset: tokens per mask and achieved IoU of the greedy
conversion (region proposals, no weights) for a few grid sizes and IoU targets, and throughput
with 1 and 2 worker processes (ratio against the 1-worker run measured here).

    python bench/bench_prepare.py [--quick]
"""

import argparse
import tempfile
import time
from pathlib import Path

from getok_core.prepare import PrepareConfig, prepare
from getok_core.data.sample_data import write_sample_dataset


def run(root, out, **kw):
    t = time.perf_counter()
    s = prepare(PrepareConfig(dataset="sample", root=str(root), out=str(out), formats=("swift",),
                              progress=False, **kw), log=lambda *a: None)
    return s, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one configuration only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_sample_dataset(tmp / "sample")
        n_images = sum(1 for p in (tmp / "sample" / "images").rglob("*.png"))
        configs = [(32, 0.9)] if args.quick else [(16, 0.9), (32, 0.8), (32, 0.9), (32, 0.95), (64, 0.9)]
        print("sample dataset, region proposals (felzenszwalb), greedy conversion (SPEC 4)")
        print(f"{'grid':>5} {'tau':>5} {'masks':>6} {'skipped':>8} {'tokens/mask':>12} {'achieved IoU':>13} {'seconds':>8}")
        for n, tau in configs:
            s, sec = run(tmp / "sample", tmp / f"o{n}_{tau}", grid_size=n, tau=tau)
            print(f"{n:>5} {tau:>5} {s['masks']:>6} {s['skipped']:>8} {s['mean_tokens_per_mask']:>12} "
                  f"{s['mean_achieved_iou']:>13} {sec:>8.1f}")
        print()
        print(f"{'workers':>8} {'images/s':>9} {'vs 1 worker':>12}")
        base = None
        for w in (1, 2):
            s, sec = run(tmp / "sample", tmp / f"w{w}", workers=w)
            rate = n_images / sec
            base = base or rate
            print(f"{w:>8} {rate:>9.1f} {rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
