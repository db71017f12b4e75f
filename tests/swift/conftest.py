"""Fixtures of the ms-swift plugin tests: an offline environment, the tiny random Qwen2.5-VL with
the real Qwen2.5 tokenizer, the prepared sample dataset, and one chain of real `swift` CLI runs
(sft -> infer --adapters -> export --merge_lora -> infer merged) shared by the tests that check it;
the same chain once per other family (Qwen3-VL tied, Qwen2-VL untied: ``family_cli``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REGISTER = REPO / "swift_plugin" / "register.py"

#: No network: Hugging Face / datasets offline, Hugging Face hub semantics for local paths.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "USE_HF": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

#: The memorization row: a STANDARD ms-swift grounding row (objects, a real-pixel box) on a small
#: image; the template turns <bbox> into GETok tokens. Trained on repeatedly so that the tiny model
#: emits a valid answer greedily (the pipeline check needs a parseable output).
MEM_IMAGE_SIZE = (112, 84)
MEM_BOX = [30, 20, 90, 70]
MEM_ANSWER = "<box><grid8,7><grid25,26></box>"


def mem_row(image: str) -> dict:
    return {"messages": [{"role": "user", "content": "<image>Find <ref-object>."},
                         {"role": "assistant", "content": "<bbox>"}],
            "images": [image], "objects": {"ref": ["the cat"], "bbox": [list(MEM_BOX)], "bbox_type": "real"}}


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """A session folder, and the offline environment (also GETOK_CACHE / MODELSCOPE_CACHE inside it)
    set in os.environ for in-process use; restored afterwards."""
    import swift  # noqa: F401  (the swift environment: a missing ms-swift fails, never skips)
    root = tmp_path_factory.mktemp("getok_swift")
    env = dict(OFFLINE_ENV, GETOK_CACHE=str(root / "getok-cache"), MODELSCOPE_CACHE=str(root / "ms-cache"))
    old = {k: os.environ.get(k) for k in [*env, "GETOK_GRID_SIZE", "GETOK_IMAGE_SIZE", "GETOK_DATASET_PATHS"]}
    os.environ.update(env)
    for k in ("GETOK_GRID_SIZE", "GETOK_IMAGE_SIZE", "GETOK_DATASET_PATHS"):
        os.environ.pop(k, None)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def base_tokenizer(work):
    from getok_core.models.tiny_model import build_qwen2_5_tokenizer

    return build_qwen2_5_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(work, base_tokenizer) -> str:
    from getok_core.models.tiny_model import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(work / "tiny-qwen2.5-vl", seed=0, tokenizer=base_tokenizer)


@pytest.fixture(scope="session")
def tiny_tied_model(work, base_tokenizer) -> str:
    from getok_core.models.tiny_model import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(work / "tiny-qwen2.5-vl-tied", seed=1, tie_word_embeddings=True,
                                 tokenizer=base_tokenizer)


@pytest.fixture(scope="session")
def plugin(work):
    """The plugin imported in-process (as a package module; idempotent registration)."""
    import swift_plugin.register as register

    return register


@pytest.fixture(scope="session")
def prepared(work, plugin) -> Path:
    """The prepared sample dataset (what `--dataset getok-sample` uses), in GETOK_CACHE."""
    from swift_plugin.getok_dataset import ensure_sample

    return ensure_sample()


@pytest.fixture(scope="session")
def loaded(tiny_model, plugin):
    """(model, processor) of the tiny model loaded through the getok_qwen2_5_vl model type."""
    import torch
    from swift.model import get_model_processor

    model, processor = get_model_processor(tiny_model, model_type="getok_qwen2_5_vl", torch_dtype=torch.float32,
                                           device_map="cpu")
    model.eval()
    return model, processor


def make_template(processor, mode="train", template_type="getok_qwen2_5_vl"):
    from swift.template import get_template

    template = get_template(processor, template_type=template_type)
    template.set_mode(mode)
    return template


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for the test modules (conftest modules are not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(MEM_ANSWER=MEM_ANSWER, MEM_BOX=MEM_BOX, make_template=make_template, mem_row=mem_row,
                           read_jsonl=read_jsonl, FAMILY_ANSWER=FAMILY_ANSWER, mem_ground_truth=mem_ground_truth,
                           teach_refinable=teach_refinable)


@pytest.fixture(scope="session")
def images(work) -> dict:
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for name, (w, h) in {"mem": MEM_IMAGE_SIZE, "640x480": (640, 480)}.items():
        path = work / f"{name}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(path)
        out[name] = str(path)
    return out


def swift_bin() -> str:
    exe = Path(sys.executable).with_name("swift")
    if not exe.exists():
        found = shutil.which("swift")
        if found is None:
            pytest.fail("the swift CLI is not installed beside this python")
        return found
    return str(exe)


def run_swift(cmd: str, args: list[str], log: Path, timeout: int = 300) -> float:
    """Run `swift CMD ARGS` offline; returns the wall time; fails with the log tail on error."""
    env = dict(os.environ)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([swift_bin(), cmd, *args], stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=timeout, cwd=str(log.parent))
    elapsed = time.time() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        pytest.fail(f"swift {cmd} failed (exit {proc.returncode}):\n{tail}")
    return elapsed


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def swift_chain(d: Path, model: str, model_type: str, train: list, val_rows: list[dict],
                max_new_tokens: int) -> dict:
    """The real CLI chain on a tiny model (CPU), in folder ``d``:

    1. swift sft (the ``model_type`` model type + template, getok_lora tuner) on ``train`` (dataset
       arguments), 40 steps;
    2. swift infer --adapters CKPT (plugin, model, template, tuner replayed from args.json) on ``val_rows``;
    3. swift export --adapters CKPT --merge_lora true;
    4. greedy inference of the merged model with ms-swift's TransformersEngine (in-process: one CLI
       start-up less).
    Returns paths, responses and timings (also written to timings.json)."""
    d.mkdir(exist_ok=True)
    val = d / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in val_rows))
    timings = {}
    out_dir = d / "sft"
    timings["swift sft"] = run_swift("sft", [
        "--custom_register_path", str(REGISTER), "--model", model, "--model_type", model_type,
        "--template", model_type, "--tuner_type", "getok_lora", "--dataset", *train,
        "--max_steps", "40", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--lora_dropout", "0",
        "--torch_dtype", "float32", "--gradient_checkpointing", "false", "--save_steps", "40",
        "--save_only_model", "true", "--logging_steps", "8", "--dataloader_num_workers", "0",
        "--dataset_num_proc", "1", "--report_to", "none", "--output_dir", str(out_dir)], d / "sft.log", timeout=420)
    ckpts = sorted(out_dir.glob("v*/checkpoint-*"))
    assert ckpts, (d / "sft.log").read_text()[-3000:]
    ckpt = ckpts[-1]
    infer_args = ["--val_dataset", str(val), "--max_new_tokens", str(max_new_tokens), "--temperature", "0",
                  "--max_batch_size", "1"]
    timings["swift infer --adapters"] = run_swift(
        "infer", ["--adapters", str(ckpt), *infer_args, "--result_path", str(d / "infer_adapter.jsonl")],
        d / "infer_adapter.log")
    merged = d / "merged"
    timings["swift export --merge_lora"] = run_swift(
        "export", ["--adapters", str(ckpt), "--merge_lora", "true", "--output_dir", str(merged)], d / "export.log")
    # the merged model, through ms-swift's own inference engine in this process (it replays the
    # plugin, model type and template from the merged folder's args.json like `swift infer --model`)
    import torch
    from swift.infer_engine import InferRequest, RequestConfig, TransformersEngine

    t0 = time.time()
    engine = TransformersEngine(str(merged), model_type=model_type, torch_dtype=torch.float32, device_map="cpu")
    requests = [InferRequest(messages=[r["messages"][0]], images=r["images"], objects=r.get("objects") or {})
                for r in val_rows]
    merged_out = [{"response": c.choices[0].message.content}
                  for c in engine.infer(requests, RequestConfig(max_tokens=max_new_tokens, temperature=0))]
    timings["merged model, TransformersEngine in-process"] = time.time() - t0
    merged_info = dict(engine.model.getok_info)
    (d / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    print(f"CLI timings (s), {model_type}:", {k: round(v, 1) for k, v in timings.items()})
    return {"dir": d, "ckpt": ckpt, "merged": merged, "timings": timings, "model": model, "model_type": model_type,
            "adapter": read_jsonl(d / "infer_adapter.jsonl"), "merged_out": merged_out, "merged_info": merged_info}


@pytest.fixture(scope="session")
def cli(work, tiny_model, prepared, images):
    """The CLI chain (``swift_chain``) of the tiny Qwen2.5-VL on 2 rows of the prepared sample JSONL
    and 48 copies of a standard grounding row (objects, real-pixel box)."""
    d = work / "cli"
    d.mkdir(exist_ok=True)
    mem = d / "grounding.jsonl"
    mem.write_text("".join(json.dumps(mem_row(images["mem"])) + "\n" for _ in range(48)))
    val_row = read_jsonl(prepared / "swift" / "val.jsonl")[0]
    return swift_chain(d, tiny_model, "getok_qwen2_5_vl", [f"{prepared / 'swift' / 'train.jsonl'}#2", str(mem)],
                       [mem_row(images["mem"]), val_row], max_new_tokens=4)


# ---------------------------------------------------------------------- the other model families
#: The families besides Qwen2.5-VL (which runs the whole matrix): one CLI chain (sft -> infer ->
#: export) and one multi-turn GRPO run each. Qwen3-VL ties its embeddings (like Qwen3-VL-2B / 4B),
#: Qwen2-VL unties them (like Qwen2-VL-7B): each tuner path runs once more on another architecture.
OTHER_FAMILIES = {"qwen3_vl": True, "qwen2_vl": False}
#: The refinable turn 1 that ``teach_refinable`` teaches: the memorized box inside <answer>.
FAMILY_ANSWER = f"<answer>{MEM_ANSWER}</answer>"


@pytest.fixture(scope="session")
def family_model(work):
    """``get(family, tied)``: the folder of that family's tiny model, built once per session."""
    built = {}

    def get(name: str, tied: bool = False) -> str:
        if (name, tied) not in built:
            from getok_core.models.tiny_model import build_tiny_model

            built[name, tied] = build_tiny_model(work / f"tiny-{name}{'-tied' if tied else ''}", name, seed=0,
                                                 tie_word_embeddings=tied)
        return built[name, tied]

    return get


