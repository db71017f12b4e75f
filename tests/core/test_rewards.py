"""GRPO rewards (SPEC §6): hand-computed values, batch decoding, adversarial outputs.

Hand-computed cases use a 100 x 100 image and a 10 x 10 grid, so a cell is 10 px, a cell centre
(x, y) sits at pixel (10x + 5, 10y + 5) and a round-1 offset step is 5 px. Target M1 is the
square of columns 25..54, rows 35..64 (box (0.25, 0.35, 0.55, 0.65), 900 px); M2 is columns
70..89, rows 70..89. Masks come from the real RegionDecoder on a flat image where each target is
a uniformly coloured square, so its regions are exactly the squares and the background.
"""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from testkit import ground_truth, square, target

from getok_core import GetokVocab, format_offsets, parse_answer
from getok_core.codec.coords import point_pixel
from getok_core.codec.text import as_text
from getok_core.data.masks import decode_rle, encode_rle, rle_string_counts
from getok_core.decoders import MaskDecoder, make_decoder
from getok_core.rewards import (GRID_COMPONENTS, REFINE_COMPONENTS, TASK_ELEMENTS, GridWeights, RefineWeights,
                                box_iou, boxscore, clear_cache, grid_format_ok, mask_reward, nonrepeat_score,
                                score_grid, score_grid_batch, score_refine, score_refine_batch, setup_from_kwargs)
from getok_core.rewards.answers import GridAnswer, cells_kinds, fast_answer, read_answer
from getok_core.rewards.matching import Predictions, match_batch, mean_nn_batch
from getok_core.rewards.params import DEFAULT_PARAMS, RewardParams
from getok_core.rewards.truth import TruthCache, read_truths, rle_string_runs

V = GetokVocab(grid_size=10)
W = H = 100
Q3 = (1 - math.exp(-3 / 5)) - 0.02 * 3  # points quality of 3 well-spread points all inside: 0.391188


M1 = square(25, 54, 35, 64)
M2 = square(70, 89, 70, 89)
BOX1 = [0.25, 0.35, 0.55, 0.65]
BOX2 = [0.7, 0.7, 0.9, 0.9]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    img = np.full((H, W, 3), 200, np.uint8)
    img[M1] = (200, 30, 30)
    img[M2] = (30, 30, 200)
    path = str(tmp_path_factory.mktemp("img") / "scene.png")
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def region():
    return make_decoder("region")


def gt(targets, image_path="", task="seg", extra=None, ignore=None, size=(W, H)):
    """A ground truth through ``testkit.ground_truth``; its image key is the image's file name."""
    return ground_truth(targets, size=size, task=task, image_path=image_path,
                        image_key=os.path.basename(image_path) or "k", ignore=ignore, extra=extra)


def ans(lines, think="It is the square."):
    body = "\n".join(lines)
    return f"<think>{think}</think><answer>{body}</answer>"


PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"
SHIFTED = "<box><grid3,3><grid6,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"
SPURIOUS = "<box><grid8,0><grid9,1></box><seg><grid8,0></seg>"


def approx(x):
    return pytest.approx(x, abs=1e-9)


# ---------------------------------------------------------------------- small functions
def test_pieces():
    assert nonrepeat_score("I see it. I see it!") == 0.0
    assert nonrepeat_score("I see it. i SEE it ") == 0.0  # stripped and case-folded
    assert nonrepeat_score("One. Two? Three!\nFour") == 1.0
    assert nonrepeat_score("...!!\n\n") == 1.0  # empty sentences do not count
    assert nonrepeat_score(b"a.a") == 0.0 and nonrepeat_score(None) == 1.0
    assert [mask_reward(x) for x in (0, 0.25, 0.5, 0.625, 0.75, 0.825, 0.9, 1)] == [
        approx(0), approx(0.1), approx(0.2), approx(0.4), approx(0.6), approx(0.8), approx(1), approx(1)]
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == approx(1 / 3)
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    # corners 10 px off each (L1 10 + 10 = 20 -> mean per corner 10); diag of a 40 x 30 box: 50
    assert boxscore((0.1, 0.1, 0.5, 0.4), (0.0, 0.1, 0.4, 0.4), (100, 100)) == approx(1 - 10 / (0.25 * 50))
    assert boxscore((0.5, 0.5, 0.9, 0.9), (0, 0, 0.1, 0.1), (100, 100)) == 0.0  # clipped at 0


def test_fast_parse_edge_cases():
    for body in ("", "<none>", "\n", "\n\n", PERFECT + "\n", "\n" + PERFECT + "\n\n" + SHIFTED):
        text = f"<think>t</think><answer>{body}</answer>"
        fast = fast_answer(text, V)
        assert fast is not None, body
        assert fast == GridAnswer.of(parse_answer(text, V)) == read_answer(text, V)
    for text in ("<answer>x</answer>", "<answer><grid03,4></answer>", "<answer>" + PERFECT,
                 "<answer>a</answer><answer>" + PERFECT + "</answer>", "<answer>\x00</answer>",
                 "<answer><point><grid1" + "0" * 5000 + ",1></point></answer>"):
        assert fast_answer(text, V) is None
        assert fast_answer(text, GetokVocab(grid_size=200)) is None  # past the table of spellings
        assert read_answer(text, V) == GridAnswer.of(parse_answer(text, V))


