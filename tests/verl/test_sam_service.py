"""The SAM Ray Serve service (getok_core/decoders/service.py) on a local Ray, with a tiny SAM.

One local cluster (``ray.init(num_cpus=2)``) and one app of 2 CPU replicas for the module; the
images are small PNGs written here, read by the replicas through ``image_root``. The reference
is the in-process ``SamDecoder`` of the same checkpoint (one torch thread on both sides, so the
masks are bit-identical).
"""

import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.verl
import ray  # noqa: E402  (tests/verl run in the verl environment: a missing package fails)
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from ray import serve  # noqa: E402

from getok_core import GetokVocab, Instance, format_answer  # noqa: E402
from getok_core.cli import main as getok_main  # noqa: E402
from getok_core.data.masks import encode_rle  # noqa: E402
from getok_core.decoders import RegionDecoder, SamDecoder, make_decoder  # noqa: E402
from getok_core.decoders import service as service_mod  # noqa: E402
from getok_core.decoders.sam_models import load_sam  # noqa: E402
from getok_core.decoders.service import (  # noqa: E402
    RaySamDecoder, SamServiceError, pack_masks, rank_replicas, resolve_image, serve_sam, service_stats, stop_sam,
    unpack_masks)
from getok_core.decoders.tiny_sam import save_tiny_sam  # noqa: E402
from getok_core.rewards import score_grid_batch, score_refine_batch  # noqa: E402

