"""Property tests of the codecs (SPEC §2-3): round-trip bounds and format / parse agreement."""

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from getok_core import GetokVocab, Instance, format_answer, format_offsets, parse_answer, parse_offsets, quantize
from getok_core.codec.instance import anchors, apply_offsets, encode_instance

EPS = 1e-12
unit = st.floats(0.0, 1.0, allow_nan=False)
grids = st.integers(2, 64)
points = st.tuples(unit, unit)


def refine_point(vocab, p, rounds):
    """Anchor of p after the grid token and ``rounds`` offset rounds."""
    a = vocab.cell_point(vocab.point_cell(p))
    for r in range(1, rounds + 1):
        a = vocab.apply_offset(a, vocab.refine(a, p, r), r)
    return a


@settings(max_examples=1500)
@given(grids, points)
def test_point_round_trip_within_half_a_cell(n, p):
    vocab = GetokVocab(grid_size=n)
    q = vocab.cell_point(vocab.point_cell(p))
    assert max(abs(q[0] - p[0]), abs(q[1] - p[1])) <= 0.5 / n + EPS


@settings(max_examples=1500)
@given(grids, points, st.integers(1, 6))
def test_point_after_r_offset_rounds(n, p, rounds):
    vocab = GetokVocab(grid_size=n, offset_rounds=rounds)
    one = refine_point(vocab, p, 1)
    assert max(abs(one[0] - p[0]), abs(one[1] - p[1])) <= 0.25 / n + EPS  # a quarter cell
    q = refine_point(vocab, p, rounds)
    assert max(abs(q[0] - p[0]), abs(q[1] - p[1])) <= 1 / (n * 2 ** (rounds + 1)) + EPS


@settings(max_examples=1500)
@given(grids, points, points, st.integers(0, 4))
def test_box_round_trip(n, a, b, rounds):
    vocab = GetokVocab(grid_size=n)
    box = (min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1]))
    (x1, y1), (x2, y2) = vocab.box_cells(box)
    assert 0 <= x1 <= x2 < n and 0 <= y1 <= y2 < n
    dec = vocab.cells_box(((x1, y1), (x2, y2)))
    assert dec[2] > dec[0] and dec[3] > dec[1]  # never zero width
    # the decoded box re-encodes to the same cells
    assert vocab.box_cells(dec) == ((x1, y1), (x2, y2))
    corners = [(dec[0], dec[1]), (dec[2], dec[3])]
    targets = [(box[0], box[1]), (box[2], box[3])]
    for r in range(1, rounds + 1):
        corners = [vocab.apply_offset(c, vocab.refine(c, t, r), r) for c, t in zip(corners, targets)]
    bound = 1 / (n * 2 ** (rounds + 1))
    for axis, spans in ((0, x2 > x1), (1, y2 > y1)):
        if spans:  # the SPEC bound holds on an axis the box spans two or more cells
            for c, t in zip(corners, targets):
                assert abs(c[axis] - t[axis]) <= bound + EPS
        else:  # a shared cell: the decoded box still covers the true extent
            assert dec[axis] <= box[axis] + EPS and box[axis + 2] <= dec[axis + 2] + EPS


@st.composite
def instances(draw, min_size=0):
    kinds = draw(st.sets(st.sampled_from(["box", "points", "point", "polyline", "polygon"]), min_size=1))
    return Instance(
        box=draw(st.tuples(unit, unit, unit, unit)) if "box" in kinds else None,
        points=draw(st.lists(points, min_size=1, max_size=8)) if "points" in kinds else (),
        point=draw(points) if "point" in kinds else None,
        polyline=draw(st.lists(points, min_size=2, max_size=8)) if "polyline" in kinds else None,
        polygon=draw(st.lists(points, min_size=3, max_size=8)) if "polygon" in kinds else None,
    )


def encodable(inst, vocab):
    try:
        encode_instance(inst, vocab)
        return True
    except ValueError:  # a polyline / polygon that collapses to too few cells
        return False


@settings(max_examples=1500)
@given(st.integers(4, 64), st.lists(instances(), max_size=5), st.none() | st.text(max_size=30))
def test_parse_format_round_trip(n, insts, think):
    vocab = GetokVocab(grid_size=n)
    assume(all(encodable(i, vocab) for i in insts))
    assume(think is None or "<" not in think)
    text = format_answer(insts, vocab, think=think)
    parsed = parse_answer(text, vocab)
    assert parsed.valid, parsed.errors
    assert parsed.instances == [quantize(i, vocab) for i in insts]
    assert parsed.no_target == (not insts)
    # canonical text is a fixed point
    assert format_answer(parsed.instances, vocab, think=think) == text
    for orig, got in zip(insts, parsed.instances):
        # seg points are deduplicated by cell: compare as sets of cells
        cells = {vocab.point_cell(p) for p in orig.points}
        assert {vocab.point_cell(q) for q in got.points} == cells
        if orig.point is not None:
            assert max(abs(orig.point[0] - got.point[0]), abs(orig.point[1] - got.point[1])) <= 0.5 / n + EPS
        for q in got.points:
            assert any(max(abs(p[0] - q[0]), abs(p[1] - q[1])) <= 0.5 / n + EPS for p in orig.points)


@settings(max_examples=1000)
@given(st.integers(4, 32), st.lists(instances(), min_size=1, max_size=4), st.data())
def test_offsets_round_trip(n, insts, data):
    vocab = GetokVocab(grid_size=n)
    assume(all(encodable(i, vocab) for i in insts))
    proposal = parse_answer(format_answer(insts, vocab), vocab).instances
    offs = []
    for inst in proposal:
        row = []
        for kind, _ in anchors(inst):
            choices = st.tuples(st.sampled_from([-1, 0, 1]), st.sampled_from([-1, 0, 1]))
            row.append(data.draw(choices if kind == "box" else st.none() | choices))
        offs.append(row)
    text = format_offsets(offs, vocab)
    parsed = parse_offsets(text, proposal, vocab)
    assert parsed.valid, parsed.errors
    assert parsed.offsets == offs
    for inst, row in zip(proposal, offs):
        refined = apply_offsets(inst, row, vocab)
        kept = sum(o is not None for (k, _), o in zip(anchors(inst), row) if k == "points")
        assert len(refined.points) == kept
        coords = [c for p in anchors(refined) for c in p[1]]
        assert all(0.0 <= c <= 1.0 for c in coords) and all(math.isfinite(c) for c in coords)
