import pytest

from getok_core import DELETE, STRUCTURAL_TAGS, GetokVocab, pixel_to_norm


def test_default_vocabulary_counts():
    vocab = GetokVocab()
    toks = vocab.tokens
    assert len(toks) == 1047
    assert len(set(toks)) == 1047
    assert sum(t.startswith("<grid") for t in toks) == 1024
    assert sum(t.startswith("<OFF") for t in toks) == 9
    assert toks.count(DELETE) == 1
    assert len(STRUCTURAL_TAGS) == 13 and set(STRUCTURAL_TAGS) <= set(toks)
    # plain-text tags of the ecosystem's format rewards are not special tokens
    assert not {"<think>", "</think>", "<answer>", "</answer>"} & set(toks)


@pytest.mark.parametrize("n", [1, 7, 16, 64])
def test_vocabulary_size_for_other_grids(n):
    vocab = GetokVocab(grid_size=n, offset_rounds=3)
    assert len(vocab.tokens) == n * n + 9 + 1 + 13 == len(set(vocab.tokens))


def test_token_order_is_stable_and_row_major():
    vocab = GetokVocab(grid_size=4)
    assert vocab.tokens[:5] == ["<grid0,0>", "<grid1,0>", "<grid2,0>", "<grid3,0>", "<grid0,1>"]
    assert vocab.tokens == GetokVocab(grid_size=4).tokens


def test_paper_example_cell():
    # the paper: text coordinates (124, 143) of a 320 x 320 image map to <grid12,14>
    vocab = GetokVocab()
    cell = vocab.point_cell(pixel_to_norm((124, 143), (320, 320)))
    assert vocab.grid_token(*cell) == "<grid12,14>"


def test_cell_point_is_the_centre_and_maps_back():
    vocab = GetokVocab(grid_size=32)
    for x, y in [(0, 0), (31, 31), (12, 14), (5, 30)]:
        u, v = vocab.cell_point((x, y))
        assert (u, v) == ((x + 0.5) / 32, (y + 0.5) / 32)
        assert vocab.point_cell((u, v)) == (x, y)


def test_points_are_clamped_into_the_grid():
    vocab = GetokVocab(grid_size=32)
    assert vocab.point_cell((1.0, 1.0)) == (31, 31)
    assert vocab.point_cell((-0.5, 2.0)) == (0, 31)


def test_box_cells_and_decoding_rule():
    vocab = GetokVocab(grid_size=10)
    assert vocab.box_cells((0.12, 0.25, 0.58, 0.61)) == ((1, 2), (5, 6))
    # corners on cell edges: the bottom-right cell is the one left of / above the edge
    assert vocab.box_cells((0.1, 0.1, 0.3, 0.3)) == ((1, 1), (2, 2))
    # inverted corners are sorted first
    assert vocab.box_cells((0.58, 0.61, 0.12, 0.25)) == ((1, 2), (5, 6))
    # decoded: cell centres, or a shared cell's two edges (never zero width)
    assert vocab.cells_box(((1, 2), (5, 6))) == pytest.approx((0.15, 0.25, 0.55, 0.65))
    assert vocab.cells_box(((3, 2), (3, 6))) == pytest.approx((0.3, 0.25, 0.4, 0.65))
    # a zero-area box gets one cell
    assert vocab.box_cells((0.55, 0.55, 0.55, 0.55)) == ((5, 5), (5, 5))


def test_token_lookup():
    vocab = GetokVocab(grid_size=32)
    assert vocab.token_cell("<grid12,14>") == (12, 14)
    assert vocab.token_cell("<grid32,0>") is None
    assert vocab.token_cell("<grid-1,0>") is None
    assert vocab.token_cell("<OFF1,0>") is None
    assert vocab.token_offset("<OFF-1,1>") == (-1, 1)
    assert vocab.token_offset("<OFF2,0>") is None
    for tok in vocab.tokens:
        assert (vocab.token_cell(tok) is not None) == tok.startswith("<grid")
        assert (vocab.token_offset(tok) is not None) == tok.startswith("<OFF")


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        GetokVocab(grid_size=0)
    with pytest.raises(ValueError):
        GetokVocab(offset_rounds=-1)
    vocab = GetokVocab(grid_size=4)
    with pytest.raises(ValueError):
        vocab.grid_token(4, 0)
    with pytest.raises(ValueError):
        vocab.offset_token(2, 0)
    with pytest.raises(ValueError):
        vocab.point_cell((float("nan"), 0.5))
    with pytest.raises(ValueError):
        vocab.refine((0.5, 0.5), (0.5, 0.5), round=0)


def test_refine_and_apply_offset():
    vocab = GetokVocab(grid_size=8)  # round-1 step 1/16
    anchor = vocab.cell_point((3, 3))  # (0.4375, 0.4375)
    assert vocab.refine(anchor, (0.5, 0.40)) == (1, -1)
    assert vocab.refine(anchor, anchor) == (0, 0)
    # a tie goes to the smaller move
    assert vocab.refine(anchor, (0.4375 + 1 / 32, 0.4375)) == (0, 0)
    assert vocab.apply_offset(anchor, (1, -1)) == pytest.approx((0.5, 0.375))
    assert vocab.apply_offset(anchor, (1, 0), round=2) == pytest.approx((0.46875, 0.4375))
    assert vocab.apply_offset((0.0, 1.0), (-1, 1), round=2) == (0.0, 1.0)
