#!/usr/bin/env bash
# GETok GRPO with ms-swift (swift rlhf --rlhf_type grpo, vLLM colocated), both stages, the paper's
# setup: Qwen2.5-VL-7B from the cold-start model, 8 GPUs, 16 prompts x 8 sampled answers per step
# (NPROC x PER_DEVICE_BATCH x GRAD_ACCUM = 128 completions), a KL penalty (beta) to the starting
# policy (LoRA trains an adapter: ms-swift's reference is the model with the adapter off).
#   stage grid:   one turn, reward getok_grid (docs/rewards.md)
#   stage refine: GETok's multi-turn scheduler (--multi_turn_scheduler getok_refine --max_turns
#                 ROUNDS+1): turn 1 the grid proposal, then the refinement request, turn 2 the offsets;
#                 reward getok_refine scores the dialogue (the scheduler's rollout_infos["getok_turns"]);
#                 ~200 steps (the paper)
# Each stage's last checkpoint is merged (swift export --merge_lora) into $OUT/STAGE/merged, the
# next stage's model.
#
#   MODEL=output/getok-cold-start-qwen2.5-vl-7b/merged PREPARED=data/refcoco_train \
#   SAM_CHECKPOINT=/ckpt/sam_vit_h_4b8939.pth bash recipes/grpo_swift.sh
#   STAGES=refine MODEL=output/getok-grpo-swift/grid/merged bash recipes/grpo_swift.sh   # stage 2 only
#   DRY_RUN=1 bash recipes/grpo_swift.sh     # print the commands, one per line, run nothing
#
# Data: `getok prepare` writes swift/SPLIT_grpo.jsonl (the ground truth in `solution`).
# Rerunnable into the same OUT: each stage first removes $OUT/STAGE (ms-swift refuses an existing
# export folder and an existing `last` link), so a rerun trains that stage again from its start.
#
# Mask reward and the SAM service (MASK_DECODER=ray, the default): the ORMs run in every training
# process and call SAM served on a local Ray cluster (`getok serve-sam`, docs/sam_service.md),
# started before training and stopped on exit (the reward kwargs go in GETOK_REWARD_KWARGS). Here,
# unlike verl / EasyR1, the trainer is not a Ray job (torchrun), so Ray does not count its GPUs: the
# replicas SHARE the training GPUs, each pinned by Ray to one GPU. Leave them memory: ~3 GB per vit_h
# replica + SAM_CACHE_GB of embeddings (4 MiB each), i.e. keep VLLM_GPU_MEM + the training
# footprint below the card minus that. Load: ~16 image encodings per step (one per prompt) and 128
# (grid) or 256 (refine) mask decodes; ViT-H encodes an image in ~0.1-0.5 s, so 2 replicas x 0.5
# GPU keep up. MASK_DECODER=region / sam (in-process, on each rank's GPU or CPU) / none also work.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- model, data, outputs
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
MODEL=${MODEL:-output/getok-cold-start-$FAMILY_TAG/merged}  # the first stage's start (recipes/cold_start_swift.sh)
PREPARED=${PREPARED:-data/refcoco_train}      # a `getok prepare` output folder
SPLIT=${SPLIT:-train}
DATA=${DATA:-$PREPARED/swift/${SPLIT}_grpo.jsonl}  # space-separated GRPO datasets (a `solution` column)
OUT=${OUT:-output/getok-grpo-swift}           # $OUT/STAGE/{checkpoint-N,last,merged}
STAGES=${STAGES:-grid refine}                 # the stages to run, in order
MODEL_TYPE=${MODEL_TYPE:-$FAMILY_MODEL_TYPE}
TEMPLATE=${TEMPLATE:-$MODEL_TYPE}
SWIFT=${SWIFT:-swift}                         # the ms-swift CLI (ms-swift 4.6)
REPORT_TO=${REPORT_TO:-tensorboard}           # tensorboard / wandb / none
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}
export GETOK_IMAGE_SIZE=${GETOK_IMAGE_SIZE:-}
export MAX_PIXELS=${MAX_PIXELS:-$FAMILY_MAX_PIXELS}  # 1280 visual tokens of the family

# --- the refinement dialogue
ROUNDS=${ROUNDS:-1}                           # offset rounds (the paper: 1): --max_turns ROUNDS+1

# --- hardware and batch (completions per step = NPROC x PER_DEVICE_BATCH x GRAD_ACCUM)
NPROC=${NPROC:-8}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-2}
GRAD_ACCUM=${GRAD_ACCUM:-8}                   # 8 x 2 x 8 = 128 = 16 prompts x 8 answers
NUM_GENERATIONS=${NUM_GENERATIONS:-8}         # answers per prompt (the paper: 8)
VLLM_GPU_MEM=${VLLM_GPU_MEM:-0.4}             # colocated vLLM's share of each GPU
VLLM_TP=${VLLM_TP:-1}
VLLM_MAX_LEN=${VLLM_MAX_LEN:-6144}            # prompt (image <= 1280 tokens) + all turns
DEEPSPEED=${DEEPSPEED:-zero2}                 # zero2 / zero3 / none
ATTN_IMPL=${ATTN_IMPL:-sdpa}
DTYPE=${DTYPE:-bfloat16}

