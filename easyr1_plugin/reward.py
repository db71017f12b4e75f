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
process for each set of arguments. A wrong argument raises ValueError at the first call. With
``decoder: ray`` and ``fallback: region``, each row also holds ``mask_fallback``: the share of its
masks decoded by the region fallback because the service did not answer in time.

If the GETok tokens were added to the tokenizer as special tokens (ms-swift's
``--new_special_tokens`` does so), set ``worker.reward.skip_special_tokens=false``: otherwise
EasyR1 decodes responses without them and every answer reads as empty.
"""

from __future__ import annotations

from getok_core.rewards.core import (GRID_COMPONENTS, REFINE_COMPONENTS, score_grid_batch, score_refine_batch,
                                setup_from_kwargs)

REWARD_NAME = "getok"
REWARD_TYPE = "batch"


def _fields(reward_inputs) -> tuple[list, list]:
    responses, truths = [], []
    for item in reward_inputs:
        if isinstance(item, dict):
            responses.append(item.get("response", ""))
            truths.append(item.get("ground_truth"))
        else:  # not what EasyR1 sends; scored as a broken sample rather than crashing the step
            responses.append("")
            truths.append(None)
    return responses, truths


def _rows(results, names, with_mask: bool, mask_name: str) -> list[dict]:
    keys = [k for k in names if with_mask or k != mask_name]
    out = []
    for r in results:
        row = {"overall": float(r.overall)}
        for k in keys:
            row[k] = float(r.components.get(k, 0.0))
        if "mask_fallback" in r.details:  # decoder=ray with fallback=region: share of fallback masks
            row["mask_fallback"] = float(r.details["mask_fallback"])
        out.append(row)
    return out


def grid_reward(reward_inputs: list[dict], **kwargs) -> list[dict]:
    """Grid-stage rewards: one dict per input with ``overall``, ``format``, ``nonrepeat``,
    ``box``, ``points`` and, with a decoder, ``mask`` (all floats)."""
    setup = setup_from_kwargs(kwargs)
    responses, truths = _fields(reward_inputs)
    results = score_grid_batch(responses, truths, setup.vocab, setup.decoder, setup.grid_weights)
    return _rows(results, GRID_COMPONENTS, setup.decoder is not None, "mask")


def refine_reward(reward_inputs: list[dict], **kwargs) -> list[dict]:
    """Refinement-stage rewards: one dict per input with ``overall``, ``format``, ``point``,
    ``box`` and, with a decoder, ``mask_gain`` (all floats). The turn-1 proposal is read from the
    ground truth's ``extra["proposal"]``."""
    kwargs = {**kwargs, "stage": "refine"}
    setup = setup_from_kwargs(kwargs)
    responses, truths = _fields(reward_inputs)
    results = score_refine_batch(responses, truths, setup.vocab, None, setup.decoder, setup.refine_weights,
                                 round=setup.round)
    return _rows(results, REFINE_COMPONENTS, setup.decoder is not None, "mask_gain")


main = grid_reward

__all__ = ["REWARD_NAME", "REWARD_TYPE", "grid_reward", "refine_reward", "main"]