@pytest.fixture(scope="session", params=list(OTHER_FAMILIES))
def family_cli(request, work, family_model, images, plugin):
    """The CLI chain (``swift_chain``) of another family's tiny model on 48 copies of the standard
    grounding row (``mem_row``); adds ``family`` and ``tied``."""
    from getok_core.models.tiny_model import family

    fam = family(request.param)
    tied = OTHER_FAMILIES[fam.name]
    d = work / f"cli-{fam.name}"
    d.mkdir(exist_ok=True)
    mem = d / "grounding.jsonl"
    mem.write_text("".join(json.dumps(mem_row(images["mem"])) + "\n" for _ in range(48)))
    out = swift_chain(d, family_model(fam.name, tied), fam.model_type, [str(mem)], [mem_row(images["mem"])],
                      max_new_tokens=4)
    return dict(out, family=fam, tied=tied)


def teach_refinable(d: Path, model: str, model_type: str, image: str, steps: int = 30) -> str:
    """``model`` taught one refinable turn-1 answer (``FAMILY_ANSWER`` to "Find the cat." on
    ``image``) by a full-parameter swift sft (the text tokens of ``<answer>`` are learnt in a few
    steps); returns the checkpoint folder."""
    d.mkdir(exist_ok=True)
    row = {"messages": [{"role": "user", "content": "<image>Find the cat."},
                        {"role": "assistant", "content": FAMILY_ANSWER}], "images": [image]}
    data = d / "sft.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for _ in range(max(32, steps))))
    run_swift("sft", [
        "--custom_register_path", str(REGISTER), "--model", model, "--model_type", model_type,
        "--template", model_type, "--tuner_type", "full", "--dataset", str(data),
        "--max_steps", str(steps), "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
        "--learning_rate", "3e-3", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
        "--torch_dtype", "float32", "--gradient_checkpointing", "false", "--save_steps", str(steps),
        "--save_only_model", "true", "--logging_steps", "10", "--dataloader_num_workers", "0",
        "--dataset_num_proc", "1", "--split_dataset_ratio", "0", "--report_to", "none",
        "--output_dir", str(d / "sft")], d / "sft.log", timeout=420)
    return str(sorted((d / "sft").glob("v*/checkpoint-*"))[-1])


