"""Offset-aware data (SPEC §5): cell categories, ring moves, the K-point sampler, turn texts."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from getok_core import GetokVocab, Instance, parse_answer, parse_offsets
from getok_core.data.masks import encode_rle, mask_box
from getok_core.data.offsets import (CATEGORIES, MOVES, OffsetTarget, allocate, offset_bands,
                                offset_targets, quota_counts, sample_refinement, stable_seed)

OFFS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def by_cell(targets):
    return {t.cell: t for t in targets}


def cats(mask, vocab, **kw):
    """{cell: (category, offset)} of every cell."""
    return {t.cell: (t.category, t.offset) for t in offset_targets(mask, vocab, **kw)}


# ---------------------------------------------------------------------- an independent oracle
def pix(uv, size):
    """The test's own pixel rule: floor (1e-9 px below an edge counts as on it), clamped."""
    (u, v), (w, h) = uv, size
    return min(max(math.floor(u * w + 1e-9), 0), w - 1), min(max(math.floor(v * h + 1e-9), 0), h - 1)


def landing(vocab, cell, d, size, rnd=1):
    uv = vocab.cell_point(cell)
    if d != (0, 0):
        uv = vocab.apply_offset(uv, d, rnd)
    return pix(uv, size)


def window(m, col, row, hx, hy):
    return m[max(row - hy, 0):row + hy + 1, max(col - hx, 0):col + hx + 1]


def gradient(m):
    """3x3 dilation minus 3x3 erosion by shifting (erosion: outside the image is foreground)."""
    h, w = m.shape
    dil = np.pad(m, 1, constant_values=False)
    ero = np.pad(m, 1, constant_values=True)
    d = np.zeros_like(m)
    e = np.ones_like(m)
    for r in range(3):
        for c in range(3):
            d |= dil[r:r + h, c:c + w]
            e &= ero[r:r + h, c:c + w]
    return d & ~e


def oracle(m, vocab, ring_width=1, rnd=1):
    """{cell: (category, offset)} computed pixel by pixel from SPEC §5 (no scipy morphology)."""
    h, w = m.shape
    n = vocab.grid_size
    sx, sy = w * vocab.offset_step(rnd), h * vocab.offset_step(rnd)
    hx, hy, h2x, h2y = math.floor(sx), math.floor(sy), math.floor(2 * sx), math.floor(2 * sy)
    grad = gradient(m)
    edt = ndimage.distance_transform_edt(m) if not m.all() else np.full(m.shape, np.inf)
    out = {}
    for y in range(n):
        for x in range(n):
            pc, pr = landing(vocab, (x, y), (0, 0), (w, h), rnd)
            if m[pr, pc]:
                out[(x, y)] = ("inside", (0, 0))
                continue
            cands = []
            for d in OFFS:
                if d == (0, 0):
                    continue
                c, r = landing(vocab, (x, y), d, (w, h), rnd)
                if m[r, c]:
                    in_i = bool(window(m, c, r, hx, hy).all())
                    tie = (abs(d[0]) + abs(d[1]), d[1], d[0])
                    cands.append(((not in_i, -edt[r, c], tie), d))
            if cands:
                out[(x, y)] = ("ring", min(cands)[1])
            elif window(grad, pc, pr, ring_width, ring_width).any() or window(m, pc, pr, h2x, h2y).any():
                out[(x, y)] = ("hard_delete", None)
            else:
                out[(x, y)] = ("far", None)
    return out


@st.composite
def masks(draw, max_side=72):
    """Unions (and some differences) of random rectangles and discs."""
    w, h = draw(st.integers(4, max_side)), draw(st.integers(4, max_side))
    m = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(draw(st.integers(1, 4))):
        value = True if i == 0 else draw(st.sampled_from([True, True, False]))
        if draw(st.booleans()):
            x0, x1 = sorted(draw(st.lists(st.integers(0, w), min_size=2, max_size=2)))
            y0, y1 = sorted(draw(st.lists(st.integers(0, h), min_size=2, max_size=2)))
            m[y0:y1 + (y0 == y1), x0:x1 + (x0 == x1)] = value
        else:
            cx, cy = draw(st.floats(0, w)), draw(st.floats(0, h))
            r = draw(st.floats(0.5, max(w, h) / 2))
            m[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r] = value
    return m


