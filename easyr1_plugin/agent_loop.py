"""GETok's verl 0.9 agent loop ``getok_refine``: the refinement dialogue (paper §3.3; SPEC §2, §6).

    actor_rollout_ref.rollout.agent.agent_loop_config_path=/abs/path/easyr1_plugin/agent_loop.yaml

and rows with ``agent_name: getok_refine`` (``getok prepare`` writes them to
``verl/SPLIT_refine.parquet``). A thin adapter over ``getok_core.rewards.dialogue``, which holds the
dialogue logic and its scoring; ``docs/agent_loop.md`` documents the behaviour and the rewards.

One trajectory: turn 1 is generated from the row's prompt (with its image); ``stage: grid`` stops
there and scores it with the grid reward. ``stage: refine`` then runs ``rounds`` refinement rounds:
the user turn ``refine_message`` (with ``overlay: true`` also a picture of the current proposal),
then the model's offset answer; it stops early (``dialogue.dialogue_over``) when turn 1 cannot be
refined (its ``stop_reason``), when no point is left, or when the ``response_length`` budget is
spent (a turn cut: the chat cannot go on after an unfinished turn). The response holds the model
tokens (``response_mask`` 1) and the inserted user turns (mask 0); the reward is the dialogue's
(``frameworks.score_batch``: ``score_dialogues`` of the model turns ``stage_turns`` picks), set
as ``reward_score`` so verl runs no reward manager for these rows; its components go to
``extra_fields["reward_extra_info"]``, a fixed set of keys per stage (``frameworks.flatten``),
which verl logs.

``constrain`` (opt-in, docs/grammar.md: a mask changes the sampling distribution while the trainer's
log-probs are unmasked): ``refine`` decodes each refinement turn under ``codec.grammar.refine_spec``
of the instances it refines (one ``<OFF..>`` / ``<DELETE>`` per point), ``all`` also turn 1 under
the grid grammar of the row's task (``constraint``: ``codec.grammar.Constraint``'s fields). The
spec goes to the server in ``sampling_params["extra_args"]`` (``models.vllm_constrained.request_args``),
which verl's vLLM server passes to ``SamplingParams``; the engine needs GETok's logits processor
(``actor_rollout_ref.rollout.engine_kwargs.vllm.logits_processors=[FQCN]``).
"""

from __future__ import annotations

import logging
import os
from typing import Any
from uuid import uuid4

import numpy as np
from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.utils.profiler import simple_timer

from getok_core.codec.grammar import Constraint, refine_spec
from getok_core.data import groundtruth
from getok_core.models.tokens import KeepGetokTokens
from getok_core.models.vllm_constrained import request_args
from getok_core.rewards import setup_from_kwargs
from getok_core.rewards.dialogue import advance, dialogue_over, refine_message, start_refinement
from getok_core.rewards.frameworks import check_stage, flatten, score_batch, set_once

