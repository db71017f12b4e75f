"""RLE helpers: the vectorized counts decoder equals a plain loop over the format of pycocotools'
rleToString, on arbitrary strings and on real RLEs."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mu

from getok_core.data.masks import rle_string_counts


def ref(s):
    counts=[]; p,n=0,len(s)
    while p<n:
        x=k=0; more=True
        while more:
            if p>=n or k>=7: return None
            c=ord(s[p])-48
            if not 0<=c<64: return None
            x|=(c&0x1F)<<(5*k); more=bool(c&0x20); p+=1; k+=1
            if not more and c&0x10: x|=-1<<(5*k)
        if len(counts)>2: x+=counts[-2]
        if not 0<=x<2**32: return None
        counts.append(x)
    return counts


@settings(max_examples=3000)
@given(st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120), max_size=40))
def test_counts_decoder_matches_the_reference_on_any_string(s):
    a, b = ref(s), rle_string_counts(s)
    assert (a is None) == (b is None), (s, a, b)
    if a is not None:
        assert list(b) == a


def test_counts_decoder_on_real_rles():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = rng.random((rng.integers(1, 60), rng.integers(1, 60))) < rng.random()
        s = mu.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert list(rle_string_counts(s)) == ref(s) and int(rle_string_counts(s).sum()) == m.size
    assert rle_string_counts("é") is None and len(rle_string_counts("")) == 0


@settings(max_examples=200)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_uncompressed_counts_round_trip_through_pycocotools(h, w, seed):
    from pycocotools import mask as mask_utils

    from getok_core.data.masks import uncompressed_counts

    m = np.random.default_rng(seed).random((h, w)) < 0.5
    counts = uncompressed_counts(m)
    assert sum(counts) == h * w and counts[0] == (0 if m.flat[0] else counts[0])
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    assert np.array_equal(mask_utils.decode(rle).astype(bool), m)


def test_pixel_cap_rejects_before_allocating(monkeypatch):
    """``MAX_PIXELS`` bounds H x W for RLEs and ground truths (issue 18): an RLE just above it is
    refused by ``rle_problem`` / ``decode_rle`` / ``groundtruth.loads`` without allocating it."""
    import time
    import tracemalloc

    import pytest

    from getok_core.data import groundtruth, masks

    h, w = 8193, 16384                       # 2**27 + 16384 pixels
    assert w * h > masks.MAX_PIXELS >= 12000 * 9000  # a 108 MP phone photo fits
    rle = {"size": [h, w], "counts": [w * h]}
    gt = {"version": 1, "image_size": [w, h], "task": "seg", "targets": [{"mask": rle}]}
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="MAX_PIXELS"):
            masks.decode_rle(rle)
        with pytest.raises(groundtruth.GroundTruthError, match=r"image_size: size 16384x8193 \(WxH\) is "
                                                               r"134,234,112 pixels, over the cap of 134,217,728"):
            groundtruth.loads(gt)
        assert groundtruth.loads(json.dumps(gt), strict=False) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20 and time.perf_counter() - t0 < 5
    assert masks.size_problem(100_000, 100_000) and masks.size_problem(100_001, 1)
    assert masks.size_problem(12000, 9000) is None
    # the same bound set low: 20 x 20 passes a cap of 400, 21 x 20 does not
    monkeypatch.setattr(masks, "MAX_PIXELS", 400)
    small = np.zeros((20, 20), bool)
    assert masks.rle_problem(masks.encode_rle(small)) is None
    assert "over the cap of 400" in masks.rle_problem(masks.encode_rle(np.zeros((20, 21), bool)))
    gt_small = {"version": 1, "image_size": [21, 20], "task": "box", "targets": [{"box": [0, 0, 1, 1]}]}
    assert "over the cap of 400" in "; ".join(groundtruth.validate(gt_small))
    gt_small["image_size"] = [20, 20]
    assert groundtruth.validate(gt_small) == []