def test_huge_inputs_score_in_range():
    """Huge and degenerate responses score without error, every component in [0, 1] (their
    timing is a row of bench/bench_rewards.py: huge adversarial inputs)."""
    g = gt([target(M1, BOX1)])
    cases = ["<think>a</think><answer>" + (PERFECT + "\n") * 5000 + "</answer>",
             "<answer><line>" + "".join(f"<grid{i % 10},{i * 7 % 10}>" for i in range(20000)) + "</line></answer>",
             "<answer><box><grid1,1><grid2,2></box><seg>" + "<grid1,1>" * 50000 + "</seg></answer>",
             "It is. " * 100000, "<" * 300000, "<grid1,1>" * 50000]
    for text in cases:
        r = score_grid(text, g, V)
        rr = score_refine(text, g, V, proposal=PROPOSAL)
        assert all(0 <= v <= 1 for v in [*r.components.values(), *rr.components.values()])


def test_rle_runs_match_reference_decoder():
    rng = np.random.default_rng(0)
    masks = [rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random() for _ in range(60)]
    masks += [np.zeros((5, 7), bool), np.ones((5, 7), bool), square(0, 99, 0, 99), M1]
    strings = [encode_rle(m)["counts"] for m in masks]
    for got, s in zip(rle_string_runs(strings), strings):
        assert got.tolist() == rle_string_counts(s).tolist()


def test_truth_cache_is_bounded_and_clearable():
    cache = TruthCache(size=2)
    g = [gt([target(M1, BOX1)], extra={"i": i}) for i in range(3)]
    a = read_truths(g, V, cache=cache)
    assert len(cache) == 2 and cache.get((g[0], 10)) is None and cache.get((g[2], 10)) is a[2]  # LRU
    assert read_truths([g[2], g[2]], V, cache=cache) == [a[2], a[2]]  # read once
    assert not read_truths(["garbage"], V, cache=cache)[0].ok and len(cache) == 2  # rejected: not kept
    cache.clear()
    assert len(cache) == 0
    clear_cache()  # the process-wide cache of the reward functions


# ---------------------------------------------------------------------- grid stage, hand computed
def test_grid_perfect_answer(image_path, region):
    g = gt([target(M1, BOX1)], image_path)
    r = score_grid(ans([PERFECT]), g, V, decoder=region)
    # box: IoU 1, boxscore 1. points: 3 points inside, nearest neighbours 10 px apart, spread
    # min(1, 10 / (0.2 * sqrt(900))) = 1, q = (1 - e^-0.6) - 0.06. mask: the square itself.
    assert r.components == {"format": 1.0, "nonrepeat": 1.0, "box": 1.0, "mask": 1.0, "points": approx(Q3)}
    assert r.overall == approx(0.5 + 0.5 + 1 + 1 + Q3)
    assert r.errors == []
    no_mask = score_grid(ans([PERFECT]), g, V)
    assert "mask" not in no_mask.components and no_mask.overall == approx(2 + Q3)


def test_grid_shifted_box(image_path, region):
    r = score_grid(ans([SHIFTED]), gt([target(M1, BOX1)], image_path), V, decoder=region)
    # box (0.35, 0.35, 0.65, 0.65): IoU 0.06 / 0.12 = 0.5; each corner 10 px off, diag 30 sqrt 2
    bs = 1 - 10 / (0.25 * math.hypot(30, 30))
    assert r.components["box"] == approx(0.5 * 0.5 + 0.5 * bs)
    # the square clipped to the box: 600 px, IoU 600 / 900, between the knots 0.5 and 0.75
    assert r.details["mask_ious"] == [approx(2 / 3)]
    assert r.components["mask"] == approx(0.2 + (2 / 3 - 0.5) / 0.25 * 0.4)
    assert r.components["points"] == approx(Q3)


def test_grid_extra_instance(image_path, region):
    r = score_grid(ans([PERFECT, SPURIOUS]), gt([target(M1, BOX1)], image_path), V, decoder=region)
    assert r.details["pairs"] == [(0, 0)]
    # divided by max(#pred, #GT) = 2; points: (3 q) / 3 * (1 matched / 2)
    assert r.components == {"format": 1.0, "nonrepeat": 1.0, "box": 0.5, "mask": 0.5, "points": approx(Q3 / 2)}


def test_grid_missed_instance(image_path, region):
    r = score_grid(ans([PERFECT]), gt([target(M1, BOX1), target(M2, BOX2)], image_path), V, decoder=region)
    assert r.details["pairs"] == [(0, 0)]
    assert r.components == {"format": 1.0, "nonrepeat": 1.0, "box": 0.5, "mask": 0.5, "points": approx(Q3 / 2)}


def test_grid_matching_is_order_free(image_path, region):
    second = "<box><grid7,7><grid8,8></box><seg><grid7,7><grid8,8></seg>"
    g = gt([target(M1, BOX1), target(M2, BOX2)], image_path)
    a = score_grid(ans([PERFECT, second]), g, V, decoder=region)
    b = score_grid(ans([second, PERFECT]), g, V, decoder=region)
    assert a.details["pairs"] == [(0, 0), (1, 1)] and b.details["pairs"] == [(0, 1), (1, 0)]
    assert a.components == b.components
    # M2's box (0.7, 0.7, 0.9, 0.9) is cells 7..8: decoded (0.75, 0.75, 0.85, 0.85): IoU 0.25;
    # corners 10 px off against 0.25 * diag = 7.07 px: boxscore max(0, 1 - 1.41) = 0
    assert a.components["box"] == approx((1 + 0.5 * 0.25 + 0) / 2)
    # the second instance's 2 points, 14.1 px apart inside a 400 px square: spread 1
    q2 = (1 - math.exp(-2 / 5)) - 0.04
    assert a.components["points"] == approx((3 * Q3 + 2 * q2) / 5)


