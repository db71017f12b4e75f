"""ms-swift model types ``getok_qwen2_5_vl``, ``getok_qwen2_vl``, ``getok_qwen3_vl``: the Qwen-VL
loaders of ms-swift, plus the GETok vocabulary (``swift_plugin.getok_tokens.prepare_model_vocab``) added
to the tokenizer, the embeddings resized when needed and the new rows initialized with meaning.

Grid size: ``GETOK_GRID_SIZE`` (default 32), read when a model is loaded; use the same value for
``swift sft``, ``swift infer`` and ``swift export`` (the getok_lora tuner checks it).
"""

from __future__ import annotations

from swift.model import ModelGroup, ModelMeta, register_model
from swift.model.model_arch import ModelArch
from swift.model.models.qwen import Qwen2_5VLLoader, Qwen2VLLoader, Qwen3VLLoader
from swift.utils import get_logger

from .getok_tokens import prepare_model_vocab, vocab_from_env

logger = get_logger()


class GetokLoaderMixin:
    """Adds the GETok tokens after ms-swift's own ``--new_special_tokens`` step."""

    def _add_new_special_tokens(self, model, processor, config):
        super()._add_new_special_tokens(model, processor, config)
        tokenizer = self._get_tokenizer(processor)
        vocab = vocab_from_env()
        target = None if (model is None or self.return_dummy_model) else model
        info = prepare_model_vocab(target, tokenizer, vocab, config=config)
        tokenizer.getok_info = info
        logger.info(f"GETok: {info['n_tokens']} tokens (grid {vocab.grid_size}) at ids {info['first_id']}.."
                    f"{info['last_id']}, {info['newly_added']} newly added; vocab rows {info['vocab_rows']}, "
                    f"tokenizer {info['tokenizer_len']}")


class GetokQwen2VLLoader(GetokLoaderMixin, Qwen2VLLoader):
    pass


class GetokQwen2_5VLLoader(GetokLoaderMixin, Qwen2_5VLLoader):
    pass


class GetokQwen3VLLoader(GetokLoaderMixin, Qwen3VLLoader):
    pass


#: model_type -> (loader, template, model_arch, requires)
MODEL_TYPES = {
    "getok_qwen2_5_vl": (GetokQwen2_5VLLoader, "getok_qwen2_5_vl", ModelArch.qwen2_vl,
                         ["transformers>=4.49", "qwen_vl_utils>=0.0.6"]),
    "getok_qwen2_vl": (GetokQwen2VLLoader, "getok_qwen2_vl", ModelArch.qwen2_vl,
                       ["transformers>=4.45", "qwen_vl_utils>=0.0.6"]),
    "getok_qwen3_vl": (GetokQwen3VLLoader, "getok_qwen3_vl", ModelArch.qwen3_vl,
                       ["transformers>=4.57", "qwen_vl_utils>=0.0.14"]),
}


def register() -> list[str]:
    """Register the GETok model types (idempotent). No ``architectures`` are claimed, so ms-swift's
    automatic model_type matching for plain Qwen-VL checkpoints is unchanged: pass
    ``--model_type getok_qwen2_5_vl``."""
    for name, (loader, template, arch, requires) in MODEL_TYPES.items():
        register_model(ModelMeta(name, [ModelGroup([])], loader, template=template, model_arch=arch,
                                 is_multimodal=True, requires=list(requires), tags=["vision", "video", "getok"]),
                       exist_ok=True)
    return list(MODEL_TYPES)


__all__ = ["GetokLoaderMixin", "GetokQwen2VLLoader", "GetokQwen2_5VLLoader", "GetokQwen3VLLoader", "MODEL_TYPES",
           "register"]
