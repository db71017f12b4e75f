"""The GETok answer grammar (docs/grammar.md): its text regex, its llguidance Lark grammar (checked
by llguidance itself on a byte-level tokenizer holding the GETok tokens), and the token automaton
of the transformers logits processor, against ``format_answer`` / ``parse_answer``."""

import json
import re

import llguidance as llg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from getok_core import GetokVocab, Instance, format_answer, format_offsets, parse_answer, parse_offsets
from getok_core.cli import main as getok_main
from getok_core.codec.grammar import (TASK_LINES, TASKS, grid_spec, id_ranges, int_range_regex, max_chars, refine_spec,
                                      spec_from_json, spec_to_json, to_lark, to_regex, tokenizer_ids)
from getok_core.codec.instance import anchors, encode_instance
from getok_core.models.constrained import GetokAutomaton, token_table
from getok_core.rewards.answers import cells_kinds

unit = st.floats(0.0, 1.0, allow_nan=False)
points = st.tuples(unit, unit)
grids = st.sampled_from([1, 2, 3, 7, 10, 32])
THINK = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=20)


class ByteTokenizer:
    """A byte-level tokenizer: ids 0..255 are bytes, then the GETok tokens (added, one id each),
    then EOS. The duck-typed interface ``models.constrained.token_table`` and llguidance's
    ``TokenizerWrapper`` use."""

    unk_token_id = None
    bos_token_id = None
    vocab_size = 256

    def __init__(self, vocab: GetokVocab):
        self.added = list(vocab.tokens)
        self.ids = {t: 256 + i for i, t in enumerate(self.added)}
        self.eos_token_id = 256 + len(self.added)
        self.tokens = [bytes([i]) for i in range(256)] + [t.encode() for t in self.added] + [b"<|eos|>"]
        self.special_token_ids = [self.eos_token_id]
        self.added_tokens_decoder = {i: t for t, i in self.ids.items()}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")")

    def __len__(self):
        return len(self.tokens)

    def encode(self, text, add_special_tokens=False):
        if isinstance(text, bytes):
            text = text.decode()
        out = []
        for piece in self._split.split(text):
            out += [self.ids[piece]] if piece in self.ids else list(piece.encode())
        return out

    __call__ = encode

    def decode(self, ids, skip_special_tokens=False):
        return b"".join(self.tokens[i] for i in ids if not (skip_special_tokens and i == self.eos_token_id)).decode()

    def convert_tokens_to_ids(self, tokens):
        return [self.ids.get(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i].decode("latin-1") for i in ids]

    def get_vocab(self):
        return dict(self.ids)


_TOK = {}


def tokenizer(n):
    """(ByteTokenizer, llguidance LLTokenizer) of the n x n vocabulary, cached."""
    if n not in _TOK:
        tok = ByteTokenizer(GetokVocab(n))
        _TOK[n] = tok, llg.LLTokenizer(llg.TokenizerWrapper(tok))
    return _TOK[n]


def lark_accepts(lark: str, ll, ids) -> bool:
    """llguidance's verdict: the grammar is valid, every token is consumed, and it may stop there."""
    m = llg.LLMatcher(ll, lark, log_level=0)
    assert not m.is_error(), m.get_error()
    return m.consume_tokens(list(ids)) and m.is_accepting()


def automaton_accepts(spec, tok, ids) -> bool:
    return GetokAutomaton(spec, token_table(tok, spec), max_think_tokens=64).accepts(ids)


def verdicts(spec, text) -> dict:
    """Whether the regex, the Lark grammar (GETok ids and text variants) and the automaton accept."""
    tok, ll = tokenizer(spec.vocab.grid_size)
    ids = tok.encode(text)
    return {"regex": re.fullmatch(to_regex(spec), text) is not None,
            "lark_ids": lark_accepts(to_lark(spec, tok.get_vocab()), ll, ids),
            "lark_text": lark_accepts(to_lark(spec), ll, ids),
            "automaton": automaton_accepts(spec, tok, ids)}


# ---------------------------------------------------------------------- pieces
@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 31, 32, 99, 100, 101, 999, 1000, 1024])
def test_int_range_regex_is_exactly_0_to_n_minus_1(n):
    r = re.compile(int_range_regex(n))
    assert all(r.fullmatch(str(i)) for i in range(n))
    assert not any(r.fullmatch(str(i)) for i in range(n, 2 * n + 20))
    assert not r.fullmatch("00") and not r.fullmatch("01") and not r.fullmatch("-1")