def test_grid_no_target(image_path, region):
    g = gt([], image_path)
    for answer in (ans(["<none>"], "Nothing matches."), ans([""], "Nothing matches.")):
        r = score_grid(answer, g, V, decoder=region)
        assert r.components == {"format": 1.0, "nonrepeat": 1.0, "box": 1.0, "mask": 1.0, "points": 1.0}
        assert r.overall == approx(4.0)
    wrong = score_grid(ans([PERFECT]), g, V, decoder=region)
    assert wrong.components == {"format": 1.0, "nonrepeat": 1.0, "box": 0.0, "mask": 0.0, "points": 0.0}
    # a GT with targets answered by <none>
    missed = score_grid(ans(["<none>"]), gt([target(M1, BOX1)], image_path), V, decoder=region)
    assert missed.components == {"format": 1.0, "nonrepeat": 1.0, "box": 0.0, "mask": 0.0, "points": 0.0}


def test_grid_format_rules():
    g = gt([target(M1, BOX1)])
    fmt = lambda text, task_gt=g: score_grid(text, task_gt, V).components["format"]  # noqa: E731
    assert fmt(ans([PERFECT])) == 1.0
    assert fmt(ans([PERFECT]) + "<|im_end|>\n<|endoftext|>") == 1.0  # chat special tokens kept by a decoder
    assert fmt("  \n" + ans([PERFECT]) + "\n") == 1.0
    assert fmt(f"<answer>{PERFECT}</answer>") == 0.0  # no think
    assert fmt("Sure! " + ans([PERFECT])) == 0.0  # text outside
    assert fmt(ans([PERFECT]) + ans([PERFECT])) == 0.0  # twice
    assert fmt(ans([PERFECT + PERFECT])) == 0.0  # two instances on one line
    assert fmt(ans(["<box><grid2,3><grid5,6></box>"])) == 0.0  # a seg task needs <box> and <seg>
    assert fmt(ans(["<box><grid2,3><grid5,6></box>"]), gt([target(box=BOX1)], task="box")) == 1.0
    assert fmt(ans([PERFECT + " the cat"])) == 0.0  # stray text
    assert fmt(ans(["<box><grid2,3><grid5,6></box><seg><grid3,4><grid3,4></seg>"])) == 0.0  # repeated cell
    assert fmt(ans(["<box><grid2,3><grid12,6></box><seg><grid3,4></seg>"])) == 0.0  # off the grid
    assert fmt("<think>a</think><answer>" + PERFECT) == 0.0  # unclosed


def test_grid_format_without_thinking():
    """``RewardParams(think=False)`` (setup key ``think: false``): the answer block alone is the
    format; a thinking block, text around the answer, a second answer or stray text after
    ``</answer>`` (a model that did not stop) are not; the other components are unchanged."""
    g = gt([target(M1, BOX1)])
    no_think = RewardParams(think=False)
    fmt = lambda text: score_grid(text, g, V, params=no_think).components["format"]  # noqa: E731
    bare = f"<answer>{PERFECT}</answer>"
    assert fmt(bare) == 1.0 and fmt(" \n" + bare + "<|im_end|>\n") == 1.0
    assert fmt(ans([PERFECT])) == 0.0  # a thinking block
    assert fmt("</think>" + bare) == 0.0 and fmt(bare.replace("</answer>", "<think></answer>")) == 0.0
    assert fmt("Sure! " + bare) == 0.0 and fmt(bare + bare) == 0.0
    assert fmt(bare + "<box><grid2,3><grid5,6></box></answer>") == 0.0  # did not stop
    assert fmt("<answer><none></answer>") == 1.0 and fmt("<answer></answer>") == 1.0
    assert fmt(f"<answer>{PERFECT + ' the cat'}</answer>") == 0.0  # stray text inside
    with_think, without = score_grid(ans([PERFECT]), g, V), score_grid(bare, g, V, params=no_think)
    assert with_think.components == without.components  # format 1 in both, same geometry
    assert score_grid(bare, g, V).components == {**without.components, "format": 0.0}
    assert setup_from_kwargs({}).params.think is True
    for off in (False, "false", "0", " False "):
        assert setup_from_kwargs({"think": off}).params == no_think
    assert setup_from_kwargs({"think": "true"}).params.think is True
    for bad in ("no", 2, None, "yes"):
        with pytest.raises(ValueError, match="think"):
            setup_from_kwargs({"think": bad})
    with pytest.raises(ValueError, match="think"):
        RewardParams(think="false")


def test_nonrepeat_component():
    g = gt([target(M1, BOX1)])
    assert score_grid(ans([PERFECT], "It is red. It is red."), g, V).components["nonrepeat"] == 0.0
    assert score_grid(ans([PERFECT, PERFECT]), g, V).components["nonrepeat"] == 0.0  # duplicate lines


def test_unparsable_answer_scores_zero_but_nonrepeat():
    g = gt([target(M1, BOX1)])
    for text in ("", "I cannot tell.", "<answer><box><grid2", "\x00\xff" * 10, "<box></box>" * 3):
        r = score_grid(text, g, V)
        assert r.components == {"format": 0.0, "nonrepeat": r.components["nonrepeat"], "box": 0.0, "points": 0.0}
    assert score_grid("I cannot tell.", g, V).components["nonrepeat"] == 1.0


