"""Greedy mask-to-token conversion (SPEC §4) against a plain full-array reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from testkit import naive_greedy, naive_iou

from getok_core.data.greedy import PackedProposals, greedy_select, index_to_cell
from getok_core.data.masks import encode_rle

# pycocotools' decode trips a numpy 2 DeprecationWarning (``__array__`` without ``copy``) per call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---------------------------------------------------------------------------- reference: testkit.naive_greedy
def coco_iou(gt, proposals, chosen):
    """IoU of the union of the chosen proposals with gt, by pycocotools."""
    union = np.zeros_like(gt)
    for k in chosen:
        union |= proposals[k]
    a = mask_utils.encode(np.asfortranarray(union.astype(np.uint8)))
    b = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
    return float(mask_utils.iou([a], [b], [0])[0, 0])


# ---------------------------------------------------------------------------- random scenes
def random_shape(rng, h, w, centre=None):
    """A rectangle or a disc (bool (h, w)), near ``centre`` (row, col) when given."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = centre if centre is not None else (rng.uniform(0, h), rng.uniform(0, w))
    if rng.random() < 0.5:
        hh, hw = rng.uniform(0.5, h / 2), rng.uniform(0.5, w / 2)
        return (abs(yy + 0.5 - cy) <= hh) & (abs(xx + 0.5 - cx) <= hw)
    r = rng.uniform(0.7, min(h, w) / 2)
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r


def random_scene(seed, h, w, n, gt_kind, dup_rate):
    rng = np.random.default_rng(seed)
    props = np.zeros((n * n, h, w), bool)
    for k in range(n * n):
        y, x = divmod(k, n)
        centre = ((y + 0.5) * h / n, (x + 0.5) * w / n)
        r = rng.random()
        if r < 0.1:
            continue                                                  # empty proposal
        if k and rng.random() < dup_rate:
            props[k] = props[rng.integers(k)]                         # exact duplicate: ties
            continue
        props[k] = random_shape(rng, h, w, centre)
        for _ in range(rng.integers(0, 3)):
            props[k] |= random_shape(rng, h, w)
    if gt_kind == "empty":
        gt = np.zeros((h, w), bool)
    elif gt_kind == "full":
        gt = np.ones((h, w), bool)
    elif gt_kind == "pixel":
        gt = np.zeros((h, w), bool)
        gt[rng.integers(h), rng.integers(w)] = True
    elif gt_kind == "proposal":
        gt = props[rng.integers(n * n)].copy()
    else:
        gt = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):
            gt |= random_shape(rng, h, w)
    return gt, props


scenes = st.builds(
    random_scene,
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(20, 48),
    w=st.integers(30, 64),
    n=st.integers(4, 8),
    gt_kind=st.sampled_from(["shapes"] * 6 + ["empty", "full", "pixel", "proposal"]),
    dup_rate=st.sampled_from([0.0, 0.0, 0.2, 0.6]),
)
taus = st.sampled_from([0.9, 0.9, 0.5, 0.75, 0.99, 1.0])
max_points = st.sampled_from([32, 32, 1, 2, 3, 5])


@settings(max_examples=250)
@given(scene=scenes, tau=taus, kmax=max_points)
def test_greedy_equals_naive_reference(scene, tau, kmax):
    gt, props = scene
    expected = naive_greedy(gt, props, tau, kmax)
    packed = PackedProposals.from_masks(props)
    rles = [encode_rle(p) for p in props]
    results = [
        greedy_select(gt, props, tau, kmax),
        greedy_select(encode_rle(gt), rles, tau, kmax),
        greedy_select(gt, packed, tau, kmax),
        greedy_select(encode_rle(gt), PackedProposals.from_rles(rles), tau, kmax),
        greedy_select(gt, list(props), tau, kmax),                      # list of arrays
        greedy_select(encode_rle(gt), props, tau, kmax),                # mixed forms
        greedy_select(gt, rles, tau, kmax),
    ]
    for got in results:
        assert got == expected
        assert type(got[1]) is float and all(type(k) is int for k in got[0])

    chosen, best = expected
    assert len(chosen) <= kmax and len(set(chosen)) == len(chosen)
    if gt.any():
        assert best == coco_iou(gt, props, chosen)      # same float as pycocotools
    else:
        assert (chosen, best) == ([], 0.0)
    if best >= tau:                                     # stopped as soon as tau was reached
        assert naive_iou(np.any(props[chosen[:-1]], axis=0), gt) < tau
    # every step strictly raised the IoU
    steps = [naive_iou(np.any(props[chosen[:i]], axis=0), gt) for i in range(1, len(chosen) + 1)]
    assert steps == sorted(set(steps)) and (not steps or steps[-1] == best)


