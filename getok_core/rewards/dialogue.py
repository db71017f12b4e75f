"""The refinement dialogue (paper §3.3, stage 2; SPEC §2, §3, §6), framework-free.

Turn 1 (the model): a grid answer, e.g. ``<answer><box><grid3,4><grid20,25></box><seg>...</seg></answer>``.
Turn 2 (the user): ``refine_message(state)``, the refinement instruction.
Turn 3 (the model): one ``<offset>`` line per turn-1 instance, one ``<OFFdx,dy>`` or ``<DELETE>``
per point (box corners first, then seg points). With R > 1 rounds (SPEC §2, beyond the paper) the
user asks again and the model answers round r's offsets, step 1 / (n 2^r), relative to the geometry
refined so far; deleted points are gone from later rounds.

The verl agent loop (``easyr1_plugin/agent_loop.py``), the ms-swift multi-turn scheduler
(``swift_plugin/getok_multiturn.py``) and ``getok rollout-proposals`` (EasyR1's two-turn data) all
drive this module (``replay`` and ``dialogue_over`` for the turn loop, ``score_dialogues`` through
``frameworks.score_batch``), so the three frameworks show the same text and score the same way.

``RefineState.stop_reason`` says why a turn-1 answer cannot be refined; the dialogue then ends after
turn 1 and ``score_dialogues`` scores it as documented there (never an exception):

- ``truncated``: ``<answer>`` opened but never closed (the generation hit its length limit);
- ``unparsable``: no ``<answer>`` block, or the block has a malformed element;
- ``no_target``: the answer is ``<none>`` / empty (nothing to refine);
- ``no_points``: nothing with a point to move (no instance has an anchor left).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..codec.answer import ANSWER_CLOSE, ANSWER_OPEN, parse_answer
from ..codec.instance import Instance, anchors
from .grid import score_grid_batch
from .params import (DEFAULT_PARAMS, GRID_COMPONENTS, REFINE_COMPONENTS, GridWeights, RefineWeights, RewardParams,
                     RewardResult, weights_from)
from .refine import refined_instances, score_refine_batch
from ..codec.text import as_text, strip_trailing_specials
from ..codec.vocab import GetokVocab
from ..data.writers import REFINE_PROMPT

STOP_REASONS = ("truncated", "unparsable", "no_target", "no_points")


@dataclass(frozen=True)
class RefineState:
    """Where a refinement dialogue stands.

    ``turn1``: the model's turn-1 answer text. ``instances``: its geometry (normalized [0, 1]
    image coordinates) after the offset rounds done so far. ``offsets``: the offset answer texts
    of those rounds, in order. ``stop_reason``: "" while the dialogue can go on, else one of
    ``STOP_REASONS``.
    """

    turn1: str
    instances: tuple[Instance, ...] = ()
    offsets: tuple[str, ...] = ()
    stop_reason: str = ""

    @property
    def round(self) -> int:
        """The 1-based round the next offset answer belongs to."""
        return len(self.offsets) + 1

    @property
    def refinable(self) -> bool:
        return not self.stop_reason

    @property
    def num_points(self) -> int:
        """Anchors left to refine (box corners + points + vertices) over all instances."""
        return sum(len(anchors(i)) for i in self.instances)


def clean_answer(text) -> str:
    """A model turn's text without the trailing whitespace and chat specials (``<|im_end|>``...)
    a server or a framework's history may leave (``codec.text.strip_trailing_specials``); never
    raises."""
    return strip_trailing_specials(as_text(text))


def start_refinement(turn1_text, vocab: GetokVocab | None = None) -> RefineState:
    """The dialogue state after the model's turn-1 answer ``turn1_text``. Never raises."""
    vocab = vocab or GetokVocab()
    text = as_text(turn1_text)
    parsed = parse_answer(text, vocab)
    if not parsed.found_answer:
        return RefineState(text, stop_reason="unparsable")
    last_open = text.rfind(ANSWER_OPEN)
    if text.find(ANSWER_CLOSE, last_open) < 0:
        return RefineState(text, stop_reason="truncated")
    if parsed.no_target:
        return RefineState(text, stop_reason="no_target")
    if not parsed.valid:
        return RefineState(text, stop_reason="unparsable")
    state = RefineState(text, instances=tuple(parsed.instances))
    return state if state.num_points else RefineState(text, state.instances, stop_reason="no_points")


