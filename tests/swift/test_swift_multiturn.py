"""The `getok_refine` multi-turn scheduler and the dialogue-aware GETok ORMs in ms-swift GRPO.

Unit level: scripted model turns through ms-swift's own multi-turn loop (`swift.rollout.run_multi_turn`,
the loop GRPO runs without vLLM), then through ms-swift's own sample / reward-row code into the ORM.
CLI level: `swift rlhf --rlhf_type grpo --use_vllm false --multi_turn_scheduler getok_refine` on the
tiny model, taught the refinement dialogue first so that turn 1 is refinable.
"""

import json

import numpy as np
import pytest

import swift  # noqa: F401  (the swift environment)
from swift.dataset import RowPreprocessor
from swift.infer_engine.protocol import (ChatCompletionResponse, ChatCompletionResponseChoice, ChatMessage,
                                         RequestConfig, RolloutInferRequest, RolloutOutput, UsageInfo)
from swift.rl_core.data import GRPOSample
from swift.rollout import multi_turns, run_multi_turn

from conftest import REGISTER, read_jsonl, run_swift
from testkit import ground_truth, square, target
from getok_core import GetokVocab, Instance, format_answer, format_offsets
from getok_core.data.masks import encode_rle
from getok_core.rewards.dialogue import refine_message, score_dialogues, start_refinement
from getok_core.rewards import REFINE_COMPONENTS
from getok_core.data.writers import REFINE_PROMPT

V = GetokVocab()  # the plugin's default vocabulary (GETOK_GRID_SIZE unset): n = 32
W = H = 64
BOX = (0.25, 0.25, 0.75, 0.625)  # pixels 16..47 x 16..39: a proposal can move its corners by half a cell


def _gt(box=BOX) -> str:
    targets = []
    if box is not None:
        m = square(round(box[0] * W), round(box[2] * W) - 1, round(box[1] * H), round(box[3] * H) - 1, (W, H))
        targets = [target(mask=m, box=box)]
    return ground_truth(targets, size=(W, H), expression="the box")


GT = _gt()
# a box proposal one cell too far right and down, plus a seg point inside the target
TURN1 = format_answer([Instance(box=(0.28, 0.28, 0.78, 0.66), points=[(0.5, 0.5)])], V, think="a box")
ROUND1 = format_offsets([[(-1, -1), (-1, -1), (0, 0)]], V)  # corners back towards the target, point kept
ROUND2 = format_offsets([[(0, 0), (0, 0), (1, 0)]], V)
POINT1 = format_answer([Instance(points=[(0.5, 0.5)])], V)  # one <point>, no box
DELETE_ALL = format_offsets([[None]], V)  # its only point deleted (box corners cannot be deleted)
GARBAGE = ["", "the box on the left", "<answer><box><grid3,4>", "<answer><none></answer>",
           "<answer><point><grid99,99></point></answer>", "<answer>\x00\ufffd<offset><OFF1,1></offset></answer>",
           "<think>" * 50]


@pytest.fixture(scope="module")
def template(loaded, helpers):
    """The GETok template of the tiny model (the GRPO trainer gives the scheduler its own)."""
    return helpers.make_template(loaded[1])


@pytest.fixture(scope="module")
def tokenizer(template):
    return template.tokenizer


def _ids(text: str, tokenizer) -> list[int]:
    """Token ids as an engine reports them: the text's, then the end-of-turn token."""
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def _reply(text: str, tokenizer, finish_reason: str = "stop") -> RolloutOutput:
    ids = _ids(text, tokenizer)
    choice = ChatCompletionResponseChoice(index=0, message=ChatMessage(role="assistant", content=text),
                                          finish_reason=finish_reason, token_ids=ids)
    return RolloutOutput(response=ChatCompletionResponse(model="scripted", choices=[choice],
                                                         usage=UsageInfo(0, len(ids), len(ids))))


def _scheduler(template, max_turns):
    """Built the way the GRPO trainer builds it (`_prepare_scheduler`)."""
    return multi_turns["getok_refine"](max_turns=max_turns, tokenizer=template.tokenizer, template=template)


