"""GETok's verl reward (easyr1_plugin/verl_reward.py) driven through verl 0.9.1's own reward loop.

The config is composed from verl's ``ppo_trainer`` with ``reward.custom_reward_function.path`` =
our file; ``verl.trainer.ppo.reward.load_reward_manager`` loads it with verl's loader into the
``naive`` reward manager, which decodes real token ids of a ``DataProto`` (left-padded prompts,
right-padded responses, attention mask over both) with a tokenizer and calls ``compute_score``.
``RewardLoopWorker`` does the same for a batch, reloading the tokenizer from
``actor_rollout_ref.model.path``.

The tokenizer is built offline: a byte-level BPE with no merges (every byte one token) plus the
chat specials and the GETok tokens, saved with ``PreTrainedTokenizerFast.save_pretrained``. The
GETok tokens are added either as normal added tokens or as special tokens (what ms-swift's
``--new_special_tokens`` does); the naive manager decodes with ``skip_special_tokens=True``, so
special GETok tokens vanish unless ``GetokRewardManager`` is used.
"""

import asyncio
import os

import numpy as np
import pytest

pytestmark = pytest.mark.verl
import torch  # noqa: F401  (tests/verl run in the verl environment: a missing package fails)
import verl

from hydra import compose, initialize_config_dir  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.reward import load_reward_manager  # noqa: E402

from testkit import ground_truth, square, target  # noqa: E402

from getok_core import GetokVocab, format_offsets  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REWARD_FILE = os.path.join(ROOT, "easyr1_plugin", "verl_reward.py")
V = GetokVocab(grid_size=10)
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

M1 = square(25, 54, 35, 64)
PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"
PROPOSAL = f"<think>t</think><answer>{PERFECT}</answer>"
Q3 = (1 - np.exp(-3 / 5)) - 0.06


def gt(targets=True, extra=None):
    # no image file: a mask decoder fails on it (IoU 0); the image_key is this test's own, as decoders
    # cache images by key
    t = [target(mask=M1, box=[0.25, 0.35, 0.55, 0.65])] if targets else []
    return ground_truth(t, image_key="verl-test-no-image", extra=extra)


def build_tokenizer(path, getok_special: bool):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    # the GETok vocabulary of the default 32 x 32 grid holds every 10 x 10 token too
    tokens = GetokVocab().tokens
    if getok_special:
        fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", *tokens]})
    else:
        fast.add_tokens(tokens, special_tokens=False)
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)  # as verl's hf_tokenizer loads it


def make_config(tokenizer_dir, manager="naive", **reward_kwargs):
    overrides = [f"reward.custom_reward_function.path={REWARD_FILE}",
                 "actor_rollout_ref.rollout.name=vllm",
                 f"actor_rollout_ref.model.path={tokenizer_dir}"]
    overrides += [f"+reward.custom_reward_function.reward_kwargs.{k}={v}" for k, v in reward_kwargs.items()]
    if manager != "naive":
        overrides += ["reward.reward_manager.source=importlib", f"reward.reward_manager.name={manager}",
                      f"reward.reward_manager.module.path={REWARD_FILE}"]
    with initialize_config_dir(config_dir=os.path.dirname(verl.__file__) + "/trainer/config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def make_data(tokenizer, prompts, responses, truths, extra_infos=None):
    """A DataProto as verl's rollout leaves it: left-padded prompts, right-padded responses."""
    pad = tokenizer.pad_token_id
    p_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    r_ids = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in responses]
    lp, lr = max(map(len, p_ids)), max(map(len, r_ids))
    prompt = torch.full((len(prompts), lp), pad, dtype=torch.long)
    response = torch.full((len(prompts), lr), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), lp + lr), dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        prompt[i, lp - len(p):] = torch.tensor(p)
        response[i, :len(r)] = torch.tensor(r)
        mask[i, lp - len(p):lp + len(r)] = 1
    n = len(prompts)
    return DataProto.from_dict(
        tensors={"prompts": prompt, "responses": response, "input_ids": torch.cat([prompt, response], 1),
                 "attention_mask": mask},
        non_tensors={"data_source": np.array(["getok"] * n, dtype=object),
                     "reward_model": np.array([{"style": "rule", "ground_truth": g} for g in truths], dtype=object),
                     "extra_info": np.array(extra_infos or [{"index": i} for i in range(n)], dtype=object)})


