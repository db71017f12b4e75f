"""Both EasyR1 recipes' overrides composed through EasyR1's own config classes, the way its
``verl/trainer/main.py`` composes them: ``OmegaConf.structured(PPOConfig())``, merged with the
``config=`` file when one is given, then with the CLI dotlist, ``OmegaConf.to_object``, then
``deep_post_init()``. The overrides are whatever ``DRY_RUN=1 bash recipes/grpo_stage{1,2}_easyr1.sh``
prints for ``python3 -m verl.trainer.main``, so a key the recipes add, rename or misspell is checked
against the snapshot's dataclasses (a misspelt key raises). ``test_main_still_composes_this_way``
reads main.py's ``main()`` and fails if its composition steps change.
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = {"grid": REPO / "recipes" / "grpo_stage1_easyr1.sh", "refine": REPO / "recipes" / "grpo_stage2_easyr1.sh"}


def recipe_overrides(stage: str, **env) -> list[str]:
    """The ``key=value`` arguments of the recipe's ``python3 -m verl.trainer.main`` line (DRY_RUN)."""
    out = subprocess.run(["bash", str(RECIPES[stage])], env={**os.environ, "DRY_RUN": "1", **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mains = [words for words in map(shlex.split, out.stdout.splitlines()) if "verl.trainer.main" in words]
    assert len(mains) == 1, out.stdout
    words = mains[0]
    i = words.index("verl.trainer.main")
    assert words[i - 1] == "-m"
    args = words[i + 1:]
    assert args and all("=" in a for a in args), args
    return args


def compose(easyr1, args: list[str]):
    """(merged DictConfig, PPOConfig) of ``args`` as EasyR1's main() builds them."""
    from omegaconf import OmegaConf

    cli = OmegaConf.from_cli(list(args))
    base = OmegaConf.structured(easyr1.config.PPOConfig())
    if "config" in cli:
        base = OmegaConf.merge(base, OmegaConf.load(cli.pop("config")))
    merged = OmegaConf.merge(base, cli)
    ppo = OmegaConf.to_object(merged)
    ppo.deep_post_init()
    return merged, ppo


def test_main_still_composes_this_way(easyr1):
    """The steps of ``compose`` are those of the snapshot's verl/trainer/main.py main(), in order."""
    tree = ast.parse((easyr1.src / "verl" / "trainer" / "main.py").read_text(encoding="utf-8"))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    nodes = sorted((n for n in ast.walk(main) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    calls = [ast.unparse(n.func) for n in nodes]  # in source order
    steps = [c for c in calls if c.startswith("OmegaConf.") or c.endswith(("deep_post_init", ".pop"))]
    assert steps[:7] == ["OmegaConf.from_cli", "OmegaConf.structured", "cli_args.pop", "OmegaConf.load",
                         "OmegaConf.merge", "OmegaConf.merge", "OmegaConf.to_object"], steps
    assert "ppo_config.deep_post_init" in calls
    assert "PPOConfig()" in ast.unparse(main)


@pytest.mark.parametrize("stage", ["grid", "refine"])
@pytest.mark.parametrize("env", [{}, {"LORA_RANK": "64"}, {"MASK_DECODER": "region", "MAX_STEPS": "7"},
                                 {"MASK_DECODER": "none", "VAL_SPLIT": ""}], ids=["default", "lora", "region", "none"])
def test_recipe_overrides_compose(easyr1, stage, env):
    from omegaconf import OmegaConf

    args = recipe_overrides(stage, **env)
    merged, ppo = compose(easyr1, args)
    cli = OmegaConf.from_cli(args)
    cli.pop("config", None)
    # every override reached the config, with its value (no key dropped or coerced away)
    for a in args:
        key = a.split("=", 1)[0]
        if key != "config":
            assert OmegaConf.select(merged, key) == OmegaConf.select(cli, key), key
    fn = f"{stage}_reward"
    assert ppo.worker.reward.reward_function == str(REPO / "easyr1_plugin" / "reward.py")
    assert ppo.worker.reward.reward_function_name == fn
    # post_init turns a missing file into None (with only a print): the recipe's files exist
    assert ppo.data.format_prompt == str(REPO / "easyr1_plugin" / "format_prompt" / f"getok_{stage}.jinja")
    assert ppo.algorithm.adv_estimator == "grpo" and ppo.worker.rollout.n >= 2
    # issue 14's fixes, as EasyR1 reads them: a bounded val batch, CPUs for the reward actor, LoRA off
    # the vision tower (EasyR1 syncs only the language layers' LoRA weights to vLLM)
    assert ppo.data.val_batch_size > 0 and ppo.worker.reward.num_cpus > 1
    if env.get("LORA_RANK"):
        assert ppo.worker.actor.model.lora.rank == 64 and ppo.worker.actor.model.lora.exclude_modules == ".*visual.*"
    if env.get("MAX_STEPS"):
        assert ppo.trainer.max_steps == 7
    kwargs = ppo.worker.reward.reward_function_kwargs
    assert kwargs.get("decoder") == {"none": None}.get(env.get("MASK_DECODER", "ray"), env.get("MASK_DECODER", "ray"))


@pytest.mark.parametrize("real,wrong", [("worker.rollout.n", "worker.rollout.nn"),
                                        ("trainer.logger", "trainer.lorgger"),
                                        ("worker.reward.reward_function", "worker.reward.reward_fuction"),
                                        (None, "data.val_batchsize")])
def test_misspelt_key_fails(easyr1, real, wrong):
    """A recipe key misspelt (or an unknown key added) fails the composition, as it fails main()."""
    from omegaconf.errors import ConfigKeyError

    args = recipe_overrides("grid")
    compose(easyr1, args)  # the recipe as printed composes
    if real is None:
        bad = args + [f"{wrong}=4"]
    else:
        assert any(a.startswith(real + "=") for a in args), f"the recipe no longer sets {real}"
        bad = [wrong + a[len(real):] if a.startswith(real + "=") else a for a in args]
    with pytest.raises(ConfigKeyError, match=wrong.rsplit(".", 1)[-1]):
        compose(easyr1, bad)


def test_omegaconf_is_pinned_below_2_4(easyr1):
    """EasyR1's ``TrainerConfig.logger: Tuple[str]`` breaks OmegaConf.structured under omegaconf 2.4:
    this environment pins 2.3 (users must too)."""
    import omegaconf

    assert tuple(int(x) for x in omegaconf.__version__.split(".")[:2]) < (2, 4)