def _rollout(scripts, template, max_turns=2):
    """ms-swift's multi-turn loop over scripted model turns: `scripts[k]` are request k's turns; a
    turn the loop asks for beyond its script fails the test (IndexError)."""
    tokenizer = template.tokenizer
    scheduler = _scheduler(template, max_turns)
    requests = [RolloutInferRequest(messages=[{"role": "user", "content": "Find the box."}], uuid=str(k))
                for k in range(len(scripts))]

    def next_turns(reqs, config):
        return [_reply(scripts[int(r.uuid)][sum(m["role"] == "assistant" for m in r.messages)], tokenizer)
                for r in reqs]

    first = [_reply(s[0], tokenizer) for s in scripts]
    return run_multi_turn(requests, first, scheduler, next_turns, RequestConfig(), max_turns=max_turns)


def _reward_kwargs(outputs, gts):
    """What ms-swift's GRPO hands a reward function: samples updated by the rollout, as reward rows."""
    samples = []
    for out, gt in zip(outputs, gts):
        s = GRPOSample(messages=[{"role": "user", "content": "Find the box."}], extra={"solution": gt})
        s.apply_rollout_output(rollout_output=out)
        samples.append(s)
    completions = [s.messages[-1]["content"] for s in samples]
    return completions, RowPreprocessor.rows_to_batched([s.to_reward_row() for s in samples])


