#!/usr/bin/env bash
# GETok evaluation: answer the prepared evaluation split(s) with `swift infer` (vLLM by default),
# then score the answers with `getok eval` (gIoU / cIoU, N-acc / T-acc on gRefCOCO, Acc@0.5 / 0.8,
# point accuracy, polyline F1; SPEC §7): a metrics table, metrics.json, per_sample.jsonl and an HTML
# page of overlays per split, under $OUT/SPLIT/. One turn: the model's grid answer (the refinement
# turn is trained, and scored by the GRPO rewards, but not used here). With BENCHMARK set (refcoco,
# refcoco+, refcocog, reasonseg, grefcoco: the paper benchmark PREPARED holds), also the paper's
# tables, this run next to the published numbers: $OUT/tables/tables.{md,json} (docs/evaluation.md).
#
#   MODEL=output/getok-grpo-easyr1/stage2/merged PREPARED=data/refcoco_val SPLITS="val testA testB" \
#   SAM_CHECKPOINT=/ckpt/sam_vit_h_4b8939.pth bash recipes/eval.sh
#   ADAPTERS=output/getok-sft-qwen2.5-vl-7b/v0-.../checkpoint-N bash recipes/eval.sh   # an unmerged swift adapter
#   BENCHMARK=refcoco PREPARED=data/refcoco SPLITS="val testA testB" bash recipes/eval.sh   # + paper tables
#   CONSTRAINED=1 bash recipes/eval.sh # answers under the GETok grammar (vLLM: --structured_outputs_regex)
#   DRY_RUN=1 bash recipes/eval.sh     # print the commands, one per line, run nothing
#
# Any merged model folder works: recipes/cold_start_swift.sh's $OUT/merged, the EasyR1 / verl / swift
# GRPO recipes' .../merged. Masks are decoded by SAM in-process (DECODER=sam on DEVICE), as the paper
# evaluates; DECODER=region needs no weights (a pipeline check, not the paper's numbers).
# Rerunnable into the same OUT: each split's infer.jsonl (swift infer --result_path appends) and
# report/ are removed before they are written again.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

# --- model, data, outputs
MODEL=${MODEL:-output/getok-grpo-easyr1/stage2/merged}  # a merged model folder ...
ADAPTERS=${ADAPTERS:-}                        # ... or a swift adapter checkpoint (its base model comes from args.json)
PREPARED=${PREPARED:-data/refcoco_val}        # a `getok prepare` output folder holding the splits below
SPLITS=${SPLITS:-val}                         # space-separated, e.g. "val testA testB"
OUT=${OUT:-output/getok-eval}                 # $OUT/SPLIT/{infer.jsonl,report/}
source "$REPO/recipes/model_family.sh"        # MODEL_FAMILY: qwen2_5_vl (default), qwen3_vl, qwen2_vl
MODEL_TYPE=${MODEL_TYPE:-$FAMILY_MODEL_TYPE}
TEMPLATE=${TEMPLATE:-$MODEL_TYPE}
SWIFT=${SWIFT:-swift}
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}  # the value the model was trained with
export GETOK_IMAGE_SIZE=${GETOK_IMAGE_SIZE:-}
export MAX_PIXELS=${MAX_PIXELS:-$FAMILY_MAX_PIXELS}  # 1280 visual tokens of the family

# --- inference
INFER_BACKEND=${INFER_BACKEND:-vllm}          # vllm | transformers
NPROC=${NPROC:-1}                             # data-parallel processes (transformers backend)
VLLM_TP=${VLLM_TP:-1}
VLLM_GPU_MEM=${VLLM_GPU_MEM:-0.9}
VLLM_MAX_LEN=${VLLM_MAX_LEN:-4096}
MAX_BATCH=${MAX_BATCH:-64}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-1024}        # <think> + the answer
TEMPERATURE=${TEMPERATURE:-0}                 # greedy
CONSTRAINED=${CONSTRAINED:-0}                 # 1: decode under `getok grammar` (docs/grammar.md); a constrained
CONSTRAIN_TASK=${CONSTRAIN_TASK:-any}         #   score is not the unconstrained model's: say so when reporting
CONSTRAIN_MAX_INSTANCES=${CONSTRAIN_MAX_INSTANCES:-8}
CONSTRAIN_MAX_POINTS=${CONSTRAIN_MAX_POINTS:-32}
CONSTRAIN_THINK=${CONSTRAIN_THINK:-0}         # 1: the grammar starts with a <think>...</think> block