# ---------------------------------------------------------------------- hand-drawn masks
def test_rectangle():
    vocab = GetokVocab(grid_size=8)  # 64 px / 8: cells of 8 px, centres at 4, 12, ..., 60; s = 4
    m = np.zeros((64, 64), bool)
    m[16:32, 16:32] = True
    got = cats(m, vocab)
    for cell in [(2, 2), (3, 2), (2, 3), (3, 3)]:       # centres 20, 28 lie in [16, 31]
        assert got[cell] == ("inside", (0, 0))
    assert got[(1, 2)] == ("ring", (1, 0))   # (col 12, row 20): right lands on col 16; three ties
    assert got[(1, 1)] == ("ring", (1, 1))   # (12, 12): only the diagonal reaches (16, 16)
    assert got[(2, 1)] == ("ring", (0, 1))
    assert got[(4, 2)] == ("hard_delete", None)  # col 36: col 32 misses, but 36 - 31 <= 2s = 8
    assert got[(4, 4)] == ("hard_delete", None)
    assert got[(5, 2)] == ("far", None)      # col 44: 13 px away, off the ribbon
    assert got[(0, 2)] == ("far", None)
    assert got[(7, 7)] == ("far", None)
    # the ribbon width matters: a 12 px ribbon around the gradient (cols 31, 32) reaches col 44
    assert cats(m, vocab, ring_width=12)[(5, 2)] == ("hard_delete", None)
    t = by_cell(offset_targets(m, vocab))
    assert t[(1, 2)] == OffsetTarget((1, 2), "ring", "<OFF1,0>", (1, 0))
    assert t[(2, 2)].token == "<OFF0,0>" and t[(5, 2)].token == t[(4, 2)].token == "<DELETE>"
    assert [tt.cell for tt in offset_targets(m, vocab)][:3] == [(0, 0), (1, 0), (2, 0)]  # row-major


def test_rectangle_in_a_wide_image_uses_per_axis_steps():
    vocab = GetokVocab(grid_size=8)  # 64 x 32 px: cells 8 x 4 px, s = (4, 2), 2s = (8, 4)
    m = np.zeros((32, 64), bool)
    m[8:16, 16:32] = True
    got = cats(m, vocab)
    assert got[(2, 2)] == got[(3, 3)] == ("inside", (0, 0))
    assert got[(1, 2)] == ("ring", (1, 0))   # (col 12, row 10) -> col 16
    assert got[(2, 1)] == ("ring", (0, 1))   # (col 20, row 6) -> row 8
    assert got[(1, 1)] == ("ring", (1, 1))   # (12, 6) -> (16, 8)
    assert got[(4, 1)] == ("hard_delete", None)  # col 36: within 8 px of col 31
    assert got[(2, 0)] == ("far", None)      # row 2: 6 rows above M, beyond 2 s_y = 4
    assert got[(5, 2)] == ("far", None)
    assert offset_bands(m, vocab).step == (4.0, 2.0)


def test_thin_line_one_pixel_is_invisible_to_one_step_moves():
    vocab = GetokVocab(grid_size=8)  # 32 px: centres at cols 2, 6, 10, ...; moves of 2 px
    m = np.zeros((32, 32), bool)
    m[:, 13] = True
    got = cats(m, vocab)
    expect = ["far", "far", "hard_delete", "hard_delete", "far", "far", "far", "far"]
    for y in range(8):
        assert [got[(x, y)][0] for x in range(8)] == expect
    assert all(off is None for _, off in got.values())


def test_thin_line_two_pixels():
    vocab = GetokVocab(grid_size=8)
    m = np.zeros((32, 32), bool)
    m[:, 11:13] = True
    got = cats(m, vocab)
    for y in range(8):
        assert got[(2, y)] == ("ring", (1, 0))    # col 10 -> 12
        assert got[(3, y)] == ("ring", (-1, 0))   # col 14 -> 12
        assert got[(1, y)] == got[(4, y)] == ("far", None)
    # and horizontally
    got_t = cats(m.T.copy(), vocab)
    assert got_t[(5, 2)] == ("ring", (0, 1)) and got_t[(5, 3)] == ("ring", (0, -1))