# ---------------------------------------------------------------------- the scheduler
def test_refinable_turn1_gets_the_refine_message_and_garbage_ends_the_dialogue(plugin, template, tokenizer):
    assert start_refinement(TURN1, V).refinable and not start_refinement(GARBAGE[1], V).refinable
    outputs = _rollout([[TURN1, ROUND1], [GARBAGE[1]]], template)
    refined, stopped = outputs
    roles = [m["role"] for m in refined.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert refined.messages[2]["content"] == refine_message(start_refinement(TURN1, V)) == REFINE_PROMPT
    # ms-swift keeps the earlier model turn as token ids (what reaches the reward's `messages`) ...
    assert refined.messages[1]["content"] == _ids(TURN1, tokenizer)
    assert refined.messages[3]["content"] == ROUND1
    # ... so the scheduler records the turns as text for the reward
    assert refined.rollout_infos["num_turns"] == 2
    assert refined.rollout_infos["getok_turns"] == [TURN1, ROUND1]
    assert refined.response_token_ids == [_ids(TURN1, tokenizer), _ids(ROUND1, tokenizer)]
    assert [m["role"] for m in stopped.messages] == ["user", "assistant"]
    assert stopped.rollout_infos == {"getok_turns": [GARBAGE[1]], "num_turns": 1}


def test_step_and_check_finished_directly(plugin, template, tokenizer):
    scheduler = _scheduler(template, 2)
    request = RolloutInferRequest(messages=[{"role": "user", "content": "Find the box."},
                                            {"role": "assistant", "content": TURN1}])
    choice = _reply(TURN1, tokenizer).response.choices[0]
    assert scheduler.check_finished(request, choice, 1) is False
    request = scheduler.step(request, choice, 1)["infer_request"]
    assert request.messages[-1] == {"role": "user", "content": REFINE_PROMPT}
    request.messages.append({"role": "assistant", "content": ROUND1})
    assert scheduler.check_finished(request, _reply(ROUND1, tokenizer).response.choices[0], 2) is True  # R = 1
    # a turn-1 answer cut by the length limit (no </answer>) is not refined
    cut = "<answer><box><grid8,8><grid24,20></box>"
    request = RolloutInferRequest(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": cut}])
    assert scheduler.check_finished(request, _reply(cut, tokenizer, "length").response.choices[0], 1) is True


@pytest.mark.parametrize("text", GARBAGE)
def test_any_model_output_ends_or_continues_without_raising(plugin, template, text):
    outputs = _rollout([[text, text, text]], template, max_turns=3)
    assert outputs[0].rollout_infos["num_turns"] == 1  # none of these turn-1 answers can be refined
    # offsets that are garbage: the dialogue goes on to the turn limit, never raises
    outputs = _rollout([[TURN1, text, text]], template, max_turns=3)
    assert outputs[0].rollout_infos["getok_turns"] == [TURN1, text, text]


def test_max_turns_3_runs_two_rounds_and_stops_when_no_point_is_left(plugin, template):
    two_rounds, deleted = _rollout([[TURN1, ROUND1, ROUND2], [POINT1, DELETE_ALL]], template, max_turns=3)
    users = [m["content"] for m in two_rounds.messages if m["role"] == "user"][1:]
    assert len(users) == 2 and users[0] == REFINE_PROMPT and "Round 2" in users[1]
    assert two_rounds.rollout_infos["getok_turns"] == [TURN1, ROUND1, ROUND2]
    assert deleted.rollout_infos["num_turns"] == 2  # every point deleted: no round 2


# ---------------------------------------------------------------------- the ORMs on dialogues
def test_orm_scores_the_dialogue_like_score_dialogues(plugin, template):
    from swift_plugin.getok_rewards import ORMS, score

    gts = [GT, GT, _gt(None), GT]
    outputs = _rollout([[POINT1, DELETE_ALL], [TURN1, ROUND1, ROUND2], ["<answer><none></answer>"], [GARBAGE[1]]],
                       template, max_turns=3)
    completions, kwargs = _reward_kwargs(outputs, gts)
    assert completions == [DELETE_ALL, ROUND2, "<answer><none></answer>", GARBAGE[1]]
    dialogues = [[POINT1, DELETE_ALL], [TURN1, ROUND1, ROUND2], ["<answer><none></answer>", ""], [GARBAGE[1], ""]]
    expected = score_dialogues(dialogues, gts, V)
    got = ORMS["getok_refine"]()(completions, **kwargs)
    assert got == pytest.approx([r.overall for r in expected])
    assert ORMS["getok_refine_format"]()(completions, **kwargs) == pytest.approx(
        [r.components["format"] for r in expected])
    # every dialogue, ended after turn 1 or not, is scored in refinement components
    assert all(set(r.components) == set(REFINE_COMPONENTS) - {"mask_gain"} for r in score("refine", completions,
                                                                                          kwargs))
    assert got[2] > got[3] == 0.0  # a right <none> keeps its verdict; an unparsable turn 1 scores 0
    # the grid ORMs score turn 1 of the dialogue, not the offsets
    assert ORMS["getok_grid"]()(completions, **kwargs) == pytest.approx(
        [r.overall for r in score_dialogues([[POINT1], [TURN1], ["<answer><none></answer>"], [GARBAGE[1]]], gts, V)])


def test_orm_dialogue_differs_from_single_turn_scoring(plugin, template):
    """The second round is judged after the first: without the dialogue (the single-turn path,
    proposal from the last assistant message before the completion, here token ids) it differs."""
    from swift_plugin.getok_rewards import ORMS

    outputs = _rollout([[TURN1, ROUND1]], template)
    completions, kwargs = _reward_kwargs(outputs, [GT])
    with_dialogue = ORMS["getok_refine"]()(completions, **kwargs)
    kwargs["rollout_infos"] = [{}]
    without = ORMS["getok_refine"]()(completions, **kwargs)
    assert with_dialogue == pytest.approx([score_dialogues([[TURN1, ROUND1]], [GT], V)[0].overall])
    assert with_dialogue != without


# ---------------------------------------------------------------------- the real CLI
#: An ORM that only records what ms-swift hands the reward functions (loaded with a second
#: --custom_register_path file): the completion and the scheduler's rollout_infos of every sample.
RECORDER = '''
import json, os
from swift.rewards import ORM, orms

class RecordTurns(ORM):
    def __call__(self, completions, **kwargs):
        infos = kwargs.get("rollout_infos") or [{}] * len(completions)
        with open(os.environ["GETOK_TEST_RECORD"], "a") as f:
            for c, info in zip(completions, infos):
                f.write(json.dumps({"completion": c, "infos": info}) + "\\n")
        return [0.0] * len(completions)

orms["record_turns"] = RecordTurns
'''


@pytest.fixture(scope="module")
def refinable_model(work, tiny_model, images, helpers):
    """The tiny model taught one refinable turn-1 answer (``helpers.teach_refinable``), so that its
    GRPO rollouts go on to the refinement turn; with its GRPO row and the answer."""
    ckpt = helpers.teach_refinable(work / "multiturn", tiny_model, "getok_qwen2_5_vl", images["mem"])
    row = {"messages": [{"role": "user", "content": "<image>Find the cat."}], "images": [images["mem"]],
           "solution": helpers.mem_ground_truth(images["mem"])}
    return ckpt, row, helpers.FAMILY_ANSWER


def refine_grpo(d, model: str, model_type: str, grpo_row: dict, answer: str) -> None:
    """`swift rlhf --rlhf_type grpo` with the getok_refine scheduler (2 turns), the refinement ORMs
    and a recorder, 2 steps in folder ``d``; checks what the ORMs were handed and the logged rewards."""
    import os

    d.mkdir(exist_ok=True)
    data = d / "grpo.jsonl"
    data.write_text("".join(json.dumps(grpo_row) + "\n" for _ in range(4)))
    recorder = d / "record_turns.py"
    recorder.write_text(RECORDER)
    record = d / "record.jsonl"
    record.unlink(missing_ok=True)
    os.environ["GETOK_TEST_RECORD"] = str(record)
    try:
        run_swift("rlhf", [
            "--rlhf_type", "grpo", "--use_vllm", "false", "--custom_register_path", str(REGISTER), str(recorder),
            "--model", str(model), "--model_type", model_type, "--template", model_type,
            "--tuner_type", "getok_lora", "--multi_turn_scheduler", "getok_refine", "--max_turns", "2",
            "--reward_funcs", "getok_refine", "getok_refine_format", "record_turns", "--dataset", str(data),
            "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--max_completion_length", "24", "--temperature", "0.1",
            "--torch_dtype", "float32", "--gradient_checkpointing", "false", "--save_steps", "2",
            "--save_only_model", "true", "--logging_steps", "1", "--dataloader_num_workers", "0",
            "--dataset_num_proc", "1", "--split_dataset_ratio", "0", "--report_to", "none", "--beta", "0",
            "--output_dir", str(d / "grpo")], d / "grpo.log", timeout=600)
    finally:
        os.environ.pop("GETOK_TEST_RECORD", None)
    seen = read_jsonl(record)
    assert len(seen) >= 4  # 2 steps x 2 generations
    two = [s for s in seen if s["infos"].get("num_turns") == 2]
    assert two, seen  # the refinable turn 1 went on to the refinement turn
    for s in two:
        turns = s["infos"]["getok_turns"]
        assert len(turns) == 2 and turns[0] == answer and turns[1] == s["completion"]
    for s in seen:  # every dialogue's model turns are recorded as text, the last one being the completion
        turns = s["infos"]["getok_turns"]
        assert len(turns) == s["infos"]["num_turns"] and turns[-1] == s["completion"]
        assert all(isinstance(t, str) and "<|im_end|>" not in t for t in turns)
    log = (d / "grpo.log").read_text()
    logged = [json.loads(line[line.index("{"):].replace("'", '"')) for line in log.splitlines()
              if "'rewards/GetokRefine/mean'" in line]
    assert len(logged) >= 2
    for rec in logged:  # the refinement reward of the dialogue, inside its documented range
        assert 0.0 <= float(rec["rewards/GetokRefine/mean"]) <= 2.5  # no decoder: [0, 2.5]
    assert list((d / "grpo").glob("v*/checkpoint-2"))


def test_swift_rlhf_grpo_runs_the_refinement_dialogue(work, refinable_model):
    model, grpo_row, answer = refinable_model
    refine_grpo(work / "multiturn", str(model), "getok_qwen2_5_vl", grpo_row, answer)


def test_family_swift_rlhf_grpo_runs_the_refinement_dialogue(family_refinable, work, images, helpers):
    """Qwen3-VL / Qwen2-VL: the family's tiny model taught a refinable turn 1, through GRPO with the
    refinement scheduler and the GETok rewards (getok_lora)."""
    fam, ckpt = family_refinable
    row = {"messages": [{"role": "user", "content": "<image>Find the cat."}], "images": [images["mem"]],
           "solution": helpers.mem_ground_truth(images["mem"])}
    refine_grpo(work / f"refinable-{fam.name}" / "grpo-run", ckpt, fam.model_type, row, helpers.FAMILY_ANSWER)
