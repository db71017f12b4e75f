"""``reward=getok`` and ``rollout@actor_rollout_ref.rollout=getok_refine`` for verl 0.9.1's own Hydra config.

GETok installs a Hydra ``SearchPathPlugin`` as ``hydra_plugins.getok`` (setup.cfg maps
``easyr1_plugin/hydra_plugins`` there; the environment installs the checkout editable, as
``scripts/env.sh`` does). Checked here:

- Hydra discovers the plugin, from this checkout, and setup.cfg lists every package folder;
- ``python3 -m verl.trainer.main_ppo reward=getok --cfg job`` (verl's real entry point, run from an
  empty folder with nothing on ``PYTHONPATH``) prints the GETok ``custom_reward_function``;
- ``compose("ppo_trainer", overrides=["reward=getok", ...])`` changes nothing but
  ``reward.custom_reward_function`` (and the rollout option nothing but the agent-loop path), and
  ``load_reward_manager`` (verl's loader, the ``naive`` manager) then scores GETok answers;
- the rollout option's YAML is what verl's agent-loop worker loads and registers.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.verl
import verl  # noqa: E402  (tests/verl run in the verl environment: a missing package fails)
import yaml  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.plugins import Plugins  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from hydra.plugins.search_path_plugin import SearchPathPlugin  # noqa: E402
from hydra.utils import get_class  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl.utils.import_utils import resolve_config_path  # noqa: E402

from test_verl_reward import Q3, RESPONSES, TRUTHS, _run_single, build_tokenizer, make_data  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
ROLLOUT = "rollout@actor_rollout_ref.rollout"
BASE = ["actor_rollout_ref.rollout.name=vllm"]


def compose_verl(overrides: list[str]):
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def without(cfg, *keys: str) -> dict:
    """The config as a plain dict with the dotted ``keys`` removed."""
    d = OmegaConf.to_container(cfg)
    for key in keys:
        *parents, last = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node.pop(last)
    return d


def test_plugin_is_discovered_from_this_checkout():
    plugins = Plugins.instance().discover(SearchPathPlugin)
    ours = [p for p in plugins if p.__module__ == "hydra_plugins.getok.searchpath"]
    assert len(ours) == 1, [p.__module__ for p in plugins]
    assert Path(sys.modules["hydra_plugins.getok.searchpath"].__file__).resolve() == \
        REPO / "easyr1_plugin" / "hydra_plugins" / "getok" / "searchpath.py"


def test_setup_cfg_lists_every_package():
    """setup.cfg lists its packages (the plugin needs a package_dir mapping, which find: cannot do):
    every folder with an __init__.py must be there, and the plugin under its namespace name."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for top in ("getok_core", "swift_plugin", "easyr1_plugin")
               for p in (REPO / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    on_disk.discard("easyr1_plugin.hydra_plugins.getok")
    assert listed == on_disk | {"hydra_plugins", "hydra_plugins.getok"}
    assert cfg["options"]["package_dir"].split() == ["hydra_plugins", "=", "easyr1_plugin/hydra_plugins"]
    assert not (REPO / "easyr1_plugin" / "hydra_plugins" / "__init__.py").exists(), "hydra_plugins is a namespace"
    data = cfg["options.package_data"]["easyr1_plugin"]
    for f in ("configs/verl/reward/getok.yaml", "configs/easyr1/grpo.yaml",
              "agent_loop.yaml"):
        assert (REPO / "easyr1_plugin" / f).exists()
        assert any(Path(f).match(g.strip()) for g in data.split(",")), f


def test_main_ppo_composes_reward_getok(tmp_path):
    """verl's own entry point, from an empty folder, nothing on PYTHONPATH: only the installed package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", "reward=getok", *BASE,
                           "reward.custom_reward_function.reward_kwargs.stage=refine",
                           "+reward.custom_reward_function.reward_kwargs.app=getok-sam",
                           "--cfg", "job", "--package", "reward.custom_reward_function"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout[proc.stdout.index("# @package reward.custom_reward_function"):]
    assert yaml.safe_load(text) == {
        "path": "pkg://easyr1_plugin.verl_reward", "name": "compute_score",
        "reward_kwargs": {"stage": "refine", "grid_size": 32, "round": 1, "decoder": None, "app": "getok-sam"}}


def test_reward_getok_changes_only_the_reward_function():
    cfg = compose_verl(["reward=getok", *BASE])
    rf = cfg.reward.custom_reward_function
    assert rf.path == "pkg://easyr1_plugin.verl_reward" and rf.name == "compute_score"
    assert dict(rf.reward_kwargs) == {"stage": "grid", "grid_size": 32, "round": 1, "decoder": None}
    base = compose_verl(BASE)
    assert base.reward.custom_reward_function.path is None
    key = "reward.custom_reward_function"
    assert without(cfg, key) == without(base, key)   # verl's reward defaults (manager naive, workers) kept
    with pytest.raises(ConfigCompositionException):
        compose_verl(["reward=getokk", *BASE])         # the check can fail: an unknown option


def test_reward_getok_scores_through_verls_reward_loop(tmp_path):
    """verl's loader resolves pkg://easyr1_plugin.verl_reward; the naive manager decodes and scores."""
    path = str(tmp_path / "tok")
    tok = build_tokenizer(path, getok_special=False)
    cfg = compose_verl(["reward=getok", *BASE, f"actor_rollout_ref.model.path={path}",
                        "reward.custom_reward_function.reward_kwargs.grid_size=10"])
    data = make_data(tok, ["<|im_start|>user\nPlease segment: the red square.<|im_end|>"] * 3, RESPONSES, TRUTHS)
    out = asyncio.run(_run_single(cfg, tok, data))
    assert [o["reward_score"] for o in out] == [pytest.approx(2 + Q3), pytest.approx(3.0), pytest.approx(0.5)]
    assert set(out[0]["reward_extra_info"]) == {"score", "format", "nonrepeat", "box", "points"}
    # decoder=region from the command line: the mask component appears (no image file: IoU 0)
    cfg = compose_verl(["reward=getok", *BASE, f"actor_rollout_ref.model.path={path}",
                        "reward.custom_reward_function.reward_kwargs.grid_size=10",
                        "reward.custom_reward_function.reward_kwargs.decoder=region"])
    out = asyncio.run(_run_single(cfg, tok, data))
    assert [o["reward_extra_info"]["mask"] for o in out] == [0.0, 1.0, 0.0]


def test_rollout_getok_refine_registers_the_agent_loop():
    cfg = compose_verl([f"{ROLLOUT}=getok_refine", *BASE])
    key = "actor_rollout_ref.rollout.agent.agent_loop_config_path"
    path = OmegaConf.select(cfg, key)
    assert Path(path).is_absolute() and Path(path) == REPO / "easyr1_plugin" / "agent_loop.yaml"
    assert without(cfg, key) == without(compose_verl(BASE), key)
    # what verl's AgentLoopWorker does with it: resolve, load, register each entry by name
    entries = OmegaConf.load(resolve_config_path(path))
    assert [e.name for e in entries] == ["getok_refine"]
    assert get_class(entries[0]["_target_"]).__name__ == "GetokRefineAgentLoop"
    both = compose_verl(["reward=getok", f"{ROLLOUT}=getok_refine", *BASE])
    assert OmegaConf.select(both, key) == path and both.reward.custom_reward_function.name == "compute_score"
