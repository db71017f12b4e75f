"""Evaluation metrics (SPEC §7): hand-computed cases, LISA / ReLA empty conventions, RLE vs bool."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from getok_core import GetokVocab, Instance, format_answer, parse_answer
from getok_core.data.groundtruth import dumps, make_ground_truth
from getok_core.data.masks import encode_rle, to_coco
from getok_core.codec.geometry import box_iou, box_iou_matrix, point_segment_distances
from getok_core.evaluation.metrics import (MetricRules, box_accuracy, evaluate_predictions, format_validity,
                                           instance_weights, point_accuracy, polyline_scores, segmentation_scores,
                                           union_masks)
from getok_core.data.records import Sample, Target


def _m(h, w, *slices):
    m = np.zeros((h, w), bool)
    for rs, cs in slices:
        m[rs, cs] = True
    return m


def _rle(m):
    return None if m is None else encode_rle(m)


# ---------------------------------------------------------------------- segmentation
# Four expressions on 4x4 masks:
#  0: pred rows 0-1 (8 px), gt cols 0-1 (8 px): I = 4, U = 12, IoU = 1/3
#  1: None on an all-false gt: empty-empty -> IoU 1, adds 0 / 0 to cIoU
#  2: 3 px on an empty gt -> IoU 0, adds 3 to the cIoU union
#  3: None on a 4 px gt -> IoU 0, adds 4 to the union
PRED = [_m(4, 4, (slice(0, 2), slice(0, 4))), None, _m(4, 4, (slice(0, 1), slice(0, 3))), None]
GT = [_m(4, 4, (slice(0, 4), slice(0, 2))), np.zeros((4, 4), bool), None, _m(4, 4, (slice(1, 3), slice(1, 3)))]
EXPECTED = {"gIoU": (1 / 3 + 1 + 0 + 0) / 4, "cIoU": 4 / 19, "N_acc": 1 / 2, "T_acc": 1 / 2, "n": 4,
            "n_no_target": 2, "n_target": 2, "intersection": 4, "union": 19}


def _check(res, expected):
    for k, v in expected.items():
        assert res[k] == pytest.approx(v, abs=1e-12), k


def test_segmentation_hand_computed_bool():
    res = segmentation_scores(PRED, GT)
    _check(res, EXPECTED)
    assert res["per_sample"] == pytest.approx([1 / 3, 1.0, 0.0, 0.0])


def test_segmentation_rle_and_mixed_give_identical_numbers():
    ref = segmentation_scores(PRED, GT)
    as_rle = segmentation_scores([_rle(m) for m in PRED], [_rle(m) for m in GT])
    mixed = segmentation_scores([_rle(m) for m in PRED], GT)
    assert as_rle == ref
    assert mixed == ref


def test_rle_with_bytes_and_uncompressed_counts():
    p, g = PRED[0], GT[0]
    rb = mask_utils.encode(np.asfortranarray(p.astype(np.uint8)))  # bytes counts
    rb = {"size": list(rb["size"]), "counts": rb["counts"]}
    flat = np.asfortranarray(g).ravel(order="F").astype(int)
    runs, cur, k = [], 0, 0  # uncompressed counts: alternating runs of 0 and 1, starting with 0
    for v in flat:
        if v != cur:
            runs.append(k)
            cur, k = v, 0
        k += 1
    runs.append(k)
    unc = {"size": [4, 4], "counts": runs}
    res = segmentation_scores([rb], [unc])
    assert res["per_sample"] == pytest.approx([1 / 3])
    assert res["intersection"] == 4 and res["union"] == 12


def test_empty_conventions_lisa_rela():
    # empty prediction on empty GT: gIoU 1, nothing in cIoU (cIoU undefined alone)
    r = segmentation_scores([None], [np.zeros((3, 3), bool)])
    assert r["gIoU"] == 1.0 and r["cIoU"] is None and r["N_acc"] == 1.0 and r["T_acc"] is None
    assert r["intersection"] == 0 and r["union"] == 0
    # a non-empty prediction on empty GT: 0, and its area enters the cIoU union
    pred = _m(3, 3, (slice(0, 1), slice(0, 2)))  # 2 px
    gt1 = _m(3, 3, (slice(0, 3), slice(0, 3)))  # full 9 px, predicted fully
    r = segmentation_scores([pred, gt1], [None, gt1])
    assert r["per_sample"] == [0.0, 1.0]
    assert r["gIoU"] == 0.5
    assert r["cIoU"] == pytest.approx(9 / 11)
    assert r["N_acc"] == 0.0 and r["T_acc"] == 1.0
    # an all-false predicted array is an empty prediction, like None
    r2 = segmentation_scores([np.zeros((3, 3), bool)], [None])
    assert r2["gIoU"] == 1.0 and r2["N_acc"] == 1.0
    # nothing at all
    r3 = segmentation_scores([], [])
    assert r3["n"] == 0 and r3["gIoU"] is None and r3["cIoU"] is None and r3["N_acc"] is None


def test_ignore_region():
    # pred rows 0-1, gt cols 0-1, ignore column 0: I = {(0,1),(1,1)} = 2; union 12 minus col 0 (4) = 8
    ign = _m(4, 4, (slice(0, 4), slice(0, 1)))
    r = segmentation_scores([PRED[0]], [GT[0]], [ign])
    assert r["per_sample"] == [0.25] and r["intersection"] == 2 and r["union"] == 8
    assert segmentation_scores([_rle(PRED[0])], [_rle(GT[0])], [_rle(ign)]) == r
    assert segmentation_scores([PRED[0]], [_rle(GT[0])], [_rle(ign)]) == r
    # a None ignore entry means no ignore region
    assert segmentation_scores([PRED[0]], [GT[0]], [None])["per_sample"] == [1 / 3]
    # a prediction lying wholly in the ignore region on an empty GT: U = 0 -> IoU 1 (LISA), but
    # "predicted empty" looks at the whole mask, so N_acc counts it as a (wrong) non-empty answer
    p = _m(4, 4, (slice(0, 1), slice(0, 2)))
    ign2 = _m(4, 4, (slice(0, 1), slice(0, 4)))
    r = segmentation_scores([p], [None], [ign2])
    assert r["per_sample"] == [1.0] and r["union"] == 0 and r["N_acc"] == 0.0
    assert segmentation_scores([_rle(p)], [None], [_rle(ign2)]) == r
    # the prediction only: GT None, pred partly outside the ignore region
    p3 = _m(4, 4, (slice(0, 2), slice(0, 2)))  # 4 px, 2 of them ignored
    r = segmentation_scores([_rle(p3)], [None], [_rle(ign2)])
    assert r["union"] == 2 and r["per_sample"] == [0.0]
    assert segmentation_scores([p3], [None], [ign2]) == r


def test_segmentation_invalid_inputs():
    with pytest.raises(ValueError, match="expression 1: mask sizes"):
        segmentation_scores([PRED[0], np.ones((3, 4), bool)], [GT[0], GT[0]])
    with pytest.raises(ValueError, match="expression 0: mask sizes"):
        segmentation_scores([_rle(PRED[0])], [_rle(np.ones((5, 4), bool))])
    with pytest.raises(ValueError, match="expression 0: mask sizes.*ignore"):
        segmentation_scores([PRED[0]], [GT[0]], [np.ones((2, 2), bool)])
    with pytest.raises(ValueError, match="lengths"):
        segmentation_scores([PRED[0]], [GT[0], GT[0]])
    with pytest.raises(ValueError, match="expression 0: prediction.*2-D"):
        segmentation_scores([np.ones((2, 2, 2), bool)], [None])
    with pytest.raises(ValueError, match="boolean"):
        segmentation_scores([np.full((2, 2), 0.5)], [None])
    with pytest.raises(ValueError, match="0 and 1"):
        segmentation_scores([np.full((2, 2), 255, np.uint8)], [None])
    with pytest.raises(ValueError, match="expression 0: ground truth: RLE counts"):
        segmentation_scores([None], [{"size": [2, 2], "counts": "zzzz"}])
    # integer 0/1 masks are accepted
    assert segmentation_scores([PRED[0].astype(np.uint8)], [GT[0]])["per_sample"] == [1 / 3]


def _random_mask(rng, h, w, density):
    return rng.random((h, w)) < density


@settings(max_examples=250)
@given(h=st.integers(1, 14), w=st.integers(1, 14), seed=st.integers(0, 2**32 - 1),
       dp=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]), dg=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
       di=st.sampled_from([None, 0.0, 0.2, 0.6]))
def test_pycocotools_agreement_and_paths_identical(h, w, seed, dp, dg, di):
    rng = np.random.default_rng(seed)
    p, g = _random_mask(rng, h, w, dp), _random_mask(rng, h, w, dg)
    ign = None if di is None else _random_mask(rng, h, w, di)
    res_bool = segmentation_scores([p], [g], [ign])
    res_rle = segmentation_scores([encode_rle(p)], [encode_rle(g)], [None if ign is None else encode_rle(ign)])
    res_mix = segmentation_scores([encode_rle(p)], [g], [None if ign is None else encode_rle(ign)])
    assert res_bool == res_rle == res_mix
    keep = np.ones_like(p) if ign is None else ~ign
    inter, union = int((p & g & keep).sum()), int(((p | g) & keep).sum())
    assert (res_bool["intersection"], res_bool["union"]) == (inter, union)
    iou = res_bool["per_sample"][0]
    assert iou == (inter / union if union else 1.0)
    if ign is None and union:  # pycocotools' own IoU (non-crowd) on the same RLEs
        coco = mask_utils.iou([to_coco(encode_rle(p))], [to_coco(encode_rle(g))], [0])[0, 0]
        assert iou == pytest.approx(float(coco), rel=1e-12, abs=0)
    assert res_bool["N_acc" if not g.any() else "T_acc"] == float(bool(p.any()) == bool(g.any()))


def test_batch_rle_equals_bool_random():
    rng = np.random.default_rng(7)
    preds, gts = [], []
    for k in range(40):
        h, w = rng.integers(1, 20, size=2)
        preds.append(None if k % 7 == 0 else _random_mask(rng, h, w, rng.choice([0.0, 0.2, 0.5])))
        gts.append(None if k % 5 == 0 else _random_mask(rng, h, w, rng.choice([0.0, 0.3, 0.6])))
    ref = segmentation_scores(preds, gts)
    assert segmentation_scores([_rle(m) for m in preds], [_rle(m) for m in gts]) == ref
    si = sum(int((p & g).sum()) for p, g in zip(preds, gts) if p is not None and g is not None)
    assert ref["intersection"] == si


def test_union_masks():
    a, b = _m(3, 3, (0, slice(None))), _m(3, 3, (slice(None), 0))
    both = a | b
    assert np.array_equal(union_masks([a, b]), both)
    u = union_masks([encode_rle(a), encode_rle(b)])
    assert isinstance(u, dict) and isinstance(u["counts"], str)
    assert np.array_equal(mask_utils.decode(to_coco(u)).astype(bool), both)
    assert np.array_equal(union_masks([encode_rle(a), b, None]), both)
    assert union_masks([]) is None and union_masks([None]) is None
    with pytest.raises(ValueError, match="different sizes"):
        union_masks([a, np.zeros((2, 3), bool)])


# ---------------------------------------------------------------------- boxes
def test_box_iou_hand_computed():
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(1 / 7)  # 1/16 / (7/16)
    assert box_iou((0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4)) == pytest.approx(1.0)
    assert box_iou((0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5)) == 0.0  # touching
    assert box_iou((0, 0, 1, 0.5), (0, 0, 1, 0.4)) == pytest.approx(0.8)
    assert box_iou((0, 0, 0.5, 0.5), (0, 0, 0.25, 1)) == pytest.approx(0.125 / (0.25 + 0.25 - 0.125))
    # degenerate boxes: zero width, zero height, inverted
    assert box_iou((0.2, 0.2, 0.2, 0.5), (0, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 1, 1), (0.1, 0.3, 0.5, 0.3)) == 0.0
    assert box_iou((0.5, 0.5, 0.1, 0.1), (0.1, 0.1, 0.5, 0.5)) == 0.0
    assert box_iou((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3)) == 0.0


def test_box_iou_matrix_matches_scalar():
    rng = np.random.default_rng(3)
    a = rng.random((7, 4))
    b = rng.random((5, 4))
    a[:3, 2:] = a[:3, :2] + rng.random((3, 2)) * 0.5  # some proper boxes, others inverted
    b[:2, 2:] = b[:2, :2] + 0.2
    mat = box_iou_matrix(a, b)
    assert mat.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            assert mat[i, j] == box_iou(a[i], b[j])
            assert mat[i, j] == box_iou_matrix(b, a)[j, i]
    assert box_iou_matrix(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou_matrix(a, []).shape == (7, 0)
    with pytest.raises(ValueError):
        box_iou_matrix([[0, 0, 1]], b)
    with pytest.raises(ValueError, match="finite"):
        box_iou_matrix([[0, 0, float("nan"), 1]], b)


def test_box_accuracy_hand_computed():
    preds = [(0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5), None, (0, 0, 1, 0.5), (0, 0, 0.5, 0.5)]
    gts = [(0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), (0, 0, 1, 1), (0, 0, 1, 0.4),
           [(0.5, 0.5, 1, 1), (0, 0, 0.5, 0.5)]]  # last: multi-target, the best-matching box counts
    # IoUs: 1, 1/7, 0 (missing box = miss), 0.8 (exactly at the threshold counts), 1
    r = box_accuracy(preds, gts)
    assert r["per_sample"] == pytest.approx([1, 1 / 7, 0, 0.8, 1])
    assert r["Acc@0.5"] == pytest.approx(3 / 5)
    assert r["Acc@0.8"] == pytest.approx(3 / 5)
    assert r["mean_iou"] == pytest.approx((2.8 + 1 / 7) / 5)
    assert r["n"] == 5 and r["n_no_target"] == 0 and r["n_target"] == 5 and r["N_acc"] is None
    r9 = box_accuracy(preds, gts, thresholds=(0.1, 0.9))
    assert r9["Acc@0.1"] == pytest.approx(4 / 5) and r9["Acc@0.9"] == pytest.approx(2 / 5)
    assert "Acc@0.5" not in r9


def test_box_accuracy_no_target_and_invalid():
    # no-target expressions only: no Acc@t (nothing to hit), N_acc = share answered with no box
    r = box_accuracy([None, (0, 0, 1, 1), None], [None, [], np.zeros((0, 4))])
    assert r["per_sample"] == [1.0, 0.0, 1.0] and r["n_no_target"] == 3 and r["n_target"] == 0
    assert r["Acc@0.5"] is None and r["mean_iou"] is None and r["N_acc"] == pytest.approx(2 / 3)
    empty = box_accuracy([], [])
    assert empty["n"] == 0 and empty["Acc@0.5"] is None and empty["mean_iou"] is None and empty["N_acc"] is None
    with pytest.raises(ValueError, match="expression 1: prediction"):
        box_accuracy([(0, 0, 1, 1), (0, 0, 1)], [(0, 0, 1, 1), (0, 0, 1, 1)])
    with pytest.raises(ValueError, match="expression 0"):
        box_accuracy([(0, 0, 1, 1)], [[(0, 0, 1)]])
    with pytest.raises(ValueError, match="lengths"):
        box_accuracy([None], [None, None])


def test_rec_rule_held_out_case():
    """The issue's case: one no-target expression (answered with nothing), one miss, one hit:
    Acc@0.5 = 1/2 over the two target expressions (it was 2/3 when the correct rejection counted
    as a hit); the rejection is in N_acc."""
    r = box_accuracy([None, (0.6, 0.6, 1, 1), (0, 0, 0.5, 0.5)], [None, (0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)])
    assert r["Acc@0.5"] == 0.5 and r["Acc@0.8"] == 0.5 and r["N_acc"] == 1.0
    assert r["mean_iou"] == 0.5 and (r["n"], r["n_target"], r["n_no_target"]) == (3, 2, 1)
    # a box on the no-target expression changes N_acc only
    r2 = box_accuracy([(0, 0, 1, 1), (0.6, 0.6, 1, 1), (0, 0, 0.5, 0.5)], [None, (0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)])
    assert r2["Acc@0.5"] == 0.5 and r2["N_acc"] == 0.0


def test_giou_empty_convention_switch():
    """Seg-Zero's convention (empty on empty = 0) changes gIoU and per_sample only."""
    lisa = segmentation_scores(PRED, GT)
    segzero = segmentation_scores(PRED, GT, empty_iou=0.0)
    assert segzero["per_sample"] == pytest.approx([1 / 3, 0.0, 0.0, 0.0])
    assert segzero["gIoU"] == pytest.approx(1 / 12) and lisa["gIoU"] == pytest.approx(EXPECTED["gIoU"])
    for k in ("cIoU", "N_acc", "T_acc", "intersection", "union", "n_no_target"):
        assert segzero[k] == lisa[k], k
    with pytest.raises(ValueError, match="giou_empty"):
        MetricRules(giou_empty="half")
    with pytest.raises(ValueError, match="counting"):
        MetricRules(counting="per-image")
    d = MetricRules("zero", "per-instance").describe()
    assert d["giou_empty"] == "zero" and "Seg-Zero" in d["giou_empty_rule"] and d["counting"] == "per-instance"