def test_id_ranges_merge_runs():
    assert id_ranges([5, 3, 4, 9, 11, 10, 20]) == "<[3-5,9-11,20]>"
    assert id_ranges(range(151665, 152689)) == "<[151665-152688]>"


def test_bad_requests_raise():
    v = GetokVocab(32)
    with pytest.raises(ValueError, match="task"):
        grid_spec(v, "mask")
    with pytest.raises(ValueError, match="MAX_POINTS"):
        grid_spec(v, "seg", max_instances=100, max_points=64)
    with pytest.raises(ValueError, match="not valid"):
        refine_spec(v, "<answer><box><grid1,1></box></answer>")
    with pytest.raises(ValueError, match="polygon"):
        grid_spec(GetokVocab(1), "poly")
    assert "poly" not in to_regex(grid_spec(GetokVocab(1), "any"))
    with pytest.raises(ValueError, match="not in the tokenizer"):
        to_lark(grid_spec(v), {"<box>": 1})


# ---------------------------------------------------------------------- canonical answers are accepted
@st.composite
def task_instance(draw, task):
    kinds = {"seg": {"box", "points"}, "box": {"box"}, "point": {"point"}, "line": {"polyline"},
             "poly": {"polygon"}}.get(task)
    if kinds is None:
        kinds = draw(st.sets(st.sampled_from(["box", "points", "point", "polyline", "polygon"]), min_size=1))
    return Instance(
        box=draw(st.tuples(unit, unit, unit, unit)) if "box" in kinds else None,
        points=draw(st.lists(points, min_size=1, max_size=6)) if "points" in kinds else (),
        point=draw(points) if "point" in kinds else None,
        polyline=draw(st.lists(points, min_size=2, max_size=6)) if "polyline" in kinds else None,
        polygon=draw(st.lists(points, min_size=3, max_size=6)) if "polygon" in kinds else None)


def encodable(inst, vocab):
    try:
        encode_instance(inst, vocab)
        return True
    except ValueError:  # a polyline / polygon that collapses on a small grid
        return False


@settings(max_examples=300, deadline=None)
@given(grids, st.sampled_from(TASKS), st.data(), st.booleans())
def test_every_canonical_answer_is_accepted(n, task, data, think):
    vocab = GetokVocab(n)
    assume(task != "poly" or n * n >= 3)  # grid_spec refuses it (test_bad_requests_raise)
    insts = data.draw(st.lists(task_instance(task), max_size=3))
    assume(all(encodable(i, vocab) for i in insts))
    thought = data.draw(THINK) if think else None
    text = format_answer(insts, vocab, think=thought)
    spec = grid_spec(vocab, task, max_instances=3, max_points=6, think=think)
    assert parse_answer(text, vocab).valid
    assert verdicts(spec, text) == dict.fromkeys(["regex", "lark_ids", "lark_text", "automaton"], True), text
    assert max_chars(spec) is None if think else len(text) <= max_chars(spec)


@settings(max_examples=200, deadline=None)
@given(grids, st.lists(task_instance("any"), min_size=0, max_size=3), st.data(), st.booleans())
def test_every_canonical_refinement_is_accepted(n, insts, data, think):
    vocab = GetokVocab(n)
    assume(all(encodable(i, vocab) for i in insts))
    turn1 = format_answer(insts, vocab)
    proposal = parse_answer(turn1, vocab).instances
    move = st.tuples(st.sampled_from([-1, 0, 1]), st.sampled_from([-1, 0, 1]))
    offsets = [[data.draw(move if kind == "box" else st.none() | move) for kind, _ in anchors(inst)]
               for inst in proposal]
    thought = data.draw(THINK) if think else None
    text = format_offsets(offsets, vocab, think=thought)
    assert parse_offsets(text, proposal, vocab).valid
    spec = refine_spec(vocab, turn1, think=think)
    assert verdicts(spec, text) == dict.fromkeys(["regex", "lark_ids", "lark_text", "automaton"], True), text
    assert max_chars(spec) is None if think else len(text) <= max_chars(spec)


