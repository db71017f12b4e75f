# shellcheck shell=bash disable=SC2034  # (the variables are read by the recipes that source this file)
# Sourced by the recipes: what MODEL_FAMILY (qwen2_5_vl, the default; qwen3_vl; qwen2_vl) sets.
#   FAMILY_MODEL_TYPE  the GETok ms-swift model type and template (getok_$MODEL_FAMILY)
#   FAMILY_BASE        the hub id of the paper-size base model (Qwen2.5-VL-7B / Qwen3-VL-8B / Qwen2-VL-7B)
#   FAMILY_TAG         a name part for output folders and experiment names
#   FAMILY_FACTOR      pixels per merged vision token side: patch x merge = 28 (Qwen2/2.5-VL) or 32 (Qwen3-VL)
#   FAMILY_MIN_PIXELS  Qwen's default lower bound, 4 merged tokens (3136 or 4096)
#   FAMILY_MAX_PIXELS  1280 merged tokens (1003520 or 1310720)
# Every recipe still takes MODEL_TYPE, MODEL, MIN_PIXELS, MAX_PIXELS ... to override one value.
MODEL_FAMILY=${MODEL_FAMILY:-qwen2_5_vl}
case "$MODEL_FAMILY" in
  qwen2_5_vl) FAMILY_BASE=Qwen/Qwen2.5-VL-7B-Instruct FAMILY_TAG=qwen2.5-vl-7b FAMILY_FACTOR=28 ;;
  qwen3_vl) FAMILY_BASE=Qwen/Qwen3-VL-8B-Instruct FAMILY_TAG=qwen3-vl-8b FAMILY_FACTOR=32 ;;
  qwen2_vl) FAMILY_BASE=Qwen/Qwen2-VL-7B-Instruct FAMILY_TAG=qwen2-vl-7b FAMILY_FACTOR=28 ;;
  *) echo "MODEL_FAMILY=$MODEL_FAMILY: one of qwen2_5_vl, qwen3_vl, qwen2_vl" >&2; exit 2 ;;
esac
FAMILY_MODEL_TYPE=getok_$MODEL_FAMILY
FAMILY_MIN_PIXELS=$(( 4 * FAMILY_FACTOR * FAMILY_FACTOR ))
FAMILY_MAX_PIXELS=$(( 1280 * FAMILY_FACTOR * FAMILY_FACTOR ))