def test_broken_ground_truth():
    for bad in ("not json", "{}", json.dumps({"version": 2}), None, 17,
                json.dumps({"version": 1, "sample_id": "t", "image_key": "k", "image_path": "", "image_size": [W, H],
                            "task": "seg", "expression": "x", "no_target": False, "ignore": None, "extra": {},
                            "targets": [{"mask": {"size": [H, W], "counts": "!!"}, "box": None, "points": [],
                                         "polyline": None}]})):
        r = score_grid(ans([PERFECT]), bad, V)
        assert r.overall == 0.0 and set(r.components.values()) == {0.0}
        assert set(r.components) == {"format", "nonrepeat", "box", "points"}
        assert r.errors and r.errors[0].startswith("ground truth: ")
        rr = score_refine(format_offsets([[(0, 0)] * 5], V), bad, V, proposal=ans([PERFECT]))
        assert rr.overall == 0.0 and set(rr.components) == {"format", "point", "box"}


def test_point_and_box_tasks():
    # point task: a GT point; the region is the points within half a cell diagonal
    g = gt([target(points=[(0.33, 0.47)])], task="point")
    r = score_grid(ans(["<point><grid3,4></point>"]), g, V)  # cell centre (0.35, 0.45)
    assert r.components["format"] == 1.0 and r.components["box"] == 0.0
    assert r.components["points"] == approx((1 - math.exp(-1 / 5)) - 0.02)
    far = score_grid(ans(["<point><grid6,4></point>"]), g, V)
    assert far.components["points"] == 0.0
    # box task without a mask: the box is the region points must hit
    gb = gt([target(box=BOX1)], task="box")
    rb = score_grid(ans(["<box><grid2,3><grid5,6></box>"]), gb, V)
    assert rb.components["box"] == 1.0 and rb.components["format"] == 1.0


def test_ignore_region_is_left_out_of_mask_iou(image_path, region):
    ignore = square(45, 54, 35, 64)  # the right third of M1
    g = gt([target(M1, BOX1)], image_path, ignore=ignore)
    r = score_grid(ans([SHIFTED]), g, V, decoder=region)
    # prediction: columns 35..54 of the square; without the ignored columns 45..54: 10 x 30 of 20 x 30
    assert r.details["mask_ious"] == [approx(0.5)]


