"""`getok rollout-proposals`: EasyR1 stage-2 rows from real turn-1 answers of a stage-1 model.

The stage-1 model is the tiny random Qwen2.5-VL with the GETok tokens, taught one fixed valid
answer in-test (80 AdamW steps on 4 prompts, CPU, ~30 s), so its turn-1 answers parse. Checks: the
rows (prompt = question + the real answer + the refinement instruction; images; ground truth with
extra.proposal), the summary counts, resume, degenerate answers, EasyR1's rendering of the rows
through the format_prompt Jinja files (the same text and token ids as the real two-turn
conversation), refine_reward on the rows, and the openai backend against a local fake server."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from jinja2 import Template

from easyr1_plugin.reward import refine_reward
from getok_core.data import groundtruth
from getok_core.models import rollout as R
from getok_core.codec.answer import format_answer
from getok_core.cli import main as getok_main
from getok_core.codec.instance import Instance, anchors
from getok_core.data.masks import decode_rle
from getok_core.data.offsets import classify_cells
from getok_core.rewards.dialogue import refine_message, start_refinement
from getok_core.codec.vocab import GetokVocab
from getok_core.data.writers import REFINE_PROMPT

REPO = Path(__file__).resolve().parents[2]
FORMAT_DIR = REPO / "easyr1_plugin" / "format_prompt"
VOCAB = GetokVocab()
LIMIT, K = 4, 2


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def data(work, prepared) -> Path:
    """The sample dataset's val split in EasyR1 format (`getok prepare`, region proposals)."""
    from getok_core.prepare import PrepareConfig, prepare

    out = work / "rollout-prepared"
    prepare(PrepareConfig(dataset="sample", root=str(prepared / "sample_data"), out=str(out), split="val",
                          formats=("easyr1",), progress=False), log=lambda *_: None)
    assert (out / "easyr1" / "val.jsonl").exists()
    return out


def fixed_answer(data: Path) -> str:
    """A valid seg answer about row 0's first target: its box, one seg point inside its mask and
    one in a far corner."""
    gt = groundtruth.loads(read_jsonl(data / "easyr1" / "val.jsonl")[0]["answer"])
    t = gt["targets"][0]
    m = decode_rle(t["mask"])
    ys, xs = np.nonzero(m)
    j = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    w, h = gt["image_size"]
    inside = ((xs[j] + 0.5) / w, (ys[j] + 0.5) / h)
    return format_answer([Instance(box=t["box"], points=[inside, (0.01, 0.01)])], VOCAB)


