#!/usr/bin/env bash
# GETok quickstart on CPU, end to end on the embedded default: builds (or reuses) the pinned swift
# environment, then
#   1. draws the bundled sample dataset and prepares it (region proposals: no SAM weights needed),
#   2. builds a tiny random Qwen2.5-VL with the real Qwen2.5 tokenizer (MODEL_FAMILY=qwen3_vl: a tiny
#      Qwen3-VL with the Qwen3-VL tokenizer; qwen2_vl: Qwen2-VL),
#   3. fine-tunes it with ms-swift and the GETok plugin for a few steps (swift sft, getok_lora),
#   4. answers the validation split with the adapter (swift infer --adapters),
#   5. scores the answers (getok eval: metrics table, metrics.json, overlays, index.html),
#   6. merges the adapter (swift export) and answers the same prompts again under the GETok grammar
#      (getok predict --constrained: every answer valid by construction), scored the same way.
# The tiny model is random: the point is the pipeline, not the scores. CONSTRAINED=0 skips step 6.
#
#   bash recipes/quickstart.sh                   # outputs in ./out/quickstart
#   GETOK_OUT=/tmp/q STEPS=20 bash recipes/quickstart.sh
#   MODEL_FAMILY=qwen3_vl bash recipes/quickstart.sh   # the same pipeline on Qwen3-VL's layout
#
# Knobs (environment): GETOK_OUT (the output folder), MODEL_FAMILY (qwen2_5_vl, qwen3_vl, qwen2_vl;
# the model type getok_$MODEL_FAMILY), STEPS (swift sft steps, default 30),
# MAX_NEW_TOKENS (swift infer answer length, default 48), GETOK_GRID_SIZE (32), GETOK_SWIFT_VENV (an
# environment holding ms-swift and this checkout, used as it is; default: build or reuse the pinned
# one). Rerunnable into the same folder: the data is resumed (same bytes), the tiny model reused, and
# every step that would append to or mix with the previous run's files (swift sft's versioned
# output_dir, swift infer --result_path, the report's overlays) starts from an empty file or folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${GETOK_OUT:-$root/out/quickstart}" && cd "${GETOK_OUT:-$root/out/quickstart}" && pwd)
steps=${STEPS:-30}                # swift sft steps
new_tokens=${MAX_NEW_TOKENS:-48}  # swift infer answer length
constrained=${CONSTRAINED:-1}     # step 6: the constrained answers
source "$root/recipes/model_family.sh"  # MODEL_FAMILY -> FAMILY_MODEL_TYPE (getok_qwen2_5_vl by default)
export GETOK_GRID_SIZE=${GETOK_GRID_SIZE:-32}
# offline: nothing is downloaded at run time
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 USE_HF=1 TOKENIZERS_PARALLELISM=false
export MODELSCOPE_CACHE="$out/.modelscope" GETOK_CACHE="$out/.getok-cache"

source "$root/scripts/env.sh"
venv=${GETOK_SWIFT_VENV:-$(getok_env swift)}
export PATH="$venv/bin:$PATH"
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

step "the vocabulary"
getok vocab --grid-size "$GETOK_GRID_SIZE" --out "$out/getok_tokens.txt"
getok encode --image-size 640,480 --box 120,80,400,360 --seg 260,220 300,150

step "sample dataset + getok prepare (region proposals)"
getok prepare --dataset sample --out "$out/data" --formats swift,easyr1 --workers 2 --no-progress

step "tiny $MODEL_FAMILY"
tiny=$out/tiny                    # reused when it is of this family, rebuilt otherwise
grep -qs "\"family\": \"$MODEL_FAMILY\"" "$tiny/getok_tiny_model.json" \
  || { rm -rf "$tiny"; getok tiny-model --family "$MODEL_FAMILY" --out "$tiny"; }

step "swift sft ($steps steps, getok_lora, CPU)"
rm -rf "$out/sft"
swift sft --custom_register_path "$root/swift_plugin/register.py" \
  --model "$tiny" --model_type "$FAMILY_MODEL_TYPE" --template "$FAMILY_MODEL_TYPE" --tuner_type getok_lora \
  --dataset "$out/data/swift/train.jsonl" "$out/data/swift/train_refine.jsonl" \
  --max_steps "$steps" --per_device_train_batch_size 2 --gradient_accumulation_steps 1 \
  --learning_rate 5e-3 --lr_scheduler_type constant --warmup_ratio 0 --torch_dtype float32 \
  --gradient_checkpointing false --save_only_model true --save_steps "$steps" --logging_steps 5 \
  --dataloader_num_workers 0 --dataset_num_proc 1 --split_dataset_ratio 0 --report_to none \
  --output_dir "$out/sft" > "$out/sft.log" 2>&1 || { tail -40 "$out/sft.log"; exit 1; }
grep -E "'loss'|train_runtime" "$out/sft.log" | tail -3 || true
ckpt=$(find "$out/sft" -mindepth 2 -maxdepth 2 -type d -path "*/v*/checkpoint-*" | sort -V | tail -1)

step "swift infer --adapters $ckpt (validation split)"
rm -f "$out/infer.jsonl"          # --result_path appends: a rerun would hold every answer twice
swift infer --adapters "$ckpt" --val_dataset "$out/data/swift/val.jsonl" --max_new_tokens "$new_tokens" \
  --temperature 0 --max_batch_size 8 --result_path "$out/infer.jsonl" > "$out/infer.log" 2>&1 \
  || { tail -40 "$out/infer.log"; exit 1; }
echo "$(wc -l < "$out/infer.jsonl") answers in $out/infer.jsonl; first: $(head -c 300 "$out/infer.jsonl")"

step "getok eval (region decoder)"
rm -rf "$out/report"              # no overlay of an earlier run is kept
getok eval --pred "$out/infer.jsonl" --data "$out/data" --split val --out "$out/report" --decoder region

validity() {  # METRICS_JSON -> format validity over every task (metrics.json holds it per task)
  python3 -c 'import json, sys
m = {k: v for k, v in json.load(open(sys.argv[1])).items() if not k.startswith("_") and v.get("format_validity") is not None}
print(round(sum(v["n"] * v["format_validity"] for v in m.values()) / max(1, sum(v["n"] for v in m.values())), 3))' "$1"
}
if [ "$constrained" = "1" ]; then
  step "the same prompts under the GETok grammar (swift export --merge_lora, getok predict --constrained)"
  rm -rf "$out/merged" "$out/constrained" "$out/report_constrained"
  swift export --adapters "$ckpt" --merge_lora true --output_dir "$out/merged" > "$out/export.log" 2>&1 \
    || { tail -40 "$out/export.log"; exit 1; }
  getok predict --model "$out/merged" --input "$out/data/easyr1/val.jsonl" --constrained --max-instances 2 \
    --max-points 8 --decoder region --out "$out/constrained" --no-progress
  getok eval --pred "$out/constrained/predictions.jsonl" --data "$out/data" --split val \
    --out "$out/report_constrained" --decoder region
  echo "format validity: $(validity "$out/report/metrics.json") unconstrained (swift infer)," \
       "$(validity "$out/report_constrained/metrics.json") with the grammar on (getok predict --constrained)"
fi

echo
echo "quickstart: done in $(( $(date +%s) - t0 )) s. Metrics: $out/report/metrics.json"
echo "            report: $out/report/index.html   (overlays: $out/report/overlays/)"
[ "$constrained" = "1" ] && echo "            with the grammar on: $out/report_constrained/index.html"
true