# ---------------------------------------------------------------------- decoding in batches
class Counting(MaskDecoder):
    """Delegates to another decoder and counts ``decode`` calls and requests."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.requests = inner, 0, 0

    def decode(self, requests):
        self.calls += 1
        self.requests += len(requests)
        return self.inner.decode(requests)


class Failing(MaskDecoder):
    def __init__(self, bad_key="", shape=None):
        super().__init__()
        self.bad_key, self.shape = bad_key, shape

    def decode_group(self, group):
        if group.image_key == self.bad_key:
            raise RuntimeError("no such image")
        return [np.zeros(self.shape or (H, W), bool) for _ in group.instances]


def test_one_decode_call_per_batch(image_path, tmp_path):
    other = str(tmp_path / "other.png")
    Image.open(image_path).save(other)
    region = make_decoder("region")
    dec = Counting(region)
    g1, g2 = gt([target(M1, BOX1)], image_path), gt([target(M1, BOX1)], other)
    responses = [ans([PERFECT]), ans([SHIFTED]), ans([PERFECT]), ans([PERFECT, SPURIOUS])] * 2
    truths = [g1] * 4 + [g2] * 4
    out = score_grid_batch(responses, truths, V, decoder=dec)
    assert dec.calls == 1
    assert dec.requests == 4  # (image, instance) pairs decoded once: PERFECT and SHIFTED per image
    assert region.counters.encoder_calls == 2  # each image segmented once
    assert [r.components for r in out[:4]] == [r.components for r in out[4:]]
    assert out[0].components == score_grid(responses[0], g1, V, decoder=region).components


def test_decoder_failures_are_errors_not_exceptions(image_path):
    g_ok, g_bad = gt([target(M1, BOX1)], "ok.png"), gt([target(M1, BOX1)], "bad.png")
    out = score_grid_batch([ans([PERFECT])] * 2, [g_ok, g_bad], V, decoder=Failing(bad_key="bad.png"))
    assert out[0].errors == [] and out[0].components["mask"] == 0.0  # empty masks: IoU 0
    assert out[1].components["mask"] == 0.0 and "mask decoder failed" in out[1].errors[0]
    assert out[1].components["box"] == 1.0  # the rest is scored
    wrong = score_grid(ans([PERFECT]), g_ok, V, decoder=Failing(shape=(5, 5)))
    assert "shape" in wrong.errors[0] and wrong.components["mask"] == 0.0


# ---------------------------------------------------------------------- refinement stage
PROPOSAL = ans(["<box><grid2,3><grid5,6></box><seg><grid2,4><grid5,4><grid3,5><grid8,8><grid5,6><grid4,4></seg>"])


def test_refine_points_leave_enter_delete(image_path, region):
    g = gt([target(M1, BOX1)], image_path, extra={"proposal": PROPOSAL})
    offsets = [[(0, 0), (0, 0),  # box corners: already the GT box
                (-1, 0),   # (25, 45) inside -> (20, 45): leaves M1          -1
                (-1, 0),   # (55, 45) outside -> (50, 45): enters            +1
                (0, 0),    # (35, 55) stays inside                           +1
                None,      # (85, 85) far from M1: valid deletion            +1
                None,      # (55, 65): (50, 60) is in M1: invalid deletion    0
                None]]     # (45, 45) inside, deleted                        -1
    r = score_refine(format_offsets(offsets, V), g, V)
    assert r.components["format"] == 1.0
    assert r.components["point"] == approx((1 / 6 + 1) / 2)
    assert r.components["box"] == 1.0  # equal IoU, and no corner move could raise it
    assert "mask_gain" not in r.components
    # the proposal can also be passed explicitly
    r2 = score_refine(format_offsets(offsets, V), gt([target(M1, BOX1)], image_path), V, proposal=PROPOSAL)
    assert r2.components == r.components


def test_refine_box_and_mask_gain(image_path, region):
    # proposal box cells (2,3)-(6,7) = (0.25, 0.35, 0.65, 0.75): IoU 0.09 / 0.16; a seg point in
    # the square and one in the background, so the region mask is the whole box (IoU 900 / 1600)
    proposal = ans(["<box><grid2,3><grid6,7></box><seg><grid3,4><grid6,4></seg>"])
    g = gt([target(M1, BOX1)], image_path, extra={"proposal": proposal})
    good = format_offsets([[(0, 0), (-1, -1), (0, 0), None]], V)
    r = score_refine(good, g, V, decoder=region)
    # refined box (0.25, 0.35, 0.60, 0.70) IoU 0.09 / 0.1225 > 0.5625; the background point is a
    # valid deletion; the refined mask is the square: gain (1 - 0.5625) / (1 - 0.5625) = 1
    assert r.details["mask_ious"] == [(approx(0.5625), approx(1.0))]
    assert r.components == {"format": 1.0, "point": 1.0, "box": 1.0, "mask_gain": 1.0}
    assert r.overall == approx(3.5)
    idle = score_refine(format_offsets([[(0, 0)] * 4], V), g, V, decoder=region)
    # nothing moved: IoU equal though improvable (box 0); point rewards +1 (stays inside) and 0
    # (the background point stays outside): mean 0.5, rescaled 0.75; mask unchanged: gain 0 -> 0.5
    assert idle.components == {"format": 1.0, "point": 0.75, "box": 0.0, "mask_gain": 0.5}
    worse = score_refine(format_offsets([[(0, 0), (1, 1), (1, 0), (0, 0)]], V), g, V, decoder=region)
    # a larger box: IoU drops (box 0); the mask is still the whole (larger) box: IoU 900 / 2025
    assert worse.components["box"] == 0.0 and worse.components["point"] == 0.75
    assert worse.details["mask_ious"] == [(approx(0.5625), approx(900 / 2025))]
    assert worse.components["mask_gain"] == approx(((900 / 2025 - 0.5625) / 0.4375 + 1) / 2)


def test_refine_format_and_unparsable(image_path, region):
    g = gt([target(M1, BOX1)], image_path, extra={"proposal": PROPOSAL})
    good = format_offsets([[(0, 0)] * 8], V)
    assert score_refine(good, g, V).components["format"] == 1.0
    assert score_refine("<think>fine</think>" + good + "<|im_end|>", g, V).components["format"] == 1.0
    for bad in (format_offsets([[(0, 0)] * 7], V),                        # one token short
                format_offsets([[(0, 0)] * 8, [(0, 0)]], V),              # an extra line
                format_offsets([[None] + [(0, 0)] * 7], V),               # <DELETE> on a box corner
                good.replace("</offset>", "</offset> ok"),                # stray text
                good + " and more",
                "<answer><offset><OFF0,0></offset></answer>" + good):     # two answer blocks
        assert score_refine(bad, g, V).components["format"] == 0.0, bad
    for junk in ("", "no idea", "<answer><offset>", "\xff\x00"):
        r = score_refine(junk, g, V, decoder=region)
        assert r.components == {"format": 0.0, "point": 0.0, "box": 0.0, "mask_gain": 0.0}


def test_refine_without_proposal():
    r = score_refine(format_offsets([[(0, 0)] * 2], V), gt([target(M1, BOX1)]), V)
    assert r.overall == 0.0 and "proposal" in r.errors[0]
    r = score_refine("x", gt([target(M1, BOX1)], extra={"proposal": ans(["<none>"])}), V)
    assert r.overall == 0.0 and "no instance" in r.errors[0]


def test_refine_unmatched_proposal_instance(image_path, region):
    # a spurious proposal instance: deleting its points is right, moving them is neutral
    proposal = ans([PERFECT, SPURIOUS])
    g = gt([target(M1, BOX1)], image_path, extra={"proposal": proposal})
    r = score_refine(format_offsets([[(0, 0)] * 5, [(0, 0), (0, 0), None]], V), g, V, decoder=region)
    assert r.details["target_of"] == [0, None]
    assert r.components["point"] == 1.0 and r.components["box"] == 1.0
    assert r.components["mask_gain"] == 0.5


# ---------------------------------------------------------------------- weights, setup
def test_weights_and_setup():
    g = gt([target(M1, BOX1)])
    r = score_grid(ans([PERFECT]), g, V, weights={"format": 0, "nonrepeat": 0, "box": 2, "points": 0})
    assert r.overall == approx(2.0)
    with pytest.raises(ValueError):
        score_grid(ans([PERFECT]), g, V, weights={"bogus": 1})
    assert sum(vars(GridWeights()).values()) == 4.0 and sum(vars(RefineWeights()).values()) == 3.5
    with pytest.raises(ValueError):
        setup_from_kwargs({"checkpoint": "/x"})  # decoder arguments without a decoder
    with pytest.raises(ValueError):
        setup_from_kwargs({"stage": "third"})
    s = setup_from_kwargs({"decoder": "region", "grid_size": 16, "weights": {"mask": 3}})
    assert s.vocab.grid_size == 16 and s.grid_weights.mask == 3 and s.decoder is not None
    assert setup_from_kwargs({"decoder": "region", "grid_size": 16}).decoder is s.decoder  # built once


# ---------------------------------------------------------------------- internals against references
def _reference_match(text, g):
    """SPEC §6's similarity written plainly (decoded masks, python loops) + scipy."""
    from scipy.optimize import linear_sum_assignment

    p = parse_answer(text, V)
    gtd = json.loads(g)
    masks = [decode_rle(t["mask"]) for t in gtd["targets"]]
    boxes = [t["box"] for t in gtd["targets"]]
    s = np.zeros((len(p.instances), len(masks)))
    for i, inst in enumerate(p.instances):
        pts = list(inst.points)
        for j, (m, b) in enumerate(zip(masks, boxes)):
            hit = sum(m[point_pixel(uv, (W, H))] for uv in pts) / len(pts) if pts else 0.0
            s[i, j] = 0.5 * box_iou(inst.box, b) + 0.3 * hit + 0.2 * boxscore(inst.box, b, (W, H))
    rows, cols = linear_sum_assignment(1 - s)
    return list(zip(rows.tolist(), cols.tolist())), s


