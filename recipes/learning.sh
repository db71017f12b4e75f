#!/usr/bin/env bash
# Does GETok training learn? The toy grounding bench on CPU (bench/bench_learning.py):
#   1. the toy dataset (getok sample --toy: 1-3 shapes on a plain background, 4 x 4 visual tokens:
#      128 px for Qwen3-VL, 112 px for Qwen2.5-VL / Qwen2-VL) and getok prepare --dataset jsonl at grid 16,
#   2. swift sft (full parameters, a tiny random model of FAMILY from getok tiny-model) with GETok grid
#      answers, scored every EVAL_EVERY steps on held-out images by swift infer + getok eval,
#   3. the same SFT with plain-text boxes ({"bbox_2d": [x1, y1, x2, y2]}, the family's units), same metrics,
#   4. swift rlhf --rlhf_type grpo with the getok_grid ORM from the last grid checkpoint, one run
#      per seed: the held-out getok_grid reward before and after.
# Writes $OUT/results.md (the table), results.json and curves.png (docs/training.md, "Does it learn?").
#
#   bash recipes/learning.sh                                  # outputs in ./out/learning
#   OUT=/tmp/learn SEEDS=0 bash recipes/learning.sh
#
# Knobs (environment): OUT, FAMILY (qwen3_vl; qwen2_5_vl, qwen2_vl), IMAGES (toy images, default
# 6000), VAL (held-out images, 100), STEPS (SFT steps, 600), EVAL_EVERY (200), HIDDEN (128), LAYERS (4),
# VISION_HIDDEN (64), BATCH (16), LR (2e-3), THREADS (torch threads, 2), GRPO_STEPS (100),
# GRPO_PROMPTS (prompts per GRPO step, 8), GENERATIONS (answers per prompt, 8), GRPO_LR (5e-5),
# SEEDS (GRPO seeds, 0,1,2), SFT_SEEDS (0), SINGLE_FIRST (curriculum: steps on one-shape images first, 600),
# GRID_CODE (GETOK_GRID_CODE, 1.0), VISION_POSITION_CODE (0.5 for qwen3_vl, else 0), ADAM_BETA2 (0.999),
# MAX_GRAD_NORM (0: no clipping), GETOK_SWIFT_VENV (an environment holding ms-swift and this
# checkout; default: build or reuse the pinned one). Rerunnable: finished data and runs are reused.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out/learning}
source "$root/scripts/env.sh"
venv=${GETOK_SWIFT_VENV:-$(getok_env swift)}
vpc=0; [ "${FAMILY:-qwen3_vl}" = qwen3_vl ] && vpc=0.5  # only Qwen3-VL has a learned position table
exec "$venv/bin/python" "$root/bench/bench_learning.py" --out "$out" \
  --family "${FAMILY:-qwen3_vl}" --images "${IMAGES:-6000}" --val "${VAL:-100}" --steps "${STEPS:-600}" \
  --eval-every "${EVAL_EVERY:-200}" --hidden-size "${HIDDEN:-128}" --layers "${LAYERS:-4}" \
  --vision-hidden "${VISION_HIDDEN:-64}" --batch "${BATCH:-16}" --lr "${LR:-2e-3}" --threads "${THREADS:-2}" \
  --grpo-steps "${GRPO_STEPS:-100}" --grpo-prompts "${GRPO_PROMPTS:-8}" --generations "${GENERATIONS:-8}" \
  --grpo-lr "${GRPO_LR:-5e-5}" --seeds "${SEEDS:-0,1,2}" --sft-seeds "${SFT_SEEDS:-0}" \
  --single-first "${SINGLE_FIRST:-600}" --grid-code "${GRID_CODE:-1.0}" \
  --vision-position-code "${VISION_POSITION_CODE:-$vpc}" --adam-beta2 "${ADAM_BETA2:-0.999}" \
  --max-grad-norm "${MAX_GRAD_NORM:-0}"
