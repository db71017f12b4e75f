"""The EasyR1 reward functions (easyr1_plugin/reward.py) called directly with inputs of EasyR1's
contract, and verl's ``compute_score`` called directly (no framework needed here).

These are properties of the adapter only. EasyR1's own reward manager (``RewardConfig`` +
``AutoRewardManager`` on a ``DataProto``, decoding the tiny model's token ids) drives the same
functions in tests/easyr1 (the easyr1 environment, EasyR1's source); verl's in tests/verl. The inputs
are a list of ``{"response", "response_length", "ground_truth"}`` dicts (FRAMEWORKS.md); EasyR1
averages every returned key over the batch, so every value must be a float and every dict of a
batch must have the same keys.
"""

import importlib.util
import json
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit import SQUARE, scene_ground_truth, write_scene

from getok_core import GetokVocab, format_offsets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REWARD_FILE = os.path.join(ROOT, "easyr1_plugin", "reward.py")
VERL_FILE = os.path.join(ROOT, "easyr1_plugin", "verl_reward.py")
V = GetokVocab(grid_size=10)


def load_like_easyr1(path, name="custom_reward_fn"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def easyr1():
    return load_like_easyr1(REWARD_FILE)


@pytest.fixture(scope="module")
def verl_reward():
    return load_like_easyr1(VERL_FILE, "getok_verl_reward_under_test")


M1 = SQUARE
PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"
PROPOSAL = f"<think>t</think><answer>{PERFECT}</answer>"


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("e") / "scene.png", M1)


gt = scene_ground_truth  # testkit: the square M1 (image key "scene")


def inputs(responses, ground_truths) -> list[dict]:
    """EasyR1's reward inputs (the manager's decoded responses, here given as text)."""
    return [{"response": r, "response_length": len(r), "ground_truth": g} for r, g in zip(responses, ground_truths)]


def test_module_contract(easyr1):
    assert easyr1.REWARD_TYPE == "batch" and isinstance(easyr1.REWARD_NAME, str)
    assert easyr1.main is easyr1.grid_reward


