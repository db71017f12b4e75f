"""GETok rewards for verl 0.9 (``reward.custom_reward_function``).

    reward.custom_reward_function.path=/abs/path/easyr1_plugin/verl_reward.py
    reward.custom_reward_function.name=compute_score                      # the default
    +reward.custom_reward_function.reward_kwargs.stage=refine             # optional, see below

verl loads this file by path and calls ``compute_score(data_source=..., solution_str=...,
ground_truth=..., extra_info=..., **reward_kwargs)`` once per sample (in a thread pool); the
result is a dict with ``score`` (= GETok's ``overall``) and every component as its own key, which
verl logs.

``solution_str`` is the decoded response. In a multi-turn agent loop it decodes every response
token, the feedback turns included, so the answer read is always the last ``<answer>`` block.

Stages: ``stage`` (reward kwarg, default ``grid``) or, per row, ``extra_info["getok_stage"]``
(it wins; the stage's weights apply).
``refine``: the turn-1 proposal is the first ``<answer>`` block of ``solution_str`` when it holds
two or more (the agent loop's own turn 1; the offsets are then scored on the text after it), else
the ground truth's ``extra["proposal"]`` (stage-2 data whose prompt holds turn 1).

Other reward kwargs as in ``getok_core.rewards.setup_from_kwargs``: ``decoder`` (``region`` /
``sam`` / ``sam2``, with ``checkpoint``, ``device``, ... ; ``ray``: the shared SAM service of
``docs/sam_service.md``, with ``app``, ``timeout_s``, ``fallback``; absent = no mask component),
``weights``, ``grid_size``, ``round``. With ``fallback: region`` the result also holds
``mask_fallback`` (share of the sample's masks decoded by the fallback). The keys are a fixed set
per stage (``getok_core.rewards.frameworks.flatten``).

Special tokens: verl's ``naive`` reward manager decodes with ``skip_special_tokens=True``. If the
GETok tokens were added to the tokenizer as special tokens (ms-swift's ``--new_special_tokens``
does), they vanish from ``solution_str`` and every answer reads as empty. Either add them as
normal added tokens, or use the ``GetokRewardManager`` below (the naive manager, decoding with
the GETok tokens kept and every other special token dropped; ``KeepGetokTokens`` is
``getok_core.models.tokens.KeepGetokTokens``):

    reward.reward_manager.source=importlib
    reward.reward_manager.name=GetokRewardManager
    reward.reward_manager.module.path=/abs/path/easyr1_plugin/verl_reward.py
"""

from __future__ import annotations

from getok_core.codec.text import as_text
from getok_core.models.tokens import KeepGetokTokens
from getok_core.rewards import setup_from_kwargs
from getok_core.rewards.dialogue import split_transcript
from getok_core.rewards.frameworks import STAGES, flatten, score_batch

#: Keyword arguments verl itself may add to the call (reward-model routing); not ours.
VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")


def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, **kwargs) -> dict:
    """GETok reward of one verl sample: ``{"score": overall, <component>: value, ...}`` (floats).

    Never raises on a response or a ground truth (a broken ground truth scores 0 everywhere);
    raises ValueError on wrong reward kwargs (a configuration error)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in VERL_KWARGS}
    if isinstance(extra_info, dict) and extra_info.get("getok_stage") in STAGES:
        kwargs["stage"] = extra_info["getok_stage"]  # the row's stage wins over the reward kwarg
    setup = setup_from_kwargs(kwargs)
    proposal, text = split_transcript(solution_str) if setup.stage == "refine" else (None, as_text(solution_str))
    return flatten(score_batch(setup, [text], [ground_truth], [proposal])[0], setup, overall_key="score")


def _make_manager_class():
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

    class GetokRewardManager(NaiveRewardManager):
        """verl's ``naive`` reward manager, decoding responses with the GETok tokens kept even
        when they are special tokens of the tokenizer."""

        def __init__(self, config, tokenizer, compute_score, *args, **kwargs):
            super().__init__(config, KeepGetokTokens(tokenizer), compute_score, *args, **kwargs)

    return GetokRewardManager


def __getattr__(name):  # PEP 562: verl is imported only when the manager is asked for
    if name == "GetokRewardManager":
        cls = _make_manager_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


__all__ = ["compute_score", "KeepGetokTokens", "GetokRewardManager", "VERL_KWARGS"]
