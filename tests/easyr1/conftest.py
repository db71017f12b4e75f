"""Fixtures of the EasyR1 tests: EasyR1's own code, imported from its source, driving the GETok
plugin (easyr1_plugin/) with the tiny random Qwen2.5-VL's tokenizer and processor.

EasyR1 is not on the package index. Its source is found at ``$EASYR1_SRC`` (default
``../shared/thirdparty/EasyR1`` beside this checkout; a user points it at their clone). Without it
these tests skip with that reason, except in CI (``CI=true``), where a missing source fails them.
EasyR1's package is named ``verl``: it must never share a process with verl 0.9.1, so these tests run
in their own environment (requirements/easyr1.txt: transformers 4, omegaconf 2.3) and refuse to run
where another ``verl`` is importable.

One module of EasyR1 is bypassed, and only one: ``verl/workers/rollout/__init__.py``. It re-exports
``RolloutConfig`` from ``config.py`` and ``vLLMRollout`` from ``vllm_rollout_spmd.py``, which imports
vllm (GPU-only, not installed here). ``verl.workers.config`` (hence ``PPOConfig``) imports the
package for ``RolloutConfig`` alone. ``import_easyr1`` registers ``verl.workers.rollout`` as a package
with the snapshot's real ``__path__`` but without running that ``__init__``, imports the real
``verl/workers/rollout/config.py`` and sets ``RolloutConfig`` on it; every other module is EasyR1's
own, unchanged. ``test_easyr1_bypass_is_only_the_vllm_import`` checks that the ``__init__`` still
imports nothing else (a new re-export would otherwise be missed).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SRC = REPO.parent / "shared" / "thirdparty" / "EasyR1"
#: The one bypassed module (see the module docstring) and the names its __init__ exports.
BYPASSED = "verl.workers.rollout"
BYPASSED_EXPORTS = {"RolloutConfig": "verl.workers.rollout.config", "vLLMRollout": "verl.workers.rollout.vllm_rollout_spmd"}

#: No network: Hugging Face / datasets offline.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def easyr1_src() -> Path:
    """The EasyR1 source folder: ``$EASYR1_SRC`` or the default beside the checkout."""
    return Path(os.environ.get("EASYR1_SRC") or DEFAULT_SRC).resolve()


def import_easyr1(src: Path) -> types.SimpleNamespace:
    """EasyR1's modules from ``src`` (its ``verl`` package), with the vllm import bypassed."""
    found = importlib.util.find_spec("verl") if "verl" not in sys.modules else sys.modules["verl"].__spec__
    # (a namespace package, origin None, is tests/verl seen from tests/ on sys.path: not a verl)
    if found is not None and found.origin is not None and not found.origin.startswith(str(src)):
        pytest.skip(f"another `verl` is importable here ({found.origin}): EasyR1's package is also named verl; "
                    "run tests/easyr1 in the easyr1 environment (GETOK_ENVS=easyr1 bash scripts/test.sh)")
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import verl.workers  # noqa: F401  (EasyR1's verl/__init__.py and verl/workers/__init__.py, as they are)

    if BYPASSED not in sys.modules:
        # the package, as the import system would make it, minus running its __init__.py
        spec = importlib.machinery.ModuleSpec(BYPASSED, None, is_package=True)
        spec.submodule_search_locations = [str(src / "verl" / "workers" / "rollout")]
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[BYPASSED] = pkg
        sys.modules["verl.workers"].rollout = pkg
        pkg.RolloutConfig = importlib.import_module(BYPASSED_EXPORTS["RolloutConfig"]).RolloutConfig
    from verl.protocol import DataProto
    from verl.trainer import config as trainer_config
    from verl.utils import dataset
    from verl.workers import reward

    for mod in (trainer_config, dataset, reward, sys.modules["verl.protocol"]):
        assert str(mod.__file__).startswith(str(src)), f"{mod.__name__} imported from {mod.__file__}, not {src}"
    return types.SimpleNamespace(src=src, DataProto=DataProto, config=trainer_config, dataset=dataset, reward=reward)


@pytest.fixture(scope="session")
def easyr1() -> types.SimpleNamespace:
    """EasyR1's modules (``DataProto``, ``verl.trainer.config``, ``verl.utils.dataset``,
    ``verl.workers.reward``) from ``$EASYR1_SRC``; skips (fails in CI) when the source is missing."""
    src = easyr1_src()
    if not (src / "verl" / "trainer" / "main.py").is_file():
        why = (f"EasyR1's source not found at {src} (set EASYR1_SRC to an EasyR1 clone; default "
               f"{DEFAULT_SRC})")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI: {why}", pytrace=False)
        pytest.skip(why)
    return import_easyr1(src)


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """A session folder, and the offline environment (restored afterwards)."""
    root = tmp_path_factory.mktemp("getok_easyr1")
    old = {k: os.environ.get(k) for k in [*OFFLINE_ENV, "GETOK_GRID_SIZE"]}
    os.environ.update(OFFLINE_ENV)
    os.environ.pop("GETOK_GRID_SIZE", None)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def base_tokenizer(work):
    """The real Qwen2.5 tokenizer (``getok tiny-model``'s), without the GETok tokens."""
    from getok_core.models.tiny_model import build_qwen2_5_tokenizer

    return build_qwen2_5_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(work, base_tokenizer) -> str:
    """The tiny random Qwen2.5-VL folder (``getok tiny-model``), built under transformers 4."""
    from getok_core.models.tiny_model import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(work / "tiny-qwen2.5-vl", seed=0, tokenizer=base_tokenizer)


@pytest.fixture(scope="session")
def prepared(work) -> Path:
    """`getok prepare` of the sample dataset (region proposals), EasyR1 files of both splits."""
    from getok_core.cli import main as getok_main

    out = work / "prepared"
    assert getok_main(["prepare", "--dataset", "sample", "--out", str(out), "--formats", "easyr1",
                       "--no-progress"]) == 0
    return out


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
