"""Benchmark of greedy mask-to-token conversion (SPEC §4): plain loop vs ``greedy_select``.

Builds a seeded synthetic 640 x 480 scene (overlapping shapes), 1024 proposals (one per cell
centre of a 32 x 32 grid: the region holding that centre in a felzenszwalb segmentation at a random
scale, or the whole visible object, unioned with 0-2 random shapes, so sizes vary) and GT masks
(visible objects, unions of 2-3 objects, objects with a bite taken out). Times

  (a) the naive loop: the SPEC's algorithm written plainly over full bool arrays (on a subset:
      it is slow), ``testkit.naive_greedy``, the reference of tests/core/test_greedy.py;
  (b) ``greedy_select`` on ``PackedProposals`` packed once for the image (packing timed apart,
      then amortized over the masks);
  (c) ``greedy_select`` given the bool (K, H, W) array (one-shot: packs, per call, only the
      proposals that meet M);

checks that every method gives the same indices and IoU as (a) on the masks (a) ran, and prints
a table. Usage: ``python bench/bench_greedy.py [--quick] [--masks 200] [--naive-masks 20]
[--tau 0.9] [--max-points 32] [--seed 0] [--parts-only]`` (``--parts-only``: a stress case where
proposals are small segments, so masks need many points).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from skimage import draw
from skimage.segmentation import felzenszwalb

from getok_core.data.greedy import PackedProposals, greedy_select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from testkit import naive_greedy  # noqa: E402  (the tests' reference)

H, W = 480, 640


# ---------------------------------------------------------------------------- reference
# ---------------------------------------------------------------------------- scene
def random_shape(rng, centre=None, scale=1.0):
    """Bool (H, W): an ellipse, a rectangle or a polygon, near ``centre`` (row, col) if given."""
    out = np.zeros((H, W), bool)
    cy, cx = centre if centre is not None else (rng.uniform(0, H), rng.uniform(0, W))
    ry, rx = rng.uniform(6, 90, size=2) * scale
    kind = rng.integers(3)
    if kind == 0:
        rr, cc = draw.ellipse(cy, cx, ry, rx, shape=(H, W), rotation=rng.uniform(0, np.pi))
    elif kind == 1:
        rr, cc = draw.rectangle((cy - ry, cx - rx), (cy + ry, cx + rx), shape=(H, W))
        rr, cc = rr.astype(int), cc.astype(int)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 8)))
        rr, cc = draw.polygon(cy + ry * np.sin(angles), cx + rx * np.cos(angles), shape=(H, W))
    out[rr, cc] = True
    return out


def build_scene(seed, n_objects=45, grid=32, parts_only=False):
    rng = np.random.default_rng(seed)
    labels = np.zeros((H, W), np.int32)                       # 0 = background
    yy, xx = np.mgrid[:H, :W]
    image = np.stack([yy / H, xx / W, 0.5 * np.ones((H, W))], axis=-1) * 0.4
    for i in range(1, n_objects + 1):                         # later objects occlude earlier ones
        shape = random_shape(rng, scale=rng.choice([0.4, 1.0, 1.6]))
        labels[shape] = i
        image[shape] = rng.uniform(0, 1, 3) + 0.15 * np.sin(yy[shape, None] / rng.uniform(5, 40))
    image += rng.normal(0, 0.05, image.shape)
    segs = [felzenszwalb(image, scale=s, sigma=0.8, min_size=m)          # fine, medium, coarse parts
            for s, m in ((50, 40), (300, 200), (1500, 800))]

    props = np.zeros((grid * grid, H, W), bool)
    for k in range(grid * grid):
        y, x = divmod(k, grid)
        r, c = int((y + 0.5) * H / grid), int((x + 0.5) * W / grid)
        level = 0 if parts_only else rng.integers(len(segs) + 1)
        if level < len(segs):
            region = segs[level] == segs[level][r, c]
        else:                                                 # the object, imperfectly (as SAM)
            region = labels == labels[r, c]
            if rng.random() < 0.5:
                region &= ~random_shape(rng, scale=0.4)
            if rng.random() < 0.5:
                rr = int(np.clip(r + rng.normal(0, 20), 0, H - 1))
                cc = int(np.clip(c + rng.normal(0, 20), 0, W - 1))
                region |= segs[0] == segs[0][rr, cc]
        props[k] = region
        for _ in range(0 if parts_only else rng.choice(3, p=[0.6, 0.3, 0.1])):
            props[k] |= random_shape(rng, centre=(r, c), scale=rng.uniform(0.05, 0.4))

    objects = [labels == i for i in range(1, n_objects + 1)]
    objects = [m for m in objects if m.sum() >= 200]
    return labels, props, objects, rng


def build_gts(objects, rng, count):
    gts = []
    while len(gts) < count:
        a = objects[rng.integers(len(objects))]
        kind = rng.random()
        if kind < 0.4:
            gt = a.copy()
        elif kind < 0.75:                                     # several targets ("all the cups")
            gt = a.copy()
            for j in rng.integers(len(objects), size=rng.integers(1, 3)):
                gt |= objects[j]
        else:
            gt = a & ~random_shape(rng, scale=0.5)
        if gt.sum() >= 50:
            gts.append(gt)
    return gts


# ---------------------------------------------------------------------------- timing
def timed(fn, items):
    t0 = time.perf_counter()
    out = [fn(x) for x in items]
    return out, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run: 40 masks, naive loop on 3")
    ap.add_argument("--masks", type=int, default=200, help="GT masks timed with greedy_select")
    ap.add_argument("--naive-masks", type=int, default=20, help="subset timed with the naive loop")
    ap.add_argument("--tau", type=float, default=0.9)
    ap.add_argument("--max-points", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts-only", action="store_true",
                    help="stress case: proposals are fine segments only, so masks need many points")
    args = ap.parse_args(argv)
    if args.quick:
        args.masks, args.naive_masks = 40, 3
    n_naive = min(args.naive_masks, args.masks)

    t0 = time.perf_counter()
    _, props, objects, rng = build_scene(args.seed, parts_only=args.parts_only)
    gts = build_gts(objects, rng, args.masks)
    areas = props.reshape(len(props), -1).sum(1)
    print(f"scene {W}x{H}, {len(props)} proposals (area min/median/max {areas.min()}/{int(np.median(areas))}/"
          f"{areas.max()} px), {len(gts)} GT masks (median {int(np.median([g.sum() for g in gts]))} px), "
          f"tau={args.tau}, max_points={args.max_points}; built in {time.perf_counter() - t0:.1f} s")

    sub = gts[:n_naive]
    naive, t_naive = timed(lambda g: naive_greedy(g, props, args.tau, args.max_points), sub)

    t0 = time.perf_counter()
    packed = PackedProposals.from_masks(props)
    t_pack = time.perf_counter() - t0
    fast, t_fast = timed(lambda g: greedy_select(g, packed, args.tau, args.max_points), gts)
    noreuse, t_noreuse = timed(lambda g: greedy_select(g, props, args.tau, args.max_points), sub)

    ok = fast[:n_naive] == naive and noreuse == naive
    rate_naive = n_naive / t_naive
    rows = [
        (f"naive loop, full bool arrays ({n_naive} masks)", rate_naive, naive),
        (f"greedy_select, packed once, excl. packing ({len(gts)})", len(gts) / t_fast, fast),
        (f"greedy_select, packed once, incl. packing ({len(gts)})", len(gts) / (t_fast + t_pack), fast),
        (f"greedy_select, one-shot on the bool array ({n_naive})", n_naive / t_noreuse, noreuse),
    ]
    print(f"packing {len(props)} proposals once: {t_pack * 1000:.0f} ms "
          f"({t_pack * 1000 / len(gts):.2f} ms per mask amortized over {len(gts)} masks)")
    head = f"{'method':<52} {'masks/s':>9} {'vs naive':>9} {'points':>7} {'IoU':>7}"
    print(head)
    print("-" * len(head))
    for name, rate, res in rows:
        pts = np.mean([len(s) for s, _ in res])
        iou = np.mean([b for _, b in res])
        print(f"{name:<52} {rate:>9.1f} {rate / rate_naive:>8.1f}x {pts:>7.2f} {iou:>7.4f}")
    print(f"identical outputs (indices and IoU) on the {n_naive} naive-timed masks: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
