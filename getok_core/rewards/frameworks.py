"""What every trainer adapter does between its framework's call convention and the GETok scorers,
framework-free: reading the reward arguments and the batch columns, choosing the scorer of a
stage (single-turn grid or refinement answers, or refinement dialogues), and flattening each
``RewardResult`` into the flat float mapping trainers log.

The adapters (``easyr1_plugin/reward.py``, ``easyr1_plugin/verl_reward.py``,
``easyr1_plugin/agent_loop.py``, ``swift_plugin/getok_rewards.py``) only translate their
framework's call into ``score_batch`` and its results back with ``flatten`` / ``component_value``.

Logged keys are a fixed set per stage (``stage_keys``): trainers average each key over a batch,
so every row of a batch has the same keys whatever its response.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from ..codec.text import as_text
from . import GRID_COMPONENTS, REFINE_COMPONENTS, RewardResult, RewardSetup, score_grid_batch, score_refine_batch
from .dialogue import score_dialogues, stage_turns

STAGES = ("grid", "refine")
#: The mask component of each stage (present only when a mask decoder is configured).
MASK_COMPONENT = {"grid": "mask", "refine": "mask_gain"}
#: The detail logged when the decoder has a fallback (``decoder: ray`` with ``fallback: region``).
FALLBACK_KEY = "mask_fallback"


def check_stage(stage) -> str:
    """``stage`` if it is ``grid`` or ``refine``; ValueError otherwise."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 'grid' or 'refine', got {stage!r}")
    return stage


# ---------------------------------------------------------------------- reading reward arguments
def kwargs_from_json(raw, name: str) -> dict:
    """The reward arguments of a JSON object string (e.g. an environment variable called
    ``name``); {} for None or a blank string. Raises ValueError naming ``name`` on bad JSON or a
    value that is not an object."""
    raw = (raw or "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must hold a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{name} must hold a JSON object, got {type(value).__name__}")
    return value


def set_once(kwargs: Mapping, key: str, value, source: str, kwargs_source: str) -> dict:
    """``kwargs`` with ``kwargs[key] = value``: ``value`` (set by ``source``) is the one source of
    the setting, and ``kwargs`` (named ``kwargs_source``) may repeat it only with the same value
    (an int setting compares as an int: ``"32"`` equals 32). Raises ValueError naming both values
    otherwise: a setting given twice never disagrees silently."""
    out = dict(kwargs or {})
    if key in out and out[key] is not None:
        other = out[key]
        same = other == value
        if isinstance(value, int) and not isinstance(value, bool) and not same:
            try:
                same = int(other) == value and not isinstance(other, bool)
            except (TypeError, ValueError):
                same = False
        if not same:
            raise ValueError(f"{key} is set twice with different values: {value!r} by {source}, {other!r} by "
                             f"{kwargs_source}; the one source is {source}: drop {key} from {kwargs_source} "
                             "or make them equal")
    out[key] = value
    return out


def column(kwargs: Mapping, names: Sequence[str], n: int) -> list:
    """The first of the batch columns ``names`` present in ``kwargs`` with ``n`` values (a list),
    else ``[None] * n``."""
    for name in names:
        value = kwargs.get(name)
        if value is not None:
            values = list(value)
            if len(values) == n:
                return values
    return [None] * n


