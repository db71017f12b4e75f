#!/usr/bin/env bash
# GETok GRPO stage 1 (grid tokens) with EasyR1, the paper's setup: Qwen2.5-VL-7B from the cold-start
# model, 8 GPUs, 16 prompts x 8 sampled answers per step, a KL penalty (k3, as a loss) to the
# starting policy (the cold-start SFT model: EasyR1's reference model is worker.actor.model.model_path),
# weight decay 0.01. Reward: easyr1_plugin/reward.py:grid_reward (format, nonrepeat, box, mask,
# points; docs/rewards.md). Then the last checkpoint is merged into a Hugging Face folder, linked as
# $OUT/stage1/merged: the input of recipes/grpo_stage2_easyr1.sh.
#
#   EASYR1_DIR=~/EasyR1 MODEL=output/getok-cold-start-qwen2.5-vl-7b/merged PREPARED=data/refcoco_train \
#   SAM_CHECKPOINT=/ckpt/sam_vit_h_4b8939.pth bash recipes/grpo_stage1_easyr1.sh
#   DRY_RUN=1 bash recipes/grpo_stage1_easyr1.sh     # print the commands, one per line, run nothing
#
# EasyR1 is not on PyPI: clone it (hiyouga/EasyR1), install it in its own environment (it needs
# transformers < 5, so not the ms-swift one), `pip install -e /path/to/GETok` there, and run this
# recipe in that environment. Every key passed to EasyR1 is explained in docs/training.md.
#
# Mask reward and the SAM service (MASK_DECODER=ray, the default). EasyR1 computes rewards in a
# Ray actor without a GPU, so SAM runs as a Ray Serve application on the same Ray cluster
# (`getok serve-sam`, docs/sam_service.md): SAM_REPLICAS replicas of SAM_GPUS_PER_REPLICA GPU each,
# every one with an image-embedding cache of SAM_CACHE_GB; requests of one image go to the same
# replica. The recipe starts a Ray head (START_RAY=1; START_RAY=0 uses the running cluster that
# RAY_ADDRESS names, e.g. a multi-node one), starts the service, trains, and stops both on exit.
# Sizing: one GRPO step asks for ~16 image encodings (one per prompt: the 8 answers of a prompt share
# the image) and ~128 mask decodes. ViT-H encodes an image in ~0.1-0.5 s on a recent GPU and decodes
# a prompt in ms, so 1 GPU (2 replicas x 0.5) keeps up; an embedding is 4 MiB (fp32 256x64x64), so
# 4 GB of cache per replica holds ~1000 images, and with the same-image routing every image of a
# 9K-prompt dataset is encoded once per epoch per replica at most. vit_h needs ~3 GB of GPU memory per
# replica besides its cache. Ray reserves WHOLE GPUs for the trainer (one {GPU: 1} bundle per
# training process), so the service's SAM_REPLICAS x SAM_GPUS_PER_REPLICA GPUs must be GPUs the
# trainer does not take: the default layout (N_GPUS=8 trainer GPUs + 1 for SAM) needs a 9th GPU or a
# second node in the cluster. On one 8-GPU node use N_GPUS=4 (plus SAM, with ROLLOUT_BATCH and
# GLOBAL_BATCH multiples of 4), or MASK_DECODER=region (no weights, CPU), MASK_DECODER=sam (SAM on the
# reward actor's CPU: tens of seconds per new image), or MASK_DECODER=none (no mask component).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- model, data, outputs
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
MODEL=${MODEL:-output/getok-cold-start-$FAMILY_TAG/merged}  # merged cold-start model (recipes/cold_start_swift.sh)
PREPARED=${PREPARED:-data/refcoco_train}      # a `getok prepare` output folder
SPLIT=${SPLIT:-train}
VAL_SPLIT=${VAL_SPLIT-val}                    # empty: no held-out validation (periodic validation off; docs/training.md)
TRAIN_DATA=${TRAIN_DATA:-$PREPARED/easyr1/$SPLIT.jsonl}
VAL_DATA=${VAL_DATA:-$PREPARED/easyr1/$VAL_SPLIT.jsonl}   # `getok prepare` without --split writes every split
OUT=${OUT:-output/getok-grpo-easyr1}          # checkpoints in $OUT/stage1/global_step_N, merged model $OUT/stage1/merged
EASYR1_DIR=${EASYR1_DIR:-EasyR1}              # the EasyR1 clone (for scripts/model_merger.py)
PYTHON=${PYTHON:-python3}                     # the Python of the EasyR1 environment
PROJECT=${PROJECT:-getok}
EXPERIMENT=${EXPERIMENT:-${FAMILY_TAG//[.-]/_}_grid_grpo}
LOGGER=${LOGGER:-[console]}                   # e.g. [console,wandb]
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}

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
MAX_PROMPT=${MAX_PROMPT:-2048}                # tokens: up to 1280 image tokens at MAX_PIXELS + the question
MAX_RESPONSE=${MAX_RESPONSE:-1024}            # <think> + the grid answer
MAX_PIXELS=${MAX_PIXELS:-$FAMILY_MAX_PIXELS}  # as in SFT (1280 merged tokens: 1280 x 28 x 28, Qwen3-VL 1280 x 32 x 32)
MIN_PIXELS=${MIN_PIXELS:-$FAMILY_MIN_PIXELS}  # as in SFT (Qwen's default: 3136, Qwen3-VL 4096); EasyR1's own default upscales to 512x512
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:-}                      # empty: EPOCHS over the data
SAVE_FREQ=${SAVE_FREQ:-50}
VAL_FREQ=${VAL_FREQ:-50}
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

