#!/usr/bin/env bash
# GETok cold start (the paper's step between SFT and GRPO), with ms-swift: continue from the SFT
# model on the offset-aware two-turn conversations (turn 1: a grid proposal, turn 2: one <OFF..> /
# <DELETE> per proposed point) that `getok prepare` writes to swift/SPLIT_refine.jsonl, optionally
# mixed with chain-of-thought instruction data (the paper mixes in LLaVA-CoT-100k to keep the
# model's general abilities). Three commands:
#   1. swift export --merge_lora: the SFT adapter (recipes/sft_swift.sh) -> a plain model folder
#      (skipped when SFT_MODEL names an already merged folder),
#   2. swift sft: a fresh getok_lora adapter on that folder (LoRA + the GETok embedding rows),
#   3. swift export --merge_lora: -> $OUT/merged, the policy GRPO starts from and KL-regularizes to
#      (recipes/grpo_*.sh take it as MODEL).
#
#   SFT_CKPT=output/getok-sft-qwen2.5-vl-7b/v0-20260101-000000/checkpoint-5000 \
#   PREPARED=data/refcoco_train NPROC=8 bash recipes/cold_start_swift.sh
#   DRY_RUN=1 bash recipes/cold_start_swift.sh     # print the commands, one per line, run nothing
#
# Every path and size is an environment variable with the default shown below.
# Rerunnable into the same OUT: $OUT/sft-merged is reused only when it was merged from the same
# SFT_CKPT (recorded in $OUT/sft-merged/.getok-source), and a rerun removes $OUT/train and
# $OUT/merged before training again (ms-swift refuses an existing export folder and an existing
# `last` link).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- inputs and outputs
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
SFT_OUT=${SFT_OUT:-output/getok-sft-$FAMILY_TAG}  # recipes/sft_swift.sh's OUT
SFT_CKPT=${SFT_CKPT:-}                        # the SFT adapter checkpoint; empty: the newest $SFT_OUT/v*/checkpoint-*
SFT_MODEL=${SFT_MODEL:-}                      # or an already merged SFT model folder: skips step 1
PREPARED=${PREPARED:-data/refcoco_train}      # a `getok prepare` output folder
SPLIT=${SPLIT:-train}
DATA=${DATA:-$PREPARED/swift/${SPLIT}_refine.jsonl}  # space-separated ms-swift datasets: the two-turn offset data
EXTRA_DATA=${EXTRA_DATA:-}                    # space-separated: e.g. LLaVA-CoT-100k as ms-swift JSONL, `#N` to subsample
OUT=${OUT:-output/getok-cold-start-$FAMILY_TAG}  # $OUT/sft-merged, $OUT/train/{checkpoint-N,last}, $OUT/merged
MODEL_TYPE=${MODEL_TYPE:-$FAMILY_MODEL_TYPE}
TEMPLATE=${TEMPLATE:-$MODEL_TYPE}
SWIFT=${SWIFT:-swift}                         # the ms-swift CLI (ms-swift 4.6)

# --- GETok (the same values as the SFT run)
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}
export GETOK_IMAGE_SIZE=${GETOK_IMAGE_SIZE:-}
export MAX_PIXELS=${MAX_PIXELS:-$FAMILY_MAX_PIXELS}  # 1280 visual tokens of the family

# --- hardware and batch (global batch = NPROC x PER_DEVICE_BATCH x GRAD_ACCUM = 16, as for SFT)
NPROC=${NPROC:-8}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-2}
GRAD_ACCUM=${GRAD_ACCUM:-1}
DEEPSPEED=${DEEPSPEED:-zero2}                 # zero2 / zero3 / none
ATTN_IMPL=${ATTN_IMPL:-sdpa}
DTYPE=${DTYPE:-bfloat16}

# --- optimization: a short pass (the turn-2 answers are a few tokens each)
LORA_RANK=${LORA_RANK:-64}
LORA_ALPHA=${LORA_ALPHA:-128}
LR=${LR:-5e-5}
EPOCHS=${EPOCHS:-1}
WARMUP=${WARMUP:-0.03}
MAX_LENGTH=${MAX_LENGTH:-4096}
SAVE_STEPS=${SAVE_STEPS:-500}
SEED=${SEED:-42}

