"""The codecs agree with the reference implementations in the swift environment's packages."""

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from getok_core import GetokVocab, smart_resize
from getok_core.codec.vocab import EDGE_EPS

import qwen_vl_utils.vision_process as qwen_vl_utils
import transformers.models.kosmos2.processing_kosmos2 as kosmos
import transformers.models.qwen2_vl.image_processing_qwen2_vl as qwen2_vl_ip

unit = st.floats(0.0, 1.0, allow_nan=False)


def near_edge(t, n):
    return abs(t * n - round(t * n)) < 10 * EDGE_EPS


@settings(max_examples=3000)
@given(st.sampled_from([8, 16, 24, 32, 44, 64]), unit, unit, unit, unit)
def test_box_cells_agree_with_kosmos2_patch_indices(n, a, b, c, d):
    x1, x2 = sorted((a, b))
    y1, y2 = sorted((c, d))
    assume(x2 > x1 and y2 > y1)
    # cell edges are known to EDGE_EPS here; Kosmos-2 takes floats as they come
    assume(not any(near_edge(t, n) for t in (x1, y1, x2, y2)))
    ul, lr = kosmos.coordinate_to_patch_index((x1, y1, x2, y2), n)
    (cx1, cy1), (cx2, cy2) = GetokVocab(grid_size=n).box_cells((x1, y1, x2, y2))
    assert (cy1 * n + cx1, cy2 * n + cx2) == (ul, lr)


def test_box_cells_agree_with_kosmos2_on_uniform_random_boxes():
    import random

    rng = random.Random(0)
    vocab = GetokVocab()
    for _ in range(20000):
        x1, x2 = sorted((rng.random(), rng.random()))
        y1, y2 = sorted((rng.random(), rng.random()))
        (cx1, cy1), (cx2, cy2) = vocab.box_cells((x1, y1, x2, y2))
        assert (cy1 * 32 + cx1, cy2 * 32 + cx2) == kosmos.coordinate_to_patch_index((x1, y1, x2, y2), 32)


@settings(max_examples=3000)
@given(st.integers(1, 8000), st.integers(1, 8000),
       st.sampled_from([(56 * 56, 28 * 28 * 1280), (4 * 28 * 28, 16384 * 28 * 28), (256 * 28 * 28, 1280 * 28 * 28)]))
def test_smart_resize_matches_transformers_qwen2_vl(w, h, pixels):
    assume(max(w, h) / min(w, h) <= 200)
    lo, hi = pixels
    h_ref, w_ref = qwen2_vl_ip.smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
    assert smart_resize((w, h), 28, lo, hi) == (w_ref, h_ref)
    if min(w, h) > 14:  # qwen-vl-utils differs only for a side of at most factor / 2
        h_u, w_u = qwen_vl_utils.smart_resize(h, w, 28, lo, hi)
        assert (w_u, h_u) == (w_ref, h_ref)


def test_processor_default_pixels_are_ours():
    proc = qwen2_vl_ip.Qwen2VLImageProcessor()
    assert proc.size["shortest_edge"] == 56 * 56 and proc.size["longest_edge"] == 28 * 28 * 1280
    assert proc.patch_size * proc.merge_size == 28
    assert math.isclose(smart_resize((640, 480))[0] / 28, 23)
