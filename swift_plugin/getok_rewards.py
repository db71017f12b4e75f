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
then scores the dialogue (``getok_core.rewards.frameworks.score_batch``: ``score_dialogues`` of the
turns ``stage_turns`` picks): the refinement ORMs the last offset round, relative to the geometry after
the rounds before it; a dialogue that ended after turn 1 (turn 1 not refinable) gets the
degenerate-turn-1 verdict, in refinement components like the rest of its group. The grid ORMs score
turn 1 (so ``getok_grid`` + ``getok_refine`` reward both turns of the dialogue).

Configuration (decoder, weights, refinement round): the environment variable
``GETOK_REWARD_KWARGS`` holding a JSON object with the keys of
``getok_core.rewards.setup_from_kwargs`` (e.g. ``{"decoder": "sam", "checkpoint":
"/ckpt/sam_vit_b.pth", "model_type": "vit_b", "device": "cuda"}``), or ``configure(**kwargs)``
from a plugin file (it wins over the environment). No decoder: ``getok_mask`` and
``getok_refine_mask_gain`` refuse to start, and the ``overall`` ORMs leave the mask component
out.

Grid size: one source, ``GETOK_GRID_SIZE`` (default 32), the value the tokens, the template and the
scheduler use. The reward arguments need no ``grid_size``; one they hold must equal it, else the
ORMs (and ``configure``) raise ValueError naming both values.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

from swift.rewards import ORM, orms

from getok_core.codec.text import as_text
from getok_core.rewards import setup_from_kwargs
from getok_core.rewards.frameworks import (MASK_COMPONENT, column, component_value, kwargs_from_json,
                                           previous_assistant, recorded_dialogues, score_batch, set_once)
from swift_plugin.getok_multiturn import TURNS_KEY
from swift_plugin.getok_tokens import ENV_GRID_SIZE, vocab_from_env

#: Dataset columns read for the ground truth, in order.
GT_COLUMNS = ("solution", "ground_truth")
ENV_KWARGS = "GETOK_REWARD_KWARGS"

_configured: dict | None = None
_memo: OrderedDict = OrderedDict()
_MEMO_SIZE = 4
_lock = threading.Lock()


def _with_run_grid_size(kwargs: dict, source: str) -> dict:
    """``kwargs`` with the run's grid size (``GETOK_GRID_SIZE``); ValueError if they disagree."""
    where = ENV_GRID_SIZE if os.environ.get(ENV_GRID_SIZE, "").strip() else f"{ENV_GRID_SIZE} (unset: its default)"
    return set_once(kwargs, "grid_size", vocab_from_env().grid_size, where, source)


def configure(**kwargs) -> None:
    """Set the reward arguments (``setup_from_kwargs`` keys) for every GETok ORM of this process;
    checked now (a wrong key, or a ``grid_size`` other than ``GETOK_GRID_SIZE``'s, raises
    ValueError). ``configure()`` with no argument returns to the environment variable."""
    global _configured
    if kwargs:
        setup_from_kwargs(_with_run_grid_size(kwargs, "configure()"))
    with _lock:
        _configured = dict(kwargs) if kwargs else None
        _memo.clear()


def reward_kwargs() -> dict:
    """The reward arguments in force: ``configure``'s, else ``GETOK_REWARD_KWARGS``, else {}; with
    ``grid_size`` = ``GETOK_GRID_SIZE``'s value (ValueError naming both when they hold another)."""
    if _configured is not None:
        return _with_run_grid_size(_configured, "configure()")
    return _with_run_grid_size(kwargs_from_json(os.environ.get(ENV_KWARGS), ENV_KWARGS), ENV_KWARGS)


def _key(values) -> tuple:
    return tuple(v if isinstance(v, (str, type(None))) else json.dumps(v, sort_keys=True, default=repr)
                 for v in values)


def score(stage: str, completions, kwargs: dict):
    """``RewardResult`` of each completion for ``stage`` (``grid`` / ``refine``), memoized per
    batch so that several GETok ORMs share one scoring. Ground truth: ``GT_COLUMNS``; dialogue:
    ``rollout_infos[TURNS_KEY]``; single-turn refinement proposal: the last assistant message
    before the completion in ``messages``."""
    completions = [as_text(c) for c in completions]
    n = len(completions)
    rk = reward_kwargs()
    gts = column(kwargs, GT_COLUMNS, n)
    props = previous_assistant(kwargs.get("messages"), n) if stage == "refine" else [None] * n
    dialogues = recorded_dialogues(kwargs.get("rollout_infos"), completions, TURNS_KEY)
    key = (stage, json.dumps(rk, sort_keys=True, default=repr), _key(completions), _key(gts), _key(props),
           _key(dialogues))
    with _lock:
        hit = _memo.get(key)
        if hit is not None:
            _memo.move_to_end(key)
            return hit
    results = score_batch(setup_from_kwargs({**rk, "stage": stage}), completions, gts, props, dialogues)
    with _lock:
        _memo[key] = results
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return results


class GetokORM(ORM):
    """The base of the GETok ORMs: ``stage``'s ``component`` (None: ``overall``) per completion.
    A mask component refuses to start without a mask decoder."""

    stage = "grid"
    component: str | None = None

    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)
        setup = setup_from_kwargs({**reward_kwargs(), "stage": self.stage})
        if self.component == MASK_COMPONENT[self.stage] and setup.decoder is None:
            raise ValueError(f"{type(self).__name__} scores the mask component, which needs a mask decoder: "
                             f"set {ENV_KWARGS}='{{\"decoder\": \"region\"}}' (or sam with its checkpoint)")

    def __call__(self, completions, **kwargs) -> list[float]:
        return [component_value(r, self.component) for r in score(self.stage, completions, kwargs)]


#: ``--reward_funcs`` name -> (class name: ms-swift logs ``rewards/<class name>/mean``, stage, component).
_TABLE = (
    ("getok_grid", "GetokGrid", "grid", None),
    ("getok_format", "GetokFormat", "grid", "format"),
    ("getok_nonrepeat", "GetokNonrepeat", "grid", "nonrepeat"),
    ("getok_box", "GetokBox", "grid", "box"),
    ("getok_mask", "GetokMask", "grid", "mask"),
    ("getok_points", "GetokPoints", "grid", "points"),
    ("getok_refine", "GetokRefine", "refine", None),
    ("getok_refine_format", "GetokRefineFormat", "refine", "format"),
    ("getok_refine_point", "GetokRefinePoint", "refine", "point"),
    ("getok_refine_box", "GetokRefineBox", "refine", "box"),
    ("getok_refine_mask_gain", "GetokRefineMaskGain", "refine", "mask_gain"),
)


def _orm_class(class_name: str, stage: str, component: str | None) -> type:
    doc = f"{stage.capitalize()} stage ``{component or 'overall'}`` (``GetokORM``)."
    return type(class_name, (GetokORM,), {"stage": stage, "component": component, "__doc__": doc,
                                          "__module__": __name__, "__qualname__": class_name})


ORMS = {name: _orm_class(cls, stage, comp) for name, cls, stage, comp in _TABLE}
globals().update({c.__name__: c for c in ORMS.values()})  # importable (and picklable) by class name


def register() -> list[str]:
    """Put the GETok ORMs into ``swift.rewards.orms``; returns their names."""
    orms.update(ORMS)
    return list(ORMS)


__all__ = ["ORMS", "GetokORM", "register", "configure", "reward_kwargs", "score", "GT_COLUMNS", "ENV_KWARGS",
           *(c.__name__ for c in ORMS.values())]
