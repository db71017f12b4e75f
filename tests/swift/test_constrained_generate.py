"""Constrained decoding with transformers ``generate`` (docs/grammar.md): the random tiny Qwen2.5-VL
with the GETok tokens, ``logits_processor=[GetokLogitsProcessor(...)]``, on the sample's val prompts
(task of each from its ground truth). Every answer must be valid (``parse_answer``), hold the task's
elements only, and spell every GETok element as one id; the refinement turn of each answer must have
exactly one offset per turn-1 point. The same run without the processor is reported for comparison.
The llguidance Lark grammar (``codec.grammar.to_lark`` with the real tokenizer's ids) accepts the
same token ids, so the Lark text is checked on the real Qwen2.5 tokenizer too."""

from __future__ import annotations

import json
import re

import llguidance as llg
import llguidance.hf
import pytest
import torch

from getok_core.codec.answer import parse_answer, parse_offsets
from getok_core.codec.grammar import TASK_LINES, grid_spec, refine_spec, to_lark, to_regex
from getok_core.codec.instance import anchors
from getok_core.codec.text import TOKEN_RE
from getok_core.codec.vocab import GetokVocab
from getok_core.models.constrained import GetokLogitsProcessor
from getok_core.rewards.answers import GridAnswer, cells_kinds, grid_format_ok
from getok_core.rewards.dialogue import refine_message, start_refinement