def test_square_annulus():
    vocab = GetokVocab(grid_size=8)  # 64 px, s = 4 px
    m = np.zeros((64, 64), bool)
    m[6:58, 6:58] = True
    m[18:46, 18:46] = False      # the hole: pixels 18..45
    got = cats(m, vocab)
    for cell in [(3, 3), (3, 4), (4, 3), (4, 4)]:
        assert got[cell] == ("far", None)   # the middle of the hole: 10+ px from the ring
    assert got[(1, 3)] == ("inside", (0, 0))
    assert got[(2, 3)] == ("ring", (-1, 0))     # hole cell next to the frame: back to col 16
    assert got[(3, 2)] == ("ring", (0, -1))
    assert got[(2, 2)] == ("ring", (-1, -1))    # (16, 16) is 2.83 px deep, the axis moves 2 px
    assert got[(0, 3)] == ("ring", (1, 0))
    assert got[(0, 0)] == ("ring", (1, 1))
    assert got[(7, 7)] == ("ring", (-1, -1))


def test_concave_l_shape_prefers_the_deepest_landing():
    vocab = GetokVocab(grid_size=4)  # 32 px: cells of 8 px, centres 4, 12, 20, 28; s = 4
    m = np.zeros((32, 32), bool)
    m[:, :10] = True    # vertical bar
    m[14:, :] = True    # horizontal bar; the notch is rows 0..13 x cols 10..31
    got = cats(m, vocab)
    # (row 12, col 12) in the notch reaches (8, 8), (12, 8) at depth 2, (16, 12), (16, 16) at
    # depth 3, and (16, 8), 3.61 px from the notch corner (13, 10): the diagonal into the joint wins
    assert got[(1, 1)] == ("ring", (-1, 1))
    edt = ndimage.distance_transform_edt(m)
    assert edt[16, 8] == pytest.approx(math.sqrt(13)) and edt[16, 12] == edt[16, 16] == 3
    assert got[(0, 0)] == got[(1, 2)] == ("inside", (0, 0))
    assert got[(1, 0)] == ("ring", (-1, 0))
    assert got[(2, 1)] == got[(3, 1)] == ("ring", (0, 1))
    assert got[(2, 0)] == got[(3, 0)] == ("far", None)


def test_landing_in_the_inner_band_beats_a_deeper_landing_outside_it():
    # 36 px / 4 cells: s = 4.5 px, B_s of side 9. Cell (1, 1) has its centre at pixel (13, 13);
    # moves land 4 px before it (-1) and 5 px after it (+1), so only +1 landings clear B_s.
    vocab = GetokVocab(grid_size=4)
    m = np.ones((36, 36), bool)
    for r, c in [(13, 13), (9, 23), (23, 9), (18, 23)]:
        m[r, c] = False
    edt = ndimage.distance_transform_edt(m)
    inner = offset_bands(m, vocab).inner
    assert not inner[9, 9] and edt[9, 9] == pytest.approx(math.sqrt(32))    # (-1, -1): deepest
    for r, c in [(13, 18), (18, 13), (18, 18), (9, 18), (18, 9)]:            # in I, depth 5
        assert inner[r, c] and edt[r, c] == 5
    # I first; among equal depths the axis move of the earlier token (dy = 0 before dy = 1)
    assert cats(m, vocab)[(1, 1)] == ("ring", (1, 0))


def test_empty_and_full_masks_and_rle():
    vocab = GetokVocab(grid_size=4)
    assert {c for c, _ in cats(np.zeros((10, 12), bool), vocab).values()} == {"far"}
    assert {c for c, _ in cats(np.ones((10, 12), bool), vocab).values()} == {"inside"}
    m = np.zeros((40, 50), bool)
    m[5:20, 10:33] = True
    assert offset_targets(encode_rle(m), vocab) == offset_targets(m, vocab)
    assert offset_targets(m.astype(np.uint8), vocab) == offset_targets(m, vocab)
    with pytest.raises(ValueError):
        offset_targets(np.zeros((3, 3, 3)), vocab)
    with pytest.raises(ValueError):
        offset_targets(m, vocab, ring_width=-1)
    with pytest.raises(ValueError):
        offset_targets(m, vocab, round=0)