APP = "getok-sam-test"
V = GetokVocab(grid_size=10)
H, W = 48, 64


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env():
    """(checkpoint, image root): a local Ray with the 2-replica app running."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="gss")  # short: Ray's socket paths live under _temp_dir
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ckpt = save_tiny_sam(os.path.join(root, "tiny.pt"))
    images = os.path.join(root, "images")
    os.makedirs(images)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.path.join(root, "r"), log_to_driver=False)
    try:
        serve_sam(ckpt, name=APP, address=None, model_type="tiny", replicas=2, gpus_per_replica=0,
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
def local_sam(env):
    return SamDecoder(load_sam("tiny", env[0], "cpu"))


def write_images(images_dir, tag, n):
    """n small PNGs under images_dir/tag; returns their relative paths."""
    os.makedirs(os.path.join(images_dir, tag), exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
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


def responses(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        u, v = rng.uniform(0.05, 0.5, 2)
        pts = [tuple(rng.uniform(0.05, 0.95, 2)) for _ in range(rng.integers(1, 4))]
        out.append(format_answer([Instance(box=(u, v, u + 0.4, v + 0.4), points=pts)], V, think="t"))
    return out


def batch_for(rels, images_dir, per_image, seed, absolute=False):
    """(responses, ground truths): ``per_image`` responses for each image."""
    res, gts = [], []
    for k, rel in enumerate(rels):
        res += responses(per_image, seed + k)
        gts += [ground_truth(rel, images_dir, absolute)] * per_image
    return res, gts


def same_results(a, b):
    assert [r.overall for r in a] == [r.overall for r in b]
    assert [r.components for r in a] == [r.components for r in b]
    assert [r.details.get("mask_ious") for r in a] == [r.details.get("mask_ious") for r in b]


# ---------------------------------------------------------------------- pure parts
def test_rendezvous_ranking_is_stable_and_moves_only_the_dead_replicas_keys():
    keys = [f"img{i}" for i in range(400)]
    three = ["a", "b", "c"]
    first = {k: rank_replicas(k, three)[0] for k in keys}
    assert first == {k: rank_replicas(k, list(reversed(three)))[0] for k in keys}  # order-free
    counts = {r: sum(v == r for v in first.values()) for r in three}
    assert min(counts.values()) > 100, counts  # spread over the replicas
    after = {k: rank_replicas(k, ["a", "c"])[0] for k in keys}
    assert all(after[k] == first[k] for k in keys if first[k] != "b")  # only b's images move


def test_pack_roundtrip_and_resolve_image(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 13)) > 0.5 for _ in range(3)]
    assert all((a == b).all() for a, b in zip(masks, unpack_masks(pack_masks(masks))))
    (tmp_path / "x.png").write_bytes(b"")
    assert resolve_image("x.png", str(tmp_path)) == str(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="nope/y.png"):
        resolve_image("nope/y.png", str(tmp_path), "k")
    with pytest.raises(FileNotFoundError, match="no image_path"):
        resolve_image("", str(tmp_path), "k")


def test_request_router_imports_by_the_path_serve_uses():
    """Serve stores the router class as ``f"{cls.__module__}.{cls.__name__}"`` and every replica's
    handle imports it back by that string: it must name the very class (module ``__getattr__``)."""
    import importlib

    from ray.serve.config import RequestRouterConfig
    from ray.serve.request_router import RequestRouter

    router = service_mod.ImageAffinityRouter
    path = f"{router.__module__}.{router.__name__}"
    assert path == "getok_core.decoders.service.ImageAffinityRouter"
    assert issubclass(router, RequestRouter)
    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is router
    config = RequestRouterConfig(request_router_class=router)  # what serve_sam hands to Serve
    assert config.request_router_class == path and config.get_request_router_class() is router


# ---------------------------------------------------------------------- the service
def test_rewards_through_the_service_equal_in_process(env, local_sam):
    ckpt, images = env
    rels = write_images(images, "eq", 4)
    res, gts = batch_for(rels, images, 4, seed=1)
    _, gts_abs = batch_for(rels, images, 4, seed=1, absolute=True)  # in-process reads paths as they are
    remote = make_decoder("ray", app=APP, timeout_s=120)
    got = score_grid_batch(res, gts, V, remote)
    want = score_grid_batch(res, gts_abs, V, local_sam)
    same_results(got, want)
    assert any(r.components["mask"] > 0 for r in got)
    assert remote.counters.encoder_calls == 4 and remote.fallbacks == 0
    assert all("mask_fallback" not in r.details for r in got)  # no fallback configured: no key
    # refinement stage too (mask_gain needs two decodes per instance)
    props = res
    offs = [f"<answer><offset>{'<OFF1,0>' * r.count('<grid')}</offset></answer>" for r in res]
    got_r = score_refine_batch(offs, gts, V, props, remote)
    want_r = score_refine_batch(offs, gts_abs, V, props, local_sam)
    same_results(got_r, want_r)


def test_four_concurrent_callers_encode_each_image_once(env, local_sam):
    ckpt, images = env
    rels = write_images(images, "conc", 16)
    res, gts = batch_for(rels, images, 8, seed=100)  # one GRPO step: 16 prompts x 8 responses
    before = sum(s["encoder_calls"] for s in service_stats(APP))
    callers = [RaySamDecoder(app=APP, timeout_s=120) for _ in range(4)]
    shares = [list(range(c, len(res), 4)) for c in range(4)]  # each image's 8 responses spread over the 4
    out = [None] * 4

    def work(c):
        out[c] = score_grid_batch([res[i] for i in shares[c]], [gts[i] for i in shares[c]], V, callers[c])

    threads = [threading.Thread(target=work, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum(d.counters.encoder_calls for d in callers) == 16
    stats = service_stats(APP)
    assert len(stats) == 2 and sum(s["encoder_calls"] for s in stats) - before == 16
    _, gts_abs = batch_for(rels, images, 8, seed=100, absolute=True)
    for c in range(4):
        same_results(out[c], score_grid_batch([res[i] for i in shares[c]], [gts_abs[i] for i in shares[c]], V,
                                              local_sam))


def test_missing_image_is_an_error_naming_it(env):
    _, images = env
    dec = RaySamDecoder(app=APP, timeout_s=60)
    with pytest.raises(FileNotFoundError, match=r"missing/none\.png"):
        dec.decode([("missing-key", "missing/none.png", Instance(box=(0.1, 0.1, 0.5, 0.5)))])
    res, gts = batch_for(["missing/none.png"], images, 2, seed=3)
    r = score_grid_batch(res, gts, V, dec)
    assert r[0].components["mask"] == 0.0
    assert any("missing/none.png" in e for e in r[0].errors), r[0].errors


def test_timeout_is_a_clear_error(env):
    _, images = env
    rels = write_images(images, "slow", 1)
    dec = RaySamDecoder(app=APP, timeout_s=0.001, retries=0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"{APP}.*0\.001 s"):
        dec.decode([(rels[0], rels[0], Instance(box=(0.1, 0.1, 0.5, 0.5)))])
    assert time.monotonic() - t0 < 5


def test_timeout_with_fallback_uses_region_masks_and_says_so(env):
    from easyr1_plugin.reward import grid_reward

    _, images = env
    rels = write_images(images, "fb", 2)
    reqs = [(rels[i % 2], rels[i % 2], Instance(points=[(0.3 + 0.1 * i, 0.4)], box=(0.1, 0.1, 0.8, 0.9)))
            for i in range(4)]
    dec = RaySamDecoder(app=APP, timeout_s=0.001, fallback="region", image_root=images)
    masks, flags = dec.decode_flagged(reqs)
    region = RegionDecoder().decode([(k, os.path.join(images, p), i) for k, p, i in reqs])
    assert flags == [True] * 4 and dec.fallbacks == 4
    assert all((a == b).all() for a, b in zip(masks, region))
    res, gts = batch_for(rels, images, 2, seed=5)
    inputs = [{"response": r, "response_length": 10, "ground_truth": g} for r, g in zip(res, gts)]
    rows = grid_reward(inputs, decoder="ray", app=APP, timeout_s=0.001, fallback="region", image_root=images,
                       grid_size=10)
    _, gts_abs = batch_for(rels, images, 2, seed=5, absolute=True)
    want = grid_reward([{**x, "ground_truth": g} for x, g in zip(inputs, gts_abs)], decoder="region", grid_size=10)
    assert [r["mask_fallback"] for r in rows] == [1.0] * len(rows)
    assert [{k: v for k, v in r.items() if k != "mask_fallback"} for r in rows] == want


def test_easyr1_and_verl_adapters_through_the_service(env):
    from easyr1_plugin.reward import grid_reward
    from easyr1_plugin.verl_reward import compute_score

    ckpt, images = env
    rels = write_images(images, "adapt", 2)
    res, gts = batch_for(rels, images, 3, seed=9, absolute=True)
    inputs = [{"response": r, "response_length": 10, "ground_truth": g} for r, g in zip(res, gts)]
    via = grid_reward(inputs, decoder="ray", app=APP, timeout_s=120, grid_size=10)
    local = grid_reward(inputs, decoder="sam", model_type="tiny", checkpoint=ckpt, device="cpu", grid_size=10)
    assert via == local and "mask" in via[0]
    for r, g in zip(res[:2], gts[:2]):
        got = compute_score(data_source="x", solution_str=r, ground_truth=g, extra_info={},
                            decoder="ray", app=APP, timeout_s=120, grid_size=10)
        want = compute_score(data_source="x", solution_str=r, ground_truth=g, extra_info={},
                             decoder="sam", model_type="tiny", checkpoint=ckpt, device="cpu", grid_size=10)
        assert got == want and "mask" in got


def test_cli_starts_and_stops_an_app_and_a_client_can_start_one_lazily(env, capsys):
    ckpt, images = env
    rels = write_images(images, "cli", 1)
    req = [(rels[0], rels[0], Instance(box=(0.1, 0.1, 0.6, 0.6)))]
    name = "getok-sam-cli"
    assert getok_main(["serve-sam", "--checkpoint", ckpt, "--model-type", "tiny", "--replicas", "1",
                       "--gpus-per-replica", "0", "--cpus-per-replica", "0.25", "--cache-gb", "0.01",
                       "--image-root", images, "--torch-threads", "1", "--name", name]) == 0
    assert '"status": "RUNNING"' in capsys.readouterr().out
    assert RaySamDecoder(app=name).decode(req)[0].shape == (H, W)
    assert getok_main(["serve-sam", "--stop", "--name", name]) == 0
    assert "stopped" in capsys.readouterr().out
    with pytest.raises(SamServiceError, match=name):
        RaySamDecoder(app=name).decode(req)
    lazy = RaySamDecoder(app=name, checkpoint=ckpt, model_type="tiny", replicas=1, cpus_per_replica=0.25,
                         cache_gb=0.01, image_root=images, torch_threads=1)
    assert lazy.decode(req)[0].shape == (H, W) and lazy.counters.encoder_calls == 1
    assert stop_sam(name, address=None) and not stop_sam(name, address=None)


def test_killing_a_replica_mid_run_loses_no_request(env, local_sam):
    _, images = env
    rels = write_images(images, "kill", 16)
    res, gts = batch_for(rels, images, 4, seed=300)
    _, gts_abs = batch_for(rels, images, 4, seed=300, absolute=True)
    want = score_grid_batch(res, gts_abs, V, local_sam)
    callers = [RaySamDecoder(app=APP, timeout_s=120, retries=5) for _ in range(4)]
    done = [0] * 4
    out = [[None] * len(res) for _ in range(4)]

    def work(c):  # every caller scores every image, one image per call
        for k in range(len(rels)):
            idx = list(range(4 * k, 4 * k + 4))
            for i, r in zip(idx, score_grid_batch([res[i] for i in idx], [gts[i] for i in idx], V, callers[c])):
                out[c][i] = r
            done[c] += 1

    threads = [threading.Thread(target=work, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    while sum(done) < 4:
        time.sleep(0.01)
    victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith(f"SERVE_REPLICA::{APP}#")]
    assert len(victims) == 2
    ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=True)
    killed_at = sum(done)
    for t in threads:
        t.join(300)
    assert killed_at < 4 * len(rels)  # the kill happened while callers were still working
    for c in range(4):
        same_results(out[c], want)
        assert not any(r.errors for r in out[c])
    deadline = time.monotonic() + 90  # Serve replaces the replica
    while time.monotonic() < deadline:
        st = serve.status().applications[APP].deployments["SamService"].replica_states
        if st.get("RUNNING", 0) == 2:
            break
        time.sleep(0.5)
    assert serve.status().applications[APP].deployments["SamService"].replica_states.get("RUNNING") == 2
