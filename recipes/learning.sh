#!/usr/bin/env bash
# Does GETok training learn? The toy grounding bench on CPU (bench/bench_learning.py):
#   1. the toy dataset (getok sample --toy: 1-3 shapes on a plain background, 112 px) and
#      getok prepare --dataset jsonl at grid 16,
#   2. swift sft (full parameters, a tiny random Qwen2.5-VL from getok tiny-model) with GETok grid
#      answers, scored every EVAL_EVERY steps on held-out images by swift infer + getok eval,
#   3. the same SFT with plain-text pixel boxes ({"bbox_2d": [x1, y1, x2, y2]}), same metrics,
#   4. swift rlhf --rlhf_type grpo with the getok_grid ORM from the last grid checkpoint, one run
#      per seed: the held-out getok_grid reward before and after.
# Writes $OUT/results.md (the table), results.json and curves.png (docs/training.md, "Does it learn?").
#
#   bash recipes/learning.sh                                  # outputs in ./out/learning
#   OUT=/tmp/learn STEPS=600 EVAL_EVERY=150 IMAGES=2000 SEEDS=0,1,2 bash recipes/learning.sh
#
# Knobs (environment): OUT, IMAGES (toy images, default 400), VAL (held-out images, 30), STEPS (SFT
# steps, 100), EVAL_EVERY (50), HIDDEN (64), LAYERS (2), BATCH (8), LR (2e-3), GRPO_STEPS (8),
# SEEDS (GRPO seeds, 0), SFT_SEEDS (0), GETOK_SWIFT_VENV (an environment holding ms-swift and this
# checkout; default: build or reuse the pinned one). Rerunnable: finished data and runs are reused.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out/learning}
source "$root/scripts/env.sh"
venv=${GETOK_SWIFT_VENV:-$(getok_env swift)}
exec "$venv/bin/python" "$root/bench/bench_learning.py" --out "$out" \
  --images "${IMAGES:-400}" --val "${VAL:-30}" --steps "${STEPS:-100}" --eval-every "${EVAL_EVERY:-50}" \
  --hidden-size "${HIDDEN:-64}" --layers "${LAYERS:-2}" --batch "${BATCH:-8}" --lr "${LR:-2e-3}" \
  --grpo-steps "${GRPO_STEPS:-8}" --seeds "${SEEDS:-0}" --sft-seeds "${SFT_SEEDS:-0}"
