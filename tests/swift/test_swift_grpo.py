"""`swift rlhf --rlhf_type grpo` on CPU with the GETok ORMs, on rows `getok prepare` writes."""

import json

import swift  # noqa: F401  (the swift environment)

from conftest import REGISTER, read_jsonl, run_swift


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
