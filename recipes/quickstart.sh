#!/usr/bin/env bash
# GETok quickstart on CPU: builds (or reuses) a small pinned environment with getok_core, then runs
# the bundled example end to end (geometry -> tokens -> geometry, parsing model outputs, a
# refinement turn) and writes the vocabulary file for ms-swift's --new_special_tokens.
#
#   bash recipes/quickstart.sh                 # outputs in ./out/quickstart
#   GETOK_OUT=/tmp/q bash recipes/quickstart.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${GETOK_OUT:-$root/out/quickstart}
grid=${GETOK_GRID_SIZE:-32}
source "$root/scripts/env.sh"
venv=$(getok_env core)
mkdir -p "$out"

"$venv/bin/getok" demo --grid-size "$grid"
"$venv/bin/getok" vocab --grid-size "$grid" --out "$out/getok_tokens.txt"
"$venv/bin/getok" encode --image-size 640,480 --box 120,80,400,360 --seg 260,220 300,150 > "$out/answer.txt"
"$venv/bin/getok" decode - --image-size 640,480 < "$out/answer.txt" > "$out/decoded.json"
echo
echo "quickstart: wrote $out/getok_tokens.txt ($(wc -l < "$out/getok_tokens.txt") tokens),"
echo "            $out/answer.txt: $(cat "$out/answer.txt")"
echo "            $out/decoded.json"
