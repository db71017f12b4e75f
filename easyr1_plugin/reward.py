"""GETok rewards for EasyR1 (batch reward functions; no import of EasyR1 itself).

EasyR1 loads this file by path (``worker.reward.reward_function=/abs/path/easyr1_plugin/reward.py:grid_reward``)
and calls ``fn(reward_inputs, **worker.reward.reward_function_kwargs)``. Each input is the dict
EasyR1 builds: ``response`` (the decoded response), ``response_length`` (int) and
``ground_truth`` (the dataset's answer column: GETok's ground-truth JSON string). Each output
holds ``overall`` and every component as its own float key, which EasyR1 logs as
``reward/<key>``.

    grid_reward      grid stage: format, nonrepeat, box, mask (with a decoder), points
    refine_reward    refinement stage: format, point, box, mask_gain (with a decoder); the
                     turn-1 proposal is the ground truth's ``extra["proposal"]`` (EasyR1 has no
                     multi-turn rollout: the stage-2 prompt holds the real turn-1 exchange, and
                     the data builder copies the turn-1 answer text into the ground truth)
    main             = grid_reward (EasyR1's default function name)

Keyword arguments (``worker.reward.reward_function_kwargs``): ``decoder`` (``region``, ``sam``,
``sam2``, ``ray``: the shared SAM service of ``docs/sam_service.md``; absent = no mask component)
with its arguments (``checkpoint``, ``model_type``, ``device``, ``mode``, ... ; for ``ray``:
``app``, ``timeout_s``, ``fallback``; or a ``decoder_kwargs`` mapping), ``weights`` (a mapping of component
weights), ``grid_size`` (32), ``round`` (refinement round, 1). The decoder is built once per
process for each set of arguments. A wrong argument (or a ``stage`` other than the function's)
raises ValueError at the first call. With
``decoder: ray`` and ``fallback: region``, each row also holds ``mask_fallback``: the share of its
masks decoded by the region fallback because the service did not answer in time.

If the GETok tokens were added to the tokenizer as special tokens (ms-swift's
``--new_special_tokens`` does so), set ``worker.reward.skip_special_tokens=false``: otherwise
EasyR1 decodes responses without them and every answer reads as empty.
"""

from __future__ import annotations

from getok_core.rewards import setup_from_kwargs
from getok_core.rewards.frameworks import flatten, score_batch, set_once

REWARD_NAME = "getok"
REWARD_TYPE = "batch"


def _fields(reward_inputs) -> tuple[list, list]:
    """(responses, ground truths) of EasyR1's input dicts; an item that is not a dict (not what
    EasyR1 sends) is scored as a broken sample rather than crashing the step."""
    responses, truths = [], []
    for item in reward_inputs:
        item = item if isinstance(item, dict) else {}
        responses.append(item.get("response", ""))
        truths.append(item.get("ground_truth"))
    return responses, truths


def _reward(reward_inputs, kwargs: dict, stage: str) -> list[dict]:
    """The function of ``stage`` fixes the stage; a ``stage`` reward kwarg may only repeat it."""
    setup = setup_from_kwargs(set_once(kwargs, "stage", stage, f"{stage}_reward", "reward_function_kwargs"))
    responses, truths = _fields(reward_inputs)
    return [flatten(r, setup) for r in score_batch(setup, responses, truths)]


def grid_reward(reward_inputs: list[dict], **kwargs) -> list[dict]:
    """Grid-stage rewards: one dict per input with ``overall``, ``format``, ``nonrepeat``,
    ``box``, ``points`` and, with a decoder, ``mask`` (all floats)."""
    return _reward(reward_inputs, kwargs, "grid")


def refine_reward(reward_inputs: list[dict], **kwargs) -> list[dict]:
    """Refinement-stage rewards: one dict per input with ``overall``, ``format``, ``point``,
    ``box`` and, with a decoder, ``mask_gain`` (all floats). The turn-1 proposal is read from the
    ground truth's ``extra["proposal"]``."""
    return _reward(reward_inputs, kwargs, "refine")


main = grid_reward

__all__ = ["REWARD_NAME", "REWARD_TYPE", "grid_reward", "refine_reward", "main"]
