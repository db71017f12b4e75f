"""Hydra search-path plugin: GETok's config-group options for verl 0.9's ``ppo_trainer``.

Hydra imports every module under ``hydra_plugins`` when an app starts (``python3 -m
verl.trainer.main_ppo``, or ``hydra.compose``) and asks each ``SearchPathPlugin`` for config folders.

- ``reward=getok``: ``easyr1_plugin/configs/verl/reward/getok.yaml`` (verl's ``reward`` defaults,
  then ``custom_reward_function`` = ``pkg://easyr1_plugin.verl_reward`` : ``compute_score`` and the
  GETok reward kwargs' defaults), on the search path below.
- ``rollout=getok_refine``: verl's ``rollout`` defaults with ``agent.agent_loop_config_path`` = the
  installed ``easyr1_plugin/agent_loop.yaml`` (registers the ``getok_refine`` agent loop). verl
  reads that path as a file (``resolve_config_path``: absolute, or relative to the working folder
  or verl), so this option is stored in Hydra's ConfigStore with the absolute path found here, on
  the machine that composes the config (verl resolves the config there and ships plain values to
  its Ray workers).
"""

from __future__ import annotations

from importlib.resources import files

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "getok"


def config_dir() -> str:
    """The folder of GETok's verl config groups (``reward/getok.yaml``)."""
    return str(files("easyr1_plugin") / "configs" / "verl")


def agent_loop_yaml() -> str:
    """Absolute path of the installed ``easyr1_plugin/agent_loop.yaml``."""
    return str(files("easyr1_plugin") / "agent_loop.yaml")


class GetokSearchPathPlugin(SearchPathPlugin):
    """Appends GETok's verl config folder to every Hydra app's search path (harmless for apps
    without a ``reward`` config group)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider=PROVIDER, path=f"file://{config_dir()}")


ConfigStore.instance().store(
    group="rollout", name="getok_refine", provider=PROVIDER,
    node={"defaults": ["rollout", "_self_"], "agent": {"agent_loop_config_path": agent_loop_yaml()}})
