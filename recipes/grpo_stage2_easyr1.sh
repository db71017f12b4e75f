#!/usr/bin/env bash
# GETok GRPO stage 2 (offset refinement) with EasyR1. EasyR1 has no multi-turn rollout, so the
# dialogue is built beforehand: `getok rollout-proposals` runs the stage-1 model over the prepared
# data and writes the two-turn EasyR1 dataset whose prompt holds the REAL turn-1 exchange (question,
# the model's own grid answer, the refinement request) and whose ground truth carries that answer as
# extra.proposal; EasyR1 then samples only turn 2 (one <OFF..> / <DELETE> per proposed point) and
# easyr1_plugin/reward.py:refine_reward scores it (format, point, box, mask_gain; docs/rewards.md).
# The paper trains this stage for ~200 steps (MAX_STEPS): offsets are few tokens and overfit fast.
# Same GPUs, batch (16 prompts x 8 answers) and KL penalty as stage 1; EasyR1's reference model is
# its starting model, so here the KL is to the stage-1 policy (the paper says "to the SFT policy";
# EasyR1 has no separate reference path: REF note in docs/training.md).
#
#   EASYR1_DIR=~/EasyR1 PREPARED=data/refcoco_train SAM_CHECKPOINT=/ckpt/sam_vit_h_4b8939.pth \
#   bash recipes/grpo_stage2_easyr1.sh          # after recipes/grpo_stage1_easyr1.sh (same OUT)
#   DRY_RUN=1 bash recipes/grpo_stage2_easyr1.sh     # print the commands, one per line, run nothing
#
# Proposals: BACKEND=vllm (one offline vLLM engine in this environment on PROPOSAL_TP GPUs, default 1:
# the 7B fits one GPU; the size must divide its 28 attention heads), or BACKEND=openai with
# ENDPOINT / SERVED_MODEL (any OpenAI-compatible server, e.g. `swift deploy` or `vllm serve` of the
# stage-1 model), or BACKEND=transformers (slow; tests). NUM_SAMPLES > 1 writes several proposals
# per expression (more varied turn-1 answers, a larger stage-2 set). Existing proposal files are
# reused (REUSE_PROPOSALS=1). To sample new proposals, delete the output JSONL and its
# .rollouts.jsonl (the answers already generated: rollout-proposals resumes from it; docs/rollout.md).
#
# Mask reward and the SAM service: as in recipes/grpo_stage1_easyr1.sh (MASK_DECODER=ray starts
# `getok serve-sam` on the Ray cluster before training and stops it on exit). mask_gain needs two
# decodes per instance (proposal and refined), with the image shared: the same ~16 encodings per step,
# so the stage-1 sizing holds. Ray reserves whole GPUs for the trainer: the service's
# SAM_REPLICAS x SAM_GPUS_PER_REPLICA GPUs must be GPUs outside the trainer's N_GPUS x NNODES (the
# default layout needs a 9th GPU or a second node; see the stage-1 header for one-node layouts).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- model, data, outputs
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
OUT=${OUT:-output/getok-grpo-easyr1}          # checkpoints in $OUT/stage2/global_step_N, merged model $OUT/stage2/merged
MODEL=${MODEL:-$OUT/stage1/merged}            # the stage-1 model (recipes/grpo_stage1_easyr1.sh)
PREPARED=${PREPARED:-data/refcoco_train}      # a `getok prepare` output folder
SPLIT=${SPLIT:-train}
VAL_SPLIT=${VAL_SPLIT-val}                    # empty: no held-out validation (periodic validation off; docs/training.md)
TRAIN_DATA=${TRAIN_DATA:-$PREPARED/easyr1/${SPLIT}_refine.jsonl}   # written by getok rollout-proposals
VAL_DATA=${VAL_DATA:-$PREPARED/easyr1/${VAL_SPLIT}_refine.jsonl}
EASYR1_DIR=${EASYR1_DIR:-EasyR1}              # the EasyR1 clone (for scripts/model_merger.py)
PYTHON=${PYTHON:-python3}                     # the Python of the EasyR1 environment
PROJECT=${PROJECT:-getok}
EXPERIMENT=${EXPERIMENT:-${FAMILY_TAG//[.-]/_}_refine_grpo}
LOGGER=${LOGGER:-[console]}                   # e.g. [console,wandb]
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}

# --- turn-1 proposals (getok rollout-proposals)
BACKEND=${BACKEND:-vllm}                      # vllm | openai | transformers
ENDPOINT=${ENDPOINT:-}                        # BACKEND=openai: e.g. http://127.0.0.1:8000/v1
SERVED_MODEL=${SERVED_MODEL:-}                # BACKEND=openai: the served model name
NUM_SAMPLES=${NUM_SAMPLES:-1}                 # proposals per expression
PROPOSAL_TEMPERATURE=${PROPOSAL_TEMPERATURE:-1.0}  # sampled, like the stage-1 rollouts the model will see
PROPOSAL_MAX_TOKENS=${PROPOSAL_MAX_TOKENS:-1024}
REUSE_PROPOSALS=${REUSE_PROPOSALS:-1}
PROPOSAL_TP=${PROPOSAL_TP:-1}                 # BACKEND=vllm: GPUs per model copy

# --- hardware
NNODES=${NNODES:-1}
N_GPUS=${N_GPUS:-8}                           # trainer GPUs per node (8x A800 in the paper)
ROLLOUT_TP=${ROLLOUT_TP:-2}                   # vLLM tensor parallel size
GPU_MEM_UTIL=${GPU_MEM_UTIL:-0.6}             # vLLM's share of GPU memory

# --- GRPO (global numbers; responses per step = ROLLOUT_BATCH x N_SAMPLES)
ROLLOUT_BATCH=${ROLLOUT_BATCH:-16}            # prompts per step (the paper's batch of 16)
N_SAMPLES=${N_SAMPLES:-8}                     # answers per prompt (the paper: 8)
GLOBAL_BATCH=${GLOBAL_BATCH:-16}              # prompts per actor update (= ROLLOUT_BATCH: one on-policy update per step)
MICRO_UPDATE=${MICRO_UPDATE:-2}               # responses per GPU per forward/backward
MICRO_EXPERIENCE=${MICRO_EXPERIENCE:-4}       # responses per GPU per log-prob forward
LR=${LR:-1e-6}                                # the paper's value was lost in extraction; EasyR1's default
WEIGHT_DECAY=${WEIGHT_DECAY:-1e-2}            # the paper: 0.01
KL_COEF=${KL_COEF:-1e-2}                      # the paper's value was lost; EasyR1's example value
TEMPERATURE=${TEMPERATURE:-1.0}
MAX_PROMPT=${MAX_PROMPT:-3072}                # tokens: the image, the question, the turn-1 answer, the request
MAX_RESPONSE=${MAX_RESPONSE:-512}             # the offset answer (an optional <think> included)
MAX_PIXELS=${MAX_PIXELS:-$FAMILY_MAX_PIXELS}  # as in SFT (1280 merged tokens: 1280 x 28 x 28, Qwen3-VL 1280 x 32 x 32)
MIN_PIXELS=${MIN_PIXELS:-$FAMILY_MIN_PIXELS}  # as in SFT (Qwen's default: 3136, Qwen3-VL 4096); EasyR1's own default upscales to 512x512
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:-200}                   # the paper: ~200 steps (empty: EPOCHS over the data)
SAVE_FREQ=${SAVE_FREQ:-50}
VAL_FREQ=${VAL_FREQ:-25}
LORA_RANK=${LORA_RANK:-0}                     # 0: full fine-tuning (EasyR1's default); > 0: LoRA (recent EasyR1)
LORA_EXCLUDE=${LORA_EXCLUDE:-.*visual.*}      # LORA_RANK > 0: no LoRA on the vision tower (EasyR1 syncs only the language layers' LoRA to vLLM)
FREEZE_VISION_TOWER=${FREEZE_VISION_TOWER:-false}  # true: train the language model only
ONLINE_FILTERING=${ONLINE_FILTERING:-false}   # true: drop prompts whose answers all score alike (EasyR1's DAPO filter on `overall`)
SAVE_MODEL_ONLY=${SAVE_MODEL_ONLY:-false}     # true: checkpoints without optimizer state (smaller; a resume restarts the optimizer)
VAL_BATCH=${VAL_BATCH:-64}                    # validation prompts per generation and reward call (EasyR1's -1 = all in one call:
                                              # the SAM service's SAM_TIMEOUT_S covers one call)