def message_text(content) -> str | None:
    """The text of a chat message's ``content``: a str as it is; OpenAI-style content parts (dicts)
    their text parts joined (``codec.text.as_text``), None when there is none; None for anything
    else (token ids, ...)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return as_text(content) or None
    return None


def previous_assistant(messages, n: int) -> list:
    """For each of the first ``n`` conversations of ``messages`` (lists of chat messages, the last
    being the completion), the text of the last assistant message before the completion (None if
    none, or if it holds no text)."""
    out: list = [None] * n
    for k, msgs in enumerate(list(messages or [])[:n]):
        if not isinstance(msgs, (list, tuple)) or len(msgs) < 2:
            continue
        for m in reversed(msgs[:-1]):
            if isinstance(m, dict) and m.get("role") == "assistant":
                out[k] = message_text(m.get("content"))
                break
    return out


def recorded_dialogues(infos, completions: Sequence[str], key: str) -> list:
    """The model turns of each sample's dialogue as a multi-turn rollout recorded them
    (``infos[k][key]``: the turns as text, oldest first), the last turn replaced by the
    completion; None for a sample without a record (a single-turn sample). A recorded turn that
    is not a str reads as ""."""
    out: list = [None] * len(completions)
    for k, info in enumerate(list(infos or [])[:len(completions)]):
        turns = info.get(key) if isinstance(info, dict) else None
        if isinstance(turns, (list, tuple)) and turns:
            out[k] = [t if isinstance(t, str) else "" for t in turns[:-1]] + [completions[k]]
    return out


# ---------------------------------------------------------------------- stage dispatch
def score_batch(setup: RewardSetup, responses: Sequence, ground_truths: Sequence, proposals: Sequence | None = None,
                dialogues: Sequence | None = None) -> list[RewardResult]:
    """The reward of each response for ``setup.stage``, in order.

    A sample with ``dialogues[k]`` (its model turns, the last being the response) is scored as a
    dialogue: ``score_dialogues`` of the turns ``stage_turns`` picks (grid: turn 1; refine: the last
    round relative to the rounds before it). The others are single answers: grid
    ``score_grid_batch``; refine ``score_refine_batch`` against ``proposals[k]`` (the turn-1 answer
    text, None: the ground truth's ``extra["proposal"]``) at ``setup.round``. Never raises on a
    response or a ground truth; ValueError on mismatched lengths."""
    n = len(responses)
    proposals = [None] * n if proposals is None else list(proposals)
    dialogues = [None] * n if dialogues is None else list(dialogues)
    if not len(ground_truths) == len(proposals) == len(dialogues) == n:
        raise ValueError(f"{n} responses for {len(ground_truths)} ground truths, {len(proposals)} proposals, "
                         f"{len(dialogues)} dialogues")
    stage = check_stage(setup.stage)
    out: list = [None] * n
    single = [k for k in range(n) if dialogues[k] is None]
    multi = [k for k in range(n) if dialogues[k] is not None]
    if single:
        texts, truths = [responses[k] for k in single], [ground_truths[k] for k in single]
        if stage == "refine":
            res = score_refine_batch(texts, truths, setup.vocab, [proposals[k] for k in single], setup.decoder,
                                     setup.refine_weights, round=setup.round)
        else:
            res = score_grid_batch(texts, truths, setup.vocab, setup.decoder, setup.grid_weights, setup.params)
        for k, r in zip(single, res):
            out[k] = r
    if multi:
        res = score_dialogues([stage_turns(dialogues[k], stage) for k in multi], [ground_truths[k] for k in multi],
                              setup.vocab, setup.decoder, setup.grid_weights, setup.refine_weights,
                              setup.params)
        for k, r in zip(multi, res):
            out[k] = r
    return out


# ---------------------------------------------------------------------- flattening
def stage_keys(stage: str, with_mask: bool) -> tuple[str, ...]:
    """The component keys logged for ``stage``: its components, the mask one only ``with_mask``."""
    names = GRID_COMPONENTS if check_stage(stage) == "grid" else REFINE_COMPONENTS
    return tuple(k for k in names if with_mask or k != MASK_COMPONENT[stage])


def flatten(result: RewardResult, setup: RewardSetup, overall_key: str = "overall") -> dict[str, float]:
    """``{overall_key: overall, <component>: value, ...}`` for ``setup.stage``'s fixed keys
    (``stage_keys``; a component the result lacks is 0.0), plus ``mask_fallback`` (the share of
    masks the fallback decoded, 0.0 when none was decoded) whenever the decoder has a fallback.
    Every value a float."""
    row = {overall_key: float(result.overall)}
    for k in stage_keys(setup.stage, setup.decoder is not None):
        row[k] = component_value(result, k)
    if getattr(setup.decoder, "fallback", None) is not None:
        row[FALLBACK_KEY] = float(result.details.get(FALLBACK_KEY, 0.0))
    return row


def component_value(result: RewardResult, component: str | None = None) -> float:
    """``result.overall`` (``component`` None) or that component's value (0.0 when absent)."""
    if component is None:
        return float(result.overall)
    return float(result.components.get(component, 0.0))


__all__ = ["STAGES", "MASK_COMPONENT", "FALLBACK_KEY", "check_stage", "kwargs_from_json", "set_once", "column",
           "message_text", "previous_assistant", "recorded_dialogues", "score_batch", "stage_keys", "flatten",
           "component_value"]