def test_per_instance_counting_weights():
    """Per instance: an object's expressions share one weight. Expressions 0-1 belong to object a
    (IoUs 1/3 and 1), 2-3 to objects b and c (IoU 0 each): gIoU (2/3 + 0 + 0) / 3, cIoU weighted."""
    w = instance_weights(["a", "a", "b", "c"])
    assert w == [0.5, 0.5, 1.0, 1.0]
    r = segmentation_scores(PRED, GT, weights=w)
    assert r["gIoU"] == pytest.approx(((1 / 3 + 1) / 2 + 0 + 0) / 3)
    assert r["cIoU"] == pytest.approx((0.5 * 4) / (0.5 * 12 + 3 + 4))
    assert r["N_acc"] == pytest.approx(0.5 / 1.5) and r["T_acc"] == pytest.approx(0.5 / 1.5)
    assert (r["intersection"], r["union"]) == (4, 19)  # the pixel counts stay unweighted
    ones, plain = segmentation_scores(PRED, GT, weights=[1, 1, 1, 1]), segmentation_scores(PRED, GT)
    for k in ("gIoU", "cIoU", "N_acc", "T_acc"):
        assert ones[k] == pytest.approx(plain[k]), k
    b = box_accuracy([(0, 0, 0.5, 0.5), None, None], [(0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5), (0, 0, 1, 1)],
                     weights=instance_weights(["a", "a", "b"]))
    assert b["Acc@0.5"] == pytest.approx(0.5 / 2)
    with pytest.raises(ValueError, match="weights"):
        segmentation_scores(PRED, GT, weights=[1, 1])


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), copies=st.lists(st.integers(1, 4), min_size=8, max_size=8))
def test_per_instance_counting_ignores_repeated_expressions(seed, n, copies):
    """Per instance, an object answered k times alike scores as if answered once; with one
    expression per object it equals per-expression counting."""
    rng = np.random.default_rng(seed)
    preds = [None if rng.random() < 0.2 else rng.random((5, 6)) < 0.4 for _ in range(n)]
    gts = [None if rng.random() < 0.2 else rng.random((5, 6)) < 0.4 for _ in range(n)]
    pb = [None if rng.random() < 0.2 else tuple(np.sort(rng.random(2)).tolist() * 2) for _ in range(n)]
    gb = [None if rng.random() < 0.2 else tuple(np.sort(rng.random(2)).tolist() * 2) for _ in range(n)]
    ids = [k for k in range(n) for _ in range(copies[k])]
    once_seg, once_box = segmentation_scores(preds, gts), box_accuracy(pb, gb)
    rep_seg = segmentation_scores([preds[k] for k in ids], [gts[k] for k in ids], weights=instance_weights(ids))
    rep_box = box_accuracy([pb[k] for k in ids], [gb[k] for k in ids], weights=instance_weights(ids))
    for k in ("gIoU", "cIoU", "N_acc", "T_acc"):
        assert rep_seg[k] == pytest.approx(once_seg[k]), k
    for k in ("Acc@0.5", "Acc@0.8", "mean_iou", "N_acc"):
        assert rep_box[k] == pytest.approx(once_box[k]), k
    unique = segmentation_scores(preds, gts, weights=instance_weights(list(range(n))))
    assert unique["gIoU"] == pytest.approx(once_seg["gIoU"])


