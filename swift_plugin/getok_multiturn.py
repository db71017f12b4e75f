"""GETok's refinement dialogue as an ms-swift GRPO multi-turn scheduler (``getok_refine``).

``swift rlhf --rlhf_type grpo --multi_turn_scheduler getok_refine --max_turns 2 --reward_funcs
getok_refine``: turn 1 is the model's grid answer; if ``getok_core.rewards.dialogue.start_refinement`` finds it
refinable, the scheduler appends the user turn ``refine_message(state)`` and the model answers its
offsets. ``--max_turns N`` allows R = N - 1 offset rounds (R > 1: multi-round refinement, beyond
the paper); unset, R = ``GETOK_OFFSET_ROUNDS`` (default 1). The dialogue ends after turn 1 when
turn 1 cannot be refined (``stop_reason``: truncated, unparsable, no target, no points), after a
round that left no point, after a round cut at the length limit, and after R rounds. It never
raises on any model output.

ms-swift stores each earlier assistant turn in ``messages`` as token ids (its token-in, token-out
rollout), so the reward function cannot read their text from ``messages``: at every turn the
scheduler records the model's turns as text in ``rollout_infos[TURNS_KEY]``, which ms-swift passes
to the reward functions (``getok_rewards`` scores the dialogue from it). The loss covers every
model turn; the inserted user turns are prompt (no loss).
"""

from __future__ import annotations

from swift.rollout import MultiTurnScheduler, multi_turns
from swift.template.utils import get_token_backed_response_ids

from getok_core.codec.vocab import GetokVocab
from getok_core.rewards.dialogue import RefineState, clean_answer, dialogue_over, refine_message, replay
from getok_core.rewards.frameworks import message_text
from swift_plugin.getok_tokens import vocab_from_env

NAME = "getok_refine"
#: ``rollout_infos`` key: the model's turns of the dialogue so far, as text, oldest first.
TURNS_KEY = "getok_turns"


def model_turns(messages, n: int, decode=None) -> list[str]:
    """The texts of the last ``n`` assistant messages (the model's turns), oldest first; a turn held
    as token ids is decoded with ``decode(ids)`` (without ``decode``: ""). Trailing end-of-turn
    specials are removed (``dialogue.clean_answer``): ms-swift shows the scheduler its token-backed
    history decoded with the special tokens, ``<|im_end|>`` included."""
    contents = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    texts = []
    for content in contents[-n:] if n > 0 else []:
        ids = get_token_backed_response_ids(content)
        if ids is not None:
            texts.append(clean_answer(decode(ids) if decode is not None else ""))
        else:
            texts.append(clean_answer(message_text(content) or ""))
    return texts


def dialogue_state(turns, vocab: GetokVocab | None = None) -> RefineState:
    """The refinement state after the model's ``turns`` (``getok_core.rewards.dialogue.replay``)."""
    return replay(turns, vocab)


def turn_limit(max_turns: int | None, vocab: GetokVocab) -> int:
    """Model turns allowed: ``max_turns``, else 1 + the vocabulary's ``offset_rounds``."""
    return int(max_turns) if max_turns else 1 + vocab.offset_rounds


def finished(state: RefineState, turn: int, limit: int, finish_reason=None) -> bool:
    """Whether the dialogue ends after model turn ``turn`` (1-based): ``dialogue.dialogue_over``,
    a turn counting as cut when it is an offset turn (``turn`` > 1) that hit the length limit (a
    turn 1 cut inside its answer is ``truncated`` already)."""
    return dialogue_over(state, turn, limit, cut=turn > 1 and finish_reason == "length")


class GetokRefineScheduler(MultiTurnScheduler):
    """Turn 1 (grid answer) -> refinement instruction -> offsets, for R rounds (module docstring)."""

    def __init__(self, infer_engine=None, max_turns: int | None = None, *args, **kwargs):
        super().__init__(infer_engine, max_turns, *args, **kwargs)
        self.vocab = vocab_from_env()

    def turns(self, infer_request, current_turn: int) -> list[str]:
        """The model's ``current_turn`` turns as text; one held as token ids is decoded as the engine
        decodes a reply (``Template.decode_generate_ids``: the end-of-turn token dropped)."""
        template = self._template or getattr(self.infer_engine, "template", None)
        if template is None:
            raise RuntimeError(f"the {NAME} scheduler needs the template (ms-swift passes template=...)")
        return model_turns(infer_request.messages, current_turn, template.decode_generate_ids)

    async def on_turn_end(self, infer_request, response_choice, current_turn: int) -> dict:
        return {"rollout_infos": {TURNS_KEY: self.turns(infer_request, current_turn)}}

    def check_finished(self, infer_request, response_choice, current_turn: int) -> bool:
        state = dialogue_state(self.turns(infer_request, current_turn), self.vocab)
        return finished(state, current_turn, turn_limit(self.max_turns, self.vocab),
                        getattr(response_choice, "finish_reason", None))

    def step(self, infer_request, response_choice, current_turn: int) -> dict:
        state = dialogue_state(self.turns(infer_request, current_turn), self.vocab)
        infer_request.messages.append({"role": "user", "content": refine_message(state)})
        return {"infer_request": infer_request}


def register() -> list[str]:
    """Put the scheduler into ``swift.rollout.multi_turns``; returns its name."""
    multi_turns[NAME] = GetokRefineScheduler
    return [NAME]


__all__ = ["NAME", "TURNS_KEY", "GetokRefineScheduler", "model_turns", "dialogue_state", "turn_limit", "finished",
           "register"]