@pytest.fixture(scope="module")
def stage1(work, tiny_model, data):
    """(model folder, answer): the tiny model with the GETok tokens, taught to answer the fixed
    answer to the first LIMIT prompts (as the transformers backend prompts them)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from swift_plugin.getok_tokens import prepare_model_vocab

    torch.set_num_threads(1)
    torch.manual_seed(0)
    answer = fixed_answer(data)
    proc = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    prepare_model_vocab(model, proc.tokenizer, VOCAB)
    template = Path(R.default_format_prompt()).read_text()
    batches = []
    for row in read_jsonl(data / "easyr1" / "val.jsonl")[:LIMIT]:
        msgs = R.easyr1_messages(R.render_format_prompt(template, row["prompt"]))
        image = [R.load_image(row["images"][0], None, None)]
        full = proc.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        head = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        enc = proc(images=image, text=[full], return_tensors="pt", add_special_tokens=False)
        n_head = proc(images=image, text=[head], return_tensors="pt", add_special_tokens=False)["input_ids"].shape[1]
        batches.append((enc, enc["input_ids"][0, n_head:]))
    for name, p in model.named_parameters():  # the embeddings stay: fast steps, same memorization
        p.requires_grad_(not ("embed_tokens" in name or "visual" in name))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(400):  # until every prompt's answer is learnt (loss < 0.05 on each)
        enc, target = batches[step % len(batches)]
        logits = model(**enc, logits_to_keep=len(target) + 1).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
        if len(losses) >= len(batches) and max(losses[-len(batches):]) < 0.05:
            break
    worst = max(losses[-len(batches):])
    assert worst < 0.05, f"the tiny model did not learn the fixed answer (loss {worst:.3f})"
    out = work / "stage1-model"
    model.eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out), answer


def cli_args(model, data, *extra) -> list[str]:
    return ["rollout-proposals", "--model", model, "--prepared", str(data), "--split", "val", "--backend",
            "transformers", "--num-samples", str(K), "--temperature", "0.3", "--max-new-tokens", "40", "--limit",
            str(LIMIT), "--min-pixels", "0", "--dtype", "float32", "--no-progress", *extra]


@pytest.fixture(scope="module")
def rolled(stage1, data):
    model, answer = stage1
    assert getok_main(cli_args(model, data)) == 0
    out = data / "easyr1" / "val_refine.jsonl"
    return {"out": out, "rows": read_jsonl(out), "summary": json.loads(R.paths_for(out)["summary"].read_text()),
            "answer": answer, "model": model}


def test_rows_hold_the_real_turn1_exchange(rolled, data):
    answer = rolled["answer"]
    assert start_refinement(answer, VOCAB).refinable
    inputs = read_jsonl(data / "easyr1" / "val.jsonl")[:LIMIT]
    rows = rolled["rows"]
    assert len(rows) == LIMIT * K
    for j, row in enumerate(rows):
        src = inputs[j // K]
        assert set(row) == {"prompt", "answer", "images"}
        assert row["images"] == src["images"]
        # question (the stage-1 prompt, unchanged by getok_grid.jinja), the real answer, the instruction
        assert row["prompt"] == (f"{src['prompt']}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
                                 f"<|im_start|>user\n{REFINE_PROMPT}")
        assert row["prompt"].count("<image>") == 1
        gt, gt_src = json.loads(row["answer"]), json.loads(src["answer"])
        assert gt["extra"].pop("proposal") == answer
        assert gt["extra"].pop("proposal_index") == j % K
        assert gt == gt_src
    s = rolled["summary"]
    assert (s["prompts"], s["answers"], s["written"], s["distinct_written"]) == (LIMIT, LIMIT * K, LIMIT * K, LIMIT)
    assert s["degenerate"] == {r: 0 for r in R.REASONS}
    assert s["generated_rows"] == LIMIT
    assert s["config"]["sampling"]["num_samples"] == K
    rollouts = read_jsonl(R.paths_for(rolled["out"])["rollouts"])
    assert sorted(int(r["row"]) for r in rollouts) == list(range(LIMIT))
    assert all(r["answers"] == [answer] * K for r in rollouts)


def test_resume_generates_only_missing_rows(rolled, data, capsys):
    p = R.paths_for(rolled["out"])
    before = rolled["out"].read_bytes()
    # a finished run: nothing is generated again, the output is rewritten identically
    assert getok_main(cli_args(rolled["model"], data)) == 0
    s = json.loads(p["summary"].read_text())
    assert s["generated_rows"] == 0 and rolled["out"].read_bytes() == before
    # an interrupted run: the last row is gone and a half-written line is left behind
    lines = p["rollouts"].read_text().splitlines(keepends=True)
    p["rollouts"].write_text("".join(lines[:-1]) + lines[-1][:20])
    rolled["out"].unlink()
    assert getok_main(cli_args(rolled["model"], data)) == 0
    s = json.loads(p["summary"].read_text())
    assert s["generated_rows"] == 1 and s["written"] == LIMIT * K
    assert rolled["out"].read_bytes() == before
    # other settings into the same output are refused
    capsys.readouterr()
    assert getok_main(cli_args(rolled["model"], data, "--seed", "7")) == 2
    assert "other settings (sampling)" in capsys.readouterr().err


def test_truncated_turn1_is_counted_not_written(rolled, data, tmp_path):
    out = tmp_path / "short.jsonl"
    args = cli_args(rolled["model"], data, "--out", str(out))
    args[args.index("--max-new-tokens") + 1] = "4"
    assert getok_main(args) == 0
    s = json.loads(R.paths_for(out)["summary"].read_text())
    assert s["written"] == 0 and read_jsonl(out) == []
    assert s["degenerate"]["truncated"] == LIMIT * K and sum(s["degenerate"].values()) == LIMIT * K
    ex = s["degenerate_examples"]["truncated"]
    assert ex and rolled["answer"].startswith(ex[0]["answer"]) and ex[0]["answer"] != rolled["answer"]


def test_easyr1_renders_the_two_turn_conversation(rolled, data):
    """EasyR1's own steps (format_prompt Jinja rendered with content, the prompt split on <image>
    into one user message, the processor's chat template) give the same text and token ids as the
    real conversation [user: image + question, assistant: turn 1, user: instruction]."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(rolled["model"])
    question = read_jsonl(data / "easyr1" / "val.jsonl")[0]["prompt"]
    ids = check_easyr1_rendering(proc, rolled["rows"][0], question, rolled["answer"])
    tok = proc.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    # system, user, assistant, user, then the generation prompt's assistant
    assert ids.count(im_start) == 5 and ids.count(im_end) == 4
    assert all(tok.convert_tokens_to_ids(t) in ids for t in ("<box>", "<seg>"))  # GETok tokens as single ids
    # stage 1: the grid template keeps the question as written
    grid_t = (FORMAT_DIR / "getok_grid.jinja").read_text(encoding="utf-8")
    assert Template(grid_t.strip()).render(content=question) == question


