#!/usr/bin/env bash
# Regenerate requirements/NAME.txt (a full pip freeze) from requirements/NAME.in in a scratch venv.
#   bash scripts/lock.sh swift
set -euo pipefail
name=${1:?usage: scripts/lock.sh core|swift|verl|easyr1|vllm}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"  # getok_pip_install: lines tagged "# getok-no-build-isolation" last
python3 -m venv "$tmp/venv"
getok_pip_install "$tmp/venv/bin/pip" "$root/requirements/$name.in"
# the tagged packages keep their tag (and its VAR=value settings) in the lock
tags=$(grep -- "# getok-no-build-isolation" "$root/requirements/$name.in" \
       | sed -E 's/^([A-Za-z0-9._-]+).*(# getok-no-build-isolation( [A-Z_][A-Z0-9_]*=[^ ]*)*).*/\1 \2/' || true)
opts=$(sed -n 's/^# getok-lock-pip-options: *//p' "$root/requirements/$name.in" | head -1)
{ echo "# Pinned lock of requirements/$name.in (pip freeze of a working environment; regenerate with scripts/lock.sh)."
  [ -n "$opts" ] && echo "# getok-pip-options: $opts"
  "$tmp/venv/bin/pip" freeze --all | grep -vE '^(pip|getok)[= ]' | awk -v tags="$tags" '
    BEGIN { n = split(tags, rows, "\n"); for (i = 1; i <= n; i++) { split(rows[i], f, " "); if (f[1] != "") {
            t = rows[i]; sub(/^[^ ]+ /, "", t); tag[tolower(f[1])] = t } } }
    { name = tolower($0); sub(/ *(==|@).*/, "", name); print (name in tag) ? $0 "  " tag[name] : $0 }'
} > "$root/requirements/$name.txt"
echo "wrote requirements/$name.txt"