pytestmark = pytest.mark.swift
VOCAB = GetokVocab()
IM_END = 151645
MAX_INSTANCES, MAX_POINTS = 2, 4
#: Val prompts per task (the first ones of each task; CPU time: ~0.3 s per generated token here).
PER_TASK = 3


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def model(tiny_model):
    """(model, processor): the tiny random model with the GETok tokens added (random rows)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from swift_plugin.getok_tokens import prepare_model_vocab

    proc = AutoProcessor.from_pretrained(tiny_model)
    m = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prepare_model_vocab(m, proc.tokenizer, VOCAB)
    return m, proc


@pytest.fixture(scope="module")
def prompts(prepared) -> list[dict]:
    """The val prompts of the sample: user text, image, task."""
    from PIL import Image

    out, per_task = [], {}
    for row in read_jsonl(prepared / "swift" / "val_grpo.jsonl"):
        task = json.loads(row["solution"])["task"]
        per_task[task] = per_task.get(task, 0) + 1
        if per_task[task] > PER_TASK:
            continue
        user = next(m for m in row["messages"] if m["role"] == "user")["content"]
        out.append({"text": user.replace("<image>", ""), "image": Image.open(row["images"][0]).convert("RGB"),
                    "task": task})
    assert {p["task"] for p in out} >= {"seg", "point", "line"}, per_task
    return out


def chat(proc, turns: list[tuple[str, str]], image):
    """Model inputs of a conversation [(role, text)] whose first user turn carries the image."""
    msgs = []
    for i, (role, text) in enumerate(turns):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": text}]
        msgs.append({"role": role, "content": content})
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return proc(images=[image], text=[text], return_tensors="pt", add_special_tokens=False)


def generate(model, proc, inputs, spec=None, max_new_tokens=None, seed=0) -> list[int]:
    """The generated ids (EOS dropped), sampled (temperature 1, seeded), with the GETok processor
    when ``spec`` is given."""
    kw = {}
    if spec is not None:
        lp = GetokLogitsProcessor(spec, proc.tokenizer, eos_token_id=IM_END)
        kw["logits_processor"] = [lp]
        max_new_tokens = max_new_tokens or lp.max_length()
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, **kw)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    return ids[:-1] if ids and ids[-1] in (IM_END, 151643) else ids


def single_ids(proc, ids) -> bool:
    """Every GETok token of the decoded text is one generated id (none spelled from BPE pieces)."""
    getok = set(proc.tokenizer.convert_tokens_to_ids(VOCAB.tokens))
    text = proc.tokenizer.decode(ids, skip_special_tokens=True)
    return sum(i in getok for i in ids) == len(TOKEN_RE.findall(text))


@pytest.fixture(scope="module")
def runs(model, prompts):
    """Every val prompt answered with and without the processor, then its refinement turn."""
    torch.set_num_threads(2)
    m, proc = model
    out = []
    for p in prompts:
        # no <none>: a random model takes it nearly always, and it proves little about the elements
        spec = grid_spec(VOCAB, p["task"], MAX_INSTANCES, MAX_POINTS, allow_none=False)
        inputs = chat(proc, [("user", p["text"])], p["image"])
        ids = generate(m, proc, inputs, spec)
        free = generate(m, proc, inputs, None, max_new_tokens=len(ids) + 1)
        rec = {"task": p["task"], "spec": spec, "ids": ids, "free_ids": free,
               "text": proc.tokenizer.decode(ids, skip_special_tokens=True),
               "free_text": proc.tokenizer.decode(free, skip_special_tokens=True)}
        state = start_refinement(rec["text"], VOCAB)
        if state.refinable:
            rspec = refine_spec(VOCAB, state.instances)
            r_in = chat(proc, [("user", p["text"]), ("assistant", rec["text"]), ("user", refine_message(state))],
                        p["image"])
            rec["refine_spec"], rec["refine_ids"] = rspec, generate(m, proc, r_in, rspec)
            rec["refine_text"] = proc.tokenizer.decode(rec["refine_ids"], skip_special_tokens=True)
            rec["proposal"] = list(state.instances)
        out.append(rec)
    valid = sum(parse_answer(r["text"], VOCAB).valid for r in out)
    free_valid = sum(parse_answer(r["free_text"], VOCAB).valid for r in out)
    getok = set(proc.tokenizer.convert_tokens_to_ids(VOCAB.tokens))

    def share(key):
        ids = [i for r in out for i in r[key]]
        return f"{sum(i in getok for i in ids)}/{len(ids)} generated tokens GETok ids"

    print(f"\nconstrained generate on {len(out)} val prompts: {valid}/{len(out)} valid with the GETok processor "
          f"({share('ids')}), {free_valid}/{len(out)} without it ({share('free_ids')}; same model and seed, "
          f"same token budget)")
    print("e.g. with   :", out[0]["text"][:160])
    print("e.g. without:", out[0]["free_text"][:160])
    return out


def test_every_constrained_answer_is_valid(runs):
    for r in runs:
        parsed = parse_answer(r["text"], VOCAB)
        assert parsed.valid, (r["text"], parsed.errors)
        assert not parsed.stray_text
        assert len(parsed.instances) <= MAX_INSTANCES
        assert all(cells_kinds(c) == TASK_LINES[r["task"]] for c in parsed.cells), r["text"]
        assert re.fullmatch(to_regex(r["spec"]), r["text"]), r["text"]


def test_every_getok_element_is_one_id(runs, model):
    _, proc = model
    assert all(single_ids(proc, r["ids"]) for r in runs)
    assert all(single_ids(proc, r["refine_ids"]) for r in runs if "refine_ids" in r)


def test_refinement_has_one_offset_per_turn1_point(runs, model):
    refined = [r for r in runs if "refine_ids" in r]
    assert refined, "no turn-1 answer with instances to refine"
    for r in refined:
        parsed = parse_offsets(r["refine_text"], r["proposal"], VOCAB)
        assert parsed.valid, (r["refine_text"], parsed.errors)
        assert [len(o) for o in parsed.offsets] == [len(anchors(i)) for i in r["proposal"]]
        assert re.fullmatch(to_regex(r["refine_spec"]), r["refine_text"])


def test_lark_grammar_accepts_the_same_ids_on_the_real_tokenizer(runs, model):
    """llguidance, on the real Qwen2.5 tokenizer with the GETok tokens, accepts the processor's
    token ids under ``to_lark(spec, tokenizer.get_vocab())`` (GETok elements as single ids)."""
    _, proc = model
    ll = llguidance.hf.from_tokenizer(proc.tokenizer)
    vocab_ids = proc.tokenizer.get_vocab()
    cases = [(r["spec"], r["ids"]) for r in runs[:20]] + [(r["refine_spec"], r["refine_ids"]) for r in runs[:20]
                                                           if "refine_ids" in r]
    for spec, ids in cases:
        m = llg.LLMatcher(ll, to_lark(spec, vocab_ids), log_level=0)
        assert not m.is_error(), m.get_error()
        assert m.consume_tokens(ids) and m.is_accepting(), (proc.tokenizer.decode(ids), m.get_error())



def test_think_then_answer_passes_the_format_reward(model, prompts):
    """With ``think=True`` the answer is ``<think>..</think><answer>..</answer>``: the grid
    ``format`` reward rule holds (``rewards.answers.grid_format_ok``). One processor serves two
    ``generate`` calls."""
    m, proc = model
    seg = [p for p in prompts if p["task"] == "seg"][:2]
    spec = grid_spec(VOCAB, "seg", MAX_INSTANCES, MAX_POINTS, think=True, allow_none=False)
    lp = GetokLogitsProcessor(spec, proc.tokenizer, eos_token_id=IM_END, max_think_tokens=12)
    for seed, p in enumerate(seg):
        inputs = chat(proc, [("user", p["text"])], p["image"])
        torch.manual_seed(seed)
        with torch.no_grad():
            out = m.generate(**inputs, max_new_tokens=lp.max_length(), do_sample=True, top_k=0,
                             logits_processor=[lp])
        ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        assert ids[-1] == IM_END
        text = proc.tokenizer.decode(ids[:-1], skip_special_tokens=True)
        assert grid_format_ok(text, GridAnswer.of(parse_answer(text, VOCAB)), "seg"), text
        assert re.fullmatch(to_regex(spec), text), text


# ---------------------------------------------------------------------- `getok predict --constrained`
def _predict(model_dir, inp, out, *extra) -> list[dict]:
    from getok_core.cli import main as getok_main

    assert getok_main(["predict", "--model", model_dir, "--input", str(inp), "--out", str(out), "--dtype",
                       "float32", "--decoder", "none", "--no-progress", *extra]) == 0
    return read_jsonl(out / "predictions.jsonl")


def test_getok_predict_constrained_gives_valid_answers(model, work, tmp_path):
    """``getok predict --model DIR --constrained`` on 2 sample queries (a seg and a point one, one
    refinement round, greedy): every turn-1 answer is valid and matches its task's regex, every
    refinement answer holds one offset per turn-1 anchor. The same run without ``--constrained``
    (same token budget as the longest constrained turn 1) is reported."""
    from getok_core.inference import sample_queries

    torch.set_num_threads(2)
    m, proc = model
    model_dir = work / "constrained-tiny"
    if not (model_dir / "config.json").exists():
        m.save_pretrained(model_dir)
        proc.save_pretrained(model_dir)
    queries = sample_queries(work / "constrained-sample")
    picked = [next(q for q in queries if q[2] == t) for t in ("seg", "point")]
    inp = tmp_path / "queries.jsonl"
    inp.write_text("".join(json.dumps({"image": p, "query": q, "task": t}) + "\n" for p, q, t in picked))
    rows = _predict(str(model_dir), inp, tmp_path / "on", "--constrained", "--max-instances", str(MAX_INSTANCES),
                    "--max-points", str(MAX_POINTS), "--no-none", "--rounds", "1")
    assert [r["task"] for r in rows] == ["seg", "point"] and all(r["constrained"] for r in rows)
    for r in rows:
        parsed = parse_answer(r["turns"][0], VOCAB)
        assert parsed.valid and r["valid"], (r["turns"][0], parsed.errors)
        assert re.fullmatch(to_regex(grid_spec(VOCAB, r["task"], MAX_INSTANCES, MAX_POINTS, allow_none=False)),
                            r["turns"][0]), r["turns"][0]
        assert r["rounds_done"] == 1, r
        offs = parse_offsets(r["turns"][1], parsed.instances, VOCAB)
        assert offs.valid, (r["turns"][1], offs.errors)
        assert [len(o) for o in offs.offsets] == [len(anchors(i)) for i in parsed.instances]
    budget = max(len(proc.tokenizer(r["turns"][0], add_special_tokens=False)["input_ids"]) for r in rows) + 1
    free = _predict(str(model_dir), inp, tmp_path / "off", "--max-new-tokens", str(budget))
    assert not any(r.get("constrained") for r in free)
    print(f"\ngetok predict on {len(rows)} sample queries: {sum(r['valid'] for r in rows)}/{len(rows)} valid with "
          f"--constrained, {sum(r['valid'] for r in free)}/{len(free)} without (greedy, {budget} tokens)")
    print("e.g. with   :", rows[0]["turns"][0][:160], "| round 1:", rows[0]["turns"][1][:80])
    print("e.g. without:", free[0]["turns"][0][:160])


def test_server_request_carries_the_regex(tmp_path):
    """``--server`` with a constraint: each chat request's body holds the text regex of its turn
    (``structured_outputs.regex`` for ``vllm serve``, ``structured_outputs_regex`` for ``swift
    deploy``): turn 1 ``grid_spec``'s, the refinement turn ``refine_spec``'s of the turn-1 answer.
    The endpoint is a local HTTP server that records the bodies (no vLLM here) and answers a
    fixed dialogue."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    from getok_core.codec.answer import format_answer, format_offsets
    from getok_core.codec.instance import Instance
    from getok_core.inference import Predictor, load_backend
    from getok_core.inference.predictor import Constraint

    turn1 = format_answer([Instance(box=(0.25, 0.25, 0.5, 0.5), points=[(0.4, 0.4)])], VOCAB)
    answers, bodies = [turn1, format_offsets([[(1, 0), (0, 1), None]], VOCAB)], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            msg = {"role": "assistant", "content": answers[len(bodies) - 1]}
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                               "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = load_backend(server=f"http://127.0.0.1:{server.server_port}/v1", served_model="m")
        c = Constraint(MAX_INSTANCES, MAX_POINTS)
        pred = Predictor(backend, None, VOCAB, rounds=1, constraint=c).predict(
            Image.new("RGB", (64, 48), (90, 90, 90)), "the square", "seg")
    finally:
        server.shutdown()
    assert pred.valid and pred.constrained and pred.turns == answers
    want = [to_regex(c.turn1(VOCAB, "seg")), to_regex(refine_spec(VOCAB, turn1))]
    assert [b["structured_outputs"]["regex"] for b in bodies] == want
    assert [b["structured_outputs_regex"] for b in bodies] == want
    assert all(re.fullmatch(w, a) for w, a in zip(want, answers))