cell = st.tuples(st.integers(0, 9), st.integers(0, 9))


@settings(max_examples=400)
@given(st.lists(st.tuples(cell, cell, st.lists(cell, min_size=1, max_size=12, unique=True)), min_size=1,
                max_size=4))
def test_batched_matching_equals_reference(insts):
    lines = []
    for a, b, seg in insts:
        (x1, x2), (y1, y2) = sorted((a[0], b[0])), sorted((a[1], b[1]))
        lines.append(f"<box><grid{x1},{y1}><grid{x2},{y2}></box><seg>" + "".join(f"<grid{x},{y}>" for x, y in seg)
                     + "</seg>")
    text = ans(lines)
    g = gt([target(M1, BOX1), target(M2, BOX2)])
    truth = read_truths([g], V, cache=None)[0]
    preds = Predictions.of(fast_answer(text, V).cells, V)
    m = match_batch([(preds, truth)], DEFAULT_PARAMS)[0]
    ref_pairs, s = _reference_match(text, g)
    assert m.pairs == ref_pairs
    assert np.allclose(0.5 * m.iou + 0.3 * m.hit + 0.2 * m.boxscore, s)
    nn = mean_nn_batch([(preds, (W, H))])[0]
    for i, m in enumerate(preds.counts):
        px = preds.points_of(i) * W
        if m < 2:
            assert nn[i] == 0.0
        else:
            d = np.hypot(px[:, None, 0] - px[None, :, 0], px[:, None, 1] - px[None, :, 1])
            np.fill_diagonal(d, np.inf)
            assert nn[i] == pytest.approx(d.min(axis=1).mean())


# ---------------------------------------------------------------------- adversarial (hypothesis)
POOL = ["<think>", "</think>", "<answer>", "</answer>", "<box>", "</box>", "<seg>", "</seg>", "<point>",
        "</point>", "<line>", "</line>", "<poly>", "</poly>", "<offset>", "</offset>", "<none>", "<DELETE>",
        "<grid3,4>", "<grid0,0>", "<grid9,9>", "<grid5,6>", "<grid2,3>", "<grid10,3>", "<grid-1,2>",
        "<grid 3 , 4>", "<grid03,4>", "<OFF1,0>", "<OFF0,0>", "<OFF-1,1>", "<OFF2,0>", "\n", " ", ".", "the cat.",
        "<|im_end|>", "<", ">", "<grid", "\x00", "é", "<think>x</think><answer>"]
soup = st.lists(st.sampled_from(POOL), max_size=60).map("".join)
texts = st.one_of(
    soup,
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=100),
    st.tuples(st.sampled_from(POOL), st.integers(1, 3000)).map(lambda t: t[0] * t[1]),  # repeated tokens
    st.tuples(soup, st.integers(1, 200)).map(lambda t: t[0] * t[1]),  # huge soups
    st.just(""),
    st.builds(lambda a, b: ans([a]) + b, st.sampled_from([PERFECT, SHIFTED, SPURIOUS]), soup),
)

GTS = [gt([target(M1, BOX1)]), gt([target(M1, BOX1), target(M2, BOX2)]), gt([]),
       gt([target(box=BOX1)], task="box"), gt([target(points=[(0.3, 0.4)]), target(points=[(0.7, 0.8)])], task="point"),
       gt([target(polyline=[[0.1, 0.1], [0.5, 0.9]])], task="line"),
       gt([target(M1, BOX1)], ignore=M2), "garbage", None,
       gt([target(M1, BOX1)], extra={"proposal": PROPOSAL}), gt([target(M1, None)])]


def _check(results, names, weights, with_mask, mask_name):
    for r in results:
        assert set(r.components) == {k for k in names if with_mask or k != mask_name}
        for v in r.components.values():
            assert isinstance(v, float) and 0.0 <= v <= 1.0
        top = sum(getattr(weights, k) for k in r.components)
        assert 0.0 <= r.overall <= top + 1e-9