# --- GRPO
# TUNER: lora (default) trains LoRA on the language model; the GETok rows stay at the starting merged
# model's values (the cold start trained them), and ms-swift's weight sync to the colocated vLLM
# carries the merged LoRA. getok_lora also trains the GETok rows, but ms-swift 4.6 syncs them to vLLM
# under peft's token_adapter names, which vLLM's loader rejects: the plugin refuses getok_lora with
# USE_VLLM=1, use it with USE_VLLM=0 (transformers rollouts, far slower; docs/swift.md).
TUNER=${TUNER:-lora}
USE_VLLM=${USE_VLLM:-1}
LORA_RANK=${LORA_RANK:-64}
LORA_ALPHA=${LORA_ALPHA:-128}
LR=${LR:-1e-5}                                # a LoRA rate; the paper's value was lost in extraction
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}            # the paper: 0.01
BETA=${BETA:-0.01}                            # KL coefficient (the paper's value was lost)
TEMPERATURE=${TEMPERATURE:-1.0}
GRID_COMPLETION=${GRID_COMPLETION:-1024}      # tokens per completion, stage grid
REFINE_COMPLETION=${REFINE_COMPLETION:-1024}  # tokens per turn, stage refine
EPOCHS=${EPOCHS:-1}
GRID_STEPS=${GRID_STEPS:-}                    # empty: EPOCHS over the data
REFINE_STEPS=${REFINE_STEPS:-200}             # the paper: ~200 steps
SAVE_STEPS=${SAVE_STEPS:-50}
SEED=${SEED:-42}

# --- mask reward (see the header)
MASK_DECODER=${MASK_DECODER:-ray}             # ray | sam | region | none
SAM_CHECKPOINT=${SAM_CHECKPOINT:-checkpoints/sam_vit_h_4b8939.pth}
SAM_MODEL_TYPE=${SAM_MODEL_TYPE:-vit_h}
SAM_NAME=${SAM_NAME:-getok-sam}               # the Ray Serve application name
SAM_REPLICAS=${SAM_REPLICAS:-2}
SAM_GPUS_PER_REPLICA=${SAM_GPUS_PER_REPLICA:-0.5}
SAM_CPUS_PER_REPLICA=${SAM_CPUS_PER_REPLICA:-2}
SAM_CACHE_GB=${SAM_CACHE_GB:-4}               # embedding cache per replica
SAM_MAX_BATCH=${SAM_MAX_BATCH:-64}            # prompts batched per SAM call
SAM_TIMEOUT_S=${SAM_TIMEOUT_S:-120}           # a reward call that waits longer fails ...
SAM_FALLBACK=${SAM_FALLBACK:-region}          # ... or falls back to this decoder (empty: fail)
IMAGE_ROOT=${IMAGE_ROOT:-}                    # where the service resolves relative image paths (shared storage)
START_RAY=${START_RAY:-1}                     # 1: start (and stop) a local Ray head; 0: use RAY_ADDRESS's cluster
RAY_NUM_GPUS=${RAY_NUM_GPUS:-}                # GPUs the local Ray head offers (empty: all visible)

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
abspath() { realpath -m "$1"; }   # Ray workers do not share this shell's working directory

# reward kwargs (key=value) for the chosen decoder; the grid size has one source, GETOK_GRID_SIZE
reward_kwargs=()
case "$MASK_DECODER" in
  ray) reward_kwargs+=("decoder=ray" "app=$SAM_NAME" "timeout_s=$SAM_TIMEOUT_S")
       [ -n "$SAM_FALLBACK" ] && reward_kwargs+=("fallback=$SAM_FALLBACK") ;;
  sam) reward_kwargs+=("decoder=sam" "checkpoint=$(abspath "$SAM_CHECKPOINT")" "model_type=$SAM_MODEL_TYPE" "device=cpu") ;;
  region) reward_kwargs+=("decoder=region") ;;
  none) ;;
  *) echo "MASK_DECODER must be ray, sam, region or none" >&2; exit 2 ;;
esac

started_ray=0
started_sam=0
cleanup() {
  local rc=$?
  if [ "$started_sam" = "1" ]; then run getok serve-sam --stop --name "$SAM_NAME" || true; fi
  if [ "$started_ray" = "1" ]; then run ray stop || true; fi
  exit "$rc"
}
trap cleanup EXIT

