"""GETok rewards as ms-swift ORMs (``swift rlhf --rlhf_type grpo --reward_funcs ...``).

``register()`` puts them into ``swift.rewards.orms`` (``swift_plugin/register.py`` calls it):

=========================== ============================================================
name                        returns, per completion
=========================== ============================================================
``getok_grid``              grid stage ``overall`` (weighted sum, GETok's default weights)
``getok_format``            grid ``format`` (each in [0, 1])
``getok_nonrepeat``         grid ``nonrepeat``
``getok_box``               grid ``box``
``getok_mask``              grid ``mask`` (needs a decoder, see below)
``getok_points``            grid ``points``
``getok_refine``            refinement stage ``overall``
``getok_refine_format``     refinement ``format``
``getok_refine_point``      refinement ``point``
``getok_refine_box``        refinement ``box``
``getok_refine_mask_gain``  refinement ``mask_gain`` (needs a decoder)
=========================== ============================================================

Use either the stage's ``overall`` ORM alone or its component ORMs with ``--reward_weights``
(not both: that counts components twice). The ORMs of one batch share one scoring pass (the
last batches' results are memoized), so listing five component ORMs costs one scoring.

Ground truth: the dataset column ``solution`` (ms-swift keeps that column for GRPO and passes
it to rewards), else ``ground_truth``: GETok's ground-truth JSON string
(``getok_core.data.groundtruth.dumps``). Store it as a string, not as a nested object (a dataset
loader would turn an object into a struct column with filled-in nulls).

Refinement, single turn (a stage-2 row): the completion is the offset answer; the turn-1 proposal
is the last assistant message before it in ``messages`` (the row's turn 1), else the ground truth's
``extra["proposal"]``.

Refinement dialogue (``--multi_turn_scheduler getok_refine``, ``swift_plugin/getok_multiturn.py``):
the scheduler records the model's turns in ``rollout_infos["getok_turns"]`` (ms-swift keeps the
earlier ones in ``messages`` as token ids only); the completion is the last turn. Every GETok ORM
then scores the dialogue with ``getok_core.rewards.dialogue.score_dialogues`` (turns chosen by
``refine.stage_turns``): the refinement ORMs the last offset round, relative to the geometry after
the rounds before it; a dialogue that ended after turn 1 (turn 1 not refinable) gets the
degenerate-turn-1 verdict, in refinement components like the rest of its group. The grid ORMs score
turn 1 (so ``getok_grid`` + ``getok_refine`` reward both turns of the dialogue).

Configuration (decoder, weights, grid size, refinement round): the environment variable
``GETOK_REWARD_KWARGS`` holding a JSON object with the keys of
``getok_core.rewards.core.setup_from_kwargs`` (e.g. ``{"decoder": "sam", "checkpoint":
"/ckpt/sam_vit_b.pth", "model_type": "vit_b", "device": "cuda"}``), or ``configure(**kwargs)``
from a plugin file (it wins over the environment). No decoder: ``getok_mask`` and
``getok_refine_mask_gain`` refuse to start, and the ``overall`` ORMs leave the mask component
out.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

from swift.rewards import ORM, orms

from getok_core.rewards.dialogue import score_dialogues, stage_turns
from getok_core.rewards.core import score_grid_batch, score_refine_batch, setup_from_kwargs
from swift_plugin.getok_multiturn import TURNS_KEY

#: Dataset columns read for the ground truth, in order.
GT_COLUMNS = ("solution", "ground_truth")
ENV_KWARGS = "GETOK_REWARD_KWARGS"

_configured: dict | None = None
_memo: OrderedDict = OrderedDict()
_MEMO_SIZE = 4
_lock = threading.Lock()


def configure(**kwargs) -> None:
    """Set the reward arguments (``setup_from_kwargs`` keys) for every GETok ORM of this process;
    checked now (a wrong key raises ValueError). ``configure()`` with no argument returns to the
    environment variable."""
    global _configured
    if kwargs:
        setup_from_kwargs(kwargs)
    with _lock:
        _configured = dict(kwargs) if kwargs else None
        _memo.clear()


def reward_kwargs() -> dict:
    """The reward arguments in force: ``configure``'s, else ``GETOK_REWARD_KWARGS``, else {}."""
    if _configured is not None:
        return dict(_configured)
    raw = os.environ.get(ENV_KWARGS, "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{ENV_KWARGS} must hold a JSON object, got {type(value).__name__}")
    return value


def _column(kwargs: dict, n: int) -> list:
    for name in GT_COLUMNS:
        value = kwargs.get(name)
        if value is not None:
            values = list(value)
            if len(values) == n:
                return values
    return [None] * n


def _content(message) -> str | None:
    if not isinstance(message, dict):
        return None
    c = message.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text") or None
    return None


def _proposals(kwargs: dict, n: int) -> list:
    """The last assistant message before the completion of each sample (None if none)."""
    messages = kwargs.get("messages")
    out: list = [None] * n
    if messages is None:
        return out
    for k, msgs in enumerate(list(messages)[:n]):
        if not isinstance(msgs, (list, tuple)) or len(msgs) < 2:
            continue
        for m in reversed(msgs[:-1]):
            if isinstance(m, dict) and m.get("role") == "assistant":
                out[k] = _content(m)
                break
    return out