@settings(max_examples=3000)
@given(texts, st.sampled_from(range(len(GTS))))
def test_grid_adversarial(text, gi):
    g = GTS[gi]
    a = score_grid_batch([text, text, ans([PERFECT])], [g, g, g], V)
    clear_cache()
    b = score_grid_batch([text], [g], V)
    _check(a + b, GRID_COMPONENTS, GridWeights(), False, "mask")
    assert a[0].scores() == a[1].scores() == b[0].scores()  # same input, same output


@settings(max_examples=1500)
@given(texts, st.sampled_from([0, 1, 2, 6, 10]))
def test_grid_adversarial_with_decoder(image_path, region, text, gi):
    g = json.loads(GTS[gi])
    g["image_path"] = image_path
    g = json.dumps(g)
    a = score_grid_batch([text, ans([SHIFTED])], [g, g], V, decoder=region)
    b = score_grid_batch([text], [g], V, decoder=region)
    _check(a + b, GRID_COMPONENTS, GridWeights(), True, "mask")
    assert a[0].scores() == b[0].scores()


offset_rows = st.lists(st.lists(st.one_of(st.none(), st.tuples(st.integers(-1, 1), st.integers(-1, 1))),
                                max_size=10), max_size=3)
refine_texts = st.one_of(texts, offset_rows.map(lambda rows: format_offsets(rows, V)),
                         st.tuples(offset_rows, soup).map(lambda t: format_offsets(t[0], V) + t[1]))
proposals = st.one_of(st.sampled_from([PROPOSAL, ans([PERFECT, SPURIOUS]), ans([SHIFTED]), None]), texts)


@settings(max_examples=2500)
@given(refine_texts, proposals, st.sampled_from(range(len(GTS))), st.booleans())
def test_refine_adversarial(image_path, region, text, proposal, gi, with_mask):
    g = json.loads(GTS[gi]) if GTS[gi] and GTS[gi].startswith("{") else GTS[gi]
    if isinstance(g, dict):
        g["image_path"] = image_path
        g = json.dumps(g)
    dec = region if with_mask else None
    a = score_refine_batch([text, text], [g, g], V, proposals=[proposal, proposal], decoder=dec)
    b = score_refine(text, g, V, proposal=proposal, decoder=dec)
    _check(a + [b], REFINE_COMPONENTS, RefineWeights(), with_mask, "mask_gain")
    assert a[0].scores() == a[1].scores() == b.scores()


def _mutations(text):
    return st.sampled_from([text, text.replace("\n", "\n\n"), text.replace("<grid", "<grid0", 1), text + "\n",
                            text.replace("</seg>", "</seg> ", 1), text.replace("<box>", "<box><grid1,1>", 1),
                            text.replace("<answer>", "<answer>\n", 1), text.replace("</answer>", "<none></answer>"),
                            text.replace("<seg>", "<seg><grid9,9><grid9,9>", 1), text.replace(">", "> ", 1)])


answers = st.lists(st.tuples(st.one_of(st.none(), st.tuples(cell, cell)), st.lists(cell, max_size=6, unique=True),
                             st.one_of(st.none(), cell),
                             st.one_of(st.none(), st.lists(cell, min_size=2, max_size=4, unique=True)),
                             st.one_of(st.none(), st.lists(cell, min_size=3, max_size=5, unique=True))),
                   max_size=4)


def _canonical(parts):
    lines = []
    for box, seg, point, line, poly in parts:
        s = ""
        if point is not None:
            s += f"<point><grid{point[0]},{point[1]}></point>"
        if box is not None:
            (x1, x2), (y1, y2) = sorted((box[0][0], box[1][0])), sorted((box[0][1], box[1][1]))
            s += f"<box><grid{x1},{y1}><grid{x2},{y2}></box>"
        for tag, cells in (("seg", seg or None), ("line", line), ("poly", poly)):
            if cells:
                s += f"<{tag}>" + "".join(f"<grid{x},{y}>" for x, y in cells) + f"</{tag}>"
        if s:
            lines.append(s)
    return ans(lines) if lines else ans(["<none>"])


@settings(max_examples=1500)
@given(answers.map(_canonical).flatmap(lambda t: st.tuples(st.just(t), _mutations(t))))
def test_fast_parse_agrees_with_parse_answer(pair):
    canonical, text = pair
    assert fast_answer(canonical, V) is not None  # the canonical form takes the fast path
    fast = fast_answer(text, V)
    if fast is not None:
        assert fast == GridAnswer.of(parse_answer(text, V))


V_BIG = GetokVocab(grid_size=200)  # past the fast path's table of spellings (n <= 128)
BIG_POOL = ["<grid199,3>", "<grid200,3>", "<grid0199,3>", "<grid12345678901234567890,1>", "<grid1,199>"]


def _insert(text, edits):
    for pos, token in edits:
        i = pos % (len(text) + 1)
        text = text[:i] + token + text[i:]
    return text


inserted = st.tuples(answers.map(_canonical),
                     st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(POOL + BIG_POOL)), max_size=3))
readable = st.one_of(texts, inserted.map(lambda t: _insert(*t)), answers.map(_canonical).flatmap(_mutations),
                     answers.map(_canonical))