if [ "$MASK_DECODER" = "ray" ]; then
  if [ "$START_RAY" = "1" ]; then
    ray_args=(ray start --head --disable-usage-stats)
    [ -n "$RAY_NUM_GPUS" ] && ray_args+=(--num-gpus "$RAY_NUM_GPUS")
    run "${ray_args[@]}"
    started_ray=1
  fi
  export RAY_ADDRESS=${RAY_ADDRESS:-auto}    # the reward functions' Ray client joins this cluster
  sam_args=(getok serve-sam --address "$RAY_ADDRESS" --checkpoint "$(abspath "$SAM_CHECKPOINT")" --model-type "$SAM_MODEL_TYPE"
    --replicas "$SAM_REPLICAS" --gpus-per-replica "$SAM_GPUS_PER_REPLICA" --cpus-per-replica "$SAM_CPUS_PER_REPLICA"
    --cache-gb "$SAM_CACHE_GB" --max-batch-size "$SAM_MAX_BATCH" --name "$SAM_NAME")
  [ -n "$IMAGE_ROOT" ] && sam_args+=(--image-root "$(abspath "$IMAGE_ROOT")")
  run "${sam_args[@]}"
  started_sam=1
fi

# the reward kwargs as the JSON object GETOK_REWARD_KWARGS holds (numbers stay numbers)
kwargs_json() {
  local kv k v sep="" out="{"
  for kv in "${reward_kwargs[@]}"; do
    k=${kv%%=*}; v=${kv#*=}
    if [[ "$v" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then out+="$sep\"$k\": $v"; else out+="$sep\"$k\": \"$v\""; fi
    sep=", "
  done
  printf '%s}\n' "$out"
}
REWARD_KWARGS_JSON=$(kwargs_json)

model=$MODEL
read -r -a DATASETS <<< "$DATA"
for stage in $STAGES; do
  case "$(abspath "$model")/" in
    "$(abspath "$OUT/$stage")"/*) echo "MODEL $model lies in $OUT/$stage, which stage $stage replaces" >&2; exit 2 ;;
  esac
  args=(
    --rlhf_type grpo
    --custom_register_path "$REPO/swift_plugin/register.py"
    --model "$model" --model_type "$MODEL_TYPE" --template "$TEMPLATE"
    --tuner_type "$TUNER" --target_modules all-linear
    --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA"
    --dataset "${DATASETS[@]}" --split_dataset_ratio 0
    --torch_dtype "$DTYPE" --attn_impl "$ATTN_IMPL"
    --offload_model true --offload_optimizer true
    --num_generations "$NUM_GENERATIONS" --temperature "$TEMPERATURE" --beta "$BETA"
    --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$GRAD_ACCUM"
    --learning_rate "$LR" --weight_decay "$WEIGHT_DECAY" --warmup_ratio 0
    --num_train_epochs "$EPOCHS" --gradient_checkpointing true
    --save_steps "$SAVE_STEPS" --save_total_limit 3 --logging_steps 1 --log_completions true
    --dataloader_num_workers 4 --dataset_num_proc 8 --report_to "$REPORT_TO" --seed "$SEED"
    --output_dir "$OUT/$stage" --add_version false --create_checkpoint_symlink true
  )
  if [ "$USE_VLLM" = "1" ]; then
    args+=(--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization "$VLLM_GPU_MEM"
      --vllm_tensor_parallel_size "$VLLM_TP" --vllm_max_model_len "$VLLM_MAX_LEN" --sleep_level 1)
  else
    args+=(--use_vllm false)
  fi
  case "$stage" in
    grid)
      args+=(--reward_funcs getok_grid --max_completion_length "$GRID_COMPLETION")
      [ -n "$GRID_STEPS" ] && args+=(--max_steps "$GRID_STEPS") ;;
    refine)
      args+=(--reward_funcs getok_refine --max_completion_length "$REFINE_COMPLETION"
        --multi_turn_scheduler getok_refine --max_turns "$((ROUNDS + 1))")
      [ -n "$REFINE_STEPS" ] && args+=(--max_steps "$REFINE_STEPS") ;;
    *) echo "STAGES: unknown stage $stage (grid, refine)" >&2; exit 2 ;;
  esac
  [ "$DEEPSPEED" != "none" ] && args+=(--deepspeed "$DEEPSPEED")
  run rm -rf "${OUT:?}/$stage"
  run env NPROC_PER_NODE="$NPROC" GETOK_GRID_SIZE="$GETOK_GRID_SIZE" GETOK_IMAGE_SIZE="$GETOK_IMAGE_SIZE" \
    MAX_PIXELS="$MAX_PIXELS" GETOK_REWARD_KWARGS="$REWARD_KWARGS_JSON" "$SWIFT" rlhf "${args[@]}"
  # merge this stage's adapter: the next stage's model
  run env GETOK_GRID_SIZE="$GETOK_GRID_SIZE" GETOK_IMAGE_SIZE="$GETOK_IMAGE_SIZE" \
    "$SWIFT" export --adapters "$OUT/$stage/last" --merge_lora true --output_dir "$OUT/$stage/merged"
  model=$OUT/$stage/merged
done
[ "$DRY_RUN" = "1" ] || echo "grpo_swift: done. Final model: $model"
