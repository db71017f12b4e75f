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

Stages: ``stage`` (reward kwarg, default ``grid``) or, per row, ``extra_info["getok_stage"]``.
``refine``: the turn-1 proposal is the first ``<answer>`` block of ``solution_str`` when it holds
two or more (the agent loop's own turn 1; the offsets are then scored on the text after it), else
the ground truth's ``extra["proposal"]`` (stage-2 data whose prompt holds turn 1).

Other reward kwargs as in ``getok_core.rewards.core.setup_from_kwargs``: ``decoder`` (``region`` /
``sam`` / ``sam2``, with ``checkpoint``, ``device``, ... ; ``ray``: the shared SAM service of
``docs/sam_service.md``, with ``app``, ``timeout_s``, ``fallback``; absent = no mask component),
``weights``, ``grid_size``, ``round``. With ``fallback: region`` the result also holds
``mask_fallback`` (share of the sample's masks decoded by the fallback).

Special tokens: verl's ``naive`` reward manager decodes with ``skip_special_tokens=True``. If the
GETok tokens were added to the tokenizer as special tokens (ms-swift's ``--new_special_tokens``
does), they vanish from ``solution_str`` and every answer reads as empty. Either add them as
normal added tokens, or use the ``GetokRewardManager`` below (the naive manager, decoding with
the GETok tokens kept and every other special token dropped):

    reward.reward_manager.source=importlib
    reward.reward_manager.name=GetokRewardManager
    reward.reward_manager.module.path=/abs/path/easyr1_plugin/verl_reward.py
"""

from __future__ import annotations

import re

from getok_core.codec.answer import ANSWER_CLOSE, ANSWER_OPEN
from getok_core.rewards.core import score_grid_batch, score_refine_batch, setup_from_kwargs

#: Keyword arguments verl itself may add to the call (reward-model routing); not ours.
VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")


def _turn1_split(text: str) -> tuple[str | None, str]:
    """(first ``<answer>`` block, the text after it) when ``text`` holds two or more answer
    blocks (a multi-turn transcript), else (None, text)."""
    if text.count(ANSWER_OPEN) < 2:
        return None, text
    a = text.find(ANSWER_OPEN)
    b = text.find(ANSWER_CLOSE, a)
    if b < 0:
        return None, text
    end = b + len(ANSWER_CLOSE)
    return text[a:end], text[end:]


def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, **kwargs) -> dict:
    """GETok reward of one verl sample: ``{"score": overall, <component>: value, ...}`` (floats).

    Never raises on a response or a ground truth (a broken ground truth scores 0 everywhere);
    raises ValueError on wrong reward kwargs (a configuration error)."""
    setup = setup_from_kwargs(kwargs, ignore=VERL_KWARGS)
    stage = setup.stage
    if isinstance(extra_info, dict) and extra_info.get("getok_stage") in ("grid", "refine"):
        stage = extra_info["getok_stage"]
    text = solution_str if isinstance(solution_str, str) else (
        bytes(solution_str).decode("utf-8", "replace") if isinstance(solution_str, (bytes, bytearray))
        else ("" if solution_str is None else str(solution_str)))
    if stage == "refine":
        proposal, turn2 = _turn1_split(text)
        result = score_refine_batch([turn2], [ground_truth], setup.vocab, [proposal], setup.decoder,
                                    setup.refine_weights, round=setup.round)[0]
    else:
        result = score_grid_batch([text], [ground_truth], setup.vocab, setup.decoder, setup.grid_weights)[0]
    out = {"score": float(result.overall)}
    out.update({k: float(v) for k, v in result.components.items()})
    if "mask_fallback" in result.details:  # decoder=ray with fallback=region
        out["mask_fallback"] = float(result.details["mask_fallback"])
    return out


# ---------------------------------------------------------------------- GetokRewardManager
_GETOK_TOKEN_RE = re.compile(r"<(?:grid\d+,\d+|OFF-?\d,-?\d|DELETE|none|/?(?:point|box|seg|line|poly|offset))>\Z")


class KeepGetokTokens:
    """A tokenizer proxy whose ``decode(ids, skip_special_tokens=True)`` drops every special
    token except the GETok ones (found by name among the tokenizer's added tokens)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
        keep = {i for t, i in added.items() if _GETOK_TOKEN_RE.match(t)}
        self._drop = set(getattr(tokenizer, "all_special_ids", []) or []) - keep

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs):
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._drop]
        return self._tok.decode(ids, skip_special_tokens=False, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


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