@settings(max_examples=60)
@given(scene=scenes)
def test_packed_proposals_fields(scene):
    _, props = scene
    pp = PackedProposals.from_masks(props)
    h, w = props.shape[1:]
    assert pp.shape == (h, w) and len(pp) == len(props)
    assert f"K={len(props)}" in repr(pp) and pp.nbytes > 0
    assert pp.areas.tolist() == [int(p.sum()) for p in props]
    for k, p in enumerate(props):
        rows, cols = np.flatnonzero(p.any(1)), np.flatnonzero(p.any(0))
        box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1] if rows.size else [0, 0, 0, 0]
        assert pp.boxes[k].tolist() == box
        assert np.array_equal(pp.union_mask([k]), p)
    gt = props.any(axis=0)
    assert np.array_equal(pp.union_mask(range(len(props))), gt)
    assert pp.intersections(gt).tolist() == pp.areas.tolist()
    assert pp.intersections(encode_rle(props[0])).tolist() == [int((p & props[0]).sum()) for p in props]


# ---------------------------------------------------------------------------- hand-built cases
def strip_masks(h, w, spans):
    """Masks covering columns [a, b) of every row, one per span (None: empty)."""
    out = np.zeros((len(spans), h, w), bool)
    for k, span in enumerate(spans):
        if span is not None:
            out[k, :, span[0]:span[1]] = True
    return out


def test_hand_computed_two_halves():
    gt = strip_masks(4, 8, [(0, 4)])[0]                             # 16 px
    props = strip_masks(4, 8, [(2, 4), (0, 2), None, (3, 8)])
    # IoU with M: 0.5, 0.5, 0, 4/32. Order: 0, 1 (tie: lower index first), 3.
    assert greedy_select(gt, props) == ([0, 1], 1.0)
    assert greedy_select(gt, props, max_points=1) == ([0], 0.5)
    assert greedy_select(gt, props, tau=0.5) == ([0], 0.5)
    assert greedy_select(gt, props, max_points=0) == ([], 0.0)


def test_hand_computed_no_gain_is_skipped():
    gt = strip_masks(4, 8, [(0, 4)])[0]
    props = strip_masks(4, 8, [(0, 2), (2, 4), (0, 6)])
    # IoU: 0.5, 0.5, 16/24. P2 first (2/3); P0 and P1 add nothing to P2's union: skipped.
    assert greedy_select(gt, props) == ([2], 16 / 24)


def test_hand_computed_overlap_counts_once():
    gt = strip_masks(2, 10, [(0, 6)])[0]                              # 12 px
    props = strip_masks(2, 10, [(0, 4), (2, 7)])
    # P0: 8/12; P1: 8/14. P0 then P1: union = cols 0..6 (14 px), inter 12: 12/14 > 8/12.
    assert greedy_select(gt, props) == ([0, 1], 12 / 14)
    assert greedy_select(gt, props, tau=0.6) == ([0], 8 / 12)


def test_ties_lower_index_first():
    gt = np.zeros((16, 16), bool)
    gt[4:12, 4:12] = True
    props = np.zeros((16, 16, 16), bool)
    props[9, 4:12, 4:8] = True                  # left half: IoU 0.5
    props[5, 4:12, 8:12] = True                 # right half: IoU 0.5 too
    props[12] = props[9]                        # duplicate of 9
    assert greedy_select(gt, props) == ([5, 9], 1.0)
    props[5] = False
    assert greedy_select(gt, props) == ([9], 0.5)  # 12 (= 9) adds nothing
    assert greedy_select(gt, PackedProposals.from_masks(props), max_points=1) == ([9], 0.5)


def test_disjoint_proposals_are_never_taken():
    gt = np.zeros((24, 24), bool)
    gt[:8, :8] = True
    props = np.zeros((4, 24, 24), bool)
    props[0, 16:, 16:] = True
    props[1, 8:, 8:] = True
    assert greedy_select(gt, props) == ([], 0.0)


