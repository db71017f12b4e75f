"""Grid-point mask proposals (SPEC §4): the Proposals container, region proposals, the disk cache."""

import gzip
import importlib.util
import json
import logging

import numpy as np
import pytest

from getok_core.data.images import to_rgb
from getok_core.data.masks import decode_rle, encode_rle, mask_iou
from getok_core.decoders.region import region_params
from getok_core.prepare.proposals import (ProposalCache, Proposals, RegionProposer, grid_pixels, grid_points,
                                          region_method_tag, region_proposals)


def synthetic(h=48, w=64, scale=1):
    """A flat grey background with a red rectangle and a blue disc; returns (image, rect, disc)."""
    h, w = h * scale, w * scale
    yy, xx = np.mgrid[:h, :w]
    rect = (yy >= 5 * scale) & (yy < 20 * scale) & (xx >= 8 * scale) & (xx < 30 * scale)
    disc = (yy - 32 * scale) ** 2 + (xx - 45 * scale) ** 2 <= (10 * scale) ** 2
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (120, 130, 140)
    img[rect] = (220, 40, 40)
    img[disc] = (40, 60, 210)
    return img, rect, disc


def random_masks(k, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((k, h, w)) < rng.random((k, 1, 1))


# ------------------------------------------------------------------------------ grid
def test_grid_points_are_cell_centres_row_major():
    pts = grid_points((64, 48), 4)
    assert pts.shape == (16, 2)
    for k, (x, y) in enumerate(pts):
        gx, gy = k % 4, k // 4
        assert (x, y) == ((gx + 0.5) * 64 / 4, (gy + 0.5) * 48 / 4)
    rows, cols = grid_pixels((64, 48), 4)
    assert list(cols[:4]) == [8, 24, 40, 56] and list(rows[::4]) == [6, 18, 30, 42]


def test_grid_pixels_clamped_on_tiny_images():
    rows, cols = grid_pixels((3, 2), 8)
    assert rows.min() >= 0 and rows.max() <= 1 and cols.min() >= 0 and cols.max() <= 2
    # each point lies in its pixel: floor of the continuous position
    pts = grid_points((3, 2), 8)
    assert np.array_equal(cols, np.floor(pts[:, 0]).astype(int))
    assert np.array_equal(rows, np.floor(pts[:, 1]).astype(int))


# ------------------------------------------------------------------------------ Proposals
def test_proposals_from_masks_round_trip():
    masks = random_masks(9, 7, 5)
    p = Proposals.from_masks(masks, 3, "test", scores=np.arange(9) / 10)
    assert p.image_size == (5, 7) and p.grid_size == 3 and len(p) == 9
    assert p.masks().dtype == bool and np.array_equal(p.masks(), masks)
    assert np.array_equal(p.mask(4), masks[4])
    assert p.scores == pytest.approx([k / 10 for k in range(9)])
    assert Proposals.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.points().shape == (9, 2)


def test_proposals_ious_match_boolean_iou():
    masks = random_masks(16, 12, 10, seed=1)
    masks[3] = False
    p = Proposals.from_masks(masks, 4, "test")
    target = random_masks(1, 12, 10, seed=2)[0]
    expected = [mask_iou(m, target) for m in masks]
    assert p.ious(target) == pytest.approx(expected, abs=1e-12)
    assert p.ious(encode_rle(target)) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        p.ious(np.zeros((5, 5), bool))


def test_proposals_validate():
    masks = random_masks(4, 6, 6)
    with pytest.raises(ValueError):
        Proposals.from_masks(masks, 3, "x")  # 4 masks for 9 points
    with pytest.raises(ValueError):
        Proposals(image_size=(6, 5), grid_size=2, method="x", rles=[encode_rle(m) for m in masks])
    with pytest.raises(ValueError):
        Proposals.from_masks(masks, 2, "x", scores=[1.0])
    with pytest.raises(ValueError):
        Proposals.from_masks(masks[0], 1, "x")


# ------------------------------------------------------------------------------ images
def test_to_rgb_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb(gray)
    assert rgb.shape == (3, 4, 3) and all(np.array_equal(rgb[..., c], gray) for c in range(3))
    assert np.array_equal(to_rgb(gray[..., None]), rgb)
    rgba = np.dstack([rgb, np.full((3, 4), 7, np.uint8)])
    assert np.array_equal(to_rgb(rgba), rgb)
    with pytest.raises(ValueError):
        to_rgb(gray.astype(np.float32))
    with pytest.raises(ValueError):
        to_rgb(np.zeros((3, 4, 2), np.uint8))


# ------------------------------------------------------------------------------ region proposals
# scikit-image is a declared dependency; only the region tests need it
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image missing")


@needs_skimage
def test_region_proposal_of_a_cell_inside_a_shape_is_that_shape():
    img, rect, disc = synthetic()
    background = ~(rect | disc)
    n = 16
    p = region_proposals(img, n)
    assert p.image_size == (64, 48) and p.grid_size == n and len(p) == n * n
    assert p.method == region_method_tag("felzenszwalb") and p.meta["regions"] == 3
    rows, cols = grid_pixels((64, 48), n)
    seen = set()
    for k in range(n * n):
        shape = next(s for s in (rect, disc, background) if s[rows[k], cols[k]])
        assert np.array_equal(p.mask(k), shape), k
        seen.add(id(shape))
    assert len(seen) == 3


@needs_skimage
def test_region_proposals_photo_sized_defaults():
    img, rect, disc = synthetic(scale=5)  # 320 x 240: smoothing on; edge strips may form regions
    p = region_proposals(img, 16)
    assert p.meta["params"] == region_params("felzenszwalb", (320, 240))
    from scipy import ndimage

    rows, cols = grid_pixels((320, 240), 16)
    for shape in (rect, disc):
        depth = ndimage.distance_transform_edt(shape)
        inner = [k for k in range(256) if depth[rows[k], cols[k]] >= 4]
        assert inner
        for k in inner:  # cells well inside a shape get (almost all of) the shape
            assert mask_iou(p.mask(k), shape) > 0.9


@needs_skimage
def test_region_proposals_are_deterministic_and_accept_gray_and_rgba():
    img, _, _ = synthetic()
    a, b = region_proposals(img, 8), region_proposals(img.copy(), 8)
    assert a == b
    gray = img.mean(axis=2).astype(np.uint8)
    g = region_proposals(gray, 8)
    assert g == region_proposals(np.dstack([gray] * 3), 8)
    assert g.meta["regions"] == 3  # the three grey levels still separate the shapes
    rgba = np.dstack([img, np.full(img.shape[:2], 128, np.uint8)])
    assert region_proposals(rgba, 8) == a


@needs_skimage
def test_region_proposals_slic_option():
    img, rect, disc = synthetic()
    p = region_proposals(img, 16, method="slic", n_segments=30)
    assert p.method.startswith("region-slic-") and p == region_proposals(img, 16, "slic", n_segments=30)
    rows, cols = grid_pixels((64, 48), 16)
    for shape in (rect, disc):
        for k in range(256):
            if shape[rows[k], cols[k]]:  # superpixels respect the colour edges
                m = p.mask(k)
                assert m[rows[k], cols[k]] and np.count_nonzero(m & shape) / np.count_nonzero(m) > 0.9


@needs_skimage
def test_region_parameters_and_tags():
    assert region_method_tag() == region_method_tag("felzenszwalb", scale=None)
    assert region_method_tag(scale=10) != region_method_tag(scale=20) != region_method_tag()
    assert region_method_tag("slic") != region_method_tag()
    assert RegionProposer(scale=10).tag == region_method_tag(scale=10)
    img, _, _ = synthetic()
    assert RegionProposer(scale=10)(img, 4) == region_proposals(img, 4, scale=10)
    assert region_params("felzenszwalb", (512, 512)) == {"scale": 300.0, "sigma": 0.8, "min_size": 50}
    with pytest.raises(TypeError):
        region_proposals(img, 4, n_segments=5)  # a slic parameter
    with pytest.raises(ValueError):
        region_proposals(img, 4, method="watershed")
    with pytest.raises(ValueError):
        region_proposals(img, 4, min_size=0)
    with pytest.raises(ValueError):
        region_proposals(img, 0)


# ------------------------------------------------------------------------------ cache
def make_proposals(seed=0, n=3, method="test"):
    return Proposals.from_masks(random_masks(n * n, 10, 12, seed), n, method, scores=np.linspace(0, 1, n * n))


def test_cache_round_trip_and_misses(tmp_path):
    cache = ProposalCache(tmp_path / "c")
    p = make_proposals()
    assert cache.get("img1", "tagA", 3) is None
    path = cache.put("img1", "tagA", 3, p)
    assert path.name.endswith(".json.gz") and "img1" not in str(path.relative_to(tmp_path))
    assert cache.get("img1", "tagA", 3) == p
    assert cache.get("img1", "tagB", 3) is None          # another method tag
    assert cache.get("img2", "tagA", 3) is None          # another image
    assert cache.get("img1", "tagA", 4) is None          # another grid
    assert (cache.hits, cache.misses, cache.corrupt) == (1, 4, [])
    assert not list(tmp_path.rglob("*.tmp"))               # the temp file was renamed
    assert ProposalCache(tmp_path / "c").get("img1", "tagA", 3) == p  # a new instance reads it
    with pytest.raises(ValueError):
        cache.put("img1", "tagA", 4, p)                   # grid size mismatch


def test_cache_get_or_compute(tmp_path):
    cache = ProposalCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return make_proposals()

    first = cache.get_or_compute("k", "t", 3, compute)
    second = cache.get_or_compute("k", "t", 3, compute)
    assert first == second and len(calls) == 1
    cache.get_or_compute("k", "t2", 3, compute)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_json", "wrong_entry", "bad_rle"])
def test_corrupted_cache_file_is_recomputed_and_reported(tmp_path, caplog, damage):
    cache = ProposalCache(tmp_path)
    good = make_proposals(seed=1)
    path = cache.put("k", "t", 3, good)
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a gzip file")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        doc = json.loads(gzip.decompress(raw))
        if damage == "bad_json":
            data = json.dumps(doc).encode()[:-5]
        elif damage == "wrong_entry":
            doc["image_key"] = "other"
            data = json.dumps(doc).encode()
        else:
            doc["proposals"]["rles"] = doc["proposals"]["rles"][:-1]
            data = json.dumps(doc).encode()
        path.write_bytes(gzip.compress(data))
    calls = []

    def compute():
        calls.append(1)
        return good

    with caplog.at_level(logging.WARNING, logger="getok_core.prepare.proposals"):
        out = cache.get_or_compute("k", "t", 3, compute)
    assert out == good and calls == [1]
    assert cache.corrupt == [str(path)]
    assert "unreadable entry" in caplog.text
    assert cache.get("k", "t", 3) == good                  # rewritten


def test_cache_older_format_version_is_a_quiet_miss(tmp_path):
    cache = ProposalCache(tmp_path)
    path = cache.put("k", "t", 3, make_proposals())
    doc = json.loads(gzip.decompress(path.read_bytes()))
    doc["version"] = 0
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    assert cache.get("k", "t", 3) is None and cache.corrupt == []


def test_cache_files_are_reproducible(tmp_path):
    a = ProposalCache(tmp_path / "a").put("k", "t", 3, make_proposals())
    b = ProposalCache(tmp_path / "b").put("k", "t", 3, make_proposals())
    assert a.read_bytes() == b.read_bytes()


@needs_skimage
def test_cache_with_region_proposer(tmp_path):
    img, rect, _ = synthetic()
    proposer = RegionProposer()
    cache = ProposalCache(tmp_path)
    p = cache.get_or_compute("synthetic.png", proposer.tag, 8, lambda: proposer(img, 8))
    q = cache.get("synthetic.png", proposer.tag, 8)
    assert p == q and q.method == proposer.tag
    assert cache.get("synthetic.png", RegionProposer(scale=5).tag, 8) is None
    rows, cols = grid_pixels((64, 48), 8)
    k = next(k for k in range(64) if rect[rows[k], cols[k]])
    assert np.array_equal(decode_rle(q.rles[k]), rect)