# the rows EasyR1 reads; validation: VAL_DATA, or with VAL_SPLIT= the first VAL_BATCH training rows
# (EasyR1 always builds a non-empty validation set and validates once after training; `FILE@train[:N]`
# is a slice of FILE)
for f in "$TRAIN_DATA" ${VAL_SPLIT:+"$VAL_DATA"}; do
  [ "$DRY_RUN" = "1" ] || [ -s "$f" ] || {
    echo "grpo_stage1_easyr1: $f missing (getok prepare without --split writes every split; VAL_SPLIT= trains without one)" >&2
    exit 2; }
done
val_files=$(abspath "$VAL_DATA")
if [ -z "$VAL_SPLIT" ]; then
  val_files="$(abspath "$TRAIN_DATA")@train[:$VAL_BATCH]"
  VAL_FREQ=-1
fi

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
  export RAY_ADDRESS=${RAY_ADDRESS:-auto}    # EasyR1's ray.init() joins this cluster
  sam_args=(getok serve-sam --address "$RAY_ADDRESS" --checkpoint "$(abspath "$SAM_CHECKPOINT")" --model-type "$SAM_MODEL_TYPE"
    --replicas "$SAM_REPLICAS" --gpus-per-replica "$SAM_GPUS_PER_REPLICA" --cpus-per-replica "$SAM_CPUS_PER_REPLICA"
    --cache-gb "$SAM_CACHE_GB" --max-batch-size "$SAM_MAX_BATCH" --name "$SAM_NAME")
  [ -n "$IMAGE_ROOT" ] && sam_args+=(--image-root "$(abspath "$IMAGE_ROOT")")
  run "${sam_args[@]}"
  started_sam=1
fi

ckpt=$(realpath -m "$OUT")/stage1         # absolute: Ray workers and the symlink below need it
args=(
  config="$REPO/easyr1_plugin/configs/easyr1/grpo.yaml"   # the fixed settings; the keys below win
  data.train_files="$(abspath "$TRAIN_DATA")"
  data.val_files="$val_files"
  data.format_prompt="$REPO/easyr1_plugin/format_prompt/getok_grid.jinja"
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
  worker.reward.reward_function="$REPO/easyr1_plugin/reward.py:grid_reward"
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
