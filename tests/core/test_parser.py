"""The parser on hand-written malformed outputs, and on adversarial input (hypothesis)."""

import math
import signal
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from getok_core import GetokVocab, Instance, format_answer, parse_answer, parse_offsets

V = GetokVocab()


def ok(text):
    p = parse_answer(text, V)
    assert p.valid, p.errors
    return p


def bad(text, *fragments):
    p = parse_answer(text, V)
    assert not p.valid
    joined = " | ".join(p.errors)
    for f in fragments:
        assert f in joined, (f, p.errors)
    return p


BOX = "<box><grid3,4><grid20,25></box>"
SEG = "<seg><grid10,12><grid14,18></seg>"


def test_canonical_answer():
    p = ok(f"<think>It is the dog.</think><answer>{BOX}{SEG}\n<point><grid7,9></point></answer>")
    assert [c.box for c in p.cells] == [((3, 4), (20, 25)), None]
    assert p.cells[0].points == ((10, 12), (14, 18))
    assert p.cells[1].point == (7, 9)
    assert p.instances[0].box == V.cells_box(((3, 4), (20, 25)))
    assert p.found_answer and not p.no_target


def test_glued_instances_split_on_repeated_or_out_of_order_elements():
    p = ok(f"<answer>{BOX}{SEG}{BOX}<seg><grid5,5></seg>{SEG}</answer>")
    assert len(p.instances) == 3
    assert [len(i.points) for i in p.instances] == [2, 1, 2]


def test_tokens_spread_with_spaces_and_newlines():
    p = ok("<answer>\n <box> <grid3,4>\n <grid20,25> </box>\n\n<seg>\n<grid10,12>  <grid14,18>\n</seg>\n</answer>")
    # a newline outside an element ends an instance: box and seg are two instances here
    assert len(p.instances) == 2
    p = ok("<answer><box> <grid 3, 4> <grid20 ,25> </box></answer>")
    assert p.cells[0].box == ((3, 4), (20, 25))


def test_last_answer_block_wins_and_text_around_is_ignored():
    p = ok(f"Sure. <answer>{BOX}</answer> wait, no: <answer><point><grid1,1></point></answer> done.")
    assert len(p.instances) == 1 and p.cells[0].point == (1, 1)


def test_thinking_is_ignored_without_answer_block():
    p = ok(f"<think>maybe <box><grid0,0><grid1,1></box></think>{BOX}")
    assert p.cells[0].box == ((3, 4), (20, 25)) and not p.found_answer


@pytest.mark.parametrize("corners", ["<grid3,4>", "<grid3,4><grid5,5><grid6,6>", ""])
def test_box_with_wrong_corner_count(corners):
    p = bad(f"<answer><box>{corners}</box>{SEG}</answer>", "<box> has")
    assert p.instances and p.instances[0].box is None and len(p.instances[0].points) == 2


def test_unclosed_and_nested_tags():
    bad(f"<answer><box><grid3,4><grid20,25>{SEG}</answer>", "<seg> inside unclosed <box>")
    bad("<answer><seg><grid1,1><grid2,2></answer>", "unclosed <seg>")
    bad(f"<answer>{BOX}", "unclosed <answer>")
    bad("<answer><box><grid1,1><grid2,2></seg></answer>", "</seg> closes <box>")
    bad(f"<answer></box>{BOX}</answer>", "</box> without an opening tag")


def test_out_of_range_and_unknown_tokens():
    p = bad("<answer><seg><grid32,0><grid1,1></seg></answer>", "outside the 32x32 grid")
    assert not p.instances
    bad("<answer><seg><grid1,1><foo></seg></answer>", "unknown tag")
    bad("<answer><seg><grid1,1>the dog</seg></answer>", "text inside <seg>")
    bad("<answer><grid1,1></answer>", "outside an element")
    bad("<answer><seg><grid1,1><OFF0,1></seg></answer>", "offset token")
    bad("<answer><seg><grid1,1><grid1,1></seg></answer>", "repeats 1 grid token")
    bad("<answer><poly><grid1,1><grid2,2><grid1,1></poly></answer>", "distinct")
    bad("<answer><box><grid5,5><grid1,1></box></answer>", "not top-left then bottom-right")


def test_no_target_forms():
    assert ok("<answer><none></answer>").no_target
    assert ok("<think>nothing matches</think><answer></answer>").no_target
    p = bad(f"<answer><none>\n{BOX}</answer>", "<none> together with 1 instance")
    assert not p.no_target
    p = bad("I cannot see it.", "no answer")
    assert not p.no_target and p.stray_text


def test_stray_prose_between_elements_is_kept_apart():
    p = ok(f"<answer>the dog {BOX}</answer>")
    assert p.stray_text == ["the dog"]