# ---------------------------------------------------------------------- polylines
def test_point_segment_distances():
    line = [(0, 0), (10, 0), (10, 10)]
    d = point_segment_distances([(5, 3), (12, 5), (-3, -4), (10, 0), (20, 20)], line)
    assert d == pytest.approx([3, 2, 5, 0, math.hypot(10, 10)])
    assert point_segment_distances([(3, 4)], [(0, 0)]) == pytest.approx([5])  # one vertex = a point
    assert point_segment_distances([(3, 4)], [(0, 0), (0, 0)]) == pytest.approx([5])  # zero-length segment


W100 = (100, 100)  # diagonal 141.42 px: default tol = 2.83 px
GT_LINE = [(0.10, 0.50), (0.90, 0.50)]  # (10, 50) -> (90, 50) px
PRED_LINE = [(0.20, 0.52), (0.50, 0.54), (0.95, 0.50)]  # (20, 52) (50, 54) (95, 50)


def test_polyline_hand_computed_default_tol():
    # predicted vertices: (20,52) is 2 px from the GT segment's interior (10.2 px from its nearest
    # vertex) -> match; (50,54) 4 px -> miss; (95,50) 5 px beyond the end -> miss: precision 1/3.
    # GT vertices: (10,50) is 10.2 px from the predicted polyline -> miss; (90,50) is 20/sqrt(2041)
    # = 0.44 px from the segment (50,54)-(95,50) (5 px from its nearest vertex) -> recovered: 1/2.
    r = polyline_scores([[PRED_LINE]], [[GT_LINE]], W100)
    assert (r["matched_pred"], r["n_pred_vertices"], r["matched_gt"], r["n_gt_vertices"]) == (1, 3, 1, 2)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 2)
    assert r["F1"] == pytest.approx(0.4)


