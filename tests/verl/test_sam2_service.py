"""The SAM Ray Serve service with a SAM 2 behind it (``family="sam2"``): a tiny random SAM 2
(``getok tiny-sam --sam2``) in the replicas, on a local Ray.

The reference is the in-process ``Sam2Decoder`` of the same checkpoint (one torch thread on both
sides, so the masks are bit-identical); see tests/verl/test_sam_service.py for the SAM (1) service
and its routing / fault tests, which do not depend on the model family.
"""

import importlib.util
import os
import shutil
import tempfile
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.verl
import ray  # noqa: E402  (tests/verl run in the verl environment: a missing package fails)
# Not imported here: importing sam2 initializes Hydra's global state (sam2/__init__.py), which
# would break the verl tests collected beside this module (they compose verl's own configs).
assert importlib.util.find_spec("sam2"), "sam2 belongs to the verl environment (requirements/verl.txt)"
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402

from getok_core import GetokVocab, Instance, format_answer  # noqa: E402
from getok_core.cli import main as getok_main  # noqa: E402
from getok_core.data.masks import encode_rle  # noqa: E402
from getok_core.decoders import Sam2Decoder  # noqa: E402
from getok_core.decoders.sam_models import load_sam2  # noqa: E402
from getok_core.decoders.service import RaySamDecoder, ServiceConfig, serve_sam, service_stats, stop_sam  # noqa: E402
from getok_core.rewards import score_grid_batch  # noqa: E402

APP = "getok-sam2-test"
V = GetokVocab(grid_size=10)
H, W = 40, 56