logger = logging.getLogger(__file__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

#: Why a dialogue stopped before its last round, beyond ``dialogue.STOP_REASONS``: the
#: ``response_length`` budget ran out (a model turn was cut, or no room was left for the next one).
LENGTH = "length"
#: ``constrain`` values: no turn, the refinement turns, every turn.
CONSTRAIN = ("none", "refine", "all")


@register("getok_refine")
class GetokRefineAgentLoop(AgentLoopBase):
    """GETok's refinement dialogue as a verl agent loop (see the module docstring).

    ``stage``: ``refine`` (turn 1 + ``rounds`` offset rounds, refinement reward) or ``grid``
    (turn 1 only, grid reward). ``overlay``: add a picture of the current proposal (the image,
    the grid, the boxes and points, ``getok_core.evaluation.viz.render_overlay``) to each refinement user
    turn. ``reward_kwargs``: as ``getok_core.rewards.setup_from_kwargs`` (``decoder``,
    ``grid_size``, ``weights``, ...; a ``stage`` there may only repeat ``stage``). Raises ValueError
    on a bad stage, rounds or reward kwargs."""

    def __init__(self, *args, stage: str = "refine", rounds: int = 1, overlay: bool = False,
                 reward_kwargs=None, constrain: str = "none", constraint=None, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            check_stage(stage)
        except ValueError as exc:
            raise ValueError(f"getok_refine: {exc}") from None
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"getok_refine: rounds must be an int >= 1, got {rounds!r}")
        if constrain not in CONSTRAIN:
            raise ValueError(f"getok_refine: constrain must be one of {list(CONSTRAIN)}, got {constrain!r}")
        try:
            self.constraint = Constraint(**_plain(constraint))
        except TypeError as exc:
            raise ValueError(f"getok_refine: constraint: {exc} (fields of getok_core.codec.grammar.Constraint)") \
                from None
        self.stage, self.rounds, self.overlay, self.constrain = stage, rounds, bool(overlay), constrain
        self.setup = setup_from_kwargs(set_once(_plain(reward_kwargs), "stage", stage, "getok_refine's stage",
                                                "its reward_kwargs"))
        self.response_length = self.rollout_config.response_length
        self.text = KeepGetokTokens(self.tokenizer)  # decodes GETok tokens even when they are special
        end = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.end_ids = {i for i in end if isinstance(i, int) and i != self.tokenizer.unk_token_id}

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        messages = list(kwargs["raw_prompt"])
        truth = (kwargs.get("reward_model") or {}).get("ground_truth")
        mm = await self.process_multi_modal_info(messages)
        images = list(mm.get("images") or []) or None
        self._assert_mm_supported(bool(mm))
        full_det = getattr(self.rollout_config, "full_determinism", False)
        priority = int(kwargs.get("priority", 0))
        dlg = _Dialogue(ids=await self.ct_build_initial_tokens(messages, images=images), images=images,
                        request_id=f"det-{priority}" if full_det else uuid4().hex, priority=priority)

        turns = [await self._model_turn(dlg, sampling_params, self._turn1_spec(truth))]
        state = start_refinement(turns[0], self.setup.vocab)
        limit = 1 + self.rounds if self.stage == "refine" else 1
        while not dialogue_over(state, len(turns), limit, dlg.cut):
            messages.append({"role": "assistant", "content": turns[-1]})
            if not await self._user_turn(dlg, messages, state):
                break
            spec = refine_spec(self.setup.vocab, state.instances) if self.constrain != "none" else None
            turns.append(await self._model_turn(dlg, sampling_params, spec))
            state = advance(state, turns[-1], self.setup.vocab)

        with simple_timer("compute_score", dlg.metrics):  # a mask decoder may be slow: off the event loop
            result = (await self.loop.run_in_executor(None, lambda: score_batch(
                self.setup, [turns[-1]], [truth], dialogues=[turns])))[0]
        # fixed keys per stage (mask_fallback on every row when the decoder has a fallback)
        info = {**flatten(result, self.setup, overall_key="score"),
                "stop_reason": state.stop_reason or (LENGTH if dlg.cut else "")}
        n = len(dlg.mask)
        extra = dict(dlg.server_fields)
        extra.update(reward_extra_info=info, turn_scores=[], tool_rewards=[])
        return AgentLoopOutput(
            prompt_ids=dlg.ids[:len(dlg.ids) - n], response_ids=dlg.ids[len(dlg.ids) - n:], response_mask=dlg.mask,
            response_logprobs=dlg.logprobs, multi_modal_data={"images": dlg.images} if dlg.images else {},
            reward_score=float(result.overall), num_turns=1 + dlg.model_turns + dlg.user_turns,
            metrics=dlg.metrics, extra_fields=extra)

    def _turn1_spec(self, truth):
        """The grid spec of turn 1 under ``constrain: all`` (the task of the row's ground truth), else None."""
        if self.constrain != "all":
            return None
        try:
            task = groundtruth.loads(truth, strict=True)["task"]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"getok_refine: constrain: all needs the row's ground truth (its task): {exc}") from None
        return self.constraint.turn1(self.setup.vocab, task)

    async def _model_turn(self, dlg: "_Dialogue", sampling_params: dict, spec=None) -> str:
        """Generate one model turn within the remaining budget, append it; its text. ``spec``
        (``codec.grammar.AnswerSpec``): the turn is asked under it (``extra_args``)."""
        budget = self.response_length - len(dlg.mask)
        if budget < 1:
            dlg.cut = True
            return ""
        params = {**sampling_params, "max_tokens": budget}
        if spec is not None:
            params["extra_args"] = {**(params.get("extra_args") or {}), **request_args(spec)}
        with simple_timer("generate_sequences", dlg.metrics):
            out = await self.server_manager.generate(
                request_id=dlg.request_id, prompt_ids=dlg.ids, sampling_params=params,
                image_data=dlg.images, mm_processor_kwargs=self._get_mm_processor_kwargs(), priority=dlg.priority)
        tokens = list(out.token_ids)[:budget]  # a server may ignore max_tokens: keep the budget
        if out.log_probs and not dlg.mask:
            dlg.logprobs = []  # log-probs are kept when the server returns them for turn 1
        lps = None if dlg.logprobs is None else (list(out.log_probs or []) + [0.0] * len(tokens))[:len(tokens)]
        merge, dlg.mask, dlg.logprobs = await self.ct_merge_assistant_token(
            dlg.ids, tokens, dlg.mask, dlg.logprobs, assistant_logprobs=lps)
        dlg.ids = merge.token_ids
        dlg.model_turns += 1
        dlg.take_server_fields(out.extra_fields or {})
        preempted = out.num_preempted if out.num_preempted is not None else 0
        dlg.metrics["num_preempted"] = dlg.metrics.get("num_preempted", 0) + preempted
        if not tokens or tokens[-1] not in self.end_ids:
            dlg.cut = True  # cut at the budget: the chat cannot go on after an unfinished turn
        return self.text.decode(tokens, skip_special_tokens=True)

    async def _user_turn(self, dlg: "_Dialogue", messages: list, state) -> bool:
        """Append the refinement user turn of ``state``'s round (through the chat template) when
        it leaves room for a model token; False (nothing appended) otherwise."""
        content = refine_message(state)
        new_images = []
        if self.overlay and dlg.images:
            new_images = [await self.loop.run_in_executor(None, _overlay, dlg.images[0], state, self.setup.vocab)]
            content = [{"type": "image", "image": new_images[0]}, {"type": "text", "text": content}]
        self._assert_mm_supported(bool(new_images))
        updated = messages + [{"role": "user", "content": content}]
        merge, mask, lps = await self.ct_merge_context_msg(messages, updated, dlg.ids, dlg.mask, dlg.logprobs)
        if len(mask) >= self.response_length:
            dlg.cut = True
            return False
        messages.append(updated[-1])
        dlg.ids, dlg.mask, dlg.logprobs = merge.token_ids, mask, lps
        if new_images:
            dlg.images = (dlg.images or []) + new_images
        dlg.user_turns += 1
        return True