def test_one_pixel_cells_and_tiny_steps():
    # s < 1 px: B_s is a single pixel and some moves stay in the centre's own pixel
    vocab = GetokVocab(grid_size=16)
    m = np.zeros((8, 8), bool)
    m[2:5, 3:6] = True
    assert cats(m, vocab) == oracle(m, vocab)


# ---------------------------------------------------------------------- properties
@settings(max_examples=300)
@given(masks(), st.integers(1, 12), st.sampled_from([0, 1, 2]), st.sampled_from([1, 1, 2]))
def test_categories_match_the_definition(m, n, ring_width, rnd):
    vocab = GetokVocab(grid_size=n)
    h, w = m.shape
    targets = offset_targets(m, vocab, ring_width=ring_width, round=rnd)
    assert [t.cell for t in targets] == [(x, y) for y in range(n) for x in range(n)]
    bands = offset_bands(m, vocab, ring_width=ring_width, round=rnd)
    for t in targets:
        pc, pr = landing(vocab, t.cell, (0, 0), (w, h), rnd)
        lands = {d: landing(vocab, t.cell, d, (w, h), rnd) for d in OFFS if d != (0, 0)}
        hits = [d for d, (c, r) in lands.items() if m[r, c]]
        assert (t.category == "inside") == bool(m[pr, pc])
        assert t.token == ("<DELETE>" if t.offset is None else vocab.offset_token(*t.offset))
        if t.category == "inside":
            assert t.offset == (0, 0)
        elif t.category == "ring":
            assert t.offset != (0, 0)
            c, r = lands[t.offset]
            assert m[r, c]                           # the move really lands in M
            if any(bands.inner[lands[d][1], lands[d][0]] for d in hits):
                assert bands.inner[r, c]             # ... and in I when some move can
        else:
            assert t.offset is None and not hits     # no one-step move reaches M
    assert by_cell(targets) == {c: OffsetTarget(c, cat, "<DELETE>" if off is None else
                                                vocab.offset_token(*off), off)
                                for c, (cat, off) in oracle(m, vocab, ring_width, rnd).items()}


@settings(max_examples=200)
@given(masks(max_side=48), st.integers(3, 16), st.sampled_from([0, 1, 3]), st.sampled_from([1, 2]))
def test_bands_equal_whole_image_scipy_morphology(m, n, ring_width, rnd):
    """The cropped, separable passes give the 2-D operations on the whole image."""
    vocab = GetokVocab(grid_size=n)
    h, w = m.shape
    sx, sy = w * vocab.offset_step(rnd), h * vocab.offset_step(rnd)
    rect = lambda tx, ty: np.ones((2 * math.floor(ty) + 1, 2 * math.floor(tx) + 1), bool)  # noqa: E731
    b = offset_bands(m, vocab, ring_width=ring_width, round=rnd)
    assert np.array_equal(b.inner, ndimage.binary_erosion(m, rect(sx, sy), border_value=1))
    assert np.array_equal(b.halo, ndimage.binary_dilation(m, rect(sx, sy)) & ~m)
    assert np.array_equal(b.near, ndimage.binary_dilation(m, rect(2 * sx, 2 * sy)))
    grad = ndimage.binary_dilation(m, np.ones((3, 3), bool)) & ~ndimage.binary_erosion(
        m, np.ones((3, 3), bool), border_value=1)
    assert np.array_equal(grad, gradient(m))
    ribbon = ndimage.binary_dilation(grad, rect(ring_width, ring_width)) if ring_width else grad
    assert np.array_equal(b.ribbon, ribbon)