def test_polyline_explicit_tol_and_micro_average():
    r = polyline_scores([[PRED_LINE]], [[GT_LINE]], W100, tol=5)  # 4 and 5 px now match (<= tol)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(1 / 2)
    # a second expression with two GT lanes and one exact prediction of the first
    gt2 = [[(0.1, 0.1), (0.5, 0.1)], [(0.1, 0.9), (0.5, 0.9)]]
    r2 = polyline_scores([[PRED_LINE], [gt2[0]]], [[GT_LINE], gt2], W100, tol=5)
    # vertices pooled: pred 3 + 2, all matched; GT 2 + 4, recovered 1 + 2
    assert r2["precision"] == 1.0 and r2["recall"] == pytest.approx(3 / 6)
    assert r2["F1"] == pytest.approx(2 * 0.5 / 1.5)


def test_polyline_pixel_scaling_non_square():
    # 200 x 100 px: tol 3.5 px. 0.03 in v = 3 px (match); 0.02 in u = 4 px (miss)
    gt_h = [(0.0, 0.5), (1.0, 0.5)]
    gt_v = [(0.5, 0.0), (0.5, 1.0)]
    assert polyline_scores([[[(0.3, 0.53), (0.4, 0.53)]]], [[gt_h]], (200, 100), tol=3.5)["precision"] == 1.0
    assert polyline_scores([[[(0.52, 0.3), (0.52, 0.4)]]], [[gt_v]], (200, 100), tol=3.5)["precision"] == 0.0
    # default tol = 0.02 * hypot(200, 100) = 4.47 px: now both match
    assert polyline_scores([[[(0.52, 0.3), (0.52, 0.4)]]], [[gt_v]], (200, 100))["precision"] == 1.0
    # per-expression sizes
    r = polyline_scores([[[(0.52, 0.3), (0.52, 0.4)]]] * 2, [[gt_v]] * 2, [(200, 100), (100, 100)], tol=3.5)
    assert r["matched_pred"] == 2 and r["n_pred_vertices"] == 4  # 2 px on the 100-wide image


