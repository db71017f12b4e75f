"""The refinement dialogue (getok_core.rewards.dialogue): stop reasons, rounds, and dialogue scoring.

Geometry as in test_rewards.py: a 100 x 100 image, a 10 x 10 grid (cell 10 px, cell centre (x, y)
at pixel (10x + 5, 10y + 5), round-1 step 5 px, round-2 step 2.5 px); target M1 = columns 25..54,
rows 35..64, box (0.25, 0.35, 0.55, 0.65).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit import ground_truth, square, target

from getok_core import GetokVocab, format_offsets
from getok_core.rewards import GRID_COMPONENTS, REFINE_COMPONENTS, score_grid_batch, score_refine_batch
from getok_core.rewards.dialogue import (STOP_REASONS, RefineState, advance, dialogue_over, refine_message, replay,
                                         score_dialogues, split_transcript, stage_turns, start_refinement)
from getok_core.data.writers import REFINE_PROMPT

V = GetokVocab(grid_size=10, offset_rounds=2)
W = H = 100


M1 = square(25, 54, 35, 64)
BOX1 = [0.25, 0.35, 0.55, 0.65]
GT1 = ground_truth([target(mask=M1, box=BOX1)], size=(W, H))
GT0 = ground_truth([], size=(W, H))
# box = BOX1 exactly (cell centres), one seg point at cell (5, 4): pixel (55, 45), just right of M1
PROPOSAL = "<think>a square</think><answer><box><grid2,3><grid5,6></box><seg><grid5,4></seg></answer>"


def offs(*moves):
    return format_offsets([[(0, 0), (0, 0), *moves]], V)


# ---------------------------------------------------------------------- start / stop reasons
@pytest.mark.parametrize("text, reason", [
    (PROPOSAL, ""),
    (PROPOSAL + "<|im_end|>", ""),
    ("", "unparsable"),
    ("the square on the left", "unparsable"),
    ("<answer><box><grid2,3><grid5,6></box><seg><grid5,4>", "truncated"),
    ("<answer><none></answer>", "no_target"),
    ("<answer></answer>", "no_target"),
    ("<answer><box><grid2,3></box></answer>", "unparsable"),
    ("<answer><box><grid2,3><grid5,6></box><seg><grid99,4></seg></answer>", "unparsable"),
])
def test_stop_reasons(text, reason):
    st_ = start_refinement(text, V)
    assert st_.stop_reason == reason
    assert st_.refinable == (reason == "")
    assert reason == "" or reason in STOP_REASONS
    if reason == "":
        assert st_.round == 1 and st_.num_points == 3 and len(st_.instances) == 1


def test_no_points_after_every_point_is_deleted():
    s = start_refinement("<answer><seg><grid5,4><grid1,1></seg></answer>", V)
    assert s.refinable and s.num_points == 2
    s2 = advance(s, format_offsets([[None, None]], V), V)
    assert s2.stop_reason == "no_points" and s2.round == 2
    assert advance(s2, "anything", V) is s2  # a stopped dialogue does not move


def test_advance_rounds_and_steps():
    s = start_refinement(PROPOSAL, V)
    p0 = np.array(s.instances[0].points[0])
    s1 = advance(s, offs((1, 0)), V)
    assert s1.round == 2 and s1.offsets == (offs((1, 0)),)
    np.testing.assert_allclose(s1.instances[0].points[0], p0 + [1 / 20, 0])  # round 1: 1 / (n 2)
    s2 = advance(s1, offs((-1, 1)), V)
    np.testing.assert_allclose(s2.instances[0].points[0], p0 + [1 / 20 - 1 / 40, 1 / 40])  # round 2: 1 / (n 4)
    assert s2.instances[0].box == s.instances[0].box
    # a malformed line leaves the geometry as it was, but the round is spent
    s3 = advance(s2, "<answer><offset><OFF0,0></offset></answer>", V)
    assert s3.instances == s2.instances and s3.round == 4


def test_refine_message():
    s = start_refinement(PROPOSAL, V)
    assert refine_message(s) == REFINE_PROMPT
    m2 = refine_message(advance(s, offs((1, 0)), V))
    assert m2.startswith(REFINE_PROMPT) and "Round 2" in m2


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "<box>", "</box>", "<seg>", "</seg>", "<grid1,2>",
                                 "<grid5,4>", "<none>", "<OFF1,0>", "<DELETE>", "<offset>", "</offset>", "\n",
                                 "x", "<think>", "</think>"]), max_size=25),
       st.lists(st.text(max_size=30), max_size=3))
def test_never_raises_and_is_deterministic(tokens, more):
    text = "".join(tokens)
    s = start_refinement(text, V)
    assert s.stop_reason in ("",) + STOP_REASONS
    for t in more + [text]:
        s = advance(s, t, V)
    r1 = score_dialogues([[text] + more], [GT1], V)[0]
    r2 = score_dialogues([[text] + more], [GT1], V)[0]
    assert r1.scores() == r2.scores()
    expected = GRID_COMPONENTS if not more else REFINE_COMPONENTS
    assert set(r1.components) == {k for k in expected if k not in ("mask", "mask_gain")}
    assert all(0.0 <= v <= 1.0 for v in r1.components.values())


# ---------------------------------------------------------------------- scoring
def test_one_turn_is_the_grid_reward():
    r = score_dialogues([[PROPOSAL]], [GT1], V)[0]
    g = score_grid_batch([PROPOSAL], [GT1], V)[0]
    assert r.scores() == g.scores()
    assert r.details["turns"] == 1 and r.details["stop_reason"] == ""


def test_two_turns_are_the_refine_reward():
    t2 = offs((-1, 0))  # (55, 45) -> (50, 45): enters M1
    r = score_dialogues([[PROPOSAL, t2]], [GT1], V)[0]
    ref = score_refine_batch([t2], [GT1], V, proposals=[PROPOSAL])[0]
    assert r.scores() == ref.scores()
    assert r.components["point"] == 1.0 and r.components["format"] == 1.0


def test_round_two_is_judged_from_the_refined_geometry():
    t2, t3 = offs((1, 0)), offs((-1, 0))
    # round 1 moved the point to (60, 45); round 2 (step 2.5) lands at (57.5, 45): still outside -> 0
    r = score_dialogues([[PROPOSAL, t2, t3]], [GT1], V)[0]
    assert r.components["point"] == pytest.approx(0.5)
    assert r.details["turns"] == 3
    # the same text as a first round from the proposal would have entered M1 (55 -> 50)
    assert score_dialogues([[PROPOSAL, t3]], [GT1], V)[0].components["point"] == 1.0
    # equal to score_refine_batch with prior_offsets (round 2)
    ref = score_refine_batch([t3], [GT1], V, proposals=[PROPOSAL], prior_offsets=[[t2]])[0]
    assert r.scores() == ref.scores()
    # round 2 from (55, 45) (round 1 kept it): -2.5 px -> (52.5, 45) enters M1
    assert score_dialogues([[PROPOSAL, offs((0, 0)), t3]], [GT1], V)[0].components["point"] == 1.0


@pytest.mark.parametrize("turn1", ["junk", "<answer><box><grid2,3><grid5,6></box><seg>",
                                   "<answer><seg><grid5,4></seg><seg></answer>"])
def test_degenerate_turn1_scores_zero_with_the_reason(turn1):
    r = score_dialogues([[turn1, offs((0, 0))]], [GT1], V)[0]
    assert set(r.components) == {"format", "point", "box"}
    assert r.overall == 0.0 and all(v == 0.0 for v in r.components.values())
    assert r.details["stop_reason"] in ("unparsable", "truncated")
    assert "cannot be refined" in r.errors[0]


def test_no_target_turn1_keeps_the_grid_verdict():
    none = "<think>nothing</think><answer><none></answer>"
    right = score_dialogues([[none, "<answer></answer>"]], [GT0], V)[0]
    assert right.components == {"format": 1.0, "point": 1.0, "box": 1.0}
    assert right.details["stop_reason"] == "no_target" and "grid" in right.details
    wrong = score_dialogues([[none, "<answer></answer>"]], [GT1], V)[0]
    assert wrong.components == {"format": 1.0, "point": 0.0, "box": 0.0}


def test_batch_mixes_kinds_in_order():
    dialogues = [[PROPOSAL], [PROPOSAL, offs((-1, 0))], ["junk", "x"], [PROPOSAL, offs((1, 0)), offs((-1, 0))]]
    out = score_dialogues(dialogues, [GT1] * 4, V)
    assert [r.details["turns"] for r in out] == [1, 2, 2, 3]
    assert [r.scores() for r in out] == [score_dialogues([d], [GT1], V)[0].scores() for d in dialogues]
    with pytest.raises(ValueError):
        score_dialogues(dialogues, [GT1], V)


def test_state_is_a_value():
    s = start_refinement(PROPOSAL, V)
    assert isinstance(s, RefineState) and s == start_refinement(PROPOSAL, V)
    with pytest.raises(Exception):
        s.turn1 = "x"


def test_stage_turns():
    t2, t3 = offs((1, 0)), offs((-1, 0))
    assert stage_turns([PROPOSAL, t2, t3], "grid") == [PROPOSAL]
    assert stage_turns([PROPOSAL, t2, t3], "refine") == [PROPOSAL, t2, t3]
    assert stage_turns([PROPOSAL], "refine") == [PROPOSAL, ""]
    assert stage_turns([], "grid") == [""]
    with pytest.raises(ValueError):
        stage_turns([PROPOSAL], "sft")
    # a refine-stage dialogue that ended after turn 1 gets the refinement components, all 0
    for turn1 in (PROPOSAL, "junk"):
        r = score_dialogues([stage_turns([turn1], "refine")], [GT1], V)[0]
        assert set(r.components) == {"format", "point", "box"} and r.overall == 0.0
    # a right <none> keeps its grid verdict
    r = score_dialogues([stage_turns(["<think>no</think><answer><none></answer>"], "refine")], [GT0], V)[0]
    assert r.components == {"format": 1.0, "point": 1.0, "box": 1.0}


def test_clean_answer_strips_trailing_end_of_turn_specials_only():
    from getok_core.rewards.dialogue import clean_answer

    assert clean_answer(PROPOSAL + "<|im_end|>") == PROPOSAL
    assert clean_answer(PROPOSAL + "<|im_end|>\n<|endoftext|> ") == PROPOSAL
    assert clean_answer("<|im_end|>" + PROPOSAL) == "<|im_end|>" + PROPOSAL  # only at the end
    assert clean_answer(None) == "" and clean_answer(b"x<|im_end|>") == "x"
    assert start_refinement(PROPOSAL + "<|im_end|>", V).refinable


# ---------------------------------------------------------------------- the turn loop the frameworks share
def test_replay_is_start_then_advance_per_round():
    t2, t3 = offs((1, 0)), offs((0, 1))
    assert replay([PROPOSAL, t2, t3], V) == advance(advance(start_refinement(PROPOSAL, V), t2, V), t3, V)
    assert replay([PROPOSAL], V) == start_refinement(PROPOSAL, V)
    assert replay([], V) == start_refinement("", V) and replay([], V).stop_reason == "unparsable"
    assert replay(["garbage", t2], V).stop_reason == "unparsable"  # a stopped state stays stopped


def test_dialogue_over():
    s = start_refinement(PROPOSAL, V)
    assert not dialogue_over(s, 1, 2) and dialogue_over(s, 2, 2) and dialogue_over(s, 1, 1)
    assert dialogue_over(s, 1, 3, cut=True)
    assert dialogue_over(start_refinement("<answer><none></answer>", V), 1, 3)
    deleted = advance(start_refinement("<answer><seg><grid5,4></seg></answer>", V), format_offsets([[None]], V), V)
    assert deleted.stop_reason == "no_points" and dialogue_over(deleted, 2, 3)


def test_split_transcript():
    t2 = offs((0, 0))
    transcript = PROPOSAL + "user\nRefine each point.\nassistant\n" + t2
    first, rest = split_transcript(transcript)
    assert first == PROPOSAL[PROPOSAL.index("<answer>"):] and rest == "user\nRefine each point.\nassistant\n" + t2
    assert split_transcript(PROPOSAL) == (None, PROPOSAL)  # one answer block: a single answer
    assert split_transcript("<answer><answer>") == (None, "<answer><answer>")  # never closed
    assert split_transcript(None) == (None, "") and split_transcript(b"x") == (None, "x")