def check_easyr1_rendering(processor, row: dict, question: str, answer: str) -> list[int]:
    """EasyR1's steps on stage-2 ``row`` (format_prompt Jinja, the prompt split on <image> into one
    user message, ``processor``'s chat template) == the real two-turn conversation, text and ids."""
    assert R.chat_template_matches(processor)
    refine_t = (FORMAT_DIR / "getok_refine.jinja").read_text(encoding="utf-8")
    prompt = Template(refine_t.strip()).render(content=row["prompt"])
    assert prompt == row["prompt"]
    messages = []
    for i, part in enumerate(prompt.split("<image>")):
        messages += ([{"type": "image"}] if i else []) + ([{"type": "text", "text": part}] if part else [])
    easyr1 = processor.apply_chat_template([{"role": "user", "content": messages}], add_generation_prompt=True,
                                           tokenize=False)
    real = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question[len("<image>"):]}]},
         {"role": "assistant", "content": answer},
         {"role": "user", "content": [{"type": "text", "text": refine_message(start_refinement(answer))}]}],
        add_generation_prompt=True, tokenize=False)
    assert easyr1 == real
    image = [R.load_image(row["images"][0])]
    ids = processor(images=image, text=[easyr1], add_special_tokens=False)["input_ids"][0]
    assert list(ids) == list(processor(images=image, text=[real], add_special_tokens=False)["input_ids"][0])
    return list(ids)


def test_family_rollout_proposals_rows_render_with_its_chat_template(family_refinable, images, helpers, tmp_path):
    """Qwen3-VL / Qwen2-VL: `getok rollout-proposals` with the family's tiny model taught a
    refinable turn 1 to "Find the cat." (``teach_refinable``) on EasyR1 rows of that question, and
    the stage-2 rows rendered by that model's chat template (Qwen3-VL: no default system turn)
    exactly as the real conversation."""
    from transformers import AutoProcessor

    from qwen_vl_utils import fetch_image

    fam, model = family_refinable
    question = "<image>Find the cat."
    easyr1 = tmp_path / "prepared" / "easyr1"
    easyr1.mkdir(parents=True)
    # the picture as ms-swift's template fed it in training (qwen_vl_utils' resize to the family's
    # 28 / 32 px multiples: 112 x 84 stays for Qwen2-VL, 128 x 96 for Qwen3-VL): the tiny model
    # memorized one answer to those exact pixels
    image = fetch_image({"image": images["mem"]}, image_patch_size=fam.patch_size)
    image.save(tmp_path / "cat.png")
    path = str(tmp_path / "cat.png")
    row = {"prompt": question, "images": [path], "answer": helpers.mem_ground_truth(path, image.size)}
    (easyr1 / "val.jsonl").write_text((json.dumps(row) + "\n") * 2)
    args = ["rollout-proposals", "--model", model, "--prepared", str(easyr1.parent), "--split", "val",
            "--backend", "transformers", "--num-samples", "1", "--temperature", "0", "--max-new-tokens", "16",
            "--min-pixels", "0", "--dtype", "float32", "--no-progress"]
    assert getok_main(args) == 0
    out = easyr1 / "val_refine.jsonl"
    rows = read_jsonl(out)
    summary = json.loads(R.paths_for(out)["summary"].read_text())
    assert len(rows) == 2, summary  # the taught answer is refinable: one stage-2 row per input row
    answer = json.loads(rows[0]["answer"])["extra"]["proposal"]
    assert answer == helpers.FAMILY_ANSWER
    proc = AutoProcessor.from_pretrained(model)
    ids = check_easyr1_rendering(proc, rows[0], question, answer)
    tok = proc.tokenizer
    # Qwen3-VL's template opens no system turn: user, assistant, user, generation prompt
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == (4 if fam.name == "qwen3_vl" else 5)
    assert tok.convert_tokens_to_ids("<box>") in ids