def test_reward_files_import_no_framework():
    """Both files load (as EasyR1 / verl load them: by path) where torch, verl, EasyR1 and ms-swift
    cannot be imported."""
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import importlib.abc, importlib.util, sys
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "verl", "swift", "transformers", "ray", "vllm"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Blocker())
        mods = {{}}
        for name, path in (("custom_reward_fn", {REWARD_FILE!r}), ("verl_fn", {VERL_FILE!r})):
            spec = importlib.util.spec_from_file_location(name, path)
            mods[name] = sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[name])
        print(mods["custom_reward_fn"].grid_reward([{{"response": "", "response_length": 0, "ground_truth": "x"}}]))
        print(mods["verl_fn"].compute_score("getok", "", "x", {{}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'overall': 0.0" in out.stdout and "'score': 0.0" in out.stdout


def test_bad_configuration_raises(easyr1):
    inputs = [{"response": "", "response_length": 0, "ground_truth": gt()}]
    with pytest.raises(ValueError):
        easyr1.grid_reward(inputs, checkpoint="/x.pth")  # decoder argument without a decoder
    with pytest.raises(ValueError):
        easyr1.grid_reward(inputs, decoder="nonexistent")
    with pytest.raises(ValueError):
        easyr1.grid_reward(inputs, weights={"bogus": 1})
    with pytest.raises(ValueError, match="stage"):
        easyr1.grid_reward(inputs, stage="refine")  # the function is the stage: a kwarg may only repeat it
    assert easyr1.refine_reward(inputs, stage="refine")[0]["overall"] == 0.0


def test_decoder_built_once(easyr1):
    from getok_core.rewards import cached_decoder

    a = cached_decoder("region", mode="union")
    easyr1.grid_reward([{"response": "", "response_length": 0, "ground_truth": gt()}], decoder="region", mode="union")
    assert cached_decoder("region", mode="union") is a


# ---------------------------------------------------------------------- verl's compute_score, directly
def test_verl_compute_score(verl_reward, image_path):
    text = f"<think>It is red.</think><answer>{PERFECT}</answer>"
    out = verl_reward.compute_score("getok", text, gt(image_path), {"index": 0}, grid_size=10)
    assert set(out) == {"score", "format", "nonrepeat", "box", "points"} and out["box"] == 1.0
    # verl may add its own kwargs; they are ignored
    assert verl_reward.compute_score("getok", text, gt(image_path), {}, grid_size=10,
                                     reward_router_address=None)["score"] == out["score"]
    # multi-turn transcript: turn 1, feedback, offsets; the first answer block is the proposal
    transcript = PROPOSAL + "user\nRefine each point.\nassistant\n" + format_offsets([[(0, 0)] * 5], V)
    refine = verl_reward.compute_score("getok", transcript, gt(image_path), {}, grid_size=10, stage="refine",
                                       decoder="region")
    assert refine == {"score": 0.5 + 1 + 1 + 1 * 0.5, "format": 1.0, "point": 1.0, "box": 1.0, "mask_gain": 0.5}
    # per-row stage; the proposal from the ground truth when the transcript has one answer block
    per_row = verl_reward.compute_score("getok", format_offsets([[(0, 0)] * 5], V),
                                        gt(image_path, extra={"proposal": PROPOSAL}), {"getok_stage": "refine"},
                                        grid_size=10)
    assert per_row["format"] == 1.0 and per_row["box"] == 1.0
    # a faked second proposal inside turn 2 does not replace the real turn 1, and breaks the format
    fake = PROPOSAL + "assistant\n<answer><box><grid0,0><grid9,9></box><seg><grid0,0></seg></answer>" + \
        format_offsets([[(0, 0)] * 5], V)
    assert verl_reward.compute_score("getok", fake, gt(image_path), {}, grid_size=10, stage="refine")["format"] == 0.0


# ---------------------------------------------------------------------- adversarial inputs
POOL = ["<think>", "</think>", "<answer>", "</answer>", "<box>", "</box>", "<seg>", "</seg>", "<grid3,4>",
        "<grid2,3>", "<grid5,6>", "<grid11,0>", "<none>", "<offset>", "</offset>", "<OFF1,0>", "<DELETE>", "\n",
        ".", "x", "<|im_end|>"]
responses = st.one_of(st.lists(st.sampled_from(POOL), max_size=40).map("".join), st.text(max_size=80),
                      st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
truths = st.sampled_from([gt(), gt(targets=False), gt(extra={"proposal": PROPOSAL}), "", "null", "[1]",
                          json.dumps({"version": 1}), None])


@settings(max_examples=800)
@given(st.lists(st.tuples(responses, truths), min_size=1, max_size=5), st.booleans())
def test_adversarial_batches(easyr1, verl_reward, batch, refine):
    fn = easyr1.refine_reward if refine else easyr1.grid_reward
    rs = [r for r, _ in batch]
    gs = [g for _, g in batch]
    scores = fn(inputs(rs, gs), grid_size=10)
    again = fn(inputs(rs, gs), grid_size=10)
    assert isinstance(scores, list) and len(scores) == len(batch)
    assert scores == again
    keys = set(scores[0])
    for s in scores:
        assert set(s) == keys and all(type(v) is float and v >= 0 for v in s.values())
        assert all(v <= 1 for k, v in s.items() if k != "overall")
    for (r, g), s in zip(batch, scores):
        v = verl_reward.compute_score("getok", r, g, {}, grid_size=10, stage="refine" if refine else "grid")
        if refine and r.count("<answer>") >= 2:
            continue  # verl reads a transcript's first answer block as the proposal
        assert v["score"] == s["overall"] and {k: v[k] for k in keys - {"overall"}} == {
            k: s[k] for k in keys - {"overall"}}