class _Dialogue:
    """The running token state of one trajectory: prompt + response ids, the response mask (and
    log-probs when the server returns them), images, turn counts, whether the budget cut it."""

    def __init__(self, ids, images, request_id: str, priority: int):
        self.ids: list[int] = list(ids)
        self.mask: list[int] = []
        self.logprobs: list[float] | None = None
        self.images = images
        self.request_id, self.priority = request_id, priority
        self.model_turns = self.user_turns = 0
        self.cut = False
        self.metrics: dict = {}
        self.server_fields: dict = {}

    def take_server_fields(self, fields: dict) -> None:
        """The server's extra fields of the first turn; later turns update ``max_global_steps``."""
        if not self.server_fields:
            self.server_fields = dict(fields)
        elif fields.get("max_global_steps") is not None:
            self.server_fields["max_global_steps"] = fields["max_global_steps"]


def _plain(value) -> dict:
    """A plain dict of ``reward_kwargs`` (Hydra hands the YAML mapping over as a DictConfig)."""
    if value is None:
        return {}
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


def _overlay(image, state, vocab):
    """The overlay picture of ``state``'s current geometry on ``image``, at the image's size."""
    from getok_core.evaluation.viz import render_overlay

    rgb = np.asarray(image.convert("RGB"))
    return render_overlay(rgb, vocab, instances=state.instances, min_side=min(rgb.shape[:2]))


__all__ = ["GetokRefineAgentLoop", "LENGTH"]
