#!/usr/bin/env bash
# GETok GRPO, both stages, with verl 0.9 through GETok's agent loop (easyr1_plugin/agent_loop.py,
# `getok_refine`), the paper's setup: Qwen2.5-VL-7B from the cold-start model, 8 GPUs, 16 prompts x 8
# sampled trajectories per step, a k3 KL loss to the reference model (verl's reference is
# actor_rollout_ref.model.path: the cold-start SFT model in stage 1, the stage-1 model in stage 2).
#   stage grid:   the agent loop generates turn 1 only and scores it with the grid reward
#   stage refine: turn 1 (grid proposal), the refinement request, turn 2 (offsets), scored with the
#                 refinement reward (ROUNDS > 1: more offset turns, SPEC §2); ~200 steps (the paper)
# Between and after the stages, the last checkpoint is merged into a Hugging Face folder
# (python -m verl.model_merger): $OUT/grid/merged (the stage-2 start), $OUT/refine/merged.
#
#   MODEL=output/getok-cold-start-qwen2.5-vl-7b/merged PREPARED=data/refcoco_train \
#   SAM_CHECKPOINT=/ckpt/sam_vit_h_4b8939.pth bash recipes/grpo_verl.sh
#   STAGES=refine MODEL=output/getok-grpo-verl/grid/merged bash recipes/grpo_verl.sh   # stage 2 only
#   DRY_RUN=1 bash recipes/grpo_verl.sh     # print the commands, one per line; writes only the YAMLs
#
# Data: `getok prepare` writes verl/SPLIT_refine.parquet (rows with agent_name=getok_refine; the
# same prompts as verl/SPLIT.parquet). The recipe writes the agent-loop YAML of each stage,
# $OUT/agent_loop_STAGE.yaml (stage, rounds, overlay and the reward kwargs from the variables
# below), and passes it as actor_rollout_ref.rollout.agent.agent_loop_config_path. The reward is
# `reward=getok` (GETok's Hydra config option, installed with the package: reward.custom_reward_function
# = easyr1_plugin/verl_reward.py:compute_score) with the same kwargs: it scores whatever the agent
# loop leaves unscored. Every key is explained in docs/training.md.
# Run it in the verl environment with GETok installed (`pip install -e .`) on every node.
#
# Mask reward and the SAM service (MASK_DECODER=ray, the default): verl computes rewards in Ray
# workers without a GPU, so SAM runs as a Ray Serve application on the same cluster
# (`getok serve-sam`, docs/sam_service.md), started before training and stopped on exit. Sizing:
# ~16 image encodings per step (one per prompt) and ~128 (grid) or ~256 (refine: proposal and
# refined) mask decodes; ViT-H encodes an image in ~0.1-0.5 s on a recent GPU, so 1 GPU
# (SAM_REPLICAS=2 x SAM_GPUS_PER_REPLICA=0.5) keeps up; 4 MiB per cached embedding (SAM_CACHE_GB=4:
# ~1000 images per replica), ~3 GB of GPU memory per vit_h replica besides. verl reserves WHOLE
# GPUs for its workers (placement-group bundles of {GPU: 1}), so the service's GPUs must lie outside
# the trainer's N_GPUS x NNODES: the default layout needs a 9th GPU or a second node. On one 8-GPU
# node use N_GPUS=4 (plus the service), or MASK_DECODER=region / sam (CPU) / none.
set -euo pipefail

# --- model, data, outputs
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
MODEL=${MODEL:-output/getok-cold-start-$FAMILY_TAG/merged}  # the first stage's start (recipes/cold_start_swift.sh)
PREPARED=${PREPARED:-data/refcoco_train}      # a `getok prepare` output folder
SPLIT=${SPLIT:-train}
VAL_SPLIT=${VAL_SPLIT:-val}
TRAIN_DATA=${TRAIN_DATA:-$PREPARED/verl/${SPLIT}_refine.parquet}
VAL_DATA=${VAL_DATA:-$PREPARED/verl/${VAL_SPLIT}_refine.parquet}
OUT=${OUT:-output/getok-grpo-verl}            # $OUT/agent_loop_STAGE.yaml, $OUT/STAGE/global_step_N, $OUT/STAGE/merged
STAGES=${STAGES:-grid refine}                 # the stages to run, in order
PYTHON=${PYTHON:-python3}                     # the Python of the verl environment
PROJECT=${PROJECT:-getok}
LOGGER=${LOGGER:-[console]}                   # e.g. [console,wandb]
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}

