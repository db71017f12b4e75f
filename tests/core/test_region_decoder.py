"""RegionDecoder (no weights) and the shared decoder helpers (ByteLRUCache, box / point pixels)."""

import numpy as np
import pytest

from getok_core.codec.coords import box_pixel_mask, point_pixel
from getok_core.codec.instance import Instance
from getok_core.decoders import DECODERS, make_decoder, register_decoder
from getok_core.decoders.base import ByteLRUCache, DecodeGroup, DecoderCounters, MaskDecoder
from getok_core.decoders.region import ENTRY_OVERHEAD_BYTES, RegionDecoder, compact_labels, region_labels
from getok_core.prepare.proposals import grid_pixels, region_proposals

H, W = 48, 64
BG, RED, BLUE = (120, 130, 140), (220, 40, 40), (40, 60, 210)


def shapes(h=H, w=W, bg=BG):
    """A flat image: background, a rectangle, a disc (no noise: regions are exactly the shapes)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    rect = np.zeros((h, w), bool)
    rect[5:20, 8:30] = True
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 32) ** 2 + (xx - 45) ** 2 <= 100
    img[rect] = RED
    img[disc] = BLUE
    return img, rect, disc


def uv(col, row, h=H, w=W):
    """Normalized centre of pixel (col, row)."""
    return (col + 0.5) / w, (row + 0.5) / h


def decode(decoder, img, *instances, key="img"):
    return decoder.decode_group(DecodeGroup(key, img, list(instances)))


def test_region_labels_are_the_shapes():
    img, rect, disc = shapes()
    labels = region_labels(img)
    assert len(np.unique(labels)) == 3
    assert np.array_equal(labels == labels[10, 10], rect) and np.array_equal(labels == labels[32, 45], disc)


@pytest.mark.parametrize("mode", ["joint", "union"])
def test_points_give_their_regions(mode):
    img, rect, disc = shapes()
    d = RegionDecoder(mode=mode)
    one, two, pt, both = decode(d, img, Instance(points=[uv(10, 10)]), Instance(points=[uv(10, 10), uv(25, 15)]),
                                Instance(point=uv(45, 32)), Instance(points=[uv(10, 10), uv(45, 32)]))
    assert np.array_equal(one, rect) and np.array_equal(two, rect)
    assert np.array_equal(pt, disc)
    assert np.array_equal(both, rect | disc)
    assert one.dtype == bool and one.shape == (H, W)


@pytest.mark.parametrize("mode", ["joint", "union"])
def test_box_clips_point_regions(mode):
    img, rect, disc = shapes()
    d = RegionDecoder(mode=mode)
    box = (0.0, 0.0, 20 / W, 1.0)  # columns 0..19 (pixel centres up to 19.5)
    (m,) = decode(d, img, Instance(points=[uv(10, 10)], box=box))
    assert np.array_equal(m, rect & box_pixel_mask(box, (W, H)))
    assert m[:, 20:].sum() == 0 and m[:, :20].sum() == 15 * 12
    # a point outside the box still names its region, clipped to the box
    (m,) = decode(d, img, Instance(points=[uv(45, 32)], box=(30 / W, 0, 1.0, 32 / H)))
    assert np.array_equal(m, disc & box_pixel_mask((30 / W, 0, 1.0, 32 / H), (W, H)))


def test_box_only_takes_regions_mostly_inside():
    img, rect, disc = shapes()
    d = RegionDecoder()
    around_disc = (33 / W, 20 / H, 58 / W, 44 / H)
    around_rect = (6 / W, 3 / H, 32 / W, 22 / H)
    (a,) = decode(d, img, Instance(box=around_disc))
    (b,) = decode(d, img, Instance(box=around_rect))
    assert np.array_equal(a, disc) and np.array_equal(b, rect)
    # the left 2/3 of the disc's box: the disc lies more than half inside, so it is kept, clipped
    part = (33 / W, 20 / H, 50 / W, 44 / H)
    (c,) = decode(d, img, Instance(box=part))
    assert disc[:, :50].sum() >= 0.5 * disc.sum()
    assert np.array_equal(c, disc & box_pixel_mask(part, (W, H)))
    # a third of the disc inside: not kept; a box inside the background only: empty (documented)
    (e,) = decode(d, img, Instance(box=(33 / W, 20 / H, 41 / W, 44 / H)))
    assert disc[:, 33:41].sum() < 0.5 * disc.sum() and not e.any()
    (f,) = decode(d, img, Instance(box=(0, 30 / H, 20 / W, 1.0)))
    assert not f.any()
    # the whole image: every region
    (g,) = decode(d, img, Instance(box=(0, 0, 1, 1)))
    assert g.all()


def test_nothing_to_prompt_gives_empty_masks_without_segmenting():
    img, _, _ = shapes()
    d = RegionDecoder()
    calls = []

    def load():
        calls.append(1)
        return img

    (m,) = decode(d, load, Instance(polyline=[(0.1, 0.1), (0.9, 0.9)]))
    assert m.shape == (H, W) and not m.any() and d.counters.encoder_calls == 0 and len(calls) == 1
    assert decode(d, img) == []
    m, n = decode(d, img, Instance(polygon=[(0.1, 0.1), (0.5, 0.1), (0.3, 0.5)]), Instance(points=[uv(10, 10)]))
    assert not m.any() and n.any() and d.counters.encoder_calls == 1


def test_consistent_with_region_proposals():
    """A grid point decodes to exactly its proposal (same segmentation, same pixel), also where
    cell centres fall on pixel edges (48 x 36 on a 6 x 6 grid: centres at integer positions)."""
    rng = np.random.default_rng(0)
    for (h, w), n, params in [((36, 48), 6, {}), ((40, 56), 8, {"scale": 50.0}), ((33, 47), 7, {})]:
        img, _, _ = shapes(h, w)
        img = np.clip(img.astype(int) + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)
        props = region_proposals(img, n, "felzenszwalb", **params)
        d = RegionDecoder(method="felzenszwalb", **params)
        cells = [((x + 0.5) / n, (y + 0.5) / n) for y in range(n) for x in range(n)]
        masks = d.decode([("img", img, Instance(point=c)) for c in cells])
        rows, cols = grid_pixels((w, h), n)
        for k, m in enumerate(masks):
            assert point_pixel(cells[k], (w, h)) == (rows[k], cols[k])
            assert np.array_equal(m, props.mask(k)), k
        assert d.counters.encoder_calls == 1
    slic = RegionDecoder(method="slic", n_segments=12)
    img, _, _ = shapes()
    assert np.array_equal(slic.decode([("s", img, Instance(point=(0.5, 0.5)))])[0],
                          region_proposals(img, 1, "slic", n_segments=12).mask(0))


def test_counters_cache_and_lru_by_bytes():
    colours = [BG, (10, 200, 10), (200, 200, 10), (90, 10, 90), (10, 90, 200)]
    imgs = {k: shapes(bg=c)[0] for k, c in zip("ABCDE", colours)}
    loads = {k: 0 for k in imgs}

    def source(k):
        def load():
            loads[k] += 1
            return imgs[k]
        return load

    inst = Instance(points=[uv(10, 10)])
    probe = RegionDecoder()
    decode(probe, imgs["A"], inst, key="A")
    entry = probe.cache.peek("A")
    assert entry.labels.dtype == np.uint8 and entry.labels.shape == (H, W)
    one = H * W * 1 + 3 * 8 + ENTRY_OVERHEAD_BYTES
    assert entry.nbytes == probe.cache.entry_nbytes("A") == one
    d = RegionDecoder(cache_bytes=3 * one + one // 2)
    for k in "ABC":
        decode(d, source(k), inst, key=k)
    assert d.cache.keys() == ["A", "B", "C"]
    decode(d, source("A"), inst, inst, key="A")
    assert d.cache.keys() == ["B", "C", "A"] and loads["A"] == 1
    decode(d, source("D"), inst, key="D")
    assert d.cache.keys() == ["C", "A", "D"] and d.cache.nbytes == 3 * one <= d.cache.max_bytes
    decode(d, source("B"), inst, key="B")
    assert loads == {"A": 1, "B": 2, "C": 1, "D": 1, "E": 0}
    assert d.counters == DecoderCounters(encoder_calls=5, cache_hits=1, prompts_decoded=7)
    # decode() groups requests by image: one segmentation per image per call
    e = RegionDecoder(mode="union")
    reqs = [(k, imgs[k], Instance(points=[uv(10, 10), uv(45, 32)])) for _ in range(8) for k in "ABCD"]
    out = e.decode(reqs)
    assert e.counters.encoder_calls == 4 and e.counters.prompts_decoded == 64 and len(out) == 32
    e.decode(reqs)
    assert e.counters.encoder_calls == 4 and e.counters.cache_hits == 4


def test_non_square_sizes_and_make_decoder():
    d = make_decoder("region", mode="union", method="slic", n_segments=20)
    assert isinstance(d, RegionDecoder) and d.mode == "union"
    for h, w in [(40, 56), (72, 30)]:
        img, _, _ = shapes(h, w)
        for m in d.decode([(f"{h}x{w}", img, Instance(points=[(0.0, 0.0), (1.0, 1.0)], box=(0, 0, 1, 1))),
                           (f"{h}x{w}", img, Instance(box=(0.2, 0.2, 0.3, 0.3)))]):
            assert m.shape == (h, w) and m.dtype == bool
    with pytest.raises(ValueError):
        RegionDecoder(method="watershed")
    with pytest.raises(TypeError):
        RegionDecoder(method="slic", scale=3)
    with pytest.raises(ValueError):
        RegionDecoder(mode="both")
    with pytest.raises(ValueError, match="region"):
        make_decoder("nope")


def test_decoder_registry():
    assert set(DECODERS) >= {"region", "sam", "sam2", "ray"}
    assert DECODERS["region"] is RegionDecoder
    made = []

    class Fixed(MaskDecoder):
        name = "fixed"

        def decode_group(self, group):
            return [np.ones((2, 3), bool) for _ in group.instances]

    def factory(**kwargs):
        made.append(kwargs)
        return Fixed(**kwargs)

    register_decoder("fixed-test", factory)
    try:
        d = make_decoder("fixed-test", mode="union")
        assert isinstance(d, Fixed) and d.mode == "union" and made == [{"mode": "union"}]
        assert d.decode([("k", None, Instance(box=(0, 0, 1, 1)))])[0].all()
    finally:
        del DECODERS["fixed-test"]
    with pytest.raises(TypeError):
        register_decoder("x", "not callable")


def test_compact_labels():
    assert compact_labels(np.array([[0, 255]])).dtype == np.uint8
    assert compact_labels(np.array([[0, 256]])).dtype == np.uint16
    assert compact_labels(np.array([[0, 70000]])).dtype == np.uint32
    with pytest.raises(ValueError):
        compact_labels(np.array([[-1, 0]]))


# --------------------------------------------------------------- shared helpers (codec.coords)
def test_byte_lru_cache():
    c = ByteLRUCache(10)
    assert c.put("a", 1, 4) and c.put("b", 2, 4)
    assert c.get("a") == 1 and c.keys() == ["b", "a"]
    assert c.put("c", 3, 4)  # evicts b
    assert c.keys() == ["a", "c"] and c.nbytes == 8 and c.evictions == 1 and "b" not in c
    assert c.peek("a") == 1 and c.keys() == ["a", "c"]  # peek leaves the order alone
    assert not c.put("big", 0, 11) and "big" not in c and c.nbytes == 8
    assert c.put("a", 9, 6)  # replacing a key re-sizes it: 4 + 6 still fits
    assert c.keys() == ["c", "a"] and c.nbytes == 10 and c.get("a") == 9
    assert c.put("a", 8, 7)  # 4 + 7 does not: c, now the least recent, goes
    assert c.keys() == ["a"] and c.nbytes == 7 and c.evictions == 2
    assert c.get("zzz", "dflt") == "dflt"
    c.clear()
    assert len(c) == 0 and c.nbytes == 0
    assert not ByteLRUCache(0).put("x", 1, 1)
    with pytest.raises(ValueError):
        ByteLRUCache(-1)


def test_box_pixel_mask_and_point_pixel():
    size = (10, 8)  # W, H
    m = box_pixel_mask((0.2, 0.25, 0.6, 0.75), size)  # x in [2, 6], y in [2, 6]: centres 2.5..5.5
    assert m.shape == (8, 10)
    assert np.array_equal(np.argwhere(m.any(axis=0)).ravel(), [2, 3, 4, 5])
    assert np.array_equal(np.argwhere(m.any(axis=1)).ravel(), [2, 3, 4, 5])
    assert m.sum() == 16
    thin = box_pixel_mask((0.31, 0.0, 0.33, 1.0), size)  # narrower than a pixel: the middle's pixel
    assert np.array_equal(np.argwhere(thin.any(axis=0)).ravel(), [3]) and thin.sum() == 8
    assert box_pixel_mask((0, 0, 1, 1), size).all()
    assert box_pixel_mask((-1, -1, 2, 2), size).all()
    assert point_pixel((0.0, 0.0), size) == (0, 0)
    assert point_pixel((1.0, 1.0), size) == (7, 9)
    assert point_pixel((0.25, 0.5), size) == (4, 2)  # x = 2.5 -> col 2, y = 4.0 -> row 4 (edge: below)
