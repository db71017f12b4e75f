"""GETok's Hydra plugin, installed as ``hydra_plugins.getok`` (setup.cfg maps
``easyr1_plugin/hydra_plugins`` onto the ``hydra_plugins`` namespace, where Hydra looks for plugins).

It makes ``python3 -m verl.trainer.main_ppo reward=getok`` and ``rollout=getok_refine`` work with
nothing but GETok installed: ``searchpath.GetokSearchPathPlugin`` (docs/agent_loop.md,
docs/training.md)."""