DRY_RUN=${DRY_RUN:-0}
# run CMD...: execute, or with DRY_RUN=1 print it as one shell-quoted line (parse it with shlex.split)
run() {
  if [ "$DRY_RUN" = "1" ]; then
    local line
    printf -v line '%q ' "$@"
    printf '%s\n' "${line% }"
  else
    "$@"
  fi
}

# 1. the merged SFT model
if [ -z "$SFT_CKPT" ] && [ -z "$SFT_MODEL" ]; then
  SFT_CKPT=$(find "$SFT_OUT" -maxdepth 2 -type d -name 'checkpoint-*' 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$SFT_CKPT" ]; then
    [ "$DRY_RUN" = "1" ] || { echo "no checkpoint under $SFT_OUT: set SFT_CKPT or SFT_MODEL" >&2; exit 1; }
    SFT_CKPT=$SFT_OUT/vN-TIMESTAMP/checkpoint-N   # DRY_RUN placeholder
  fi
fi
if [ -n "$SFT_MODEL" ]; then
  base=$SFT_MODEL
else
  base=$OUT/sft-merged
  if [ "$DRY_RUN" = "1" ] || [ ! -f "$base/config.json" ] || [ "$(cat "$base/.getok-source" 2>/dev/null)" != "$SFT_CKPT" ]; then
    run rm -rf "$base"
    run env GETOK_GRID_SIZE="$GETOK_GRID_SIZE" GETOK_IMAGE_SIZE="$GETOK_IMAGE_SIZE" \
      "$SWIFT" export --adapters "$SFT_CKPT" --merge_lora true --output_dir "$base"
    [ "$DRY_RUN" = "1" ] || printf '%s\n' "$SFT_CKPT" > "$base/.getok-source"
  fi
fi

# 2. cold-start fine-tuning
read -r -a DATASETS <<< "$DATA $EXTRA_DATA"
args=(
  --custom_register_path "$REPO/swift_plugin/register.py"
  --model "$base" --model_type "$MODEL_TYPE" --template "$TEMPLATE"
  --tuner_type getok_lora --target_modules all-linear
  --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" --lora_dropout 0.05
  --dataset "${DATASETS[@]}"
  --torch_dtype "$DTYPE" --attn_impl "$ATTN_IMPL"
  --num_train_epochs "$EPOCHS" --learning_rate "$LR" --warmup_ratio "$WARMUP" --weight_decay 0.1
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$GRAD_ACCUM"
  --max_length "$MAX_LENGTH" --truncation_strategy delete
  --gradient_checkpointing true
  --save_steps "$SAVE_STEPS" --save_total_limit 2 --logging_steps 10
  --dataloader_num_workers 4 --dataset_num_proc 8 --split_dataset_ratio 0
  --seed "$SEED" --output_dir "$OUT/train" --add_version false --create_checkpoint_symlink true
)
[ "$DEEPSPEED" != "none" ] && args+=(--deepspeed "$DEEPSPEED")
run rm -rf "${OUT:?}/train" "${OUT:?}/merged"   # a rerun trains again from the merged SFT model
run env NPROC_PER_NODE="$NPROC" GETOK_GRID_SIZE="$GETOK_GRID_SIZE" GETOK_IMAGE_SIZE="$GETOK_IMAGE_SIZE" \
  MAX_PIXELS="$MAX_PIXELS" "$SWIFT" sft "${args[@]}"

# 3. the GRPO starting point
run env GETOK_GRID_SIZE="$GETOK_GRID_SIZE" GETOK_IMAGE_SIZE="$GETOK_IMAGE_SIZE" \
  "$SWIFT" export --adapters "$OUT/train/last" --merge_lora true --output_dir "$OUT/merged"
[ "$DRY_RUN" = "1" ] || echo "cold start: done. GRPO starts from MODEL=$OUT/merged"
