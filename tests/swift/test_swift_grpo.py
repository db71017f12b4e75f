"""`swift rlhf --rlhf_type grpo` on CPU with the GETok ORMs, on rows `getok prepare` writes; and
the one grid size of an ms-swift run (`GETOK_GRID_SIZE`, which the reward kwargs may only repeat)."""

import json

import pytest
import swift  # noqa: F401  (the swift environment)

from conftest import REGISTER, read_jsonl, run_swift

GOOD = "<think>t</think><answer><box><grid2,3><grid5,6></box></answer>"


@pytest.fixture
def rewards(monkeypatch):
    """The ORM module with no reward configuration of a previous test (restored afterwards)."""
    import swift_plugin.getok_rewards as sr

    for k in ("GETOK_GRID_SIZE", sr.ENV_KWARGS):
        monkeypatch.delenv(k, raising=False)
    sr.configure()
    yield sr
    sr.configure()


def test_the_grid_size_has_one_source(rewards, monkeypatch):
    sr = rewards
    assert sr.reward_kwargs() == {"grid_size": 32}  # GETOK_GRID_SIZE unset: its default
    monkeypatch.setenv("GETOK_GRID_SIZE", "10")
    assert sr.reward_kwargs()["grid_size"] == 10  # the reward kwargs need no grid_size
    monkeypatch.setenv(sr.ENV_KWARGS, json.dumps({"grid_size": 10, "decoder": "region"}))
    assert sr.reward_kwargs() == {"grid_size": 10, "decoder": "region"}  # repeating it is fine
    sr.ORMS["getok_mask"]()

    monkeypatch.setenv(sr.ENV_KWARGS, json.dumps({"grid_size": 12}))
    for make in (sr.reward_kwargs, sr.ORMS["getok_grid"], lambda: sr.score("grid", [GOOD], {"solution": [None]})):
        with pytest.raises(ValueError) as err:
            make()
        msg = str(err.value)
        assert "10" in msg and "12" in msg and "GETOK_GRID_SIZE" in msg and sr.ENV_KWARGS in msg, msg
    with pytest.raises(ValueError, match="configure"):
        sr.configure(grid_size=12)
    monkeypatch.delenv("GETOK_GRID_SIZE")
    with pytest.raises(ValueError, match="32.*GETOK_GRID_SIZE.*unset.*12"):  # the default counts as a value
        sr.ORMS["getok_refine"]()


def test_orms_parse_with_the_run_grid_size(rewards, monkeypatch):
    """The same completion scores as a valid answer on the run's grid, not on another one."""
    from testkit import ground_truth, square, target

    g = ground_truth([target(square(25, 54, 35, 64), box=(0.25, 0.35, 0.55, 0.65))])
    monkeypatch.setenv("GETOK_GRID_SIZE", "10")
    assert rewards.ORMS["getok_box"]()([GOOD], solution=[g]) == [1.0]
    monkeypatch.setenv("GETOK_GRID_SIZE", "20")  # the same cells on a 20 x 20 grid: another box
    assert rewards.ORMS["getok_box"]()([GOOD], solution=[g]) == [0.0]


def test_think_false_reaches_the_format_orm(rewards, monkeypatch):
    """``GETOK_REWARD_KWARGS='{"think": false}'``: the format ORM wants the answer block alone (a
    model fine-tuned without thinking); by default it wants the thinking block (SPEC §6)."""
    from testkit import ground_truth, square, target

    g = ground_truth([target(square(25, 54, 35, 64), box=(0.25, 0.35, 0.55, 0.65))], task="box")
    bare = GOOD[GOOD.index("<answer>"):]
    monkeypatch.setenv("GETOK_GRID_SIZE", "10")
    fmt = rewards.ORMS["getok_format"]()
    assert fmt([GOOD, bare], solution=[g, g]) == [1.0, 0.0]
    monkeypatch.setenv(rewards.ENV_KWARGS, json.dumps({"think": False}))
    assert fmt([GOOD, bare, bare + "<box><grid2,3></box>"], solution=[g, g, g]) == [0.0, 1.0, 0.0]
    monkeypatch.setenv(rewards.ENV_KWARGS, json.dumps({"think": "maybe"}))
    with pytest.raises(ValueError, match="think"):
        fmt([bare], solution=[g])


def test_swift_grpo_runs_with_getok_rewards(work, tiny_model, prepared):
    rows = read_jsonl(prepared / "swift" / "train_grpo.jsonl")
    assert rows and all("solution" in r and r["messages"][-1]["role"] == "user" for r in rows)
    d = work / "grpo"
    d.mkdir(exist_ok=True)
    data = d / "grpo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    run_swift("rlhf", [
        "--rlhf_type", "grpo", "--use_vllm", "false", "--custom_register_path", str(REGISTER),
        "--model", tiny_model, "--model_type", "getok_qwen2_5_vl", "--template", "getok_qwen2_5_vl",
        "--tuner_type", "getok_lora", "--reward_funcs", "getok_grid", "getok_format", "--dataset", str(data),
        "--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--max_completion_length", "12", "--torch_dtype", "float32",
        "--gradient_checkpointing", "false", "--save_steps", "2", "--save_only_model", "true", "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--dataset_num_proc", "1", "--split_dataset_ratio", "0",
        "--report_to", "none", "--beta", "0", "--output_dir", str(d / "out")], d / "grpo.log", timeout=420)
    log = (d / "grpo.log").read_text()
    logged = [json.loads(line[line.index("{"):].replace("'", '"')) for line in log.splitlines()
              if "'rewards/GetokGrid/mean'" in line]
    assert len(logged) >= 2  # one log line per step
    for rec in logged:
        # the grid reward of a junk answer is its nonrepeat share, inside the documented range [0, 4]
        assert 0.0 <= float(rec["rewards/GetokGrid/mean"]) <= 4.0
        assert 0.0 <= float(rec["rewards/GetokFormat/mean"]) <= 1.0
    assert list((d / "out").glob("v*/checkpoint-2"))
