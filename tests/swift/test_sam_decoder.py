"""SamDecoder through the real segment-anything code, on a tiny random SAM (getok_core/decoders/tiny_sam.py)."""

import sys

import numpy as np
import pytest

import segment_anything  # noqa: F401  (tests/swift run in the swift environment: a missing package fails)
import torch

from segment_anything import SamPredictor  # noqa: E402

from getok_core.codec.coords import box_pixel_mask  # noqa: E402
from getok_core.codec.instance import Instance  # noqa: E402
from getok_core.decoders import make_decoder  # noqa: E402
from getok_core.decoders.base import DecodeGroup  # noqa: E402
from getok_core.decoders.sam import (  # noqa: E402
    ENTRY_OVERHEAD_BYTES, Sam2Decoder, SamDecoder, plan_prompts, tensors_nbytes)
from getok_core.decoders.sam_models import sam_predictor  # noqa: E402
from getok_core.prepare.proposals import SamProposer  # noqa: E402

TOL = 1e-4  # logits this close to the threshold may flip between batched and one-by-one decoding


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/swift/conftest.py; `sam` too


def image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(60, 200, 3)
    r0, c0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[r0:r0 + h // 3, c0:c0 + w // 3] = (220, 40, 40)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, rad = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), min(h, w) // 5
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad] = (40, 60, 210)
    noise = rng.integers(-10, 11, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def random_instance(rng, kinds=("points", "points_box", "box", "point", "one_point")):
    kind = kinds[rng.integers(len(kinds))]
    u1, v1 = rng.uniform(0, 0.6, 2)
    box = (u1, v1, u1 + rng.uniform(0.1, 0.4), v1 + rng.uniform(0.1, 0.4))
    pts = [tuple(rng.uniform(0.02, 0.98, 2)) for _ in range(rng.integers(2, 5))]
    if kind == "points":
        return Instance(points=pts)
    if kind == "points_box":
        return Instance(points=pts[: rng.integers(1, 4)], box=box)
    if kind == "box":
        return Instance(box=box)
    if kind == "point":
        return Instance(point=pts[0])
    return Instance(points=pts[:1])


class EncoderCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.image_encoder.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.calls += 1

    def remove(self):
        self.handle.remove()


# ------------------------------------------------------------------ reference: one by one
def reference(predictor, img, inst, mode, multimask="auto"):
    """(mask, uncertain pixels, near_tie) of one instance prompted with SamPredictor.predict, one
    prompt at a time; ``uncertain``: pixels whose logit is within TOL of the threshold in some
    prompt that makes the mask."""
    h, w = img.shape[:2]
    scale = np.array([w, h], float)
    pts = list(inst.points) + ([inst.point] if inst.point is not None else [])
    box = None if inst.box is None else np.array(inst.box) * np.tile(scale, 2)
    if mode == "joint" or not pts:
        prompts = [(pts, box)] if (pts or box is not None) else []
    else:
        prompts = [([p], None) for p in pts]
    mask = np.zeros((h, w), bool)
    uncertain = np.zeros((h, w), bool)
    near_tie = False
    for p, b in prompts:
        mm = (len(p) == 1 and b is None) if multimask == "auto" else multimask
        coords = np.array(p, float).reshape(-1, 2) * scale if p else None
        labels = np.ones(len(p), int) if p else None
        logits, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=b,
                                              multimask_output=mm, return_logits=True)
        best = int(np.argmax(scores))
        if mm:
            top2 = np.sort(scores)[-2:]
            near_tie |= bool(top2[1] - top2[0] < TOL)
        lg = logits[best]
        mask |= lg > predictor.model.mask_threshold
        uncertain |= np.abs(lg - predictor.model.mask_threshold) < TOL
    if mode == "union" and inst.box is not None and pts:
        mask &= box_pixel_mask(inst.box, (w, h))
    return mask, uncertain, near_tie


@pytest.mark.parametrize("mode,multimask", [("joint", "auto"), ("joint", True), ("joint", False),
                                            ("union", "auto")])
def test_batched_equals_one_by_one(sam, mode, multimask):
    rng = np.random.default_rng(7)
    img = image(h=40, w=56, seed=3)
    instances = [random_instance(rng) for _ in range(24)] + [Instance(polyline=[(0.1, 0.1), (0.9, 0.9)])]
    decoder = SamDecoder(sam, mode=mode, batch_size=3, multimask=multimask)  # ragged batches
    masks = decoder.decode_group(DecodeGroup("img", img, instances))
    predictor = SamPredictor(sam)
    predictor.set_image(img)
    checked = 0
    for k, inst in enumerate(instances):
        ref, uncertain, near_tie = reference(predictor, img, inst, mode, multimask)
        assert masks[k].shape == (40, 56) and masks[k].dtype == bool
        if near_tie:
            continue  # batching's float noise may pick the other multimask output
        differ = masks[k] != ref
        assert not np.any(differ & ~uncertain), k
        checked += 1
    assert checked >= 20
    assert not masks[-1].any()  # polyline only: nothing to prompt
    assert decoder.counters.prompts_decoded == len(plan_prompts(instances, mode, multimask))
    assert decoder.counters.encoder_calls == 1


