"""Benchmark of offset-aware refinement data (SPEC §5): ``classify_cells`` (vectorized bands,
scipy morphology once per mask) vs the pixel-by-pixel oracle of tests/core/test_offsets.py (the
definition written plainly, one cell at a time), on an ellipse in a 640 x 480 image, n = 32.
Checks both give the same categories and offsets. Usage: ``python bench/bench_offsets.py [--reps 5]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))
from test_offsets import by_cell, oracle  # noqa: E402  (the tests' independent reference)

from getok_core import GetokVocab  # noqa: E402
from getok_core.data.offsets import offset_targets  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    vocab = GetokVocab()
    yy, xx = np.mgrid[:480, :640]
    m = (yy - 240) ** 2 / 90 ** 2 + (xx - 300) ** 2 / 140 ** 2 <= 1
    rows = []
    for name, fn in (("oracle, cell by cell", lambda: oracle(m, vocab)),
                     ("offset_targets (vectorized)",
                      lambda: {c: (t.category, t.offset) for c, t in by_cell(offset_targets(m, vocab)).items()})):
        fn()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            out = fn()
        rows.append((name, (time.perf_counter() - t0) / args.reps * 1e3, out))
    base = rows[0][1]
    print("Offset categories of one 640x480 mask, n = 32 (1024 cells)")
    print(f"{'method':32s} {'ms/mask':>9s} {'speed-up':>9s}")
    for name, ms, _ in rows:
        print(f"{name:32s} {ms:9.2f} {base / ms:8.1f}x")
    print(f"same categories and offsets: {rows[0][2] == rows[1][2]}")
    return 0 if rows[0][2] == rows[1][2] else 1


if __name__ == "__main__":
    sys.exit(main())
