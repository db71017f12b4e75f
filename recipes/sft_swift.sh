#!/usr/bin/env bash
# GETok supervised fine-tuning of Qwen2.5-VL-7B (MODEL_FAMILY=qwen3_vl: Qwen3-VL-8B, qwen2_vl:
# Qwen2-VL-7B) with ms-swift, the paper's setup: LoRA rank 64 on the
# language model, a batch of 16 (2 per device x 8 accumulation steps), bf16, DeepSpeed, grid 32 with
# one offset round. The GETok tokens are added by the getok_qwen2_5_vl model type and trained
# row-wise by the getok_lora tuner (docs/swift.md).
#
#   DATA="data/refcoco_train/swift/train.jsonl data/refcoco_train/swift/train_refine.jsonl" \
#   NPROC=8 bash recipes/sft_swift.sh
#   DRY_RUN=1 bash recipes/sft_swift.sh      # print the command only
#
# Every path and size below is an environment variable with a default. Prepare data first:
#   getok prepare --dataset refcoco --root data/refer --out data/refcoco_train \
#       --proposals sam --sam-checkpoint sam_vit_h.pth --device cuda:0
# (or use DATA=getok-sample to try the pipeline on the bundled sample, prepared on first use).
# Rerunnable into the same OUT: ms-swift writes each run into a new $OUT/vN-TIMESTAMP folder, and
# recipes/cold_start_swift.sh takes the newest checkpoint.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- model and data
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
MODEL=${MODEL:-$FAMILY_BASE}                  # hub id or local folder of the base model
MODEL_TYPE=${MODEL_TYPE:-$FAMILY_MODEL_TYPE}  # getok_qwen2_5_vl / getok_qwen3_vl / getok_qwen2_vl
TEMPLATE=${TEMPLATE:-$MODEL_TYPE}             # the GETok template of the same family
DATA=${DATA:-data/refcoco_train/swift/train.jsonl}  # space-separated: getok prepare outputs, standard
                                                     # ms-swift grounding JSONL (objects), dataset names
VAL_DATA=${VAL_DATA:-}                        # optional validation JSONL(s), space-separated
OUT=${OUT:-output/getok-sft-$FAMILY_TAG}      # checkpoints land in $OUT/vX-.../checkpoint-N
SWIFT=${SWIFT:-swift}                         # the ms-swift CLI (ms-swift 4.6)

# --- GETok
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}  # grid n: n*n grid tokens (32: 1047 tokens in all);
                                               # use the same value for swift infer / export
export GETOK_IMAGE_SIZE=${GETOK_IMAGE_SIZE:-}  # e.g. 448 or 640,480: plain resize of every image (the
                                               # paper's preprocessing; its size was lost in the text),
                                               # rounded to multiples of 28 (Qwen2/2.5-VL) or 32 (Qwen3-VL);
                                               # empty: Qwen's dynamic resolution, capped by MAX_PIXELS
export MAX_PIXELS=${MAX_PIXELS:-$FAMILY_MAX_PIXELS}  # dynamic resolution cap: 1280 visual tokens
                                               # (1280 x 28 x 28, or 1280 x 32 x 32 for Qwen3-VL)

# --- hardware and batch (global batch = NPROC x PER_DEVICE_BATCH x GRAD_ACCUM)
NPROC=${NPROC:-8}                 # GPUs on this node (8x A800 in the paper)
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-2}   # the paper: 2 per device ...
GRAD_ACCUM=${GRAD_ACCUM:-8}               # ... x 8 accumulation steps = 16
DEEPSPEED=${DEEPSPEED:-zero2}     # zero2 / zero3 / none
ATTN_IMPL=${ATTN_IMPL:-sdpa}      # flash_attn if installed
DTYPE=${DTYPE:-bfloat16}

# --- optimization
LORA_RANK=${LORA_RANK:-64}        # the paper's LoRA rank
LORA_ALPHA=${LORA_ALPHA:-128}     # 2 x rank
LR=${LR:-1e-4}                    # the paper's value was lost in extraction; ms-swift's LoRA default
EPOCHS=${EPOCHS:-1}
WARMUP=${WARMUP:-0.03}
MAX_LENGTH=${MAX_LENGTH:-4096}    # tokens per sample (an image at MAX_PIXELS is up to 1280)
SAVE_STEPS=${SAVE_STEPS:-500}
SEED=${SEED:-42}

read -r -a DATASETS <<< "$DATA"
args=(
  --custom_register_path "$REPO/swift_plugin/register.py"  # absolute: replayed from args.json later
  --model "$MODEL" --model_type "$MODEL_TYPE" --template "$TEMPLATE"
  --tuner_type getok_lora             # LoRA + only the GETok rows of embed_tokens / lm_head
  --target_modules all-linear         # the language model's linear layers (the ViT stays frozen)
  --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" --lora_dropout 0.05
  --dataset "${DATASETS[@]}"
  --torch_dtype "$DTYPE" --attn_impl "$ATTN_IMPL"
  --num_train_epochs "$EPOCHS" --learning_rate "$LR" --warmup_ratio "$WARMUP" --weight_decay 0.1
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$GRAD_ACCUM"
  --max_length "$MAX_LENGTH" --truncation_strategy delete
  --gradient_checkpointing true
  --save_steps "$SAVE_STEPS" --save_total_limit 3 --logging_steps 10
  --dataloader_num_workers 4 --dataset_num_proc 8
  --seed "$SEED" --output_dir "$OUT"
)
if [ -n "$VAL_DATA" ]; then
  read -r -a VALS <<< "$VAL_DATA"
  args+=(--val_dataset "${VALS[@]}" --eval_steps "$SAVE_STEPS")
else
  args+=(--split_dataset_ratio 0)
fi
[ "$DEEPSPEED" != "none" ] && args+=(--deepspeed "$DEEPSPEED")

if [ "${DRY_RUN:-0}" = "1" ]; then
  printf 'NPROC_PER_NODE=%s GETOK_GRID_SIZE=%s GETOK_IMAGE_SIZE=%s MAX_PIXELS=%s %s sft' \
    "$NPROC" "$GETOK_GRID_SIZE" "$GETOK_IMAGE_SIZE" "$MAX_PIXELS" "$SWIFT"
  printf ' %q' "${args[@]}"
  printf '\n'
  exit 0
fi
# NPROC_PER_NODE makes ms-swift launch torchrun with one process per GPU
NPROC_PER_NODE=$NPROC "$SWIFT" sft "${args[@]}"

# Afterwards (same GETOK_GRID_SIZE):
#   swift infer --adapters $OUT/vX-.../checkpoint-N --val_dataset VAL.jsonl     # plugin replayed from args.json
#   swift export --adapters $OUT/vX-.../checkpoint-N --merge_lora true          # a plain Qwen2.5-VL folder