# --- the agent loop
ROUNDS=${ROUNDS:-1}                           # offset rounds in stage refine (the paper: 1)
OVERLAY=${OVERLAY:-false}                     # true: turn 2 also shows the proposal drawn on the image

# --- hardware
NNODES=${NNODES:-1}
N_GPUS=${N_GPUS:-8}                           # trainer GPUs per node
ROLLOUT_TP=${ROLLOUT_TP:-2}                   # vLLM tensor parallel size
GPU_MEM_UTIL=${GPU_MEM_UTIL:-0.6}             # vLLM's share of GPU memory
PARAM_OFFLOAD=${PARAM_OFFLOAD:-false}         # FSDP offload of the actor's parameters / optimizer to CPU
OPTIMIZER_OFFLOAD=${OPTIMIZER_OFFLOAD:-false}

# --- GRPO
TRAIN_BATCH=${TRAIN_BATCH:-16}                # prompts per step (the paper's batch of 16)
N_SAMPLES=${N_SAMPLES:-8}                     # trajectories per prompt (the paper: 8)
MINI_BATCH=${MINI_BATCH:-16}                  # prompts per actor update (= TRAIN_BATCH: on-policy)
MICRO_BATCH=${MICRO_BATCH:-2}                 # trajectories per GPU per forward/backward
LOGPROB_MICRO_BATCH=${LOGPROB_MICRO_BATCH:-4} # trajectories per GPU per log-prob forward
LR=${LR:-1e-6}                                # the paper's value was lost in extraction; verl's default
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}            # the paper: 0.01
KL_COEF=${KL_COEF:-0.01}                      # the paper's value was lost in extraction
TEMPERATURE=${TEMPERATURE:-1.0}
MAX_PROMPT=${MAX_PROMPT:-2048}                # tokens: the image (<= 1280 tokens at 1003520 pixels) + the question
GRID_RESPONSE=${GRID_RESPONSE:-1024}          # stage grid: turn 1
REFINE_RESPONSE=${REFINE_RESPONSE:-2048}      # stage refine: turn 1 + the request (+ overlay image) + turn 2, all rounds
EPOCHS=${EPOCHS:-1}
GRID_STEPS=${GRID_STEPS:-}                    # stage grid: empty = EPOCHS over the data
REFINE_STEPS=${REFINE_STEPS:-200}             # stage refine: the paper's ~200 steps
SAVE_FREQ=${SAVE_FREQ:-50}
TEST_FREQ=${TEST_FREQ:-50}
LORA_RANK=${LORA_RANK:-0}                     # 0: full fine-tuning; > 0: LoRA (alpha = 2 x rank)

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

if [ "$MASK_DECODER" = "ray" ]; then
  if [ "$START_RAY" = "1" ]; then
    ray_args=(ray start --head --disable-usage-stats)
    [ -n "$RAY_NUM_GPUS" ] && ray_args+=(--num-gpus "$RAY_NUM_GPUS")
    run "${ray_args[@]}"
    started_ray=1
  fi
  export RAY_ADDRESS=${RAY_ADDRESS:-auto}    # verl's ray.init() joins this cluster
  sam_args=(getok serve-sam --address "$RAY_ADDRESS" --checkpoint "$(abspath "$SAM_CHECKPOINT")" --model-type "$SAM_MODEL_TYPE"
    --replicas "$SAM_REPLICAS" --gpus-per-replica "$SAM_GPUS_PER_REPLICA" --cpus-per-replica "$SAM_CPUS_PER_REPLICA"
    --cache-gb "$SAM_CACHE_GB" --max-batch-size "$SAM_MAX_BATCH" --name "$SAM_NAME")
  [ -n "$IMAGE_ROOT" ] && sam_args+=(--image-root "$(abspath "$IMAGE_ROOT")")
  run "${sam_args[@]}"
  started_sam=1
fi