def test_degenerate_inputs():
    props = strip_masks(4, 8, [(0, 4), (4, 8)])
    empty = np.zeros((4, 8), bool)
    assert greedy_select(empty, props) == ([], 0.0)                          # empty GT
    assert greedy_select(encode_rle(empty), [encode_rle(p) for p in props]) == ([], 0.0)
    assert greedy_select(props[0], np.zeros((0, 4, 8), bool)) == ([], 0.0)   # K == 0
    assert greedy_select(props[0], []) == ([], 0.0)
    assert greedy_select(props[0], np.zeros((3, 4, 8), bool)) == ([], 0.0)  # all empty
    assert greedy_select(props[0], PackedProposals.from_masks(np.zeros((0, 4, 8), bool))) == ([], 0.0)
    full = np.ones((4, 8), bool)
    assert greedy_select(full, props) == ([0, 1], 1.0)
    assert greedy_select(props[0].astype(np.uint8), props.astype(np.uint8)) == ([0], 1.0)


def test_shape_mismatch_names_both_shapes():
    props = np.zeros((2, 4, 8), bool)
    with pytest.raises(ValueError, match=r"\(5, 8\).*\(4, 8\)"):
        greedy_select(np.ones((5, 8), bool), props)
    with pytest.raises(ValueError, match=r"\(5, 8\).*\(4, 8\)"):
        greedy_select(np.ones((5, 8), bool), PackedProposals.from_masks(props))
    with pytest.raises(ValueError, match=r"\(5, 8\).*\(4, 8\)"):
        greedy_select(encode_rle(np.ones((5, 8), bool)), [encode_rle(p) for p in props])
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(4, 9\)"):
        greedy_select(np.ones((4, 8), bool), [np.zeros((4, 8), bool), np.zeros((4, 9), bool)])
    with pytest.raises(ValueError, match="shape"):
        PackedProposals.from_masks([np.zeros((4, 8), bool), np.zeros((4, 9), bool)])
    with pytest.raises(ValueError, match="shape"):
        PackedProposals.from_rles([encode_rle(np.zeros((4, 8), bool)), encode_rle(np.zeros((4, 9), bool))])
    with pytest.raises(ValueError):
        greedy_select(np.ones((4, 8), bool), np.zeros((4, 8), bool))         # not (K, H, W)


def test_bad_parameters():
    props = strip_masks(4, 8, [(0, 4)])
    for tau in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="tau"):
            greedy_select(props[0], props, tau=tau)
    for kmax in (-1, 2.5):
        with pytest.raises(ValueError, match="max_points"):
            greedy_select(props[0], props, max_points=kmax)


def test_index_to_cell_is_row_major():
    assert index_to_cell(0, 32) == (0, 0)
    assert index_to_cell(33, 32) == (1, 1)
    assert index_to_cell(14 * 32 + 12, 32) == (12, 14)
    with pytest.raises(ValueError):
        index_to_cell(1024, 32)


def test_larger_scene_matches_reference():
    """A 100 x 130 scene with a 16 x 16 grid: crosses many tiles and chunk boundaries."""
    gt, props = random_scene(7, 100, 130, 16, "shapes", 0.1)
    pp = PackedProposals.from_masks(props)
    for tau in (0.5, 0.9, 1.0):
        assert greedy_select(gt, pp, tau) == naive_greedy(gt, props, tau)


def test_popcount_fallback_and_lut_path(monkeypatch):
    """numpy < 2 has no bitwise_count: the lookup-table popcount gives the same counts and results."""
    from getok_core.data import greedy
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(5, 7), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    expected = [[bin(int(x)).count("1") for x in row] for row in words]
    assert greedy.popcount_lut(words).tolist() == expected
    assert greedy.popcount(words).tolist() == expected
    gt, props = random_scene(11, 40, 56, 6, "shapes", 0.2)
    monkeypatch.setattr(greedy, "popcount", greedy.popcount_lut)
    assert greedy_select(gt, props) == naive_greedy(gt, props)


def test_corrupt_rle_is_rejected_before_pycocotools():
    """pycocotools trusts RLE counts (a corrupt string crashed the interpreter): we check first."""
    from getok_core.data.masks import decode_rle, rle_area, rle_ious

    for bad in ({"size": [4, 4], "counts": "0\\\\"}, {"size": [4, 4], "counts": [3, 3]},
                {"size": [4, -4], "counts": "04"}, {"size": [4, 4]}, "not an rle"):
        for fn in (decode_rle, rle_area):
            with pytest.raises(ValueError):
                fn(bad)
        with pytest.raises(ValueError):
            rle_ious([bad], {"size": [4, 4], "counts": [16]})