def test_offsets_parse_against_the_proposal():
    prop = parse_answer(f"<answer>{BOX}{SEG}\n<point><grid1,1></point></answer>", V).instances
    p = parse_offsets("<answer><offset><OFF0,0><OFF1,1><DELETE><OFF-1,0></offset>\n"
                      "<offset><OFF0,-1></offset></answer>", prop, V)
    assert p.valid and p.offsets == [[(0, 0), (1, 1), None, (-1, 0)], [(0, -1)]]
    p = parse_offsets("<answer><offset><OFF0,0><OFF1,1><DELETE></offset></answer>", prop, V)
    assert not p.valid and p.offsets == [None, None]
    assert "instance 0: 3 offset token(s) for 4 anchor(s)" in p.errors
    p = parse_offsets("<answer><offset><DELETE><OFF1,1><DELETE><OFF0,0></offset><offset><OFF2,0></offset>"
                      "</answer>", prop, V)
    assert any("box corner" in e for e in p.errors) and any("outside {-1, 0, 1}" in e for e in p.errors)
    assert p.offsets[1] is None


# ---------------------------------------------------------------------- adversarial input
def check_invariants(text, vocab=V):
    p = parse_answer(text, vocab)
    assert not any(e.startswith("internal parser error") for e in p.errors), p.errors
    assert p.valid == (not p.errors)
    assert len(p.cells) == len(p.instances)
    assert not (p.no_target and p.instances)
    assert len(p.errors) <= 51
    for inst in p.instances:
        assert not inst.is_empty()
        coords = [c for pt in inst.points for c in pt] + list(inst.box or ()) + list(inst.point or ())
        coords += [c for pt in (inst.polyline or ()) + (inst.polygon or ()) for c in pt]
        assert all(0.0 <= c <= 1.0 and math.isfinite(c) for c in coords)
    again = parse_answer(text, vocab)
    assert again == p  # deterministic
    return p


PIECES = (
    [V.grid_token(x, y) for x, y in [(0, 0), (31, 31), (12, 14), (3, 4), (20, 25)]]
    + ["<grid32,0>", "<grid-1,5>", "<grid1,>", "<grid99999999999,1>", "<OFF0,1>", "<OFF-1,-1>",
       "<OFF2,0>", "<DELETE>", "<none>", "<answer>", "</answer>", "<think>", "</think>", "<im_end>",
       "<|im_end|>", "<", ">", "<<", ">>", "\n", " ", "\t", "dog", ".", "é", "\x00", "<grid", "1,2>"]
    + [f"<{t}>" for t in ("point", "box", "seg", "line", "poly", "offset")]
    + [f"</{t}>" for t in ("point", "box", "seg", "line", "poly", "offset")]
)
soups = st.lists(st.sampled_from(PIECES), max_size=300).map("".join)


@settings(max_examples=3000)
@given(soups)
def test_parser_never_raises_on_token_soup(text):
    check_invariants(text)


@settings(max_examples=2000)
@given(st.text(max_size=2000))
def test_parser_never_raises_on_arbitrary_text(text):
    check_invariants(text)


@settings(max_examples=1000)
@given(st.binary(max_size=2000))
def test_parser_never_raises_on_binary_junk(data):
    check_invariants(data)
    check_invariants(data.decode("latin-1"))


@settings(max_examples=1500)
@given(soups, st.lists(st.sampled_from([
    Instance(box=(0.1, 0.1, 0.5, 0.5), points=[(0.2, 0.2)]), Instance(point=(0.5, 0.5)),
    Instance(points=[(0.1, 0.9), (0.3, 0.3)]), Instance(polyline=[(0, 0), (1, 1)])]), max_size=4))
def test_offset_parser_never_raises(text, proposal):
    p = parse_offsets(text, proposal, V)
    assert not any(e.startswith("internal parser error") for e in p.errors)
    assert p.valid == (not p.errors) and len(p.offsets) == len(proposal)
    for inst, row in zip(proposal, p.offsets):
        if row is not None:
            from getok_core import anchors
            assert len(row) == len(anchors(inst))
            assert all(o is None or (o[0] in (-1, 0, 1) and o[1] in (-1, 0, 1)) for o in row)
    assert parse_offsets(text, proposal, V) == p


def test_non_string_inputs():
    for junk in (None, 123, 4.5, ["<answer>"], b"\xff\xfe<answer><none></answer>"):
        check_invariants(junk)
    assert parse_answer(b"<answer><none></answer>", V).no_target