def test_polyline_empty_cases():
    r = polyline_scores([None, []], [[GT_LINE], [GT_LINE]], W100)
    assert r["precision"] is None and r["recall"] == 0.0 and r["F1"] == 0.0
    r = polyline_scores([[PRED_LINE]], [None], W100)
    assert r["precision"] == 0.0 and r["recall"] is None and r["F1"] == 0.0
    r = polyline_scores([None], [[]], W100)
    assert r["precision"] is None and r["recall"] is None and r["F1"] is None and r["n"] == 1
    r = polyline_scores([[PRED_LINE]], [[[(0.1, 0.1), (0.2, 0.1)]]], W100)  # far apart: P = R = 0
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["F1"] == 0.0
    r = polyline_scores([[[(0.5, 0.51)]]], [[GT_LINE]], W100)  # a single predicted vertex
    assert r["precision"] == 1.0 and r["recall"] == 0.0


def test_polyline_invalid_inputs():
    with pytest.raises(ValueError, match="list of polylines"):
        polyline_scores([GT_LINE], [[GT_LINE]], W100)  # one polyline instead of a list of polylines
    with pytest.raises(ValueError, match="expression 0: ground truth: polyline 0"):
        polyline_scores([[GT_LINE]], [[[]]], W100)
    with pytest.raises(ValueError, match="non-finite"):
        polyline_scores([[[(0.1, float("nan")), (0.2, 0.2)]]], [[GT_LINE]], W100)
    with pytest.raises(ValueError, match="image_size"):
        polyline_scores([[GT_LINE]], [[GT_LINE]], None)
    with pytest.raises(ValueError, match="positive"):
        polyline_scores([[GT_LINE]], [[GT_LINE]], (0, 100))
    with pytest.raises(ValueError, match="one per expression"):
        polyline_scores([[GT_LINE]], [[GT_LINE]], [(1, 1), (2, 2), (3, 3)])
    with pytest.raises(ValueError, match="tol"):
        polyline_scores([[GT_LINE]], [[GT_LINE]], W100, tol=-1)