@settings(max_examples=3000)
@given(readable, st.sampled_from([V, V_BIG]))
def test_fast_path_reads_as_parse_answer(raw, vocab):
    """On every text the fast path accepts (adversarial ones included), it reads what the
    canonical parser reads: the same cells (so the same kinds), validity, no-target, found and
    stray flags and errors, hence the same format verdict for every task."""
    text = raw if isinstance(raw, str) else as_text(raw)
    slow = GridAnswer.of(parse_answer(text, vocab))
    fast = fast_answer(text, vocab)
    assert read_answer(text, vocab) == (slow if fast is None else fast)
    if fast is not None:
        assert fast == slow
        assert [cells_kinds(c) for c in fast.cells] == [cells_kinds(c) for c in slow.cells]
        for task in (*TASK_ELEMENTS, None):
            for think in (True, False):
                assert grid_format_ok(text, fast, task, think) == grid_format_ok(text, slow, task, think)


@settings(max_examples=1000)
@given(st.lists(st.integers(1, 30), min_size=2, max_size=2), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=20))
def test_rle_membership_matches_decoded_mask(shape, seed, pts):
    h, w = shape
    m = np.random.default_rng(seed).random((h, w)) < 0.5
    g = gt([target(m, None)], size=(w, h))
    truth = read_truths([g], V)[0]
    uv = np.array(pts, float).reshape(-1, 2)
    got = truth.contains_all(uv)[0]
    want = [m[point_pixel((u, v), (w, h))] for u, v in pts]
    assert got.tolist() == want
    assert truth.targets[0].area_px == m.sum()


# ---------------------------------------------------------------------- caps (issue 18)
def test_answers_past_the_caps_are_invalid_and_bounded():
    """Past ``codec.answer.MAX_INSTANCES`` the answer is invalid (format 0, the cap first in
    errors) and only the first instances are scored; the fast path leaves it to parse_answer."""
    import time

    from getok_core.codec.answer import MAX_INSTANCES

    g = gt([target(M1, BOX1)])
    at_cap = ans([PERFECT] * MAX_INSTANCES)
    assert fast_answer(at_cap, V) is not None and score_grid(at_cap, g, V).components["format"] == 1.0
    over = ans([PERFECT] * (MAX_INSTANCES + 1))
    assert fast_answer(over, V) is None
    assert read_answer(over, V) == GridAnswer.of(parse_answer(over, V))
    assert len(read_answer(over, V).cells) == MAX_INSTANCES
    r = score_grid(over, g, V)
    assert r.components["format"] == 0.0 and r.errors[0].startswith(f"more than {MAX_INSTANCES} instances")
    # the reproduction: 10,000 <point>s on a point task, and a 5 MB answer: scored at once
    pts = ans([f"<point><grid{i % 10},{i // 10 % 10}></point>" for i in range(10_000)])
    huge = ans([PERFECT] * 70_000)
    t0 = time.perf_counter()
    rp = score_grid(pts, gt([target(M1, BOX1, points=[(0.3, 0.4)])], task="point"), V)
    rh = score_grid(huge, g, V)
    assert time.perf_counter() - t0 < 20  # (well under a second on one core: bench/bench_rewards.py)
    for res in (rp, rh):
        assert res.components["format"] == 0.0 and res.errors[0].startswith("more than")
        assert all(0 <= v <= 1 for v in res.components.values())


@settings(max_examples=300)
@given(st.integers(90, 110), st.integers(0, 3))
def test_fast_path_agrees_around_the_caps(n_lines, blank):
    """Canonical answers around MAX_INSTANCES lines (with blank lines, which the fast path does
    not count as instances): whatever path reads them, they read as parse_answer reads them."""
    text = ans([PERFECT] * n_lines + [""] * blank)
    fast, slow = fast_answer(text, V), GridAnswer.of(parse_answer(text, V))
    assert read_answer(text, V) == (slow if fast is None else fast)
    assert fast is None or fast == slow
    assert slow.valid == (n_lines <= 100)


def test_ground_truth_over_the_pixel_cap_scores_zero(monkeypatch):
    """A ground truth whose image passes ``data.masks.MAX_PIXELS`` scores 0 with the reason, before
    any mask of its size exists (issue 18: 70000^2 took 9.6 GB per call, 100000^2 crashed)."""
    from getok_core.data import masks

    def raw(w, h):
        return json.dumps({"version": 1, "sample_id": "t", "image_key": "k", "image_path": "", "image_size": [w, h],
                           "task": "seg", "expression": "x", "no_target": False, "ignore": None, "extra": {},
                           "targets": [{"mask": {"size": [h, w], "counts": [w * h - 1, 1]}, "box": None,
                                        "points": [], "polyline": None}]})

    for w, h in ((16384, 8193), (70_000, 70_000), (100_000, 100_000)):  # just above the cap, the two
        r = score_grid(ans([PERFECT]), raw(w, h), V)
        rr = score_refine(format_offsets([[(0, 0)] * 5], V), raw(w, h), V, proposal=ans([PERFECT]))
        assert r.overall == 0.0 and rr.overall == 0.0
        assert r.errors[0].startswith(f"ground truth: image_size: size {w}x{h} (WxH)") and "MAX_PIXELS" in r.errors[0]
    ok_gt = gt([target(M1, BOX1)])
    assert score_grid(ans([PERFECT]), ok_gt, V).overall > 0
    monkeypatch.setattr(masks, "MAX_PIXELS", W * H - 1)  # the same bound, set low: this image passes it
    clear_cache()
    try:
        r = score_grid(ans([PERFECT]), ok_gt, V)
        assert r.overall == 0.0 and f"{W * H:,} pixels, over the cap of {W * H - 1:,}" in r.errors[0]
    finally:
        clear_cache()