def test_vllm_request_mask_masks_as_the_transformers_processor(model):
    """``models.vllm_constrained.RequestMask`` (vLLM's per-request processor, fed the growing list
    of generated ids) allows exactly what ``GetokLogitsProcessor`` allows, token after token, along
    a sampled answer; it leaves the logits alone once the answer is done."""
    from getok_core.codec.grammar import spec_from_json, spec_to_json
    from getok_core.models.vllm_constrained import RequestMask

    _, proc = model
    spec = spec_from_json(spec_to_json(grid_spec(VOCAB, "seg", MAX_INSTANCES, MAX_POINTS)))
    lp = GetokLogitsProcessor(spec, proc.tokenizer, eos_token_id=IM_END)
    mask = RequestMask(lp.automaton())
    gen = torch.Generator().manual_seed(0)
    prompt, out = [1, 2, 3], []
    for _ in range(lp.max_length()):
        logits = torch.randn(len(proc.tokenizer) + 7, generator=gen)
        want = lp(torch.tensor([prompt + out]), logits[None].clone())[0]
        got = mask(out, logits.clone())
        assert torch.equal(torch.isfinite(want), torch.isfinite(got))
        assert torch.equal(got[torch.isfinite(got)], logits[torch.isfinite(got)])
        tok = int(torch.multinomial(torch.softmax(got, -1), 1, generator=gen))
        out.append(tok)
        if tok == IM_END:
            break
    assert out[-1] == IM_END and parse_answer(proc.tokenizer.decode(out[:-1]), VOCAB).valid
    free = torch.randn(10)
    assert mask(out + [5], free) is free  # done: untouched