@pytest.mark.parametrize("n,task,k,p", [(32, "any", 2, 8), (32, "seg", 8, 32), (7, "line", 3, 4), (1, "point", 1, 1)])
def test_max_chars_is_the_longest_answer_the_regex_admits(n, task, k, p):
    spec = grid_spec(GetokVocab(n), task, max_instances=k, max_points=p)
    cell = f"<grid{n - 1},{n - 1}>"
    line = "".join(f"<{r.kind}>{cell * r.max_cells}</{r.kind}>" for r in spec.elements)
    longest = "<answer>" + "\n".join([line] * k) + "</answer>"
    assert re.fullmatch(to_regex(spec), longest)
    assert max_chars(spec) == len(longest)
    last = f"</{spec.elements[-1].kind}></answer>"
    assert not re.fullmatch(to_regex(spec), longest[:-len(last)] + cell + last)  # one cell more in an element
    assert not re.fullmatch(to_regex(spec), longest[:-9] + "\n" + line + "</answer>")  # one instance more
    turn1 = format_answer([Instance(box=(0.1, 0.1, 0.5, 0.5), points=[(0.2, 0.2)])], GetokVocab(32))
    refine = refine_spec(GetokVocab(32), turn1)
    longest = "<answer><offset>" + "<OFF-1,-1>" * 3 + "</offset></answer>"  # 2 box corners + 1 point
    assert re.fullmatch(to_regex(refine), longest) and max_chars(refine) == len(longest)
    assert max_chars(grid_spec(GetokVocab(n), task, max_instances=k, max_points=p, think=True)) is None


def test_grammar_cli_prints_max_chars(capsys):
    assert getok_main(["grammar", "--task", "any", "--max-instances", "2", "--max-points", "8", "--max-chars"]) == 0
    assert int(capsys.readouterr().out) == max_chars(grid_spec(GetokVocab(32), "any", 2, 8))
    assert getok_main(["grammar", "--think", "--max-chars"]) == 2
    assert "unbounded" in capsys.readouterr().err


# ---------------------------------------------------------------------- what the automaton generates is valid
def walk(spec, tok, data):
    """A random answer of the automaton (hypothesis picks each allowed token): its token ids."""
    auto = GetokAutomaton(spec, token_table(tok, spec), max_think_tokens=6)
    plain = sorted(i for i in auto.table.plain or () if i < 128)  # whole UTF-8 characters: llguidance reads text
    ids = []
    while auto.allowed is not None:
        a = auto.allowed
        pool = list(a.ids) + (plain if a.plain else [])
        t = data.draw(st.sampled_from(pool))
        assert auto.feed(t)
        ids.append(t)
    assert auto.done and ids[-1] == tok.eos_token_id and len(ids) <= auto.max_length()
    return ids[:-1]


@settings(max_examples=300, deadline=None)
@given(grids, st.sampled_from(TASKS), st.integers(1, 3), st.integers(3, 5), st.booleans(), st.data())
def test_automaton_answers_are_valid_and_in_the_grammars(n, task, k, p, think, data):
    vocab = GetokVocab(n)
    assume(task != "poly" or n * n >= 3)  # grid_spec refuses it (test_bad_requests_raise)
    spec = grid_spec(vocab, task, max_instances=k, max_points=p, think=think)
    tok, ll = tokenizer(n)
    ids = walk(spec, tok, data)
    text = tok.decode(ids)
    parsed = parse_answer(text, vocab)
    assert parsed.valid, (text, parsed.errors)
    assert not parsed.stray_text
    assert len(parsed.instances) <= k
    want = TASK_LINES[task]
    for c in parsed.cells:  # each line holds the task's elements (any: a non-empty ordered subset)
        kinds = cells_kinds(c)
        assert kinds == want if task != "any" else (kinds and set(kinds) <= set(want))
    assert re.fullmatch(to_regex(spec), text), text
    assert lark_accepts(to_lark(spec, tok.get_vocab()), ll, ids)


@settings(max_examples=150, deadline=None)
@given(grids, st.lists(task_instance("any"), min_size=0, max_size=3), st.booleans(), st.data())
def test_automaton_refinements_have_one_offset_per_point(n, insts, think, data):
    vocab = GetokVocab(n)
    assume(all(encodable(i, vocab) for i in insts))
    turn1 = format_answer(insts, vocab)
    proposal = parse_answer(turn1, vocab).instances
    spec = refine_spec(vocab, turn1, think=think)
    tok, ll = tokenizer(n)
    ids = walk(spec, tok, data)
    text = tok.decode(ids)
    parsed = parse_offsets(text, proposal, vocab)
    assert parsed.valid, (text, parsed.errors)
    assert [len(o) for o in parsed.offsets] == [len(anchors(i)) for i in proposal]
    assert re.fullmatch(to_regex(spec), text)
    assert lark_accepts(to_lark(spec, tok.get_vocab()), ll, ids)