@contextmanager
def time_limit(seconds):
    """Guard against a hang (catastrophic backtracking), not a speed measurement."""
    def boom(*_):
        raise TimeoutError(f"parser did not finish within {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("text", [
    "<" * 1_000_000,
    "<grid" + "1" * 1_000_000,
    "<answer>" * 200_000,
    "<think>" * 200_000,
    "</answer>" * 100_000,
    "<seg>" + "<grid1,1>" * 200_000 + "</seg>",
    "<box>" * 200_000,
    "<" + "a" * 63 + " " + ">" * 1,
    ("<grid1, " + " " * 50) * 20_000,
    "<answer>" + "x" * 1_000_000,
], ids=lambda t: f"{t[:12]!r}x{len(t)}")
def test_huge_pathological_inputs_finish(text):
    with time_limit(20):
        p = check_invariants(text)
    assert len(p.errors) <= 51


def test_format_answer_rejects_degenerate_instances():
    with pytest.raises(ValueError):
        format_answer([Instance()], V)
    with pytest.raises(ValueError):
        format_answer([Instance(polyline=[(0.5, 0.5), (0.501, 0.501)])], V)
    assert format_answer([], V) == "<answer><none></answer>"


# ---------------------------------------------------------------------- caps (issue 18)
def _points(n, vocab=V):
    g = vocab.grid_size
    return "<answer>" + "\n".join(f"<point><grid{i % g},{(i // g) % g}></point>" for i in range(n)) + "</answer>"


def test_instance_cap():
    from getok_core.codec.answer import MAX_INSTANCES

    p = ok(_points(MAX_INSTANCES))
    assert len(p.instances) == MAX_INSTANCES
    p = bad(_points(MAX_INSTANCES + 1), f"more than {MAX_INSTANCES} instances")
    assert p.errors[0].startswith(f"more than {MAX_INSTANCES} instances")
    assert len(p.instances) == len(p.cells) == MAX_INSTANCES  # the first ones are kept, the rest dropped
    assert not p.no_target
    # the reproduction: 8000 <point>s (200 KB) keep 100 instances, and the rest is not read
    text = _points(8000)[:-len("</answer>")] + "\n<box><grid1,1></box></answer>"
    with time_limit(10):
        p = parse_answer(text, V)
    assert len(p.instances) == MAX_INSTANCES and not any("<box> has" in e for e in p.errors)
    assert len(p.errors) == 1


def test_point_cap():
    from getok_core.codec.answer import MAX_POINTS

    big = GetokVocab(grid_size=128)  # 16384 cells: one <seg> can hold MAX_POINTS distinct ones

    def seg(k, start=0):
        return "<seg>" + "".join(big.grid_token(c % 128, c // 128) for c in range(start, start + k)) + "</seg>"

    p = parse_answer("<answer>" + seg(MAX_POINTS) + "</answer>", big)
    assert p.valid and len(p.instances[0].points) == MAX_POINTS
    p = parse_answer("<answer>" + seg(MAX_POINTS + 1) + "</answer>", big)
    assert not p.valid and p.instances == [] and p.errors[0].startswith(f"more than {MAX_POINTS} grid tokens")
    assert not p.no_target
    # instances of 100 seg points (plus a box: 102 tokens each): the one passing the cap and the rest are dropped
    lines = [BOX + seg(100, 100 * i) for i in range(60)]
    p = parse_answer("<answer>" + "\n".join(lines) + "</answer>", big)
    assert not p.valid and len(p.instances) == MAX_POINTS // 102
    assert "cut after instance 40" in p.errors[0]
    # a 5 MB answer of valid lines is cut as fast as a short one
    with time_limit(10):
        p = parse_answer("<answer>" + "\n".join([BOX + SEG] * 80_000) + "</answer>", V)
    assert not p.valid and len(p.instances) == 100


def test_cap_message_survives_many_errors():
    text = "<answer>" + "<box><grid1></box>\n" * 60 + _points(200)[len("<answer>"):]
    p = parse_answer(text, V)
    assert p.errors[0].startswith("more than 100 instances") and len(p.errors) <= 51
    assert p.errors[-1].startswith("... and ")


def test_offset_caps():
    from getok_core.codec.answer import MAX_INSTANCES, MAX_POINTS

    props = [Instance(point=(0.5, 0.5))] * 3
    line = "<offset><OFF0,0></offset>"
    p = parse_offsets("<answer>" + "\n".join([line] * (MAX_INSTANCES + 5)) + "</answer>", props, V)
    assert not p.valid and any(e.startswith(f"more than {MAX_INSTANCES} <offset> lines") for e in p.errors)
    p = parse_offsets("<answer><offset>" + "<OFF0,0>" * (MAX_POINTS + 1) + "</offset></answer>", props[:1], V)
    assert not p.valid and p.offsets == [None] and any("offset tokens" in e for e in p.errors)
    ok_text = "<answer>" + "\n".join([line] * 3) + "</answer>"
    assert parse_offsets(ok_text, props, V).valid