@pytest.fixture(autouse=True, scope="module")
def _hydra_cleared_after():
    """The in-process ``Sam2Decoder`` imports sam2, which initializes Hydra globally: cleared at the
    end so that later tests in the session can initialize their own."""
    yield
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def env():
    """(checkpoint, image root): a local Ray with a 2-replica SAM 2 app running."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="gs2")  # short: Ray's socket paths live under _temp_dir
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ckpt = os.path.join(root, "tiny_sam2.pt")
    assert getok_main(["tiny-sam", "--sam2", ckpt]) == 0
    images = os.path.join(root, "images")
    os.makedirs(images)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.path.join(root, "r"), log_to_driver=False)
    try:
        serve_sam(ckpt, name=APP, address=None, family="sam2", model_type="tiny", replicas=2, gpus_per_replica=0,
                  cpus_per_replica=0.5, cache_gb=0.05, torch_threads=1, image_root=images)
        yield ckpt, images
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_sam2(env):
    return Sam2Decoder(load_sam2("tiny", env[0], "cpu"))


def write_images(images_dir, tag, n):
    """n small PNGs under images_dir/tag; returns their relative paths."""
    os.makedirs(os.path.join(images_dir, tag), exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(2000 + i)
        img = np.empty((H, W, 3), np.uint8)
        img[:] = rng.integers(60, 200, 3)
        r, c = rng.integers(0, H // 2), rng.integers(0, W // 2)
        img[r:r + H // 3, c:c + W // 3] = (220, 40, 40)
        rel = f"{tag}/{i}.png"
        Image.fromarray(img).save(os.path.join(images_dir, rel))
        out.append(rel)
    return out


def ground_truth(rel, images_dir, absolute=False):
    import json

    m = np.zeros((H, W), bool)
    m[10:30, 20:50] = True
    return json.dumps({"version": 1, "image_key": rel, "image_path": os.path.join(images_dir, rel) if absolute else rel,
                       "image_size": [W, H], "task": "seg", "no_target": False,
                       "targets": [{"mask": encode_rle(m), "box": [20 / W, 10 / H, 50 / W, 30 / H], "points": [],
                                    "polyline": None}], "extra": {}})


def batch_for(rels, images_dir, per_image, seed, absolute=False):
    """(responses, ground truths): ``per_image`` responses with a box and seg points per image."""
    rng = np.random.default_rng(seed)
    res, gts = [], []
    for rel in rels:
        for _ in range(per_image):
            u, v = rng.uniform(0.05, 0.5, 2)
            pts = [tuple(rng.uniform(0.05, 0.95, 2)) for _ in range(rng.integers(1, 4))]
            res.append(format_answer([Instance(box=(u, v, u + 0.4, v + 0.4), points=pts)], V, think="t"))
            gts.append(ground_truth(rel, images_dir, absolute))
    return res, gts


def test_family_is_checked():
    assert ServiceConfig(checkpoint="x", family="sam2").family == "sam2"
    with pytest.raises(ValueError, match="family"):
        ServiceConfig(checkpoint="x", family="sam3")
    with pytest.raises(ValueError, match="family"):
        RaySamDecoder(app="x", checkpoint="x", family="sam3")


def test_masks_and_rewards_through_the_service_equal_in_process(env, local_sam2):
    _, images = env
    rels = write_images(images, "eq", 3)
    reqs = [(rels[i % 3], rels[i % 3], Instance(points=[(0.2 + 0.1 * i, 0.4)], box=(0.1, 0.1, 0.8, 0.9)))
            for i in range(6)] + [(rels[0], rels[0], Instance(point=(0.5, 0.5)))]
    remote = RaySamDecoder(app=APP, timeout_s=300)
    got = remote.decode(reqs)
    want = local_sam2.decode([(k, os.path.join(images, p), i) for k, p, i in reqs])
    assert all(a.shape == (H, W) and np.array_equal(a, b) for a, b in zip(got, want))
    assert any(m.any() for m in got)
    assert remote.counters.encoder_calls == 3 and remote.counters.prompts_decoded == 7
    res, gts = batch_for(rels, images, 2, seed=1)
    _, gts_abs = batch_for(rels, images, 2, seed=1, absolute=True)  # in-process reads paths as they are
    a, b = score_grid_batch(res, gts, V, remote), score_grid_batch(res, gts_abs, V, local_sam2)
    assert [r.components for r in a] == [r.components for r in b]
    assert [r.details.get("mask_ious") for r in a] == [r.details.get("mask_ious") for r in b]


def test_concurrent_callers_encode_each_image_once(env):
    """One GRPO step in small: 4 images x 4 responses split over 2 reward workers."""
    _, images = env
    rels = write_images(images, "conc", 4)
    res, gts = batch_for(rels, images, 4, seed=100)
    before = sum(s["encoder_calls"] for s in service_stats(APP))
    callers = [RaySamDecoder(app=APP, timeout_s=300) for _ in range(2)]
    shares = [list(range(c, len(res), 2)) for c in range(2)]  # each image's responses spread over both

    def work(c):
        score_grid_batch([res[i] for i in shares[c]], [gts[i] for i in shares[c]], V, callers[c])

    threads = [threading.Thread(target=work, args=(c,)) for c in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum(d.counters.encoder_calls for d in callers) == 4
    assert sum(s["encoder_calls"] for s in service_stats(APP)) - before == 4


def test_cli_serves_a_sam2(env):
    ckpt, images = env
    rels = write_images(images, "cli", 1)
    name = "getok-sam2-cli"
    assert getok_main(["serve-sam", "--checkpoint", ckpt, "--family", "sam2", "--model-type", "tiny",
                       "--replicas", "1", "--gpus-per-replica", "0", "--cpus-per-replica", "0.25", "--cache-gb",
                       "0.01", "--image-root", images, "--torch-threads", "1", "--name", name]) == 0
    try:
        dec = RaySamDecoder(app=name, timeout_s=300)
        assert dec.decode([(rels[0], rels[0], Instance(box=(0.1, 0.1, 0.6, 0.6)))])[0].shape == (H, W)
        assert dec.counters.encoder_calls == 1
    finally:
        assert stop_sam(name, address=None)
