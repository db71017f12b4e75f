"""The GETok rewards (easyr1_plugin/reward.py) through EasyR1's own reward manager: its
``RewardConfig`` (``reward_function=path:name``, ``reward_function_kwargs``) and ``AutoRewardManager``,
which loads the file by path, binds the kwargs, decodes each response of a real ``DataProto`` with the
tokenizer (``skip_special_tokens=True``) and puts ``overall`` at the last response token. The
tokenizer is the tiny model's (the real Qwen2.5 one) with the GETok tokens added as ordinary tokens;
responses end with ``<|im_end|>`` as the rollout returns them. Both stages, with and without a decoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from testkit import SQUARE, scene_ground_truth, write_scene

from getok_core import GetokVocab, format_offsets

REWARD_FILE = Path(__file__).resolve().parents[2] / "easyr1_plugin" / "reward.py"
V = GetokVocab(grid_size=10)  # the answers' grid (reward kwarg grid_size=10); the tokenizer has grid 32
M1 = SQUARE
PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"
PROPOSAL = f"<think>t</think><answer>{PERFECT}</answer>"
GRID_KEYS = {"overall", "format", "nonrepeat", "box", "points"}
REFINE_KEYS = {"overall", "format", "point", "box"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    """The tiny model's tokenizer with the GETok tokens (non-special, one id each)."""
    from transformers import AutoTokenizer

    from getok_core.models.tokens import add_getok_tokens

    tok = AutoTokenizer.from_pretrained(tiny_model)
    add_getok_tokens(tok, GetokVocab())
    return tok


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("e") / "scene.png", M1)


gt = scene_ground_truth  # testkit: the square M1 (image key "scene")


def manager(easyr1, tokenizer, name: str, **kwargs):
    """EasyR1's reward manager for ``easyr1_plugin/reward.py:name`` (config post-initialized as
    ``deep_post_init`` does)."""
    cfg = easyr1.reward.RewardConfig(reward_function=f"{REWARD_FILE}:{name}", reward_function_kwargs=kwargs)
    cfg.post_init()
    return easyr1.reward.AutoRewardManager(cfg, tokenizer)


def batch(easyr1, tokenizer, responses, truths):
    """A DataProto as the rollout leaves it for the reward: right-padded ``responses`` ending with
    ``<|im_end|>``, ``response_mask`` over them, the dataset's ``ground_truth`` column."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [tokenizer.encode(r, add_special_tokens=False) + [eos] for r in responses]
    width = max(map(len, ids))
    resp = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        resp[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return easyr1.DataProto.from_dict(tensors={"responses": resp, "response_mask": mask},
                                      non_tensors={"ground_truth": np.array(truths, dtype=object)})


def run(easyr1, tokenizer, name, responses, truths, **kwargs):
    """(reward tensor, metrics, per-sample score dicts) of EasyR1's manager on the batch."""
    data = batch(easyr1, tokenizer, responses, truths)
    reward_tensor, metrics = manager(easyr1, tokenizer, name, **kwargs).compute_reward(data)
    lengths = data.batch["response_mask"].sum(-1)
    # the reward sits at the last response token (the <|im_end|>), nowhere else
    for i, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(reward_tensor[i, :n - 1]) == 0 and torch.count_nonzero(reward_tensor[i, n:]) == 0
    assert set(metrics) >= {"overall"} and all(len(v) == len(responses) for v in metrics.values())
    scores = [{k: v[i] for k, v in metrics.items()} for i in range(len(responses))]
    assert [float(reward_tensor[i, n - 1]) for i, n in enumerate(lengths.tolist())] == pytest.approx(
        [s["overall"] for s in scores])
    for s in scores:
        assert all(type(v) is float for v in s.values()) and set(s) == set(scores[0])
    return reward_tensor, metrics, scores