# ---------------------------------------------------------------------- quotas
def test_quota_counts_and_allocation():
    assert quota_counts(16) == (6, 6, 2, 2)        # 6.4 6.4 1.6 1.6: the .6 remainders round up
    assert quota_counts(10) == (4, 4, 1, 1)
    assert quota_counts(1) == (1, 0, 0, 0)
    assert quota_counts(3, (1, 1, 1, 0)) == (1, 1, 1, 0)
    assert quota_counts(5, (2, 2, 0.5, 0.5)) == (2, 2, 1, 0)
    assert allocate(16, (100, 100, 100, 100)) == (6, 6, 2, 2)
    assert allocate(16, (2, 100, 100, 100)) == (2, 10, 2, 2)     # inside's shortfall -> ring
    assert allocate(16, (100, 100, 0, 0)) == (8, 8, 0, 0)        # round-robin inside, ring
    assert allocate(16, (100, 100, 1, 0)) == (8, 7, 1, 0)
    assert allocate(16, (3, 4, 100, 0)) == (3, 4, 9, 0)          # then hard_delete, far
    assert allocate(16, (3, 4, 100, 100)) == (3, 4, 5, 4)
    assert allocate(16, (1, 1, 1, 1)) == (1, 1, 1, 1)            # fewer cells than k
    with pytest.raises(ValueError):
        quota_counts(16, (0.5, 0.5, 0.1))
    with pytest.raises(ValueError):
        quota_counts(16, (-1, 1, 1, 1))


# ---------------------------------------------------------------------- sampling
def big_mask():
    m = np.zeros((240, 320), bool)
    yy, xx = np.mgrid[:240, :320]
    m[(yy - 120) ** 2 / 60 ** 2 + (xx - 150) ** 2 / 90 ** 2 <= 1] = True
    return m


def check_refinement(ref, m, vocab, k, quotas=(0.4, 0.4, 0.1, 0.1)):
    n = vocab.grid_size
    assert len(ref.cells) == len(set(ref.cells)) == min(k, n * n) == len(ref.categories)
    full = by_cell(offset_targets(m, vocab))
    assert list(ref.categories) == [full[c].category for c in ref.cells]
    assert list(ref.point_offsets) == [full[c].offset for c in ref.cells]
    assert ref.pool_sizes == tuple(sum(t.category == c for t in full.values()) for c in CATEGORIES)
    hist = ref.histogram()
    got = tuple(hist[c] for c in CATEGORIES)
    want = quota_counts(k, quotas)
    assert got == allocate(k, ref.pool_sizes, quotas)
    if all(p >= q for p, q in zip(ref.pool_sizes, want)):
        assert got == want                                       # quotas respected
    for c in range(4):
        assert min(want[c], ref.pool_sizes[c]) <= got[c] <= ref.pool_sizes[c]
    if got[0] < ref.pool_sizes[0] or got[1] < ref.pool_sizes[1]:
        assert got[2] <= want[2] and got[3] <= want[3]           # extras go to inside / ring first
    # turn 1: the quantized box and the sampled cells, and it round-trips
    box = mask_box(m)
    assert ref.box == box
    assert ref.instance == Instance(box=vocab.cells_box(vocab.box_cells(box)),
                                    points=[vocab.cell_point(c) for c in ref.cells])
    parsed = parse_answer(ref.turn1_text, vocab)
    assert parsed.valid and parsed.instances == [ref.instance]
    assert [tuple(c) for c in parsed.cells[0].points] == list(ref.cells)
    off = parse_offsets(ref.turn2_text, parsed.instances, vocab)
    assert off.valid and off.offsets == [list(ref.offsets)]
    assert len(ref.offsets) == 2 + len(ref.cells)