RESPONSES = [f"<think>It is the red square.</think><answer>{PERFECT}</answer>",
             "<think>None of these.</think><answer><none></answer>",
             "I do not know."]
TRUTHS = [gt(), gt(targets=False), gt()]


async def _run_single(cfg, tokenizer, data):
    rm = load_reward_manager(cfg, tokenizer)  # created inside the running loop, as verl does
    return [await rm.run_single(data[i:i + 1]) for i in range(len(data))]


@pytest.fixture(scope="module")
def plain_tok(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok_plain"))
    return path, build_tokenizer(path, getok_special=False)


@pytest.fixture(scope="module")
def special_tok(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok_special"))
    return path, build_tokenizer(path, getok_special=True)


def test_naive_manager_runs_our_compute_score(plain_tok):
    path, tok = plain_tok
    cfg = make_config(path, grid_size=10)
    data = make_data(tok, ["<|im_start|>user\nPlease segment: the red square.<|im_end|>"] * 3, RESPONSES, TRUTHS)
    out = asyncio.run(_run_single(cfg, tok, data))
    scores = [o["reward_score"] for o in out]
    extra = [o["reward_extra_info"] for o in out]
    assert scores[0] == pytest.approx(2 + Q3)            # perfect: format, nonrepeat, box 1, points q
    assert extra[0]["box"] == 1.0 and extra[0]["points"] == pytest.approx(Q3)
    assert scores[1] == pytest.approx(4 - 1)             # no target answered <none> (no mask component)
    assert scores[2] == pytest.approx(0.5)               # no answer: nonrepeat only
    for o in out:
        assert set(o["reward_extra_info"]) == {"score", "format", "nonrepeat", "box", "points"}
        assert o["reward_extra_info"]["score"] == o["reward_score"]


def test_reward_loop_worker_batch(plain_tok):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    path, tok = plain_tok
    cfg = make_config(path, grid_size=10, decoder="region")
    data = make_data(tok, ["q"] * 3, RESPONSES, TRUTHS)

    async def go():
        return await RewardLoopWorker(cfg).compute_score_batch(data)  # reloads the tokenizer from path

    out = asyncio.run(go())
    assert [o["reward_extra_info"].get("mask") for o in out] == [0.0, 1.0, 0.0]  # no image file: IoU 0
    assert out[0]["reward_extra_info"]["box"] == 1.0


def test_multi_turn_refinement_transcript(plain_tok):
    path, tok = plain_tok
    cfg = make_config(path, grid_size=10, stage="refine")
    offsets = format_offsets([[(0, 0), (0, 0), (1, 0), (0, 0), None]], V)
    # verl decodes every response token, the feedback turn included
    transcript = (PROPOSAL + "<|im_end|>\n<|im_start|>user\nRefine the points.<|im_end|>\n<|im_start|>assistant\n"
                  + offsets)
    data = make_data(tok, ["q"], [transcript], [gt()])
    out = asyncio.run(_run_single(cfg, tok, data))[0]
    info = out["reward_extra_info"]
    # points (35,45) +1 stays, (45,55) -> (50,55) +1, (35,55) deleted while inside -1: mean 1/3
    assert info["format"] == 1.0 and info["box"] == 1.0 and info["point"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["reward_score"] == pytest.approx(0.5 + 1 + (1 / 3 + 1) / 2)


def test_special_getok_tokens_need_the_getok_manager(special_tok):
    path, tok = special_tok
    data = make_data(tok, ["q"] * 3, RESPONSES, TRUTHS)
    # verl's naive manager skips special tokens: the answers read as empty <answer></answer>
    naive = asyncio.run(_run_single(make_config(path, grid_size=10), tok, data))
    assert naive[0]["reward_extra_info"]["box"] == 0.0
    # GetokRewardManager keeps the GETok tokens and drops the other specials (<|im_end|>)
    ours = asyncio.run(_run_single(make_config(path, "GetokRewardManager", grid_size=10), tok, data))
    plain_scores = [pytest.approx(2 + Q3), pytest.approx(3.0), pytest.approx(0.5)]
    assert [o["reward_score"] for o in ours] == plain_scores
    assert ours[0]["reward_extra_info"]["format"] == 1.0
