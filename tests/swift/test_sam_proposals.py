"""SAM grid-point proposals through the real segment-anything code, on a tiny random SAM."""

import sys

import numpy as np
import pytest

import segment_anything  # noqa: F401  (tests/swift run in the swift environment: a missing package fails)
import torch

from segment_anything import SamPredictor  # noqa: E402

from getok_core.prepare.proposals import ProposalCache, Proposals, Sam2Proposer, SamProposer, grid_points  # noqa: E402

from getok_core.decoders.tiny_sam import TINY_SAM_CONFIG, build_tiny_sam  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/swift/conftest.py; `sam` too


def image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (120, 130, 140)
    img[5:20, 8:30] = (220, 40, 40)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 32) ** 2 + (xx - 45) ** 2 <= 100] = (40, 60, 210)
    noise = rng.integers(-10, 11, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


class EncoderCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.image_encoder.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.calls += 1


def test_tiny_sam_is_a_real_sam_and_fast(sam):
    from segment_anything.modeling import Sam

    assert isinstance(sam, Sam) and not sam.training
    assert SamPredictor(sam).transform.target_length == TINY_SAM_CONFIG["img_size"] == sam.image_encoder.img_size
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        emb = sam.image_encoder(x)
    assert emb.shape == (1, 32, 16, 16)
    # small enough for CPU tests (its speed is measured in bench/bench_decode.py, not here): vit_b
    # has 89M encoder parameters, this one about 61k
    assert sum(p.numel() for p in sam.image_encoder.parameters()) < 100_000
    # deterministic in the seed, different across seeds, the global RNG left alone
    state = torch.random.get_rng_state()
    a, b = build_tiny_sam(0), build_tiny_sam(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sd0, sda, sdb = sam.state_dict(), a.state_dict(), b.state_dict()
    assert all(torch.equal(sd0[k], sda[k]) for k in sd0)
    assert not all(torch.equal(sd0[k], sdb[k]) for k in sd0)


def test_shapes_and_metadata(sam):
    img = image()
    proposer = SamProposer(sam, batch_size=16)
    p = proposer(img, 8)
    assert isinstance(p, Proposals)
    assert p.image_size == (64, 48) and p.grid_size == 8 and len(p.rles) == 64
    assert p.masks().shape == (64, 48, 64) and p.masks().dtype == bool
    assert p.method == proposer.tag and p.method.startswith("sam-v1:Sam:sha256=")
    assert len(p.scores) == 64
    assert len({r["counts"] for r in p.rles}) > 1  # the proposals depend on the point


def one_by_one(predictor, img, n, multimask=True):
    """Reference: each cell centre prompted alone with SamPredictor.predict; best score kept."""
    predictor.set_image(img)
    h, w = img.shape[:2]
    logits, scores, chosen = [], [], []
    for pt in grid_points((w, h), n):
        lg, sc, _ = predictor.predict(point_coords=pt[None, :], point_labels=np.array([1]),
                                      multimask_output=multimask, return_logits=True)
        best = int(np.argmax(sc))
        logits.append(lg[best])
        scores.append(sc)
        chosen.append(best)
    return np.stack(logits), np.stack(scores), np.array(chosen)


@pytest.mark.parametrize("multimask", [True, False])
def test_batched_equals_one_by_one(sam, multimask):
    img = image(h=40, w=56, seed=3)
    n = 6
    predictor = SamPredictor(sam)
    ref_logits, ref_scores, ref_best = one_by_one(predictor, img, n, multimask)
    if multimask:  # the comparison means something: the winning output varies between points
        assert len(set(ref_best.tolist())) > 1
    p = SamProposer(predictor, batch_size=7, multimask=multimask)(img, n)  # ragged last batch
    masks = p.masks()
    ref_masks = ref_logits > sam.mask_threshold
    top2 = np.sort(ref_scores, axis=1)[:, -2:] if multimask else None
    for k in range(n * n):
        if multimask and top2[k, 1] - top2[k, 0] < 1e-4:
            continue  # a near tie: batching's float noise may pick the other output
        assert p.scores[k] == pytest.approx(float(ref_scores[k].max()), abs=1e-4)
        differ = masks[k] != ref_masks[k]
        # equal masks, except where the logit is within float noise of the threshold: batching
        # moves logits by ~1e-7 (batched matmuls) and some pixels' logits lie closer than that to 0
        assert np.all(np.abs(ref_logits[k][differ]) < 1e-4), k
    assert np.count_nonzero(masks != ref_masks) <= 1e-4 * masks.size


def test_encoder_runs_once_per_image(sam):
    counter = EncoderCounter(sam)
    try:
        proposer = SamProposer(sam, batch_size=10)
        proposer(image(seed=1), 8)  # 64 points in 7 batches
        assert counter.calls == 1
        proposer(image(seed=2), 4)
        assert counter.calls == 2
    finally:
        counter.handle.remove()


def test_model_or_predictor_gray_and_rgba(sam):
    img = image()
    a = SamProposer(sam, batch_size=64)(img, 4)
    b = SamProposer(SamPredictor(sam), batch_size=5)(img, 4)
    assert a.rles == b.rles and a.scores == pytest.approx(b.scores, abs=1e-5)
    gray = img[..., 0]
    g = SamProposer(sam)(gray, 4)
    assert g == SamProposer(sam)(np.dstack([gray] * 3), 4)
    assert SamProposer(sam)(np.dstack([img, np.zeros(img.shape[:2], np.uint8)]), 4) == a


def test_tags_name_the_weights_and_options(sam):
    base = SamProposer(sam)
    assert base.tag == SamProposer(build_tiny_sam(0)).tag          # same weights, same tag
    assert base.tag != SamProposer(build_tiny_sam(1)).tag          # other weights
    assert base.tag != SamProposer(sam, multimask=False).tag
    assert base.tag == SamProposer(sam, batch_size=3).tag          # batching changes nothing
    assert SamProposer(sam, model_id="vit_h:abc").tag == "sam-v1:Sam:vit_h:abc:multimask=1"
    with pytest.raises(ValueError):
        SamProposer(sam, batch_size=0)


def test_from_checkpoint_uses_the_registry(sam, registry_sam, tmp_path):
    ckpt, seen = registry_sam
    proposer = SamProposer.from_checkpoint("registry_tiny", ckpt, device="cpu", batch_size=32)
    assert seen == [str(ckpt)] and proposer.batch_size == 32
    assert proposer.tag == SamProposer(sam).tag                   # identity = the loaded weights
    img = image()
    assert proposer(img, 4) == SamProposer(sam)(img, 4)
    with pytest.raises(ValueError):
        SamProposer.from_checkpoint("no_such_type", ckpt)
    with pytest.raises(FileNotFoundError):
        SamProposer.from_checkpoint("registry_tiny", tmp_path / "missing.pth")


def test_cache_skips_the_encoder(sam, tmp_path):
    counter = EncoderCounter(sam)
    try:
        proposer = SamProposer(sam)
        cache = ProposalCache(tmp_path)
        img = image()
        first = cache.get_or_compute("img.jpg", proposer.tag, 8, lambda: proposer(img, 8))
        second = cache.get_or_compute("img.jpg", proposer.tag, 8, lambda: proposer(img, 8))
        assert first == second and counter.calls == 1
        assert cache.get("img.jpg", SamProposer(sam, multimask=False).tag, 8) is None
    finally:
        counter.handle.remove()


def test_sam2_proposer_needs_sam2(sam, monkeypatch):
    """Without the optional sam2 package (simulated: its modules blocked in sys.modules) the
    error names it."""
    for name in ("sam2", "sam2.sam2_image_predictor", "sam2.build_sam"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="sam2"):
        Sam2Proposer(sam)


def test_bounded_proposals_are_the_downscaled_images_upsampled(sam):
    """``max_pixels``: SAM sees the image downscaled (PIL box filter), prompted at the grid of the
    downscaled frame; every original pixel takes its mask value from the downscaled pixel holding
    its centre. Equal to the unbounded proposer on the downscaled image, upsampled that way."""
    from getok_core.data.images import resize_rgb, work_size
    from getok_core.data.masks import decode_rle
    from getok_core.prepare.proposals import nearest_index

    img = image(72, 96, seed=3)
    bound = 40 * 30
    bounded = SamProposer(sam, max_pixels=bound)(img, 4)
    sw, sh = work_size((96, 72), bound)
    assert (sw, sh) == (40, 30)
    small = SamProposer(sam)(resize_rgb(img, (sw, sh)), 4)
    ri, ci = nearest_index(72, sh), nearest_index(96, sw)
    assert bounded.image_size == (96, 72) and len(bounded.rles) == len(small.rles) == 16
    for got, want in zip(bounded.rles, small.rles):
        assert np.array_equal(decode_rle(got), decode_rle(want)[ri[:, None], ci[None, :]])
    assert bounded.scores == small.scores
    assert "max_pixels=1200" in SamProposer(sam, max_pixels=bound).tag
    # within the bound: the unbounded result, bit for bit
    assert SamProposer(sam, max_pixels=96 * 72)(img, 4).rles == SamProposer(sam)(img, 4).rles