def test_multimask_rule_picks_varied_outputs(sam):
    """The auto rule keeps the best of three outputs for single points (and the best varies), one
    output for several points or a box."""
    rng = np.random.default_rng(1)
    insts = [Instance(points=[tuple(rng.uniform(0.05, 0.95, 2))]) for _ in range(30)]
    assert all(p.multimask for p in plan_prompts(insts, "joint"))
    assert not any(p.multimask for p in plan_prompts([Instance(points=[(0.1, 0.2), (0.3, 0.4)]),
                                                      Instance(points=[(0.1, 0.2)], box=(0, 0, 0.5, 0.5)),
                                                      Instance(box=(0, 0, 0.5, 0.5))], "joint"))
    assert all(p.multimask for p in plan_prompts([Instance(points=[(0.1, 0.2), (0.3, 0.4)], box=(0, 0, 1, 1))],
                                                 "union"))
    assert not any(p.multimask for p in plan_prompts(insts, "joint", multimask=False))
    predictor = SamPredictor(sam)
    img = image(seed=4)
    predictor.set_image(img)
    h, w = img.shape[:2]
    best = {int(np.argmax(predictor.predict(point_coords=np.array([i.points[0]]) * [w, h],
                                            point_labels=np.array([1]))[1])) for i in insts}
    assert len(best) > 1  # the tests above compare a choice that matters
    with pytest.raises(ValueError):
        SamDecoder(sam, multimask="sometimes")


def test_grpo_batch_encodes_each_image_once(sam):
    """16 images x 8 responses x 3 instances: 16 encoder passes; a second pass: none, 16 hits."""
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (72, 30), (48, 64), (32, 32)]
    images = {f"img{i}": image(*sizes[i % 4], seed=i) for i in range(16)}
    loads = {key: 0 for key in images}

    def source(key):
        def load():
            loads[key] += 1
            return images[key]
        return load

    requests = [(key, source(key), random_instance(rng)) for key in images for _ in range(8) for _ in range(3)]
    order = rng.permutation(len(requests))  # responses arrive interleaved
    requests = [requests[i] for i in order]
    counter = EncoderCounter(sam)
    try:
        decoder = SamDecoder(sam, mode="joint")
        masks = decoder.decode(requests)
        assert counter.calls == 16 and decoder.counters.encoder_calls == 16
        assert decoder.counters.cache_hits == 0
        assert decoder.counters.prompts_decoded == 16 * 8 * 3  # joint: one prompt per instance
        assert all(m.shape == images[key].shape[:2] for m, (key, _, _) in zip(masks, requests))
        assert all(n == 1 for n in loads.values())
        again = decoder.decode(requests)
        assert counter.calls == 16 and decoder.counters.encoder_calls == 16
        assert decoder.counters.cache_hits == 16
        assert all(n == 1 for n in loads.values())  # a hit never reads the image
        assert all(np.array_equal(a, b) for a, b in zip(masks, again))
        # responses decoded one call at a time (as rollouts finish): still one pass per image
        counter.calls = 0
        fresh = SamDecoder(sam, mode="union")
        for r in range(8):
            fresh.decode([(key, images[key], random_instance(rng)) for key in images for _ in range(3)])
            assert counter.calls == 16
        assert fresh.counters.encoder_calls == 16 and fresh.counters.cache_hits == 16 * 7
    finally:
        counter.remove()


