import pytest

from getok_core import (GetokVocab, box_norm_to_pixel, box_pixel_to_norm, input_to_original, norm_to_pixel,
                        original_to_input, pixel_to_norm, smart_resize)


def test_pixel_norm_round_trip():
    assert pixel_to_norm((160, 60), (320, 240)) == (0.5, 0.25)
    assert norm_to_pixel((0.5, 0.25), (320, 240)) == (160, 60)
    assert box_pixel_to_norm((32, 24, 320, 240), (320, 240)) == (0.1, 0.1, 1.0, 1.0)
    assert box_norm_to_pixel((0.1, 0.1, 1.0, 1.0), (320, 240)) == pytest.approx((32, 24, 320, 240))


@pytest.mark.parametrize("size, expected", [
    ((640, 480), (644, 476)),        # rounded to multiples of 28
    ((20, 20), (56, 56)),            # raised to min_pixels
    ((4000, 3000), (1148, 840)),     # lowered under max_pixels
])
def test_smart_resize_known_values(size, expected):
    out = smart_resize(size)
    assert out == expected
    w, h = out
    assert w % 28 == 0 and h % 28 == 0 and 56 * 56 <= w * h <= 28 * 28 * 1280


def test_smart_resize_rejects_bad_sizes():
    with pytest.raises(ValueError):
        smart_resize((0, 10))
    with pytest.raises(ValueError):
        smart_resize((10000, 10))


def test_tokens_mean_the_same_cell_in_original_and_resized_frames():
    vocab = GetokVocab()
    size = (1000, 750)
    xy = (333.3, 700.0)
    inp = original_to_input(xy, size)
    assert input_to_original(inp, size) == pytest.approx(xy)
    assert vocab.point_cell(pixel_to_norm(xy, size)) == vocab.point_cell(pixel_to_norm(inp, smart_resize(size)))
