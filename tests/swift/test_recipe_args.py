"""The ms-swift commands of the recipes are accepted by ms-swift 4.6's own argument parsing.

Each recipe runs with ``DRY_RUN=1``, which prints every command as one shell-quoted line; the
``swift SUBCOMMAND ARGS`` lines are parsed with the parser ms-swift builds for that subcommand
(``swift.utils.parse_args`` = ``HfArgumentParser`` over ``SftArguments`` / ``RLHFArguments`` /
``ExportArguments`` / ``InferArguments``, with ms-swift's own type-hint patch). The dataclasses'
``__post_init__`` (which loads the model) is not run: a flag that does not exist, is abbreviated,
has a value of the wrong type or outside its choices, fails here. The names the recipes pass to the
GETok plugin (model type, template, tuner, reward functions, multi-turn scheduler) are checked
against ms-swift's registries after loading ``swift_plugin/register.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.swift
import swift  # noqa: E402,F401  (the swift environment: a missing package fails)
from swift.arguments import ExportArguments, InferArguments, RLHFArguments, SftArguments  # noqa: E402
from swift.utils.utils import _patch_get_type_hints  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ARG_CLASSES = {"sft": SftArguments, "rlhf": RLHFArguments, "export": ExportArguments, "infer": InferArguments}
_PARSERS: dict = {}


def dry_run(recipe: str, tmp_path: Path, **env) -> list[list[str]]:
    """The commands RECIPE would run: one argv per printed line."""
    # the environment's bin first, as in an activated venv (eval.sh CONSTRAINED=1 runs `getok grammar`)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full = {**os.environ, "PATH": path, "DRY_RUN": "1", **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run(["bash", str(REPO / "recipes" / recipe)], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{recipe} printed no command"
    for line in lines:
        assert "$'" not in line, f"not parseable by shlex: {line}"
    return [shlex.split(line) for line in lines]


def split_env(argv: list[str]) -> tuple[dict, list[str]]:
    """``env K=V ... cmd args`` -> ({K: V}, [cmd, args...])."""
    env = {}
    if argv and argv[0] == "env":
        argv = argv[1:]
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            k, v = argv[0].split("=", 1)
            env[k] = v
            argv = argv[1:]
    return env, argv


def swift_commands(commands: list[list[str]]) -> list[tuple[dict, str, list[str]]]:
    out = []
    for argv in commands:
        env, cmd = split_env(argv)
        if cmd and Path(cmd[0]).name == "swift":
            out.append((env, cmd[1], cmd[2:]))
    return out


def parser_for(sub: str) -> HfArgumentParser:
    if sub not in _PARSERS:
        with _patch_get_type_hints():  # exactly what swift.utils.parse_args does
            _PARSERS[sub] = HfArgumentParser([ARG_CLASSES[sub]])
    return _PARSERS[sub]


def check_args(sub: str, args: list[str]):
    """Parse ARGS as `swift SUB` does; return the namespace. Fails on unknown, abbreviated or
    ill-typed flags."""
    parser = parser_for(sub)
    known = set(parser._option_string_actions)
    flags = [a for a in args if a.startswith("--")]
    unknown = [f for f in flags if f.split("=", 1)[0] not in known]
    assert not unknown, f"swift {sub}: flags ms-swift does not define (or abbreviated): {unknown}"
    parser.exit_on_error = False
    ns, remaining = parser.parse_known_args(args)
    assert remaining == [], f"swift {sub}: arguments left over: {remaining}"
    return ns


def test_parser_rejects_a_wrong_flag():
    """The check can fail: a misspelt flag, an abbreviation and a bad choice are refused."""
    with pytest.raises(AssertionError, match="does not define"):
        check_args("rlhf", ["--rlhf_type", "grpo", "--multi_turn_schedular", "x"])
    with pytest.raises(AssertionError, match="does not define"):
        check_args("rlhf", ["--rlhf_type", "grpo", "--num_gen", "8"])   # argparse would take the prefix
    with pytest.raises(SystemExit):
        parser_for("rlhf").parse_known_args(["--rlhf_type", "gpro"])


def test_cold_start_swift_args(tmp_path):
    cmds = swift_commands(dry_run("cold_start_swift.sh", tmp_path, PREPARED="/data/p", SFT_CKPT="/ck/checkpoint-9",
                                  OUT="/o/cold", EXTRA_DATA="/data/llava_cot.jsonl#1000"))
    assert [sub for _, sub, _ in cmds] == ["export", "sft", "export"]
    ns = [check_args(sub, args) for _, sub, args in cmds]
    assert ns[0].adapters == ["/ck/checkpoint-9"] and ns[0].merge_lora is True
    sft = ns[1]
    assert sft.model == "/o/cold/sft-merged" == ns[0].output_dir
    assert sft.dataset == ["/data/p/swift/train_refine.jsonl", "/data/llava_cot.jsonl#1000"]
    assert sft.tuner_type == "getok_lora" and sft.model_type == sft.template == "getok_qwen2_5_vl"
    assert sft.custom_register_path == [str(REPO / "swift_plugin" / "register.py")]
    assert sft.add_version is False and sft.create_checkpoint_symlink is True
    assert ns[2].adapters == ["/o/cold/train/last"] and ns[2].output_dir == "/o/cold/merged"
    assert cmds[1][0]["NPROC_PER_NODE"] == "8"
    # an already merged SFT model skips the first export
    cmds = swift_commands(dry_run("cold_start_swift.sh", tmp_path, SFT_MODEL="/m/sft", DEEPSPEED="none"))
    assert [sub for _, sub, _ in cmds] == ["sft", "export"]
    assert check_args("sft", cmds[0][2]).model == "/m/sft"


def test_grpo_swift_tuner_and_vllm(tmp_path):
    """The default (LoRA + colocated vLLM) passes the plugin's vLLM checks; getok_lora runs only
    with USE_VLLM=0 (ms-swift's weight sync cannot carry its GETok rows: tests/vllm)."""
    from swift_plugin.getok_tuner import vllm_sync_error

    for extra, tuner, vllm, refused in (({}, "lora", True, False), ({"TUNER": "getok_lora"}, "getok_lora", True, True),
                                        ({"TUNER": "getok_lora", "USE_VLLM": "0"}, "getok_lora", False, False)):
        cmds = swift_commands(dry_run("grpo_swift.sh", tmp_path, PREPARED="/data/p", OUT="/o/g", MASK_DECODER="none",
                                      STAGES="grid", **extra))
        _, sub, args = cmds[0]
        n = check_args(sub, args)
        assert (n.tuner_type, n.use_vllm) == (tuner, vllm)
        why = vllm_sync_error(["rlhf.py", *args])
        assert (why is not None) == refused, why
        if refused:
            assert "--merge_lora true" in why and "--use_vllm false" in why


@pytest.mark.parametrize("decoder", ["ray", "region", "none"])
def test_grpo_swift_args(tmp_path, decoder):
    commands = dry_run("grpo_swift.sh", tmp_path, PREPARED="/data/p", OUT="/o/g", MASK_DECODER=decoder, ROUNDS=2)
    cmds = swift_commands(commands)
    assert [sub for _, sub, _ in cmds] == ["rlhf", "export", "rlhf", "export"]
    ns = [check_args(sub, args) for _, sub, args in cmds]
    grid, refine = ns[0], ns[2]
    for n in (grid, refine):
        assert n.rlhf_type == "grpo" and n.use_vllm is True and n.vllm_mode == "colocate"
        assert n.num_generations == 8 and n.tuner_type == "lora"
        assert n.dataset == ["/data/p/swift/train_grpo.jsonl"]
        assert n.per_device_train_batch_size * n.gradient_accumulation_steps * 8 == 16 * n.num_generations
    assert grid.reward_funcs == ["getok_grid"] and grid.multi_turn_scheduler is None
    assert refine.reward_funcs == ["getok_refine"]
    assert refine.multi_turn_scheduler == "getok_refine" and refine.max_turns == 3   # ROUNDS + 1
    assert refine.max_steps == 200
    assert refine.model == ns[1].output_dir == "/o/g/grid/merged" and ns[1].adapters == ["/o/g/grid/last"]
    kwargs = json.loads(cmds[0][0]["GETOK_REWARD_KWARGS"])
    assert "grid_size" not in kwargs and cmds[0][0]["GETOK_GRID_SIZE"] == "32"   # one source
    flat = [" ".join(c) for c in commands]
    if decoder == "ray":
        assert kwargs == {"decoder": "ray", "app": "getok-sam", "timeout_s": 120, "fallback": "region"}
        serve = [i for i, c in enumerate(flat) if c.startswith("getok serve-sam") and "--stop" not in c]
        stop = [i for i, c in enumerate(flat) if c.startswith("getok serve-sam --stop")]
        first_rlhf = next(i for i, c in enumerate(commands) if "rlhf" in c)
        assert len(serve) == 1 and serve[0] < first_rlhf and stop == [len(flat) - 2] and flat[-1] == "ray stop"
    else:
        assert not any("serve-sam" in c for c in flat)
        assert kwargs.get("decoder") == (None if decoder == "none" else decoder)


def test_eval_and_sft_recipe_args(tmp_path):
    cmds = swift_commands(dry_run("eval.sh", tmp_path, PREPARED="/data/v", SPLITS="val testA", MODEL="/m/final"))
    assert [sub for _, sub, _ in cmds] == ["infer", "infer"]
    ns = [check_args(sub, args) for _, sub, args in cmds]
    assert ns[1].val_dataset == ["/data/v/swift/testA.jsonl"] and ns[0].infer_backend == "vllm"
    cmds = swift_commands(dry_run("eval.sh", tmp_path, ADAPTERS="/ck/checkpoint-3", INFER_BACKEND="transformers"))
    assert check_args("infer", cmds[0][2]).adapters == ["/ck/checkpoint-3"]
    # CONSTRAINED=1: the grammar's regex, as `getok grammar` prints it, through ms-swift's vLLM engine
    from getok_core.codec.grammar import grid_spec, to_regex
    from getok_core.codec.vocab import GetokVocab

    cmds = swift_commands(dry_run("eval.sh", tmp_path, CONSTRAINED=1, CONSTRAIN_TASK="seg", CONSTRAIN_MAX_INSTANCES=4,
                                  CONSTRAIN_MAX_POINTS=16, CONSTRAIN_THINK=1))
    regex = check_args("infer", cmds[0][2]).structured_outputs_regex
    assert regex == to_regex(grid_spec(GetokVocab(32), "seg", max_instances=4, max_points=16, think=True))
    # a MAX_NEW_TOKENS that can cut the grammar's longest answer is said (seg x 4 x 16 admits 900 characters)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    for tokens, said in [(900, True), (901, False)]:
        proc = subprocess.run(["bash", str(REPO / "recipes" / "eval.sh")], cwd=tmp_path, capture_output=True,
                              text=True, env={**os.environ, "PATH": path, "DRY_RUN": "1", "CONSTRAINED": "1",
                                              "CONSTRAIN_TASK": "seg", "CONSTRAIN_MAX_INSTANCES": "4",
                                              "CONSTRAIN_MAX_POINTS": "16", "MAX_NEW_TOKENS": str(tokens)})
        assert proc.returncode == 0 and ("up to 900 characters" in proc.stderr) == said, proc.stderr
    proc = subprocess.run(["bash", str(REPO / "recipes" / "eval.sh")], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", "CONSTRAINED": "1", "INFER_BACKEND": "transformers"})
    assert proc.returncode == 2 and "CONSTRAINED=1 needs INFER_BACKEND=vllm" in proc.stderr
    # the existing SFT recipe prints one line too: its flags are checked the same way
    proc = subprocess.run(["bash", str(REPO / "recipes" / "sft_swift.sh")], env={**os.environ, "DRY_RUN": "1"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    check_args("sft", argv[argv.index("sft") + 1:])


def test_recipe_names_are_registered(tmp_path):
    """The model type, template, tuner, ORMs and scheduler the recipes name exist once the plugin
    file ms-swift loads (--custom_register_path) is imported."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_getok_register_for_recipes", REPO / "swift_plugin" / "register.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from swift.model import MODEL_MAPPING
    from swift.rewards import orms
    from swift.rollout.multi_turn import multi_turns
    from swift.template import TEMPLATE_MAPPING
    from swift.arguments.base_args.base_args import get_supported_tuners  # ms-swift's own + tuners_map

    names = set()
    for recipe in ("cold_start_swift.sh", "grpo_swift.sh"):
        for _, _, args in swift_commands(dry_run(recipe, tmp_path, SFT_MODEL="/m")):
            for flag in ("--model_type", "--template", "--tuner_type", "--reward_funcs", "--multi_turn_scheduler"):
                if flag in args:
                    names.add((flag, args[args.index(flag) + 1]))
    assert ("--multi_turn_scheduler", "getok_refine") in names and ("--tuner_type", "getok_lora") in names
    registries = {"--model_type": MODEL_MAPPING, "--template": TEMPLATE_MAPPING, "--tuner_type": get_supported_tuners(),
                  "--reward_funcs": orms, "--multi_turn_scheduler": multi_turns}
    missing = [(flag, name) for flag, name in sorted(names) if name not in registries[flag]]
    assert not missing, f"not registered by swift_plugin/register.py: {missing}"


# ---------------------------------------------------------------------- rerunnable into the same OUT
def removed_before(commands: list[list[str]], index: int, path: str) -> bool:
    """Whether a command before ``commands[index]`` is an ``rm`` of ``path`` or of a folder above it."""
    for argv in commands[:index]:
        if argv[:1] == ["rm"]:
            targets = [a for a in argv[1:] if not a.startswith("-")]
            if any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets):
                return True
    return False


@pytest.mark.parametrize("recipe, env", [
    ("eval.sh", {"SPLITS": "val testA", "OUT": "/o/e"}),
    ("eval.sh", {"ADAPTERS": "/ck/checkpoint-3", "INFER_BACKEND": "transformers", "OUT": "/o/e"}),
    ("cold_start_swift.sh", {"SFT_CKPT": "/ck/checkpoint-9", "OUT": "/o/cold"}),
    ("grpo_swift.sh", {"OUT": "/o/g", "MASK_DECODER": "none"}),
    ("sft_swift.sh", {"OUT": "/o/sft"}),
])
def test_recipes_clear_what_a_rerun_appends_to(tmp_path, recipe, env):
    """Every recipe is rerunnable into the same output folder: before a command that appends to a
    file (swift infer --result_path) or refuses an existing one (swift export --output_dir; swift
    sft / rlhf --add_version false, whose `last` link already exists), the recipe removes it;
    swift sft with versioning on writes a new vN-... folder each run; getok eval's report folder is
    cleared too."""
    commands = dry_run(recipe, tmp_path, **env)
    checked = 0
    for i, argv in enumerate(commands):
        _, cmd = split_env(argv)
        while cmd and re.fullmatch(r"[A-Z_]+=.*", cmd[0]):   # sft_swift.sh prints `K=V ... swift sft`
            cmd = cmd[1:]
        if cmd[:2] == ["getok", "eval"]:
            assert removed_before(commands, i, cmd[cmd.index("--out") + 1]), cmd
            checked += 1
        if not cmd or Path(cmd[0]).name != "swift":
            continue
        ns = check_args(cmd[1], cmd[2:])
        if cmd[1] == "infer":
            assert removed_before(commands, i, ns.result_path), f"{recipe}: {ns.result_path} is appended to"
        elif cmd[1] == "export":
            assert removed_before(commands, i, ns.output_dir), f"{recipe}: {ns.output_dir} exists on a rerun"
        elif ns.add_version is False:
            assert removed_before(commands, i, ns.output_dir), f"{recipe}: {ns.output_dir}/last exists on a rerun"
        else:
            assert ns.add_version is True   # ms-swift writes OUT/vN-TIMESTAMP: a new folder per run
        checked += 1
    assert checked


FAKE_SWIFT = r"""#!/usr/bin/env bash
# Stand-in for the swift CLI with ms-swift 4.6's behaviour on existing outputs: export refuses an
# existing --output_dir (FileExistsError), sft / rlhf with --add_version false fail when the `last`
# link exists (os.symlink at the end of training). Every call is logged.
sub=$1; shift
echo "$sub $*" >> "$FAKE_SWIFT_LOG"
out=
while [ $# -gt 0 ]; do [ "$1" = "--output_dir" ] && out=$2; shift; done
case $sub in
  export) if [ -e "$out" ]; then echo "args.output_dir: $out already exists." >&2; exit 1; fi
          mkdir -p "$out" && echo '{}' > "$out/config.json" ;;
  sft|rlhf) if [ -e "$out/last" ]; then echo "FileExistsError: $out/last" >&2; exit 1; fi
          mkdir -p "$out/checkpoint-1" && ln -s "$out/checkpoint-1" "$out/last" ;;
esac
"""


def run_with_fake_swift(recipe: str, tmp_path: Path, **env) -> list[str]:
    fake = tmp_path / "fake_swift"
    fake.write_text(FAKE_SWIFT)
    fake.chmod(0o755)
    log = tmp_path / "swift_calls.log"
    log.unlink(missing_ok=True)
    full = {**os.environ, "SWIFT": str(fake), "FAKE_SWIFT_LOG": str(log), "DRY_RUN": "0",
            **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run(["bash", str(REPO / "recipes" / recipe)], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split()[0] for line in log.read_text().splitlines()]


def test_cold_start_and_grpo_swift_rerun(tmp_path):
    """The swift recipes run twice into one OUT against a swift that refuses existing outputs as
    ms-swift does; the merged SFT model is reused only for the same SFT checkpoint."""
    out = tmp_path / "cold"
    env = {"OUT": out, "SFT_CKPT": "/ck/v0-x/checkpoint-9", "PREPARED": tmp_path, "NPROC": 1}
    assert run_with_fake_swift("cold_start_swift.sh", tmp_path, **env) == ["export", "sft", "export"]
    assert run_with_fake_swift("cold_start_swift.sh", tmp_path, **env) == ["sft", "export"]   # sft-merged reused
    assert (out / "sft-merged" / ".getok-source").read_text().strip() == "/ck/v0-x/checkpoint-9"
    env["SFT_CKPT"] = "/ck/v1-y/checkpoint-20"     # a new SFT run: merged again
    assert run_with_fake_swift("cold_start_swift.sh", tmp_path, **env) == ["export", "sft", "export"]
    genv = {"OUT": tmp_path / "grpo", "MODEL": out / "merged", "PREPARED": tmp_path, "MASK_DECODER": "none", "NPROC": 1}
    for _ in range(2):
        assert run_with_fake_swift("grpo_swift.sh", tmp_path, **genv) == ["rlhf", "export", "rlhf", "export"]
    # a stage never deletes the model it starts from
    fake_env = {**genv, "STAGES": "refine", "MODEL": tmp_path / "grpo" / "refine" / "merged"}
    with pytest.raises(AssertionError, match="which stage refine replaces"):
        run_with_fake_swift("grpo_swift.sh", tmp_path, **fake_env)


def test_vllm_checks_of_the_tuner_read_the_command_line(tmp_path):
    """``vllm_adapter_error`` / ``vllm_sync_error`` on ms-swift argv shapes (``--flag value`` and
    ``--flag=value``; a getok_lora checkpoint is a folder holding getok_tuner.json)."""
    from swift_plugin.getok_tuner import INFO_FILE, vllm_adapter_error, vllm_sync_error

    ck = tmp_path / "ck"
    ck.mkdir()
    plain = tmp_path / "plain"
    plain.mkdir()
    (ck / INFO_FILE).write_text("{}")
    assert vllm_adapter_error(["infer.py", "--adapters", str(ck), "--infer_backend", "vllm"])
    assert vllm_adapter_error(["infer.py", f"--adapters=name={ck}", "--infer_backend=vllm"])
    assert vllm_adapter_error(["infer.py", "--adapters", str(plain), "--infer_backend", "vllm"]) is None
    assert vllm_adapter_error(["infer.py", "--adapters", str(ck), "--infer_backend", "pt"]) is None
    assert vllm_sync_error(["rlhf.py", "--tuner_type", "getok_lora", "--use_vllm", "true"])
    assert vllm_sync_error(["rlhf.py", "--tuner_type=getok_lora", "--use_vllm=True"])
    assert vllm_sync_error(["rlhf.py", "--tuner_type", "lora", "--adapters", str(ck), "--use_vllm", "true"])
    assert vllm_sync_error(["rlhf.py", "--resume_from_checkpoint", str(ck), "--use_vllm", "1"])
    for argv in (["rlhf.py", "--tuner_type", "getok_lora", "--use_vllm", "false"],
                 ["rlhf.py", "--tuner_type", "getok_lora"],
                 ["rlhf.py", "--tuner_type", "lora", "--use_vllm", "true"],
                 ["rlhf.py", "--tuner_type", "full", "--adapters", str(plain), "--use_vllm", "true"]):
        assert vllm_sync_error(argv) is None, argv