@st.composite
def grammar_shaped(draw, n, task, k, p):
    """An answer text of the grammar's shape with unconstrained cells (any order, repeats)."""
    cell = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
    lines = []
    for _ in range(draw(st.integers(1, k))):
        kinds = TASK_LINES[task]
        if task == "any":
            kinds = [e for e in kinds if draw(st.booleans())] or [draw(st.sampled_from(kinds))]
        parts = []
        for kind in kinds:
            lo, hi = {"point": (1, 1), "box": (2, 2), "seg": (1, p), "line": (2, p), "poly": (3, p)}[kind]
            cells = draw(st.lists(cell, min_size=lo, max_size=hi))
            parts.append(f"<{kind}>" + "".join(f"<grid{x},{y}>" for x, y in cells) + f"</{kind}>")
        lines.append("".join(parts))
    return "<answer>" + "\n".join(lines) + "</answer>"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([2, 3, 32]), st.sampled_from(TASKS), st.data())
def test_grammar_shaped_answers_are_valid_exactly_when_the_automaton_takes_them(n, task, data):
    """The regex takes every text of the grammar's shape; ``parse_answer`` calls it valid exactly
    when the automaton accepts it (box corners ordered, seg cells distinct, 3 distinct poly cells)."""
    vocab = GetokVocab(n)
    spec = grid_spec(vocab, task, max_instances=3, max_points=4)
    text = data.draw(grammar_shaped(n, task, 3, 4))
    tok, _ = tokenizer(n)
    assert re.fullmatch(to_regex(spec), text)
    assert parse_answer(text, vocab).valid == automaton_accepts(spec, tok, tok.encode(text)), text


# ---------------------------------------------------------------------- malformed answers are rejected
SEG = grid_spec(GetokVocab(32), "seg", max_instances=3, max_points=4)
MALFORMED = {
    "unclosed <seg>": "<answer><box><grid1,1><grid3,3></box><seg><grid2,2></answer>",
    "unclosed <answer>": "<answer><box><grid1,1><grid3,3></box><seg><grid2,2></seg>",
    "cell outside the grid": "<answer><box><grid1,1><grid32,3></box><seg><grid2,2></seg></answer>",
    "box with one corner": "<answer><box><grid1,1></box><seg><grid2,2></seg></answer>",
    "empty <seg>": "<answer><box><grid1,1><grid3,3></box><seg></seg></answer>",
    "seg without its box": "<answer><seg><grid2,2></seg></answer>",
    "too many seg cells": "<answer><box><grid1,1><grid3,3></box><seg>" + "".join(
        f"<grid{i},2>" for i in range(5)) + "</seg></answer>",
    "too many instances": "<answer>" + "\n".join(["<box><grid1,1><grid3,3></box><seg><grid2,2></seg>"] * 4)
                          + "</answer>",
    "prose": "<answer>here: <box><grid1,1><grid3,3></box><seg><grid2,2></seg></answer>",
    "offset token": "<answer><box><grid1,1><grid3,3></box><seg><OFF0,0></seg></answer>",
}


@pytest.mark.parametrize("why", sorted(MALFORMED))
def test_malformed_grid_answers_are_rejected(why):
    text = MALFORMED[why]
    assert verdicts(SEG, text) == dict.fromkeys(["regex", "lark_ids", "lark_text", "automaton"], False)


TURN1 = "<answer><box><grid1,1><grid9,9></box><seg><grid2,2><grid5,5></seg>\n<point><grid7,7></point></answer>"
REFINE_MALFORMED = {
    "one offset missing": "<answer><offset><OFF0,0><OFF0,0><OFF1,0></offset>\n<offset><OFF0,0></offset></answer>",
    "one offset too many": "<answer><offset><OFF0,0><OFF0,0><OFF1,0><DELETE><OFF0,0></offset>\n"
                           "<offset><OFF0,0></offset></answer>",
    "a line missing": "<answer><offset><OFF0,0><OFF0,0><OFF1,0><DELETE></offset></answer>",
    "DELETE on a box corner": "<answer><offset><DELETE><OFF0,0><OFF1,0><DELETE></offset>\n"
                              "<offset><OFF0,0></offset></answer>",
    "unclosed <offset>": "<answer><offset><OFF0,0><OFF0,0><OFF1,0><DELETE></offset>\n<offset><OFF0,0></answer>",
}


