"""Peak memory and time of ``getok eval`` (``evaluation.evaluate``) on huge answers.

Each case runs in a fresh subprocess (so ``ru_maxrss`` is the case's own peak, imports
included) on a synthetic prepared split of one seg expression, scored with the weight-free region
decoder and the default report (12 first + 12 worst overlays):

  10k points 640x480   one answer of 10,000 ``<point>`` lines (about 250 KB) on a 640 x 480 image
                       (issue 18: 8000 of them needed 2.5 GB when every instance was decoded to a
                       full mask)
  5 MB answer 192x144  one 5 MB answer of ``<box><seg>`` lines on a 192 x 144 image
  100 rows x 100 inst  100 expressions answering 100 ``<point>`` instances each (the cap) on
                       640 x 480 images: what a whole split of capped answers costs

``--baseline REV`` also runs every case on the ``getok_core`` of git revision REV (extracted with
``git archive`` into a temporary folder, put first on ``PYTHONPATH``) and prints before / after
with the ratio (``--baseline 69f9cae``: the code before issue 18). ``--limit-gb`` caps each child's address space (default 12 GB): a case over it is
reported as killed instead of taking the machine down.

Usage: ``python bench/bench_eval_memory.py [--baseline REV] [--cases NAME ...] [--limit-gb 12]``.

Issue 18 (``--baseline 69f9cae``, a shared 2-core machine; peak RSS includes ~90 MB of imports)::

    case                   answer KB  before MB  before s  after MB  after s  MB ratio  s ratio
    10k points 640x480           258       3003      10.7       169     1.12     17.8x     9.6x
    5 MB answer 192x144         4883       1940      47.3        92     0.17     21.2x   274.6x
    100 rows x 100 inst            3       3104      83.3       210    92.30     14.8x     0.9x

The last case decodes the same 10,000 masks before and after (time: the region decoder); only
what is held at once changed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "10k points 640x480": dict(size=(640, 480), rows=1, kind="points", n=10_000),
    "5 MB answer 192x144": dict(size=(192, 144), rows=1, kind="bytes", n=5_000_000),
    "100 rows x 100 inst": dict(size=(640, 480), rows=100, kind="points", n=100),
}


def _answer(kind: str, n: int) -> str:
    """``n`` ``<point>`` lines, or ``<box><seg>`` lines up to ``n`` bytes, on a 32 x 32 grid."""
    lines = []
    if kind == "points":
        for i in range(n):
            lines.append(f"<point><grid{i % 32},{(i // 32) % 32}></point>")
    else:
        size, i = 0, 0
        while size < n:
            x, y = i % 30, (i // 30) % 30
            line = (f"<box><grid{x},{y}><grid{x + 2},{y + 2}></box>"
                    f"<seg><grid{x},{y}><grid{x + 1},{y + 1}><grid{x + 2},{y}></seg>")
            lines.append(line)
            size += len(line) + 1
            i += 1
    return "<think>many</think><answer>" + "\n".join(lines) + "</answer>"


def _child(spec: dict) -> dict:
    """Build the case in a temporary folder, run ``evaluate`` once, report time and peak RSS."""
    import resource

    import numpy as np
    from PIL import Image

    import getok_core
    from getok_core.data import groundtruth
    from getok_core.data.masks import encode_rle
    from getok_core.decoders import make_decoder
    from getok_core.evaluation.evaluate import evaluate

    w, h = spec["size"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    rng = np.random.default_rng(0)
    (tmp / "data" / "easyr1").mkdir(parents=True)
    gts, preds = [], []
    answer = _answer(spec["kind"], spec["n"])
    for r in range(spec["rows"]):
        img = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
        img[h // 4:3 * h // 4, w // 4:3 * w // 4] = (200, 40, 40)
        path = tmp / f"img{r}.png"
        Image.fromarray(img).save(path)
        m = np.zeros((h, w), bool)
        m[h // 4:3 * h // 4, w // 4:3 * w // 4] = True
        gt = {"version": 1, "sample_id": f"s{r}", "image_key": f"img{r}", "image_path": str(path),
              "image_size": [w, h], "task": "seg", "expression": "the red block", "expression_index": 0,
              "no_target": False, "targets": [{"mask": encode_rle(m), "box": [0.25, 0.25, 0.75, 0.75],
                                               "points": [], "polyline": None}],
              "ignore": None, "extra": {}}
        gts.append({"prompt": "<image>Segment the red block.", "answer": groundtruth.dumps(gt)})
        preds.append({"id": f"s{r}#0", "response": answer})
    (tmp / "data" / "easyr1" / "val.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gts))
    (tmp / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    t0 = time.perf_counter()
    evaluate(tmp / "pred.jsonl", tmp / "data", tmp / "report", make_decoder("region"), log=lambda *a: None)
    dt = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": dt, "peak_mb": peak_kb / 1024, "answer_kb": len(answer) / 1024,
            "getok_core": str(Path(getok_core.__file__).parent)}


def _run_case(name: str, src: str | None, limit_gb: float) -> dict:
    """One case in a child process, on the ``getok_core`` under ``src`` (default: this checkout,
    whatever an editable install elsewhere points to)."""
    env = dict(os.environ)
    src = src or str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import json, resource, sys; sys.path.insert(0, %r); import bench_eval_memory as b; "
            "lim = int(%r * 2**30); resource.setrlimit(resource.RLIMIT_AS, (lim, lim)); "
            "print('RESULT ' + json.dumps(b._child(b.CASES[%r])))") % (str(Path(__file__).parent), limit_gb, name)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())  # not the checkout: '' on sys.path would shadow --baseline
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    return {"seconds": time.perf_counter() - t0, "peak_mb": None, "error": f"rc {proc.returncode}: {tail}"}


def _extract(rev: str, dest: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "getok_core"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest)


def _fmt(res: dict | None, key: str, spec: str) -> str:
    if res is None:
        return "-"
    if res.get(key) is None:
        return "killed" if key == "peak_mb" else format(res[key], spec)
    return format(res[key], spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", help="git revision to measure first (the code before a change)")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--limit-gb", type=float, default=12.0, help="address-space cap of each child")
    args = p.parse_args(argv)
    before: dict = {}
    if args.baseline:
        with tempfile.TemporaryDirectory() as d:
            src = _extract(args.baseline, Path(d))
            for name in args.cases:
                before[name] = _run_case(name, src, args.limit_gb)
                print(f"before {name}: {before[name]}", file=sys.stderr)
    after = {name: _run_case(name, None, args.limit_gb) for name in args.cases}
    head = f"{'case':<22} {'answer KB':>9}"
    if before:
        head += f" {'before MB':>10} {'before s':>9}"
    head += f" {'after MB':>9} {'after s':>8}"
    if before:
        head += f" {'MB ratio':>9} {'s ratio':>8}"
    print(head)
    for name in args.cases:
        a, b = after[name], before.get(name)
        kb = a.get("answer_kb") or (b or {}).get("answer_kb") or 0
        row = f"{name:<22} {kb:>9.0f}"
        if before:
            row += f" {_fmt(b, 'peak_mb', '.0f'):>10} {_fmt(b, 'seconds', '.1f'):>9}"
        row += f" {_fmt(a, 'peak_mb', '.0f'):>9} {_fmt(a, 'seconds', '.2f'):>8}"
        if before:
            ok = b and b.get("peak_mb") and a.get("peak_mb")
            row += (f" {b['peak_mb'] / a['peak_mb']:>8.1f}x {b['seconds'] / a['seconds']:>7.1f}x" if ok
                    else f" {'-':>9} {'-':>8}")
        print(row)
        for res, when in ((b, "before"), (a, "after")):
            if res and res.get("error"):
                print(f"  {when}: {res['error']}")
    for res, when in ((next(iter(before.values()), None), "before"), (next(iter(after.values()), None), "after")):
        if res and res.get("getok_core"):
            print(f"{when}: {res['getok_core']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