@settings(max_examples=200)
@given(masks(max_side=96), st.integers(2, 24), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_sampler_properties(m, n, k, seed):
    vocab = GetokVocab(grid_size=n)
    ref = sample_refinement(m, vocab, k=k, rng=seed)
    if not m.any():
        assert ref is None
        return
    check_refinement(ref, m, vocab, k)
    assert sample_refinement(m, vocab, k=k, rng=np.random.default_rng(seed)) == ref


def test_sampler_quotas_on_a_large_object():
    vocab = GetokVocab(grid_size=32)
    m = big_mask()
    ref = sample_refinement(m, vocab, k=16, rng=7)
    assert ref.histogram() == {"inside": 6, "ring": 6, "hard_delete": 2, "far": 2}
    assert ref.quota_counts == (6, 6, 2, 2)
    check_refinement(ref, m, vocab, 16)
    ref40 = sample_refinement(m, vocab, k=40, quotas=(1, 1, 0, 0), rng=7)
    assert ref40.histogram() == {"inside": 20, "ring": 20, "hard_delete": 0, "far": 0}


def test_sampler_takes_what_exists():
    vocab = GetokVocab(grid_size=8)
    m = np.zeros((64, 64), bool)
    m[20:28, 20:28] = True       # one inside cell ((2, 2) at pixel 20), a few ring cells
    ref = sample_refinement(m, vocab, k=16, rng=0)
    hist = ref.histogram()
    assert hist["inside"] == ref.pool_sizes[0] == 1
    assert hist["ring"] == min(ref.pool_sizes[1], 6 + 5)
    check_refinement(ref, m, vocab, 16)
    full = np.ones((32, 32), bool)   # every cell inside
    ref = sample_refinement(full, GetokVocab(grid_size=4), k=16, rng=0)
    assert ref.histogram()["inside"] == 16 and ref.point_offsets == ((0, 0),) * 16


def test_sampler_is_deterministic():
    vocab = GetokVocab(grid_size=32)
    m = big_mask()
    a = sample_refinement(m, vocab, rng=123)
    assert a == sample_refinement(m, vocab, rng=123)
    assert a == sample_refinement(m, vocab, rng=np.random.default_rng(123))
    assert a == sample_refinement(encode_rle(m), vocab, rng=123)
    assert any(sample_refinement(m, vocab, rng=s).cells != a.cells for s in range(3))
    rows = sample_refinement(m, vocab, rng=123, shuffle=False)
    assert list(rows.cells) == sorted(a.cells, key=lambda c: (c[1], c[0]))
    assert stable_seed("img1", 0) == stable_seed("img1", 0) != stable_seed("img1", 1)
    assert 0 <= stable_seed("x") < 2**63


def test_sampler_empty_mask_and_arguments():
    vocab = GetokVocab(grid_size=8)
    assert sample_refinement(np.zeros((20, 30), bool), vocab, rng=0) is None
    m = np.zeros((20, 30), bool)
    m[5:9, 4:20] = True
    with pytest.raises(ValueError):
        sample_refinement(m, vocab, k=0)
    with pytest.raises(ValueError):
        sample_refinement(m, vocab, quotas=(1, 1))
    ref = sample_refinement(m, vocab, k=200, rng=0)
    assert len(ref.cells) == 64          # the whole grid


@settings(max_examples=300)
@given(st.integers(1, 64), st.lists(st.floats(0, 1), min_size=4, max_size=4), st.integers(0, 99))
def test_box_corner_offsets_minimize_the_corner_error(n, coords, seed):
    vocab = GetokVocab(grid_size=n)
    u1, u2 = sorted(coords[:2])
    v1, v2 = sorted(coords[2:])
    m = np.zeros((16, 16), bool)
    m[4:9, 3:12] = True
    ref = sample_refinement(m, vocab, k=3, rng=seed, box=(u1, v1, u2, v2))
    assert ref.box == (u1, v1, u2, v2)
    assert ref.instance.box == vocab.cells_box(vocab.box_cells((u1, v1, u2, v2)))
    b = ref.instance.box
    for anchor, corner, chosen in zip([(b[0], b[1]), (b[2], b[3])], [(u1, v1), (u2, v2)],
                                      ref.box_offsets):
        err = {d: math.dist(vocab.apply_offset(anchor, d), corner) for d in OFFS}
        assert err[chosen] <= min(err.values()) + 1e-12
    parsed = parse_answer(ref.turn1_text, vocab)
    assert parse_offsets(ref.turn2_text, parsed.instances, vocab).offsets == [list(ref.offsets)]


def test_moves_order():
    assert MOVES == ((0, -1), (-1, 0), (1, 0), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1))