# --- scoring
DECODER=${DECODER:-sam}                       # sam | sam2 | region | none
SAM_CHECKPOINT=${SAM_CHECKPOINT:-checkpoints/sam_vit_h_4b8939.pth}
SAM_MODEL_TYPE=${SAM_MODEL_TYPE:-vit_h}
DEVICE=${DEVICE:-cuda:0}
MODE=${MODE:-joint}                           # joint: one SAM prompt per instance; union: OR of per-point masks
GIOU_EMPTY=${GIOU_EMPTY:-one}                 # gIoU of empty on empty: one (LISA / ReLA) | zero (Seg-Zero)
COUNTING=${COUNTING:-per-expression}          # per-expression | per-instance (docs/evaluation.md)
BENCHMARK=${BENCHMARK:-}                      # the paper benchmark of PREPARED: set it for $OUT/tables

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

regex=
if [ "$CONSTRAINED" = "1" ]; then
  if [ "$INFER_BACKEND" != "vllm" ]; then
    echo "eval.sh: CONSTRAINED=1 needs INFER_BACKEND=vllm (ms-swift's transformers engine takes no grammar;" \
         "getok predict --model DIR --constrained decodes under it with transformers: docs/grammar.md)" >&2
    exit 2
  fi
  gargs=(--grid-size "$GETOK_GRID_SIZE" --task "$CONSTRAIN_TASK" --max-instances "$CONSTRAIN_MAX_INSTANCES"
    --max-points "$CONSTRAIN_MAX_POINTS")
  [ "$CONSTRAIN_THINK" = "1" ] && gargs+=(--think)
  regex=$(getok grammar "${gargs[@]}")
  if [ "$CONSTRAIN_THINK" != "1" ]; then
    longest=$(getok grammar "${gargs[@]}" --max-chars)
    if [ "$MAX_NEW_TOKENS" -le "$longest" ]; then
      echo "eval.sh: note: the grammar admits answers of up to $longest characters; MAX_NEW_TOKENS=$MAX_NEW_TOKENS" \
           "can cut one the model spells from BPE pieces (a GETok-trained model writes a cell as one token);" \
           "a cut answer scores as invalid. MAX_NEW_TOKENS=$((longest + 1)) rules it out." >&2
    fi
  fi
fi

reports=()
for split in $SPLITS; do
  out=$OUT/$split
  [ "$DRY_RUN" = "1" ] || mkdir -p "$out"
  args=(--custom_register_path "$REPO/swift_plugin/register.py")
  if [ -n "$ADAPTERS" ]; then
    args+=(--adapters "$ADAPTERS")
  else
    args+=(--model "$MODEL" --model_type "$MODEL_TYPE" --template "$TEMPLATE")
  fi
  args+=(
    --val_dataset "$PREPARED/swift/$split.jsonl"
    --infer_backend "$INFER_BACKEND" --max_batch_size "$MAX_BATCH"
    --max_new_tokens "$MAX_NEW_TOKENS" --temperature "$TEMPERATURE"
    --result_path "$out/infer.jsonl"
  )
  if [ "$INFER_BACKEND" = "vllm" ]; then
    args+=(--vllm_tensor_parallel_size "$VLLM_TP" --vllm_gpu_memory_utilization "$VLLM_GPU_MEM"
      --vllm_max_model_len "$VLLM_MAX_LEN")
    [ -n "$regex" ] && args+=(--structured_outputs_regex "$regex")
  fi
  envs=(GETOK_GRID_SIZE="$GETOK_GRID_SIZE" GETOK_IMAGE_SIZE="$GETOK_IMAGE_SIZE" MAX_PIXELS="$MAX_PIXELS")
  [ "$NPROC" -gt 1 ] && envs=(NPROC_PER_NODE="$NPROC" "${envs[@]}")   # torchrun, one process per GPU
  run rm -f "${out:?}/infer.jsonl"          # --result_path appends: a rerun would hold every answer twice
  run env "${envs[@]}" "$SWIFT" infer "${args[@]}"

  eval_args=(getok eval --pred "$out/infer.jsonl" --data "$PREPARED" --split "$split" --out "$out/report"
    --grid-size "$GETOK_GRID_SIZE" --decoder "$DECODER" --mode "$MODE" --giou-empty "$GIOU_EMPTY"
    --counting "$COUNTING")
  [ -n "$BENCHMARK" ] && eval_args+=(--benchmark "$BENCHMARK")
  case "$DECODER" in
    sam|sam2) eval_args+=(--sam-checkpoint "$SAM_CHECKPOINT" --sam-model "$SAM_MODEL_TYPE" --device "$DEVICE") ;;
  esac
  run rm -rf "${out:?}/report"              # no overlay of an earlier run is kept
  run "${eval_args[@]}"
  reports+=("$out/report")
done
if [ -n "$BENCHMARK" ]; then                # the paper's tables from the reports above
  run rm -rf "${OUT:?}/tables"
  run getok eval --tables "${reports[@]}" --out "$OUT/tables"
fi
[ "$DRY_RUN" = "1" ] || echo "eval: done. Reports: $OUT/*/report/index.html"