# the agent-loop YAML of a stage (written also in DRY_RUN)
write_agent_loop_yaml() {  # STAGE FILE
  mkdir -p "$(dirname "$2")"
  {
    echo "- name: getok_refine"
    echo "  _target_: easyr1_plugin.agent_loop.GetokRefineAgentLoop"
    echo "  stage: $1"
    echo "  rounds: $ROUNDS"
    echo "  overlay: $OVERLAY"
    echo "  reward_kwargs:"
    local kv
    for kv in "${reward_kwargs[@]}"; do echo "    ${kv%%=*}: ${kv#*=}"; done
  } > "$2"
}

out=$(realpath -m "$OUT")
model=$(abspath "$MODEL")
for stage in $STAGES; do
  case "$stage" in
    grid) response=$GRID_RESPONSE; steps=$GRID_STEPS ;;
    refine) response=$REFINE_RESPONSE; steps=$REFINE_STEPS ;;
    *) echo "STAGES: unknown stage $stage (grid, refine)" >&2; exit 2 ;;
  esac
  yaml=$out/agent_loop_$stage.yaml
  write_agent_loop_yaml "$stage" "$yaml"
  args=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=false
    data.train_files="$(abspath "$TRAIN_DATA")"
    data.val_files="$(abspath "$VAL_DATA")"
    data.train_batch_size="$TRAIN_BATCH"
    data.max_prompt_length="$MAX_PROMPT"
    data.max_response_length="$response"
    data.filter_overlong_prompts=true
    data.truncation=error
    data.image_key=images
    data.return_raw_chat=true
    actor_rollout_ref.model.path="$model"
    actor_rollout_ref.model.use_remove_padding=true
    actor_rollout_ref.model.enable_gradient_checkpointing=true
    actor_rollout_ref.actor.optim.lr="$LR"
    actor_rollout_ref.actor.optim.weight_decay="$WEIGHT_DECAY"
    actor_rollout_ref.actor.ppo_mini_batch_size="$MINI_BATCH"
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$MICRO_BATCH"
    actor_rollout_ref.actor.use_kl_loss=true
    actor_rollout_ref.actor.kl_loss_coef="$KL_COEF"
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.fsdp_config.param_offload="$PARAM_OFFLOAD"
    actor_rollout_ref.actor.fsdp_config.optimizer_offload="$OPTIMIZER_OFFLOAD"
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.mode=async
    actor_rollout_ref.rollout.n="$N_SAMPLES"
    actor_rollout_ref.rollout.temperature="$TEMPERATURE"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEM_UTIL"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$LOGPROB_MICRO_BATCH"
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$yaml"
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$LOGPROB_MICRO_BATCH"
    actor_rollout_ref.ref.fsdp_config.param_offload=true
    reward=getok                              # GETok's Hydra option: easyr1_plugin/verl_reward.py:compute_score
    reward.custom_reward_function.reward_kwargs.stage="$stage"
  )
  # ++: set or add (reward=getok defines grid_size and decoder; the decoder's own arguments are new keys)
  for kv in "${reward_kwargs[@]}"; do args+=("++reward.custom_reward_function.reward_kwargs.$kv"); done
  if [ "$LORA_RANK" != "0" ]; then
    args+=(actor_rollout_ref.model.lora_rank="$LORA_RANK" actor_rollout_ref.model.lora_alpha="$((2 * LORA_RANK))")
  fi
  args+=(
    trainer.project_name="$PROJECT"
    trainer.experiment_name="${FAMILY_TAG//[.-]/_}_${stage}_grpo"
    trainer.logger="$LOGGER"
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$N_GPUS"
    trainer.critic_warmup=0
    trainer.total_epochs="$EPOCHS"
    trainer.save_freq="$SAVE_FREQ"
    trainer.test_freq="$TEST_FREQ"
    trainer.val_before_train=false
    trainer.default_local_dir="$out/$stage"
  )
  [ -n "$steps" ] && args+=(trainer.total_training_steps="$steps")
  run env GETOK_GRID_SIZE="$GETOK_GRID_SIZE" "$PYTHON" -m verl.trainer.main_ppo "${args[@]}"

  # merge the last checkpoint: the next stage's start
  step=$(last_step "$out/$stage")
  run "$PYTHON" -m verl.model_merger merge --backend fsdp --local_dir "$step/actor" --target_dir "$out/$stage/merged"
  model=$out/$stage/merged
done
[ "$DRY_RUN" = "1" ] || echo "grpo_verl: done. Final model: $model"
