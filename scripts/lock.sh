#!/usr/bin/env bash
# Regenerate requirements/NAME.txt (a full pip freeze) from requirements/NAME.in in a scratch venv.
#   bash scripts/lock.sh swift
set -euo pipefail
name=${1:?usage: scripts/lock.sh core|swift|verl}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet -r "$root/requirements/$name.in"
{ echo "# Pinned lock of requirements/$name.in (pip freeze of a working environment; regenerate with scripts/lock.sh)."
  "$tmp/venv/bin/pip" freeze --all | grep -vE '^(pip|getok)[= ]'; } > "$root/requirements/$name.txt"
echo "wrote requirements/$name.txt"