def test_cache_bytes_bound_and_lru(sam):
    inst = [Instance(points=[(0.3, 0.4)], box=(0.1, 0.1, 0.7, 0.8))]
    imgs = {k: image(seed=10 + i) for i, k in enumerate("ABCDE")}
    probe = SamDecoder(sam)
    probe.decode_group(DecodeGroup("A", imgs["A"], inst))
    entry = probe.cache.peek("A")
    feats = entry.state["features"]
    one = feats.numel() * feats.element_size() + ENTRY_OVERHEAD_BYTES
    assert entry.nbytes == probe.cache.entry_nbytes("A") == one == 32 * 16 * 16 * 4 + ENTRY_OVERHEAD_BYTES
    assert tensors_nbytes(entry.state) == feats.untyped_storage().nbytes()
    bound = 3 * one + one // 2  # room for 3 entries, not 4
    counter = EncoderCounter(sam)
    try:
        d = SamDecoder(sam, cache_bytes=bound)

        def run(key):
            return d.decode_group(DecodeGroup(key, imgs[key], inst))[0]

        first_a = run("A")
        run("B")
        run("C")
        assert d.cache.keys() == ["A", "B", "C"] and counter.calls == 3
        assert np.array_equal(run("A"), first_a)  # a hit restores the embedding: same mask
        assert counter.calls == 3 and d.counters.cache_hits == 1
        assert d.cache.keys() == ["B", "C", "A"]
        run("D")  # evicts B, the least recently used
        assert d.cache.keys() == ["C", "A", "D"] and d.cache.evictions == 1
        assert d.cache.nbytes == 3 * one <= bound
        run("C")  # hit: C becomes the most recent
        run("B")  # miss: evicts A
        assert d.cache.keys() == ["D", "C", "B"] and counter.calls == 5
        assert d.counters.encoder_calls == 5 and d.counters.cache_hits == 2
        assert d.cache.nbytes <= bound
        # a bound below one entry: nothing is kept, every decode encodes
        tiny = SamDecoder(sam, cache_bytes=one - 1)
        before = counter.calls
        for _ in range(2):
            tiny.decode_group(DecodeGroup("A", imgs["A"], inst))
        assert counter.calls == before + 2 and len(tiny.cache) == 0 and tiny.cache.nbytes == 0
    finally:
        counter.remove()
    off = SamDecoder(sam, cache_bytes=0)
    off.decode_group(DecodeGroup("A", imgs["A"], inst))
    assert len(off.cache) == 0
    with pytest.raises(ValueError):
        SamDecoder(sam, cache_bytes=-1)


def test_cache_on_cpu_device_and_predictor_input(sam):
    img = image(seed=5)
    inst = [Instance(points=[(0.2, 0.3), (0.6, 0.5)])]
    a = SamDecoder(sam, cache_device="cpu")
    b = SamDecoder(SamPredictor(sam), batch_size=1)
    for _ in range(2):
        ma = a.decode_group(DecodeGroup("x", img, inst))[0]
        mb = b.decode_group(DecodeGroup("x", img, inst))[0]
        assert np.array_equal(ma, mb)
    assert a.counters.cache_hits == 1 and a.cache.peek("x").state["features"].device.type == "cpu"


def test_decoder_and_proposer_share_the_predictor_wrapping(sam):
    """One rule (decoders.sam_models.sam_predictor): a model is wrapped in a SamPredictor, a
    predictor is used as it is, by the decoder and the proposals alike."""
    wrapped = sam_predictor(sam)
    assert isinstance(wrapped, SamPredictor) and wrapped.model is sam
    assert sam_predictor(wrapped) is wrapped
    assert SamDecoder(wrapped).predictor is wrapped and SamProposer(wrapped).predictor is wrapped
    assert type(SamDecoder(sam).predictor) is type(SamProposer(sam).predictor) is SamPredictor
    assert SamDecoder(sam).model is SamProposer(sam).model is sam


def test_union_and_joint_semantics(sam):
    """batch_size=1: every prompt is decoded alone, so equal prompts give identical masks."""
    img = image(h=48, w=64, seed=2)
    h, w = img.shape[:2]
    p1, p2 = (0.25, 0.3), (0.7, 0.6)
    box = (0.1, 0.15, 0.6, 0.8)
    union = SamDecoder(sam, mode="union", batch_size=1)
    joint = SamDecoder(sam, mode="joint", batch_size=1)

    def dec(d, inst):
        return d.decode_group(DecodeGroup("img", img, [inst]))[0]

    a, b = dec(union, Instance(points=[p1])), dec(union, Instance(points=[p2]))
    assert a.any() and b.any()
    assert np.array_equal(dec(union, Instance(points=[p1, p2])), a | b)
    clipped = dec(union, Instance(points=[p1, p2], box=box))
    inside = box_pixel_mask(box, (w, h))
    assert np.array_equal(clipped, (a | b) & inside)
    assert not (clipped & ~inside).any()
    # a lone box is the box prompt in both modes; a lone point decodes alike in both modes
    assert np.array_equal(dec(union, Instance(box=box)), dec(joint, Instance(box=box)))
    assert np.array_equal(dec(joint, Instance(points=[p1])), a)
    assert np.array_equal(dec(joint, Instance(point=p1)), a)
    assert np.array_equal(dec(union, Instance(point=p1)), a)
    # joint prompts once with both points and the box (SAM's own answer, not clipped by us)
    predictor = SamPredictor(sam)
    predictor.set_image(img)
    ref, _, _ = predictor.predict(point_coords=np.array([p1, p2]) * [w, h], point_labels=np.array([1, 1]),
                                  box=np.array(box) * [w, h, w, h], multimask_output=False)
    assert np.array_equal(dec(joint, Instance(points=[p1, p2], box=box)), ref[0])
    # prompt counts: joint one per instance, union one per point (a lone box: one)
    union.counters.reset()
    joint.counters.reset()
    group = [Instance(points=[p1, p2], box=box), Instance(box=box), Instance(point=p1),
             Instance(polygon=[(0.1, 0.1), (0.5, 0.1), (0.3, 0.4)])]
    union.decode_group(DecodeGroup("img", img, group))
    joint.decode_group(DecodeGroup("img", img, group))
    assert union.counters.prompts_decoded == 4 and joint.counters.prompts_decoded == 3