@pytest.mark.parametrize("why", sorted(REFINE_MALFORMED))
def test_malformed_refinements_are_rejected(why):
    vocab = GetokVocab(32)
    spec = refine_spec(vocab, TURN1)
    text = REFINE_MALFORMED[why]
    assert not parse_offsets(text, parse_answer(TURN1, vocab).instances, vocab).valid
    assert verdicts(spec, text) == dict.fromkeys(["regex", "lark_ids", "lark_text", "automaton"], False)


def test_what_only_the_automaton_enforces():
    """A reversed box, repeated seg cells, a polygon of 2 distinct cells: parse_answer rejects
    them; the grammars (regex, Lark) cannot say it, the automaton does."""
    vocab = GetokVocab(32)
    cases = {"seg": "<answer><box><grid5,5><grid3,3></box><seg><grid2,2></seg></answer>",
             "any": "<answer><seg><grid2,2><grid2,2></seg></answer>",
             "poly": "<answer><poly><grid1,1><grid2,2><grid1,1></poly></answer>"}
    for task, text in cases.items():
        assert not parse_answer(text, vocab).valid
        got = verdicts(grid_spec(vocab, task, max_points=4), text)
        assert got == {"regex": True, "lark_ids": True, "lark_text": True, "automaton": False}, (task, got)


def test_none_and_its_switch():
    vocab = GetokVocab(32)
    text = "<answer><none></answer>"
    assert all(verdicts(grid_spec(vocab, "box"), text).values())
    assert not any(verdicts(grid_spec(vocab, "box", allow_none=False), text).values())


def test_lark_grammar_uses_single_ids_for_getok_tokens():
    """With token ids, a cell spelled as bytes is refused; the text variant takes it."""
    vocab = GetokVocab(32)
    tok, ll = tokenizer(32)
    spec = grid_spec(vocab, "point")
    spelled = list(b"<answer><point><grid3,4>") + [tok.ids["</point>"]] + list(b"</answer>")
    assert not lark_accepts(to_lark(spec, tok.get_vocab()), ll, spelled)
    assert lark_accepts(to_lark(spec), ll, spelled)
    assert "<[256-1279]>" in to_lark(spec, tok.get_vocab())


# ---------------------------------------------------------------------- the command
def test_grammar_command(tmp_path, capsys):
    tok, _ = tokenizer(32)
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"added_tokens": [{"id": i, "content": t, "special": False} for t, i in tok.ids.items()]}))
    assert tokenizer_ids(tmp_path) == tok.ids
    assert getok_main(["grammar", "--task", "box", "--max-instances", "2"]) == 0
    regex = capsys.readouterr().out.strip()
    assert regex == to_regex(grid_spec(GetokVocab(32), "box", max_instances=2))
    assert re.fullmatch(regex, "<answer><box><grid1,2><grid3,4></box>\n<box><grid0,0><grid9,9></box></answer>")
    assert getok_main(["grammar", "--format", "lark", "--tokenizer", str(tmp_path), "--refine", TURN1, "--think"]) == 0
    lark = capsys.readouterr().out
    assert lark == to_lark(refine_spec(GetokVocab(32), TURN1, think=True), tok.ids)
    assert "r1: offset_o free offset_c" in lark


@settings(max_examples=100, deadline=None)
@given(grids, st.sampled_from(TASKS), st.integers(1, 3), st.integers(3, 5), st.booleans(), st.booleans())
def test_spec_json_round_trip(n, task, k, p, think, allow_none):
    assume(task != "poly" or n * n >= 3)
    spec = grid_spec(GetokVocab(n), task, max_instances=k, max_points=p, think=think, allow_none=allow_none)
    assert spec_from_json(spec_to_json(spec)) == spec
    refine = refine_spec(GetokVocab(32), "<answer><box><grid1,1><grid3,3></box><seg><grid2,2></seg></answer>")
    assert spec_from_json(spec_to_json(refine)) == refine


@pytest.mark.parametrize("text", ["", "[]", '{"grid_size": 32}', '{"grid_size": "x", "offset_rounds": 1}',
                                  '{"grid_size":32,"offset_rounds":1,"think":false,"elements":[["blob",1,2]],'
                                  '"any_subset":false,"max_instances":1,"allow_none":true,"refine":null}'])
def test_spec_json_refuses_other_text(text):
    with pytest.raises(ValueError, match="not a GETok answer spec"):
        spec_from_json(text)