def _right_and_wrong(gt: dict, answer: str) -> tuple[str, str]:
    """Offsets that move each turn-1 anchor toward the target its box overlaps most (SPEC §5
    categories for the seg points, the nearest corner offset for the box), and offsets that do the
    opposite (inside points deleted, far points kept, corners moved away)."""
    inst = start_refinement(answer).instances[0]
    w, h = gt["image_size"]

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    t = max(gt["targets"], key=lambda t: iou(inst.box, t["box"]))
    cls = classify_cells(decode_rle(t["mask"]), VOCAB)
    right, wrong = [], []
    corners = [(t["box"][0], t["box"][1]), (t["box"][2], t["box"][3])]
    for k, (kind, (u, v)) in enumerate(anchors(inst)):
        if k < 2:  # box corners
            d = VOCAB.refine((u, v), corners[k])
            right.append(VOCAB.offset_token(*d))
            away = tuple(-x if x else (1 if k == 0 else -1) for x in d)
            wrong.append(VOCAB.offset_token(*away))
        else:
            target = cls.target(*VOCAB.point_cell((u, v)), VOCAB)
            right.append(target.token)
            wrong.append("<DELETE>" if target.category == "inside" else VOCAB.offset_token(0, 0))
    fmt = lambda toks: "<answer><offset>" + "".join(toks) + "</offset></answer>"  # noqa: E731
    return fmt(right), fmt(wrong)


def test_refine_reward_scores_the_rows(rolled):
    rows = [r for r in rolled["rows"] if not json.loads(r["answer"])["no_target"]]
    assert rows
    for row in rows:
        gt = json.loads(row["answer"])
        right, wrong = _right_and_wrong(gt, rolled["answer"])
        good, bad = refine_reward([{"response": right, "response_length": 9, "ground_truth": row["answer"]},
                                   {"response": wrong, "response_length": 9, "ground_truth": row["answer"]}])
        assert good["format"] == bad["format"] == 1.0
        assert good["overall"] > bad["overall"], (right, wrong, good, bad)
        assert good["point"] > bad["point"]
        # the proposal comes from the row's ground truth: without it nothing can be scored
        del gt["extra"]["proposal"]
        (none,) = refine_reward([{"response": right, "response_length": 9, "ground_truth": json.dumps(gt)}])
        assert none["overall"] == 0.0


class _Scripted:
    """A backend answering from a script (row -> K answers); records the rows it was asked."""

    def __init__(self, script):
        self.script, self.asked = script, []

    def generate(self, items, cfg):
        self.asked += [row for _, _, row in items]
        return [self.script[row] for _, _, row in items]


