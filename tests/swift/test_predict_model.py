"""`getok predict --model DIR` on the real tiny Qwen2.5-VL through transformers.

The tiny random model (`getok tiny-model`) gets the GETok tokens and is taught one two-turn
dialogue in-test (a seg answer, then an offset answer to the refinement instruction; AdamW on the
prompts exactly as training renders them, CPU, some seconds). `getok predict` must then ask the
same questions (the `getok prepare` prompt at turn 1, the refinement instruction after the answer
at turn 2) for the model to repeat the dialogue, and write the decoded files; the untaught model
gives an answer that does not parse, written all the same. `getok predict --server` asks the taught
model served by a real `swift deploy` (OpenAI-compatible, transformers backend) the same dialogue."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from getok_core.cli import main as getok_main
from getok_core.codec.answer import format_answer, format_offsets
from getok_core.codec.instance import Instance
from getok_core.codec.vocab import GetokVocab
from getok_core.data.masks import decode_rle
from getok_core.data.writers import REFINE_PROMPT
from getok_core.inference import user_prompt
from getok_core.models import rollout as R

from conftest import REGISTER, swift_bin

VOCAB = GetokVocab()
W, H = 112, 84
QUERY = "the red box"
TURN1 = format_answer([Instance(box=(0.25, 0.25, 0.625, 0.625), points=[(0.44, 0.44)])], VOCAB)
TURN2 = format_offsets([[(1, 1), (-1, -1), (0, 0)]], VOCAB)


@pytest.fixture(scope="module")
def scene(work):
    img = np.full((H, W, 3), 120, np.uint8)
    img[21:53, 28:70] = (220, 40, 40)
    path = work / "predict-scene.png"
    Image.fromarray(img).save(path)
    return str(path)


def _example(proc, messages, answer, image):
    full = proc.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    head = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = proc(images=[image], text=[full], return_tensors="pt", add_special_tokens=False)
    n_head = proc(images=[image], text=[head], return_tensors="pt", add_special_tokens=False)["input_ids"].shape[1]
    return enc, enc["input_ids"][0, n_head:]


@pytest.fixture(scope="module")
def models(work, tiny_model, scene):
    """(untaught, taught) model folders: the tiny model with the GETok tokens, and the same taught
    the dialogue [question, TURN1, refinement instruction, TURN2] on the scene."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from swift_plugin.getok_tokens import prepare_model_vocab

    torch.set_num_threads(1)
    torch.manual_seed(0)
    proc = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    prepare_model_vocab(model, proc.tokenizer, VOCAB)
    plain = work / "predict-untaught"
    model.save_pretrained(plain)
    proc.save_pretrained(plain)
    image = R.load_image(scene, None, None)
    prompt = user_prompt("seg", QUERY)
    batches = [_example(proc, R.easyr1_messages(prompt), TURN1, image),
               _example(proc, R.conversation(prompt, TURN1, REFINE_PROMPT), TURN2, image)]
    for name, p in model.named_parameters():
        p.requires_grad_(not ("embed_tokens" in name or "visual" in name))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(400):
        enc, target = batches[step % 2]
        loss = torch.nn.functional.cross_entropy(model(**enc, logits_to_keep=len(target) + 1).logits[0, :-1], target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if len(losses) >= 2 and max(losses[-2:]) < 0.05:
            break
    assert max(losses[-2:]) < 0.05, f"the tiny model did not learn the dialogue (losses {losses[-2:]})"
    taught = work / "predict-taught"
    model.eval()
    model.save_pretrained(taught)
    proc.save_pretrained(taught)
    return str(plain), str(taught)


def predict(model, scene, out, *extra) -> list[dict]:
    assert getok_main(["predict", "--model", model, "--image", scene, "--query", QUERY, "--out", str(out),
                       "--max-new-tokens", "48", "--dtype", "float32", "--no-progress", *extra]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_taught_model_repeats_the_dialogue(models, scene, tmp_path):
    rows = predict(models[1], scene, tmp_path / "out", "--rounds", "1", "--decoder", "region")
    assert len(rows) == 1 and rows[0]["turns"] == [TURN1, TURN2]
    rec = json.loads((tmp_path / "out" / rows[0]["files"]["json"]).read_text())
    assert rec["valid"] and rec["rounds_done"] == 1 and rec["user_turns"] == [user_prompt("seg", QUERY), REFINE_PROMPT]
    step = VOCAB.offset_step(1)
    box = rec["instances"][0]["normalized"]["box"]
    b0 = rec["history"][0][0]["box"]
    assert box == pytest.approx([b0[0] + step, b0[1] + step, b0[2] - step, b0[3] - step])
    assert len(rec["moves"]) == 2 and rec["deleted"] == []
    mask = decode_rle(rec["mask"]["rle"])
    assert mask.shape == (H, W) and mask[30, 50] and not mask[5, 5]   # the red box, inside the refined box
    assert (tmp_path / "out" / rows[0]["files"]["overlay"]).stat().st_size > 0
    assert (tmp_path / "out" / rows[0]["files"]["mask"]).exists()


def test_untaught_model_answers_are_written(models, scene, tmp_path):
    rows = predict(models[0], scene, tmp_path / "out", "--max-new-tokens", "6")
    assert len(rows) == 1 and not rows[0]["valid"] and rows[0]["instances"] == 0
    files = rows[0]["files"]
    assert {"answer", "json", "overlay"} <= set(files) and "mask" not in files
    text = (tmp_path / "out" / files["answer"]).read_text()
    assert rows[0]["turns"][0] in text and user_prompt("seg", QUERY) in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployed(models, tmp_path):
    """The taught model behind `swift deploy` (plugin model type and template, transformers
    backend) on a free local port: its base URL. Stopped afterwards."""
    port = _free_port()
    log = open(tmp_path / "deploy.log", "w")
    proc = subprocess.Popen([swift_bin(), "deploy", "--model", models[1], "--custom_register_path", str(REGISTER),
                             "--model_type", "getok_qwen2_5_vl", "--template", "getok_qwen2_5_vl",
                             "--infer_backend", "transformers", "--torch_dtype", "float32", "--host", "127.0.0.1",
                             "--port", str(port), "--served_model_name", "getok-tiny"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 420
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail("swift deploy did not come up:\n" + (tmp_path / "deploy.log").read_text()[-4000:])
                time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()


def test_served_model_through_swift_deploy(deployed, scene, tmp_path):
    """Turn 2 reaches the server as one user message holding the ChatML turns (rollout.stage2_prompt);
    ms-swift's template renders it as the conversation the model was taught."""
    assert getok_main(["predict", "--server", deployed, "--image", scene, "--query", QUERY, "--rounds", "1",
                       "--max-new-tokens", "48", "--decoder", "none", "--out", str(tmp_path / "out"),
                       "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["turns"] == [TURN1, TURN2] and rows[0]["valid"]
    assert "mask" not in rows[0]["files"]  # --decoder none