#: The families whose GRPO and rollout tests run (each needs one full-parameter SFT first, ~1 min):
#: Qwen3-VL. Qwen2-VL shares the scheduler, rewards and rollout code with it and Qwen2.5-VL, and its
#: template and tuner paths run in its CLI chain (``family_cli``); dropped here for CI time.
REFINABLE_FAMILIES = ("qwen3_vl",)


@pytest.fixture(scope="session", params=REFINABLE_FAMILIES)
def family_refinable(request, work, family_model, images, plugin):
    """(family, checkpoint): another family's tiny model taught the refinable turn 1 (``teach_refinable``)."""
    from getok_core.models.tiny_model import family

    fam = family(request.param)
    # 60 steps: 30 (enough for the tiny Qwen2.5-VL) once left the tiny Qwen2-VL answering "<answer>" alone
    ckpt = teach_refinable(work / f"refinable-{fam.name}", family_model(fam.name, OTHER_FAMILIES[fam.name]),
                           fam.model_type, images["mem"], steps=60)
    return fam, ckpt


def mem_ground_truth(image: str, size: tuple[int, int] = MEM_IMAGE_SIZE) -> str:
    """The ``solution`` (ground-truth JSON) of the memorization row's box on ``image`` of ``size``
    (width, height; the box scaled from the 112 x 84 memorization image; mask = box)."""
    import numpy as np

    from getok_core.data.masks import encode_rle

    w, h = size
    box = [v / MEM_IMAGE_SIZE[i % 2] for i, v in enumerate(MEM_BOX)]
    x0, y0, x1, y1 = (round(v * (w if i % 2 == 0 else h)) for i, v in enumerate(box))
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return json.dumps({"version": 1, "sample_id": "cat", "image_key": "mem", "image_path": image,
                       "image_size": [w, h], "task": "seg", "expression": "the cat", "no_target": False,
                       "targets": [{"mask": encode_rle(m), "box": box, "points": [],
                                    "polyline": None}], "ignore": None, "extra": {}})


# ---------------------------------------------------------------------- SAM tests
@pytest.fixture(scope="module")
def one_torch_thread():
    """Intra-op threads contend badly on a small loaded machine (50x slower): one thread for the
    module that asks for it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sam():
    """The tiny random SAM of ``getok_core.decoders.tiny_sam`` (real segment-anything classes)."""
    from getok_core.decoders.tiny_sam import build_tiny_sam

    return build_tiny_sam(0)


@pytest.fixture
def registry_sam(sam, tmp_path, monkeypatch):
    """``sam``'s weights saved as a checkpoint, and a segment-anything registry entry
    ``registry_tiny`` that builds a tiny SAM and loads a checkpoint into it: ``(checkpoint path,
    list of the checkpoints the entry was called with)``."""
    import segment_anything
    import torch

    from getok_core.decoders.tiny_sam import build_tiny_sam

    ckpt = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), ckpt)
    seen = []

    def build(checkpoint=None):
        seen.append(checkpoint)
        model = build_tiny_sam(5)
        model.load_state_dict(torch.load(checkpoint))
        return model

    monkeypatch.setitem(segment_anything.sam_model_registry, "registry_tiny", build)
    return ckpt, seen