def test_degenerate_answers_are_counted_by_reason(data, tmp_path):
    ok = "<answer><box><grid1,1><grid5,5></box><seg><grid2,2></seg></answer>"
    script = {0: [ok + "<|im_end|>", "<answer><box><grid1,1>"], 1: ["no tokens here", "<answer><none></answer>"],
              2: ["<think>x</think><answer><box><grid1,1></box></answer>", ok.replace("</answer>", "</answer><image>")],
              3: ["<answer><point><grid3,3></point></answer>", "<answer><box><grid9,9><grid1,1></box></answer>"]}
    out = tmp_path / "scripted.jsonl"
    backend = _Scripted(script)
    s = R.rollout_proposals(data / "easyr1" / "val.jsonl", out, backend, R.SamplingConfig(num_samples=2),
                            limit=LIMIT, batch_size=3, min_pixels=None, max_pixels=None, progress=False,
                            log=lambda *_: None)
    assert backend.asked == [0, 1, 2, 3]
    rows = read_jsonl(out)
    written = [json.loads(r["answer"])["extra"]["proposal"] for r in rows]
    assert written[0] == ok  # trailing <|im_end|> removed
    assert s["degenerate"]["truncated"] == 1 and s["degenerate"]["unparsable"] >= 1
    assert s["degenerate"]["no_target"] == 1 and s["degenerate"][R.MARKUP] == 1
    assert s["written"] + sum(s["degenerate"].values()) == s["answers"] == 8
    assert s["written"] == len(rows) >= 2
    for reason, n in s["degenerate"].items():
        assert len(s["degenerate_examples"].get(reason, [])) == min(n, 5)
    # resume after a crash in the middle: rows already answered are not asked again
    out2 = tmp_path / "crash.jsonl"

    class Crash(_Scripted):
        def generate(self, items, cfg):
            if any(row >= 2 for _, _, row in items):
                raise KeyboardInterrupt
            return super().generate(items, cfg)

    with pytest.raises(KeyboardInterrupt):
        R.rollout_proposals(data / "easyr1" / "val.jsonl", out2, Crash(script), R.SamplingConfig(num_samples=2),
                            limit=LIMIT, batch_size=2, min_pixels=None, max_pixels=None, progress=False)
    again = _Scripted(script)
    R.rollout_proposals(data / "easyr1" / "val.jsonl", out2, again, R.SamplingConfig(num_samples=2), limit=LIMIT,
                        batch_size=2, min_pixels=None, max_pixels=None, progress=False, log=lambda *_: None)
    assert again.asked == [2, 3] and out2.read_bytes() == out.read_bytes()


def test_load_image_follows_easyr1_pixel_bounds(data):
    path = read_jsonl(data / "easyr1" / "val.jsonl")[0]["images"][0]
    small = R.load_image(path, None, None)
    big = R.load_image(path)  # EasyR1 defaults: upscaled to >= 262144 pixels
    assert small.mode == big.mode == "RGB"
    f = (R.EASYR1_MIN_PIXELS / (small.width * small.height)) ** 0.5
    assert big.size == (int(small.width * f), int(small.height * f))
    capped = R.load_image(path, None, 5000)
    assert capped.width * capped.height <= 5000


def test_openai_backend_against_a_local_server(data):
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            choices = [{"index": i, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"<answer><point><grid{i},1></point></answer>"}}
                       for i in range(body.get("n", 1))]
            data_ = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": choices}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data_)))
            self.end_headers()
            self.wfile.write(data_)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = R.make_backend("openai", "unused", endpoint=f"http://127.0.0.1:{server.server_port}/v1",
                                 served_model="getok-stage1", concurrency=2)
        out = data / "openai_refine.jsonl"
        s = R.rollout_proposals(data / "easyr1" / "val.jsonl", out, backend,
                                R.SamplingConfig(num_samples=3, temperature=0.7, max_new_tokens=33), limit=2,
                                min_pixels=None, max_pixels=None, progress=False, log=lambda *_: None)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert s["written"] == 6 and s["distinct_written"] == 6
    assert len(seen) == 2
    path, body = seen[0]
    assert path == "/v1/chat/completions"
    assert (body["model"], body["n"], body["max_tokens"], body["temperature"]) == ("getok-stage1", 3, 33, 0.7)
    (msg,) = body["messages"]
    assert msg["role"] == "user" and [c["type"] for c in msg["content"]] == ["image_url", "text"]
    assert msg["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert msg["content"][1]["text"].startswith("Please segment:")
    props = [json.loads(r["answer"])["extra"]["proposal"] for r in read_jsonl(out)]
    assert props[:3] == [f"<answer><point><grid{i},1></point></answer>" for i in range(3)]