def refine_message(state: RefineState) -> str:
    """The user text that asks for the offsets of round ``state.round``. Round 1 is the cold-start
    data's instruction (``writers.REFINE_PROMPT``); later rounds add the round and its step."""
    if state.round == 1:
        return REFINE_PROMPT
    return (f"{REFINE_PROMPT} Round {state.round}: each offset now moves a point by half the previous "
            f"round's step.")


def advance(state: RefineState, offsets_text, vocab: GetokVocab | None = None) -> RefineState:
    """``state`` after the model's offset answer ``offsets_text`` for round ``state.round``
    (``rewards.refined_instances``). A stopped state is returned unchanged. Never raises."""
    if state.stop_reason:
        return state
    vocab = vocab or GetokVocab()
    text = as_text(offsets_text)
    try:
        moved = tuple(refined_instances(state.instances, text, vocab, state.round))
    except Exception:  # defensive: malformed geometry must end the dialogue, not the trainer
        moved = state.instances
    new = RefineState(state.turn1, moved, state.offsets + (text,))
    return new if new.num_points else RefineState(new.turn1, moved, new.offsets, stop_reason="no_points")


def replay(turns: Sequence, vocab: GetokVocab | None = None) -> RefineState:
    """The state after the model's ``turns`` (the turn-1 answer, then one offset answer per round):
    ``start_refinement`` then ``advance`` per round. No turn reads as an empty turn 1. Never
    raises."""
    turns = list(turns) or [""]
    state = start_refinement(turns[0], vocab)
    for offsets in turns[1:]:
        state = advance(state, offsets, vocab)
    return state


def dialogue_over(state: RefineState, turns_done: int, turn_limit: int, cut: bool = False) -> bool:
    """Whether the dialogue ends after ``turns_done`` model turns: turn 1 cannot be refined or no
    point is left (``state.stop_reason``), the ``turn_limit`` (1 + rounds) is reached, or the last
    turn was ``cut`` at the length limit (what counts as cut is the framework's: a chat cannot go
    on after an unfinished turn)."""
    return bool(state.stop_reason) or turns_done >= turn_limit or bool(cut)


def split_transcript(text) -> tuple[str | None, str]:
    """A multi-turn transcript decoded as one text (a verl response holds every response token,
    the inserted user turns included): ``(turn-1 answer block, the text after it)`` when ``text``
    holds two or more ``<answer>`` blocks, else ``(None, text)`` (a single answer). Never raises."""
    text = as_text(text)
    if text.count(ANSWER_OPEN) < 2:
        return None, text
    a = text.find(ANSWER_OPEN)
    b = text.find(ANSWER_CLOSE, a)
    if b < 0:
        return None, text
    end = b + len(ANSWER_CLOSE)
    return text[a:end], text[end:]


