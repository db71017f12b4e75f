"""Peak memory and time of ``getok prepare`` per image, with and without the pixel bound.

For each image size, a synthetic photo-like PNG (smooth background, 40 coloured shapes, noise)
with one seg row (a polygon) and one box row in a JSONL file is prepared (region proposals,
felzenszwalb, grid 32, ``--formats swift``) in a fresh subprocess, once with ``max_pixels=0``
(no bound: the behaviour before ``--max-pixels``) and once with the bound (default 4 Mpx). The
child reports its peak resident memory (``VmHWM`` of /proc/self/status; the parent cross-checks
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``) and wall time; ``base`` is the child's peak
after imports, before ``prepare``.

    python bench/bench_prepare_memory.py [--sizes 640x480,2000x1500,4000x3000] [--max-pixels N]
                                         [--timeout 330]

A run that exceeds ``--timeout`` seconds is reported as such (what it had reached is not known).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
from getok_core.prepare import PrepareConfig, prepare
root, out, max_pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = hwm()
t = time.perf_counter()
s = prepare(PrepareConfig(dataset="jsonl", root=root, out=out, formats=("swift",), progress=False,
                          max_pixels=max_pixels), log=lambda *a: None)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": hwm(), "base_mb": base,
                  "ok": s["ok"], "skipped": s["skipped"], "tokens": s["mean_tokens_per_mask"],
                  "iou": s["mean_achieved_iou"]}))
"""


def scene(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 RGB image: a smooth two-colour gradient, 40 filled ellipses and
    rectangles of random colours and sizes, and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (xx / w * 0.6 + yy / h * 0.4)[..., None]
    img = (a * (1 - t) + b * t).astype(np.float32)
    del t
    for _ in range(40):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.02, 0.15) * w, rng.uniform(0.02, 0.15) * h
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        x0, x1 = int(max(0, cx - rx)), int(min(w, cx + rx + 1))
        y0, y1 = int(max(0, cy - ry)), int(min(h, cy + ry + 1))
        if rng.random() < 0.5:
            sub = ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 + ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 <= 1
            img[y0:y1, x0:x1][sub] = colour
        else:
            img[y0:y1, x0:x1] = colour
    del xx, yy
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def dataset(folder: Path, w: int, h: int) -> Path:
    """``folder/data.jsonl`` with one seg row (a pentagon painted into the image) and one box
    row, both on ``folder/img.png``."""
    from PIL import Image

    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    cx, cy, r = 0.45 * w, 0.5 * h, 0.18 * min(w, h)
    poly = [[cx + r * np.cos(a), cy + r * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 6)[:-1]]
    im = Image.fromarray(scene(w, h))
    ImageDraw.Draw(im).polygon([tuple(p) for p in poly], fill=(250, 20, 200))  # the target, visible
    im.save(folder / "img.png", compress_level=1)
    rows = [{"id": "seg", "image": "img.png", "expressions": ["the shape"], "targets": [{"polygon": poly}]},
            {"id": "box", "image": "img.png", "expressions": ["the box"],
             "targets": [{"box": [0.1 * w, 0.1 * h, 0.3 * w, 0.4 * h]}]}]
    with open(folder / "data.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return folder / "data.jsonl"


def run_child(data: Path, out: Path, max_pixels: int, timeout: float) -> dict:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])  # this checkout, whatever the installed copy
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(data), str(out), str(max_pixels)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout:.0f} s (stopped)", "seconds": time.perf_counter() - t}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="640x480,2000x1500,4000x3000")
    ap.add_argument("--max-pixels", type=int, default=None, help="the bound (default: PrepareConfig's)")
    ap.add_argument("--timeout", type=float, default=330.0, help="seconds per run")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's getok_core
    from getok_core.prepare import PrepareConfig

    bound = args.max_pixels if args.max_pixels is not None else PrepareConfig("", "", "").max_pixels
    sizes = [tuple(int(t) for t in s.split("x")) for s in args.sizes.split(",") if s]
    print(f"getok prepare, one image (1 seg + 1 box row), region proposals, grid 32; bound = {bound} px")
    print(f"{'size':>10} {'max_pixels':>11} {'seconds':>8} {'peak MB':>8} {'base MB':>8} {'IoU':>7} "
          f"{'tokens':>7}  note")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            data = dataset(Path(tmp) / f"d{w}x{h}", w, h)
            for mp in (0, bound):
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
                r = run_child(data, Path(tmp) / f"o{w}x{h}_{mp}", mp, args.timeout)
                children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
                if "error" in r:  # a stopped child's peak is known when it beat every earlier one
                    reached = f">={children:.0f}" if children > before else "-"
                    print(f"{f'{w}x{h}':>10} {mp:>11} {r.get('seconds', float('nan')):>8.1f} {reached:>8} {'-':>8} "
                          f"{'-':>7} {'-':>7}  {r['error']}")
                    continue
                note = "" if w * h > mp > 0 or mp == 0 else "(within the bound: unchanged)"
                print(f"{f'{w}x{h}':>10} {mp:>11} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} {r['base_mb']:>8.0f} "
                      f"{r['iou'] if r['iou'] is not None else '-':>7} {r['tokens'] or '-':>7}  {note}"
                      f"[max child RSS so far {children:.0f} MB]")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