# ---------------------------------------------------------------------- points
MASK4 = _m(4, 4, (slice(1, 3), slice(1, 3)))  # pixels (1..2, 1..2)


def test_point_accuracy_masks():
    preds = [(0.3, 0.3),                     # pixel (1, 1): hit
             [(0.3, 0.3), (0.1, 0.1)],       # hit + miss -> 0.5
             [(0.74, 0.74)],                 # pixel (2, 2): hit
             (0.75, 0.75),                   # pixel (3, 3): miss
             None,                           # no point on a target: 0
             None,                           # no point, no target: 1
             (0.5, 0.5)]                     # a point on a no-target expression: 0
    gts = [MASK4, encode_rle(MASK4), MASK4, MASK4, MASK4, None, np.zeros((4, 4), bool)]
    r = point_accuracy(preds, gts)
    assert r["per_sample"] == [1.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert r["accuracy"] == pytest.approx(3.5 / 7)
    assert r["n_points"] == 5 and r["point_hit_rate"] == pytest.approx(3 / 5)
    assert r["n_no_target"] == 2 and r["n"] == 7


def test_point_accuracy_edges_and_outside():
    full = np.ones((4, 4), bool)
    r = point_accuracy([(1.0, 1.0), (0.0, 0.0), (1.01, 0.5), (-0.01, 0.5)], [full] * 4)
    assert r["per_sample"] == [1.0, 1.0, 0.0, 0.0]  # u = 1 is the last column; outside [0, 1] misses


def test_point_accuracy_gt_points():
    # 100 x 100 px: default tol 2.83 px. 2 px away: hit; 3 px away: miss
    gt = [(0.5, 0.5)]
    r = point_accuracy([(0.52, 0.5), (0.53, 0.5), [(0.5, 0.47), (0.2, 0.2)]], [gt, gt, [(0.9, 0.9), (0.2, 0.21)]],
                       image_size=W100)
    assert r["per_sample"] == [1.0, 0.0, 0.5]
    r = point_accuracy([(0.53, 0.5)], [gt], image_size=W100, tol=3.5)
    assert r["per_sample"] == [1.0]
    with pytest.raises(ValueError, match="image_size"):
        point_accuracy([(0.5, 0.5)], [gt])
    with pytest.raises(ValueError, match="expression 0: mask is 4x4"):
        point_accuracy([(0.5, 0.5)], [MASK4], image_size=(5, 4))
    with pytest.raises(ValueError, match="expression 0: prediction"):
        point_accuracy([(0.5, 0.5, 0.5)], [MASK4])
    assert point_accuracy([], [])["accuracy"] is None


# ---------------------------------------------------------------------- format
VOCAB = GetokVocab()


def test_format_validity():
    ok = parse_answer(format_answer([Instance(box=(0.1, 0.1, 0.5, 0.5))], VOCAB), VOCAB)
    bad = parse_answer("<answer><box><grid1,2></box></answer>", VOCAB)
    none = parse_answer("<answer><none></answer>", VOCAB)
    assert ok.valid and not bad.valid and none.valid
    assert format_validity([ok, bad, none, None]) == pytest.approx(2 / 4)
    assert format_validity([]) is None


# ---------------------------------------------------------------------- evaluate_predictions
IMG = (8, 8)


def _sample(targets, task, sid):
    return Sample(sample_id=sid, image_path=f"/x/{sid}.png", image_size=IMG, expressions=["it"],
                  targets=targets, task=task)


def test_evaluate_predictions_seg():
    m = _m(8, 8, (slice(2, 6), slice(2, 6)))
    box = (0.25, 0.25, 0.75, 0.75)
    gt_t = make_ground_truth(_sample([Target(mask=encode_rle(m), box=box)], "seg", "a"))
    gt_n = make_ground_truth(_sample([], "seg", "b"))
    good = parse_answer(format_answer([Instance(box=box, points=[(0.5, 0.5)])], VOCAB), VOCAB)
    garbage = parse_answer("I cannot tell.", VOCAB)
    none = parse_answer("<answer><none></answer>", VOCAB)
    records = [
        {"parsed": good, "pred_masks": encode_rle(m), "gt": gt_t},        # IoU 1
        {"parsed": garbage, "pred_masks": m, "gt": dumps(gt_t)},          # parse failure -> empty -> 0
        {"parsed": none, "pred_masks": None, "gt": gt_n},                 # correct rejection -> 1
        {"parsed": None, "pred_masks": None, "gt": gt_n},                 # no answer at all -> empty -> 1
    ]
    res = evaluate_predictions(records)
    assert set(res) == {"seg"}
    seg = res["seg"]["segmentation"]
    assert seg["gIoU"] == pytest.approx(3 / 4) and seg["cIoU"] == pytest.approx(16 / 32)
    assert seg["N_acc"] == 1.0 and seg["T_acc"] == 0.5 and seg["n"] == 4
    assert res["seg"]["format_validity"] == pytest.approx(2 / 4)
    assert res["seg"]["n_no_instance"] == 3
    bx = res["seg"]["box"]  # the first instance's box vs the GT box, over the target expressions
    assert bx["n"] == 4 and bx["n_no_target"] == 2 and bx["n_target"] == 2
    assert bx["Acc@0.5"] == pytest.approx(1 / 2) and bx["N_acc"] == 1.0  # a hit and a miss; 2 rejections
    # the conventions: Seg-Zero's empty-empty 0, and per-instance counting (records 0-1 share object a)
    segzero = evaluate_predictions(records, rules=MetricRules(giou_empty="zero"))["seg"]["segmentation"]
    assert segzero["gIoU"] == pytest.approx(1 / 4) and segzero["cIoU"] == seg["cIoU"]
    inst = evaluate_predictions(records[:3], rules=MetricRules(counting="per-instance"))["seg"]
    assert evaluate_predictions(records[:3])["seg"]["segmentation"]["gIoU"] == pytest.approx(2 / 3)
    assert inst["segmentation"]["gIoU"] == pytest.approx((0.5 * 1 + 0.5 * 0 + 1) / 2)
    assert inst["box"]["Acc@0.5"] == pytest.approx(1 / 2)
    # a list of instance masks is OR-ed
    half1, half2 = _m(8, 8, (slice(2, 4), slice(2, 6))), _m(8, 8, (slice(4, 6), slice(2, 6)))
    r = evaluate_predictions([{"parsed": good, "pred_masks": [half1, encode_rle(half2)], "gt": gt_t}])
    assert r["seg"]["segmentation"]["gIoU"] == 1.0
    # strict: an invalid answer with instances counts as empty
    partly = parse_answer(format_answer([Instance(box=box)], VOCAB).replace("</answer>", "<box></answer>"), VOCAB)
    assert not partly.valid and partly.instances
    lenient = evaluate_predictions([{"parsed": partly, "pred_masks": m, "gt": gt_t}])
    strict = evaluate_predictions([{"parsed": partly, "pred_masks": m, "gt": gt_t}], strict=True)
    assert lenient["seg"]["segmentation"]["gIoU"] == 1.0 and strict["seg"]["segmentation"]["gIoU"] == 0.0
    with pytest.raises(ValueError, match="record 0: a seg record needs 'pred_masks'"):
        evaluate_predictions([{"parsed": good, "gt": gt_t}])
    with pytest.raises(ValueError, match="record 0"):
        evaluate_predictions([{"parsed": good, "pred_masks": None, "gt": {"version": 1}}])
    with pytest.raises(ValueError, match=r"record 1: pred_masks is 4x8 \(HxW\), the ground-truth image is 8x8"):
        evaluate_predictions([records[0], {"parsed": good, "pred_masks": np.zeros((4, 8), bool), "gt": gt_t}])
    with pytest.raises(ValueError, match="record 0: target 0 has no polyline"):
        evaluate_predictions([{"task": "line", "parsed": good, "gt": gt_t}])
    with pytest.raises(ValueError, match="record 0: task must be one of"):
        evaluate_predictions([{"task": "lanes", "parsed": good, "gt": gt_t}])


def test_evaluate_predictions_box_point_line():
    box = VOCAB.cells_box(((8, 8), (23, 23)))  # exactly representable: IoU 1 after the round trip
    gt_box = make_ground_truth(_sample([Target(box=box)], "box", "b1"))
    ans_box = parse_answer(format_answer([Instance(box=box)], VOCAB), VOCAB)
    far = parse_answer(format_answer([Instance(box=(0.0, 0.0, 0.1, 0.1))], VOCAB), VOCAB)

    m = _m(8, 8, (slice(0, 4), slice(0, 4)))  # top-left quarter
    gt_pt_mask = make_ground_truth(_sample([Target(mask=encode_rle(m), points=((0.25, 0.25),))], "point", "p1"))
    pt_in = parse_answer(format_answer([Instance(point=(0.2, 0.2))], VOCAB), VOCAB)
    pt_out = parse_answer(format_answer([Instance(point=(0.8, 0.8))], VOCAB), VOCAB)

    line = [(0.1, 0.5), (0.9, 0.5)]
    gt_line = make_ground_truth(_sample([Target(polyline=tuple(line))], "line", "l1"))
    ans_line = parse_answer(format_answer([Instance(polyline=line)], VOCAB), VOCAB)

    records = [
        {"parsed": ans_box, "gt": gt_box}, {"parsed": far, "gt": gt_box},
        {"parsed": pt_in, "gt": gt_pt_mask}, {"parsed": pt_out, "gt": gt_pt_mask},
        {"parsed": ans_line, "gt": gt_line}, {"parsed": None, "gt": gt_line},
    ]
    res = evaluate_predictions(records)
    assert set(res) == {"box", "point", "line"}
    assert res["box"]["box"]["Acc@0.5"] == 0.5 and res["box"]["box"]["Acc@0.8"] == 0.5
    assert res["point"]["point"]["accuracy"] == 0.5 and res["point"]["point"]["gt_kind"] == "mask"
    pl = res["line"]["polyline"]
    # decoded vertices are cell centres, within half a cell (0.125 px at 8 px) of the GT: all match;
    # the second record predicts nothing -> its GT vertices are missed
    assert pl["precision"] == 1.0 and pl["recall"] == pytest.approx(2 / 4)
    assert res["line"]["format_validity"] == 0.5
    # point GT without masks: the GT points with the default tolerance (2% of the 8 px diagonal)
    gt_pt = make_ground_truth(_sample([Target(points=((0.2, 0.2),))], "point", "p2"))
    near = parse_answer(format_answer([Instance(point=(0.2, 0.2))], VOCAB), VOCAB)
    r = evaluate_predictions([{"parsed": near, "gt": gt_pt}, {"parsed": pt_out, "gt": gt_pt}])
    assert r["point"]["point"]["gt_kind"] == "points" and r["point"]["point"]["accuracy"] == 0.5
    mixed = evaluate_predictions([{"parsed": near, "gt": gt_pt}, {"parsed": pt_in, "gt": gt_pt_mask}])
    assert mixed["point"]["point"]["gt_kind"] == "mixed" and mixed["point"]["point"]["accuracy"] == 1.0


def test_point_family_holds_one_decoded_mask_at_a_time():
    """Point records against mask targets (issue 18): the ground-truth masks stay RLE until each
    expression is scored, so memory does not grow with the number of expressions."""
    import tracemalloc

    m = np.zeros((480, 640), bool)
    m[100:300, 200:400] = True
    gt_pt = make_ground_truth(Sample(sample_id="pm", image_path="", image_size=(640, 480), expressions=["x"],
                                     targets=[Target(mask=encode_rle(m), points=((0.5, 0.4),))], task="point"))
    pt_in = parse_answer(format_answer([Instance(point=(0.45, 0.4))], VOCAB), VOCAB)
    records = [{"parsed": pt_in, "gt": gt_pt}] * 200   # 200 decoded masks would be 61 MB
    tracemalloc.start()
    try:
        res = evaluate_predictions(records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res["point"]["point"]["accuracy"] == 1.0 and res["point"]["point"]["gt_kind"] == "mask"
    assert peak < 12 * 2**20, peak