# --- mask reward (see the header)
MASK_DECODER=${MASK_DECODER:-ray}             # ray | sam | region | none
REWARD_CPUS=${REWARD_CPUS:-$([ "$MASK_DECODER" = sam ] && echo 16 || echo 4)}  # CPUs (= torch threads) of each reward actor (train, val)
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
# newest global_step_N folder of an EasyR1 / verl checkpoint directory (a placeholder in DRY_RUN)
last_step() {
  local d
  d=$(find "$1" -maxdepth 1 -type d -name 'global_step_*' 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$d" ]; then
    [ "$DRY_RUN" = "1" ] || { echo "no global_step_* under $1" >&2; return 1; }
    d=$1/global_step_N
  fi
  printf '%s\n' "$d"
}

# reward kwargs (key=value) for the chosen decoder
reward_kwargs=("grid_size=$GETOK_GRID_SIZE")
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

# the input rows of each proposal file that is not reused, checked before anything starts
need_rows() {  # need_rows SPLIT OUTFILE
  [ "$DRY_RUN" = "1" ] && return 0
  [ "$REUSE_PROPOSALS" = "1" ] && [ -s "$2" ] && return 0
  [ -s "$PREPARED/easyr1/$1.jsonl" ] && return 0
  echo "grpo_stage2_easyr1: $PREPARED/easyr1/$1.jsonl missing (getok prepare without --split writes every split;" \
    "VAL_SPLIT= trains without one)" >&2
  exit 2
}
need_rows "$SPLIT" "$TRAIN_DATA"
if [ -n "$VAL_SPLIT" ]; then need_rows "$VAL_SPLIT" "$VAL_DATA"; fi

# 1. turn-1 proposals of the stage-1 model (before the service: vLLM may take every GPU here)
proposals() {  # proposals SPLIT OUTFILE
  if [ "$REUSE_PROPOSALS" = "1" ] && [ "$DRY_RUN" != "1" ] && [ -s "$2" ]; then
    echo "reusing $2"
    return 0
  fi
  local a=(getok rollout-proposals --model "$(abspath "$MODEL")" --prepared "$PREPARED" --split "$1"
    --backend "$BACKEND" --num-samples "$NUM_SAMPLES" --temperature "$PROPOSAL_TEMPERATURE"
    --max-new-tokens "$PROPOSAL_MAX_TOKENS" --min-pixels "$MIN_PIXELS" --max-pixels "$MAX_PIXELS"
    --grid-size "$GETOK_GRID_SIZE" --out "$2")   # the stage-1 training images and grid
  [ "$BACKEND" = "vllm" ] && a+=(--tensor-parallel-size "$PROPOSAL_TP")
  [ -n "$ENDPOINT" ] && a+=(--endpoint "$ENDPOINT")
  [ -n "$SERVED_MODEL" ] && a+=(--served-model "$SERVED_MODEL")
  run env GETOK_GRID_SIZE="$GETOK_GRID_SIZE" "${a[@]}"
}
proposals "$SPLIT" "$TRAIN_DATA"
# validation: the val split's proposals, or with VAL_SPLIT= the first VAL_BATCH training rows (EasyR1
# always builds a non-empty validation set and validates once after training; `FILE@train[:N]` is a
# slice of FILE)
if [ -n "$VAL_SPLIT" ]; then
  proposals "$VAL_SPLIT" "$VAL_DATA"
  val_files=$(abspath "$VAL_DATA")
else
  val_files="$(abspath "$TRAIN_DATA")@train[:$VAL_BATCH]"
  VAL_FREQ=-1
fi

# 2. the SAM service, then EasyR1 on the two-turn data
if [ "$MASK_DECODER" = "ray" ]; then
  if [ "$START_RAY" = "1" ]; then
    ray_args=(ray start --head --disable-usage-stats)
    [ -n "$RAY_NUM_GPUS" ] && ray_args+=(--num-gpus "$RAY_NUM_GPUS")
    run "${ray_args[@]}"
    started_ray=1
  fi
  export RAY_ADDRESS=${RAY_ADDRESS:-auto}    # EasyR1's ray.init() joins this cluster
  sam_args=(getok serve-sam --address "$RAY_ADDRESS" --checkpoint "$(abspath "$SAM_CHECKPOINT")" --model-type "$SAM_MODEL_TYPE"
    --replicas "$SAM_REPLICAS" --gpus-per-replica "$SAM_GPUS_PER_REPLICA" --cpus-per-replica "$SAM_CPUS_PER_REPLICA"
    --cache-gb "$SAM_CACHE_GB" --max-batch-size "$SAM_MAX_BATCH" --name "$SAM_NAME")
  [ -n "$IMAGE_ROOT" ] && sam_args+=(--image-root "$(abspath "$IMAGE_ROOT")")
  run "${sam_args[@]}"
  started_sam=1
fi

ckpt=$(realpath -m "$OUT")/stage2         # absolute: Ray workers and the symlink below need it
args=(
  config="$REPO/easyr1_plugin/configs/easyr1/grpo.yaml"   # the fixed settings; the keys below win
  data.train_files="$(abspath "$TRAIN_DATA")"
  data.val_files="$val_files"
  data.format_prompt="$REPO/easyr1_plugin/format_prompt/getok_refine.jinja"
  data.max_prompt_length="$MAX_PROMPT"
  data.max_response_length="$MAX_RESPONSE"
  data.rollout_batch_size="$ROLLOUT_BATCH"
  data.val_batch_size="$VAL_BATCH"
  data.max_pixels="$MAX_PIXELS"
  data.min_pixels="$MIN_PIXELS"
  algorithm.kl_coef="$KL_COEF"
  algorithm.online_filtering="$ONLINE_FILTERING"
  worker.actor.model.model_path="$(abspath "$MODEL")"
  worker.actor.model.freeze_vision_tower="$FREEZE_VISION_TOWER"
  worker.actor.global_batch_size="$GLOBAL_BATCH"
  worker.actor.micro_batch_size_per_device_for_update="$MICRO_UPDATE"
  worker.actor.micro_batch_size_per_device_for_experience="$MICRO_EXPERIENCE"
  worker.actor.optim.lr="$LR"
  worker.actor.optim.weight_decay="$WEIGHT_DECAY"
  worker.rollout.n="$N_SAMPLES"
  worker.rollout.temperature="$TEMPERATURE"
  worker.rollout.tensor_parallel_size="$ROLLOUT_TP"
  worker.rollout.gpu_memory_utilization="$GPU_MEM_UTIL"
  worker.reward.reward_function="$REPO/easyr1_plugin/reward.py:refine_reward"
  worker.reward.num_cpus="$REWARD_CPUS"
)
for kv in "${reward_kwargs[@]}"; do args+=("worker.reward.reward_function_kwargs.$kv"); done
if [ "$LORA_RANK" != "0" ]; then
  args+=(worker.actor.model.lora.rank="$LORA_RANK" worker.actor.model.lora.alpha="$LORA_RANK"
    worker.actor.model.lora.exclude_modules="$LORA_EXCLUDE")   # vLLM gets only the language layers' LoRA
fi
args+=(
  trainer.project_name="$PROJECT"
  trainer.experiment_name="$EXPERIMENT"
  trainer.logger="$LOGGER"
  trainer.nnodes="$NNODES"
  trainer.n_gpus_per_node="$N_GPUS"
  trainer.total_epochs="$EPOCHS"
  trainer.val_freq="$VAL_FREQ"
  trainer.save_freq="$SAVE_FREQ"
  trainer.save_model_only="$SAVE_MODEL_ONLY"
  trainer.save_checkpoint_path="$ckpt"
)
[ -n "$MAX_STEPS" ] && args+=(trainer.max_steps="$MAX_STEPS")
run env GETOK_GRID_SIZE="$GETOK_GRID_SIZE" "$PYTHON" -m verl.trainer.main "${args[@]}"

# merge the last checkpoint into a Hugging Face folder; $ckpt/merged points at it
step=$(last_step "$ckpt")
run "$PYTHON" "$EASYR1_DIR/scripts/model_merger.py" --local_dir "$step/actor"
run ln -sfn "$step/actor/huggingface" "$ckpt/merged"