def _dialogues(kwargs: dict, completions: list) -> list:
    """The model's turns of each sample's refinement dialogue (the ``getok_refine`` scheduler's
    ``rollout_infos[TURNS_KEY]``, the last turn being the completion), else None (single turn)."""
    infos = kwargs.get("rollout_infos")
    out: list = [None] * len(completions)
    if infos is None:
        return out
    for k, info in enumerate(list(infos)[:len(completions)]):
        turns = info.get(TURNS_KEY) if isinstance(info, dict) else None
        if isinstance(turns, (list, tuple)) and turns:
            out[k] = [t if isinstance(t, str) else "" for t in turns[:-1]] + [completions[k]]
    return out


def _score_batch(stage: str, completions: list, gts: list, props: list, dialogues: list, setup) -> list:
    """``score_dialogues`` for the samples with a dialogue (``refine.stage_turns``: the grid stage
    scores turn 1, the refinement stage the last round), the single-turn scorer for the others."""
    out: list = [None] * len(completions)
    multi = [k for k, d in enumerate(dialogues) if d is not None]
    single = [k for k, d in enumerate(dialogues) if d is None]
    if single:
        c, g = [completions[k] for k in single], [gts[k] for k in single]
        if stage == "refine":
            res = score_refine_batch(c, g, setup.vocab, [props[k] for k in single], setup.decoder,
                                     setup.refine_weights, round=setup.round)
        else:
            res = score_grid_batch(c, g, setup.vocab, setup.decoder, setup.grid_weights)
        for k, r in zip(single, res):
            out[k] = r
    if multi:
        res = score_dialogues([stage_turns(dialogues[k], stage) for k in multi], [gts[k] for k in multi],
                              setup.vocab, setup.decoder, setup.grid_weights, setup.refine_weights)
        for k, r in zip(multi, res):
            out[k] = r
    return out


def _key(values) -> tuple:
    return tuple(v if isinstance(v, (str, type(None))) else json.dumps(v, sort_keys=True, default=repr)
                 for v in values)


def score(stage: str, completions, kwargs: dict):
    """``RewardResult`` of each completion for ``stage`` (``grid`` / ``refine``), memoized per
    batch so that several GETok ORMs share one scoring."""
    completions = ["" if c is None else c for c in completions]
    n = len(completions)
    rk = reward_kwargs()
    gts = _column(kwargs, n)
    props = _proposals(kwargs, n) if stage == "refine" else [None] * n
    dialogues = _dialogues(kwargs, completions)
    key = (stage, json.dumps(rk, sort_keys=True, default=repr), _key(completions), _key(gts), _key(props),
           _key(dialogues))
    with _lock:
        hit = _memo.get(key)
        if hit is not None:
            _memo.move_to_end(key)
            return hit
    setup = setup_from_kwargs({**rk, "stage": stage})
    results = _score_batch(stage, completions, gts, props, dialogues, setup)
    with _lock:
        _memo[key] = results
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return results


class _GetokORM(ORM):
    stage = "grid"
    component: str | None = None  # None: overall
    needs_decoder = False

    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)
        setup = setup_from_kwargs({**reward_kwargs(), "stage": self.stage})
        if self.needs_decoder and setup.decoder is None:
            raise ValueError(f"{type(self).__name__} scores the mask component, which needs a mask decoder: "
                             f"set {ENV_KWARGS}='{{\"decoder\": \"region\"}}' (or sam with its checkpoint)")

    def __call__(self, completions, **kwargs) -> list[float]:
        results = score(self.stage, completions, kwargs)
        if self.component is None:
            return [float(r.overall) for r in results]
        return [float(r.components.get(self.component, 0.0)) for r in results]


class GetokGrid(_GetokORM):
    """Grid stage ``overall``."""


class GetokFormat(_GetokORM):
    component = "format"


class GetokNonrepeat(_GetokORM):
    component = "nonrepeat"


class GetokBox(_GetokORM):
    component = "box"


class GetokMask(_GetokORM):
    component = "mask"
    needs_decoder = True


class GetokPoints(_GetokORM):
    component = "points"


class GetokRefine(_GetokORM):
    """Refinement stage ``overall``."""

    stage = "refine"


class GetokRefineFormat(GetokRefine):
    component = "format"


class GetokRefinePoint(GetokRefine):
    component = "point"


class GetokRefineBox(GetokRefine):
    component = "box"


class GetokRefineMaskGain(GetokRefine):
    component = "mask_gain"
    needs_decoder = True


ORMS = {
    "getok_grid": GetokGrid,
    "getok_format": GetokFormat,
    "getok_nonrepeat": GetokNonrepeat,
    "getok_box": GetokBox,
    "getok_mask": GetokMask,
    "getok_points": GetokPoints,
    "getok_refine": GetokRefine,
    "getok_refine_format": GetokRefineFormat,
    "getok_refine_point": GetokRefinePoint,
    "getok_refine_box": GetokRefineBox,
    "getok_refine_mask_gain": GetokRefineMaskGain,
}


def register() -> list[str]:
    """Put the GETok ORMs into ``swift.rewards.orms``; returns their names."""
    orms.update(ORMS)
    return list(ORMS)


__all__ = ["ORMS", "register", "configure", "reward_kwargs", "score", "GT_COLUMNS", "ENV_KWARGS", *(
    c.__name__ for c in ORMS.values())]