def test_nothing_to_prompt_needs_no_encoder(sam):
    counter = EncoderCounter(sam)
    try:
        d = SamDecoder(sam)
        out = d.decode([("a", image(h=30, w=20), Instance(polyline=[(0.1, 0.1), (0.9, 0.9)]))])
        assert counter.calls == 0 and d.counters.encoder_calls == 0
        assert out[0].shape == (30, 20) and not out[0].any()
        assert d.decode_group(DecodeGroup("a", image(), [])) == []
    finally:
        counter.remove()


@pytest.mark.parametrize("mode", ["joint", "union"])
def test_masks_have_the_original_size(sam, mode):
    d = SamDecoder(sam, mode=mode)
    rng = np.random.default_rng(3)
    for h, w in [(40, 56), (72, 30)]:
        img = image(h=h, w=w, seed=h)
        insts = [random_instance(rng) for _ in range(6)] + [
            Instance(points=[(0.0, 0.0), (1.0, 1.0)], box=(0.0, 0.0, 1.0, 1.0)), Instance(point=(1.0, 1.0))]
        for m in d.decode([(f"{h}x{w}", img, i) for i in insts]):
            assert m.shape == (h, w) and m.dtype == bool


def test_dtype_guard_on_cpu(sam):
    img = image(seed=6)
    inst = [Instance(points=[(0.2, 0.3), (0.6, 0.5)], box=(0.1, 0.1, 0.8, 0.9)), Instance(points=[(0.5, 0.5)])]
    half = SamDecoder(sam, dtype="float16")
    assert half.amp_dtype is None  # CPU stays float32
    assert SamDecoder(sam, dtype=torch.bfloat16).amp_dtype is None
    full = SamDecoder(sam)
    for a, b in zip(half.decode_group(DecodeGroup("x", img, inst)), full.decode_group(DecodeGroup("x", img, inst))):
        assert np.array_equal(a, b)
    assert half.cache.peek("x").state["features"].dtype == torch.float32
    with pytest.raises(ValueError):
        SamDecoder(sam, dtype="int8")
    with pytest.raises(ValueError):
        SamDecoder(sam, mode="both")


def test_from_checkpoint_and_make_decoder(sam, registry_sam, tmp_path):
    ckpt, seen = registry_sam
    d = SamDecoder.from_checkpoint("registry_tiny", ckpt, device="cpu", cache_bytes=1 << 20, mode="union", batch_size=4)
    assert seen == [str(ckpt)] and d.mode == "union" and d.batch_size == 4 and d.cache.max_bytes == 1 << 20
    m = make_decoder("sam", model_type="registry_tiny", checkpoint=ckpt, device="cpu", mode="union")
    assert isinstance(m, SamDecoder) and not m.model.training
    img = image()
    inst = [Instance(points=[(0.3, 0.3), (0.6, 0.7)])]
    ref = SamDecoder(sam, mode="union").decode_group(DecodeGroup("x", img, inst))
    assert np.array_equal(m.decode_group(DecodeGroup("x", img, inst))[0], ref[0])
    with pytest.raises(ValueError):
        SamDecoder.from_checkpoint("no_such_type", ckpt)
    with pytest.raises(ValueError):
        SamDecoder.from_checkpoint("registry_tiny")
    with pytest.raises(FileNotFoundError):
        SamDecoder.from_checkpoint("registry_tiny", tmp_path / "missing.pth")


def test_sam2_decoder_needs_sam2(sam, monkeypatch):
    """Without the optional sam2 package (simulated: its modules blocked in sys.modules) the
    error names it."""
    for name in ("sam2", "sam2.sam2_image_predictor", "sam2.build_sam"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="sam2"):
        Sam2Decoder(sam)
    with pytest.raises(ImportError, match="sam2"):
        make_decoder("sam2", checkpoint="x.pt")