def score_dialogues(dialogues: Sequence[Sequence], ground_truths: Sequence, vocab: GetokVocab | None = None,
                    decoder=None, grid_weights: GridWeights | dict | None = None,
                    refine_weights: RefineWeights | dict | None = None,
                    params: RewardParams = DEFAULT_PARAMS) -> list[RewardResult]:
    """Rewards of refinement dialogues: ``dialogues[k]`` is the list of the MODEL's turns (turn-1
    answer, then one offset answer per round done), ``ground_truths[k]`` its ground-truth JSON.

    - one turn: the grid-stage reward of that answer (``score_grid_batch``);
    - several turns and a refinable turn 1: the refinement reward of the LAST turn, relative to
      the geometry after the turns before it (``score_refine_batch`` with ``prior_offsets``);
    - a degenerate turn 1 (``stop_reason``) in a dialogue of several turns: ``no_target`` keeps
      the grid-stage verdict on turn 1, in refinement components (``format`` = the grid format,
      ``point`` / ``box`` / ``mask_gain`` = the grid ``points`` / ``box`` / ``mask``: 1 for a right
      ``<none>``, 0 for a wrong one; the grid scores in ``details["grid"]``); ``truncated`` /
      ``unparsable`` / ``no_points`` score 0 on every refinement component, with the reason in
      ``errors``. So a dialogue of several turns always has the refinement components, one of
      a single turn the grid components (trainers log a fixed set of keys per stage).
    Every result gets ``details["turns"]`` and ``details["stop_reason"]``. Raises ValueError only
    on mismatched lengths.
    """
    vocab = vocab or GetokVocab()
    if len(dialogues) != len(ground_truths):
        raise ValueError(f"{len(dialogues)} dialogues for {len(ground_truths)} ground truths")
    out: list[RewardResult | None] = [None] * len(dialogues)
    grid_idx, refine_idx, states = [], [], {}
    for k, turns in enumerate(dialogues):
        turns = [as_text(t) for t in (turns or [""])]
        st = start_refinement(turns[0], vocab)
        states[k] = (turns, st)
        if len(turns) == 1 or st.stop_reason == "no_target":
            grid_idx.append(k)
        elif st.stop_reason:
            out[k] = _degenerate(st.stop_reason, decoder is not None, refine_weights)
        else:
            refine_idx.append(k)
    if grid_idx:
        res = score_grid_batch([states[k][0][0] for k in grid_idx], [ground_truths[k] for k in grid_idx],
                               vocab, decoder, grid_weights, params)
        for k, r in zip(grid_idx, res):
            out[k] = r if len(states[k][0]) == 1 else _as_refine(r, decoder is not None, refine_weights)
    if refine_idx:
        res = score_refine_batch([states[k][0][-1] for k in refine_idx], [ground_truths[k] for k in refine_idx],
                                 vocab, proposals=[states[k][0][0] for k in refine_idx], decoder=decoder,
                                 weights=refine_weights, params=params,
                                 prior_offsets=[states[k][0][1:-1] for k in refine_idx])
        for k, r in zip(refine_idx, res):
            out[k] = r
    for k, r in enumerate(out):
        r.details["turns"] = len(states[k][0])
        r.details["stop_reason"] = states[k][1].stop_reason
    return out  # type: ignore[return-value]


def stage_turns(model_turns: Sequence, stage: str) -> list:
    """The model turns that ``score_dialogues`` scores for a dialogue of ``stage``: ``grid``: the
    turn-1 answer alone (the grid reward); ``refine``: every turn, plus an empty offset answer when
    the dialogue ended after turn 1 (a degenerate turn 1, or no length budget left for turn 2), so a
    refine-stage dialogue always gets the refinement components. Raises ValueError on another stage."""
    turns = list(model_turns) or [""]
    if stage == "grid":
        return turns[:1]
    if stage == "refine":
        return turns if len(turns) > 1 else turns + [""]
    raise ValueError(f"stage must be 'grid' or 'refine', got {stage!r}")


def _refine_result(comps: dict, weights, errors: list, details: dict) -> RewardResult:
    w = weights_from(weights, RefineWeights)
    return RewardResult(overall=float(sum(getattr(w, k) * v for k, v in comps.items())), components=comps,
                        errors=errors, details=details)


def _degenerate(reason: str, with_mask: bool, weights) -> RewardResult:
    comps = {k: 0.0 for k in REFINE_COMPONENTS if with_mask or k != "mask_gain"}
    return _refine_result(comps, weights, [f"turn 1 cannot be refined: {reason}"], {})


#: refinement component <- grid component, for a turn 1 that answered "no target"
_NO_TARGET_MAP = {"format": "format", "point": "points", "box": "box", "mask_gain": "mask"}


def _as_refine(grid: RewardResult, with_mask: bool, weights) -> RewardResult:
    comps = {k: float(grid.components.get(g, 0.0)) for k, g in _NO_TARGET_MAP.items() if with_mask or k != "mask_gain"}
    return _refine_result(comps, weights, list(grid.errors), {"grid": grid.scores()})


__all__ = ["STOP_REASONS", "clean_answer", "RefineState", "start_refinement",
           "refine_message", "advance", "replay", "dialogue_over", "split_transcript", "score_dialogues",
           "stage_turns",
           "GRID_COMPONENTS", "REFINE_COMPONENTS"]
