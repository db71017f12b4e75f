"""SAM 2 through the real ``sam2`` 1.1.0 code on a tiny random SAM 2 (getok_core/decoders/tiny_sam.py:
SAM 2's own Hiera-T config with small widths, built and loaded by ``sam2.build_sam.build_sam2``):
``Sam2Decoder`` (batched == one by one, the embedding cache across a GRPO batch), ``Sam2Proposer``
(batched == one by one, one encoder pass per image) and ``getok prepare --proposals sam2``."""

import gzip
import json

import numpy as np
import pytest

import sam2  # noqa: F401  (tests/swift run in the swift environment: a missing package fails)
import torch

from sam2.modeling.sam2_base import SAM2Base  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from getok_core.cli import main as getok_main  # noqa: E402
from getok_core.codec.coords import box_pixel_mask  # noqa: E402
from getok_core.codec.instance import Instance  # noqa: E402
from getok_core.decoders import make_decoder  # noqa: E402
from getok_core.decoders.base import DecodeGroup  # noqa: E402
from getok_core.decoders.sam import ENTRY_OVERHEAD_BYTES, Sam2Decoder, plan_prompts, tensors_nbytes  # noqa: E402
from getok_core.decoders.sam_models import load_sam2, sam2_configs, sam2_predictor  # noqa: E402
from getok_core.decoders.tiny_sam import (  # noqa: E402
    TINY_SAM2_CONFIG, build_tiny_sam2, save_tiny_sam, save_tiny_sam2)
from getok_core.prepare.proposals import ProposalCache, Proposals, Sam2Proposer, grid_points  # noqa: E402

TOL = 1e-4  # logits this close to the threshold may flip between batched and one-by-one decoding

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/swift/conftest.py


@pytest.fixture(scope="module")
def model():
    return build_tiny_sam2(0)


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    """``getok tiny-sam --sam2``: the checkpoint of ``build_tiny_sam2(0)``."""
    path = tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt"
    assert getok_main(["tiny-sam", "--sam2", str(path)]) == 0
    return path