def test_manager_loads_the_plugin(easyr1, tokenizer):
    m = manager(easyr1, tokenizer, "refine_reward", grid_size=10)
    assert m.reward_type == "batch" and m.config.reward_function == str(REWARD_FILE)
    assert m.config.reward_function_name == "refine_reward" and m.reward_fn.keywords == {"grid_size": 10}
    assert manager(easyr1, tokenizer, "main").reward_fn.func.__name__ == "grid_reward"  # `path` alone -> main
    # every GETok token decodes back (ordinary tokens survive skip_special_tokens=True)
    ids = tokenizer.encode(PROPOSAL, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROPOSAL
    getok = [t for t in tokenizer.convert_ids_to_tokens(ids) if t in set(GetokVocab().tokens)]  # one id each
    assert "".join(getok) == PERFECT


@pytest.mark.parametrize("decoder", [None, "region"])
def test_grid_reward(easyr1, tokenizer, image_path, decoder):
    responses = [f"<think>It is red.</think><answer>{PERFECT}</answer>", "garbage", "<answer><none></answer>"]
    truths = [gt(image_path), gt(image_path), "not json"]
    kwargs = {"grid_size": 10, **({"decoder": decoder} if decoder else {})}
    _, metrics, scores = run(easyr1, tokenizer, "grid_reward", responses, truths, **kwargs)
    assert set(metrics) == GRID_KEYS | ({"mask"} if decoder else set())
    assert scores[0]["box"] == 1.0 and scores[0]["format"] == 1.0 and scores[0]["points"] > 0
    assert {k: scores[1][k] for k in GRID_KEYS} == {"overall": 0.5, "format": 0.0, "nonrepeat": 1.0, "box": 0.0,
                                                   "points": 0.0}
    assert scores[2]["overall"] == 0.0  # a broken ground truth
    if decoder:
        assert scores[0]["mask"] == 1.0
        _, _, plain = run(easyr1, tokenizer, "grid_reward", responses[:1], truths[:1], grid_size=10)
        assert scores[0]["overall"] == pytest.approx(plain[0]["overall"] + 1.0)
    weighted = run(easyr1, tokenizer, "grid_reward", responses[:1], truths[:1], weights={"format": 2.0}, **kwargs)[2]
    assert weighted[0]["overall"] == pytest.approx(scores[0]["overall"] + 1.5)


@pytest.mark.parametrize("decoder", [None, "region"])
def test_refine_reward(easyr1, tokenizer, image_path, decoder):
    g = gt(image_path, extra={"proposal": PROPOSAL})
    good = format_offsets([[(0, 0)] * 5], V)
    kwargs = {"grid_size": 10, **({"decoder": decoder} if decoder else {})}
    _, metrics, scores = run(easyr1, tokenizer, "refine_reward", [good, "junk", good], [g, g, gt(image_path)],
                             **kwargs)
    assert set(metrics) == REFINE_KEYS | ({"mask_gain"} if decoder else set())
    assert scores[0]["format"] == 1.0 and scores[0]["point"] == 1.0 and scores[0]["box"] == 1.0
    if decoder:
        assert scores[0]["mask_gain"] == 0.5
    assert scores[1]["overall"] == 0.0
    assert scores[2]["overall"] == 0.0  # no proposal in the ground truth


def test_special_getok_tokens_would_be_dropped(easyr1, tiny_model, image_path):
    """Why the tokens must be ordinary: added as special tokens (ms-swift's --new_special_tokens),
    EasyR1's decode strips them and the perfect answer scores as an empty one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens(list(GetokVocab().tokens), special_tokens=True)
    _, _, scores = run(easyr1, tok, "grid_reward", [f"<answer>{PERFECT}</answer>"], [gt(image_path)], grid_size=10)
    assert scores[0]["box"] == 0.0 and scores[0]["format"] == 0.0


def test_wrong_reward_kwarg_fails_the_first_call(easyr1, tokenizer):
    """EasyR1 binds reward_function_kwargs with functools.partial: a misspelt kwarg raises when the
    first batch is scored (a typo in a recipe stops training instead of being ignored)."""
    with pytest.raises((TypeError, ValueError), match="grid_sise"):
        run(easyr1, tokenizer, "grid_reward", ["x"], [gt()], grid_sise=10)