def image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(60, 200, 3)
    r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[r0:r0 + h // 3, c0:c0 + w // 3] = (220, 40, 40)
    noise = rng.integers(-10, 11, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def random_instance(rng):
    kind = rng.integers(5)
    u1, v1 = rng.uniform(0, 0.6, 2)
    box = (u1, v1, u1 + rng.uniform(0.1, 0.4), v1 + rng.uniform(0.1, 0.4))
    pts = [tuple(rng.uniform(0.02, 0.98, 2)) for _ in range(rng.integers(2, 4))]
    return [Instance(points=pts), Instance(points=pts[:2], box=box), Instance(box=box), Instance(point=pts[0]),
            Instance(points=pts[:1])][kind]


class EncoderCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.image_encoder.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.calls += 1

    def remove(self):
        self.handle.remove()


# ------------------------------------------------------------------ the tiny SAM 2
def test_tiny_sam2_is_a_real_sam2_loaded_by_build_sam2(model, ckpt, tmp_path):
    assert isinstance(model, SAM2Base) and not model.training and model.image_size == 1024
    assert TINY_SAM2_CONFIG in sam2_configs()
    p = SAM2ImagePredictor(model)
    p.set_image(image())
    feats = p._features
    assert feats["image_embed"].shape == (1, 32, 64, 64)
    assert [tuple(f.shape) for f in feats["high_res_feats"]] == [(1, 4, 256, 256), (1, 8, 128, 128)]
    assert sum(t.numel() for t in model.parameters()) < 1_000_000  # Hiera-T: 39M
    # deterministic in the seed, different across seeds, the global RNG left alone
    state = torch.random.get_rng_state()
    other = build_tiny_sam2(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sd, sdo = model.state_dict(), other.state_dict()
    assert not all(torch.equal(sd[k], sdo[k]) for k in sd)
    # the CLI's checkpoint: build_sam2 of the stored config + overrides, the same weights
    loaded = load_sam2("tiny", ckpt, device="cpu")
    assert isinstance(loaded, SAM2Base) and not loaded.training
    assert all(torch.equal(sd[k], v) for k, v in loaded.state_dict().items())
    raw = torch.load(ckpt, weights_only=True)
    assert set(raw) == {"model", "getok_tiny_sam2"} and raw["getok_tiny_sam2"]["config"] == TINY_SAM2_CONFIG
    with pytest.raises(ValueError, match="unknown SAM 2 config 'vit_h'"):
        load_sam2("vit_h", ckpt)
    with pytest.raises(ValueError, match="not a tiny SAM 2 checkpoint"):
        load_sam2("tiny", save_tiny_sam(tmp_path / "sam1.pt"))
    with pytest.raises(FileNotFoundError):
        load_sam2("tiny", tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="checkpoint path is needed"):
        load_sam2(TINY_SAM2_CONFIG, None)
    assert save_tiny_sam2(tmp_path / "again.pt") and load_sam2("tiny", tmp_path / "again.pt", "cpu")


# ------------------------------------------------------------------ Sam2Decoder
def reference(predictor, img, inst, mode, multimask="auto"):
    """(mask, uncertain pixels, near tie) of one instance, prompted one prompt at a time with
    ``SAM2ImagePredictor.predict`` (see tests/swift/test_sam_decoder.py's reference)."""
    h, w = img.shape[:2]
    scale = np.array([w, h], float)
    pts = list(inst.points) + ([inst.point] if inst.point is not None else [])
    box = None if inst.box is None else np.array(inst.box) * np.tile(scale, 2)
    prompts = ([(pts, box)] if (pts or box is not None) else []) if mode == "joint" or not pts else [
        ([p], None) for p in pts]
    mask, uncertain, near_tie = np.zeros((h, w), bool), np.zeros((h, w), bool), False
    for p, b in prompts:
        mm = (len(p) == 1 and b is None) if multimask == "auto" else multimask
        coords = np.array(p, float).reshape(-1, 2) * scale if p else None
        labels = np.ones(len(p), int) if p else None
        logits, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=b,
                                              multimask_output=mm, return_logits=True)
        if mm:
            top2 = np.sort(scores)[-2:]
            near_tie |= bool(top2[1] - top2[0] < TOL)
        lg = logits[int(np.argmax(scores))]
        mask |= lg > predictor.mask_threshold
        uncertain |= np.abs(lg - predictor.mask_threshold) < TOL
    if mode == "union" and inst.box is not None and pts:
        mask &= box_pixel_mask(inst.box, (w, h))
    return mask, uncertain, near_tie


@pytest.mark.parametrize("mode,multimask", [("joint", "auto"), ("joint", False), ("union", "auto")])
def test_decoder_batched_equals_one_by_one(model, mode, multimask):
    rng = np.random.default_rng(7)
    img = image(seed=3)
    instances = [random_instance(rng) for _ in range(10)] + [Instance(polyline=[(0.1, 0.1), (0.9, 0.9)])]
    decoder = Sam2Decoder(model, mode=mode, batch_size=3, multimask=multimask)  # ragged batches
    masks = decoder.decode_group(DecodeGroup("img", img, instances))
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(img)
    checked = 0
    for k, inst in enumerate(instances):
        ref, uncertain, near_tie = reference(predictor, img, inst, mode, multimask)
        assert masks[k].shape == img.shape[:2] and masks[k].dtype == bool
        if near_tie:
            continue  # batching's float noise may pick the other multimask output
        assert not np.any((masks[k] != ref) & ~uncertain), k
        checked += 1
    assert checked >= 8 and any(m.any() for m in masks) and not all(m.all() for m in masks[:-1])
    assert not masks[-1].any()  # polyline only: nothing to prompt
    assert decoder.counters.prompts_decoded == len(plan_prompts(instances, mode, multimask))
    assert decoder.counters.encoder_calls == 1


def test_grpo_batch_encodes_each_image_once(model):
    """4 images x 4 responses x 2 instances, interleaved: 4 encoder passes; again: 4 hits."""
    rng = np.random.default_rng(0)
    images = {f"img{i}": image(*[(40, 56), (30, 48)][i % 2], seed=i) for i in range(4)}
    loads = dict.fromkeys(images, 0)

    def source(key):
        def load():
            loads[key] += 1
            return images[key]
        return load

    requests = [(key, source(key), random_instance(rng)) for key in images for _ in range(4) for _ in range(2)]
    requests = [requests[i] for i in rng.permutation(len(requests))]  # responses arrive interleaved
    counter = EncoderCounter(model)
    try:
        decoder = Sam2Decoder(model)
        masks = decoder.decode(requests)
        assert counter.calls == 4 and decoder.counters.encoder_calls == 4 and decoder.counters.cache_hits == 0
        assert decoder.counters.prompts_decoded == 4 * 4 * 2  # joint: one prompt per instance
        assert all(m.shape == images[key].shape[:2] for m, (key, _, _) in zip(masks, requests))
        assert all(n == 1 for n in loads.values())
        again = decoder.decode(requests)
        assert counter.calls == 4 and decoder.counters.cache_hits == 4
        assert all(n == 1 for n in loads.values())  # a hit never reads the image
        assert all(np.array_equal(a, b) for a, b in zip(masks, again))
        # what one entry costs: the image embedding and both high-resolution feature maps
        entry = decoder.cache.peek("img0")
        assert entry.nbytes == tensors_nbytes(entry.state) + ENTRY_OVERHEAD_BYTES
        assert tensors_nbytes(entry.state) == 4 * (32 * 64 * 64 + 4 * 256 * 256 + 8 * 128 * 128)
    finally:
        counter.remove()


def test_cache_bound_lru_and_cpu_cache_device(model):
    inst = [Instance(points=[(0.3, 0.4)], box=(0.1, 0.1, 0.7, 0.8))]
    imgs = {k: image(seed=10 + i) for i, k in enumerate("ABC")}
    probe = Sam2Decoder(model)
    first_a = probe.decode_group(DecodeGroup("A", imgs["A"], inst))[0]
    one = probe.cache.entry_nbytes("A")
    counter = EncoderCounter(model)
    try:
        d = Sam2Decoder(model, cache_bytes=2 * one + one // 2, cache_device="cpu")  # room for 2 entries

        def run(key):
            return d.decode_group(DecodeGroup(key, imgs[key], inst))[0]

        assert np.array_equal(run("A"), first_a)
        run("B")
        assert np.array_equal(run("A"), first_a) and counter.calls == 2  # a hit: the same mask
        run("C")  # evicts B, the least recently used
        assert d.cache.keys() == ["A", "C"] and d.cache.evictions == 1 and counter.calls == 3
        assert d.cache.peek("A").state["_features"]["image_embed"].device.type == "cpu"
    finally:
        counter.remove()


def test_from_checkpoint_make_decoder_and_predictor_wrapping(model, ckpt):
    d = make_decoder("sam2", config="tiny", checkpoint=ckpt, device="cpu", mode="union", batch_size=4)
    assert isinstance(d, Sam2Decoder) and d.mode == "union" and not d.model.training
    img = image(seed=5)
    inst = [Instance(points=[(0.3, 0.3), (0.6, 0.7)])]
    ref = Sam2Decoder(model, mode="union").decode_group(DecodeGroup("x", img, inst))[0]
    assert np.array_equal(d.decode_group(DecodeGroup("x", img, inst))[0], ref)
    wrapped = sam2_predictor(model)
    assert isinstance(wrapped, SAM2ImagePredictor) and sam2_predictor(wrapped) is wrapped
    assert Sam2Decoder(wrapped).predictor is wrapped and Sam2Proposer(wrapped).predictor is wrapped
    assert Sam2Decoder(model, dtype="float16").amp_dtype is None  # CPU stays float32


# ------------------------------------------------------------------ Sam2Proposer
def test_proposer_batched_equals_one_by_one_and_encodes_once(model):
    img = image(seed=3)
    h, w = img.shape[:2]
    n = 4
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(img)
    ref_logits, ref_scores = [], []
    for pt in grid_points((w, h), n):
        lg, sc, _ = predictor.predict(point_coords=pt[None, :], point_labels=np.array([1]), return_logits=True)
        ref_logits.append(lg[int(np.argmax(sc))])
        ref_scores.append(sc)
    ref_logits, ref_scores = np.stack(ref_logits), np.stack(ref_scores)
    assert len(set(ref_scores.argmax(1).tolist())) > 1  # the winning output varies between points
    counter = EncoderCounter(model)
    try:
        proposer = Sam2Proposer(model, batch_size=5)  # ragged last batch
        p = proposer(img, n)
        assert counter.calls == 1
    finally:
        counter.remove()
    assert isinstance(p, Proposals) and p.image_size == (w, h) and len(p.rles) == n * n
    assert p.method == proposer.tag and p.method.startswith("sam2-v1:SAM2Base:sha256=")
    masks = p.masks()
    top2 = np.sort(ref_scores, axis=1)[:, -2:]
    checked = 0
    for k in range(n * n):
        if top2[k, 1] - top2[k, 0] < TOL:
            continue
        assert p.scores[k] == pytest.approx(float(ref_scores[k].max()), abs=1e-4)
        differ = masks[k] != (ref_logits[k] > 0)
        assert np.all(np.abs(ref_logits[k][differ]) < TOL), k
        checked += 1
    assert checked >= 12
    assert len({r["counts"] for r in p.rles}) > 1  # the proposals depend on the point
    assert proposer.tag == Sam2Proposer(build_tiny_sam2(0)).tag != Sam2Proposer(model, multimask=False).tag


def test_getok_prepare_with_sam2_proposals(ckpt, tmp_path, capsys):
    """``getok prepare --proposals sam2 --sam-model tiny``: every sample kept, the proposals of
    each image cached under the SAM 2 proposer's tag."""
    from getok_core.data.toy import write_toy_dataset

    root = tmp_path / "toy"
    write_toy_dataset(root, n_images=2, n_val=1, task="seg")
    out = tmp_path / "out"
    args = ["prepare", "--dataset", "jsonl", "--root", str(root / "data.jsonl"), "--out", str(out),
            "--proposals", "sam2", "--sam-model", "tiny", "--sam-checkpoint", str(ckpt), "--grid-size", "4",
            "--formats", "swift", "--no-progress"]
    assert getok_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == summary["samples"] > 0 and summary["skipped"] == 0
    tag = Sam2Proposer(load_sam2("tiny", ckpt, "cpu"), max_pixels=4_000_000).tag
    cache = ProposalCache(out / "proposals")
    files = sorted((out / "proposals").rglob("*.json.gz"))
    assert len(files) == 2  # one entry per image
    keys = {json.loads(gzip.open(f, "rt").read())["image_key"] for f in files}
    found = [cache.get(k, tag, 4) for k in keys]
    assert all(isinstance(x, Proposals) and x.method == tag for x in found)
    rows = [json.loads(line) for line in (out / "swift" / "train.jsonl").read_text().splitlines()]
    assert rows and all("<" in r["messages"][-1]["content"] for r in rows)
    no_ckpt = args[:args.index("--sam-checkpoint")] + args[args.index("--grid-size"):]
    assert getok_main(no_ckpt) != 0
    assert "--proposals sam2 needs --sam-checkpoint" in capsys.readouterr().err
