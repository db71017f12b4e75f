"""The GETok vocabulary in a Hugging Face model for ms-swift: the run's vocabulary from the
environment, resizing the embeddings and initializing the new rows. Needs transformers / torch
(imported inside functions), not ms-swift, so it serves any trainer. The tokenizer side (which text
initializes a token, adding the tokens non-special, the one-id check) is framework-free and lives in
``getok_core.models.tokens``; its names are re-exported here.

Decisions (docs/swift.md explains them):

- The GETok tokens are added as **non-special** ``AddedToken(tok, special=False, normalized=False)``
  (``getok_core.models.tokens.add_getok_tokens``): special GETok tokens would vanish from the text
  that ``decode(skip_special_tokens=True)`` gives the rewards.
- New rows are initialized from rows with meaning: a grid token from the mean embedding of the text
  of its coordinates (``<grid12,14>`` <- tokens of ``"12,14"``), an offset token from
  ``"offset dx,dy"``, ``<DELETE>`` and the tags from the tokens of their spelling (``<box>`` <- ``"<"
  "box" ">"``; ``getok_core.models.tokens.init_text``). The source ids come from the tokenizer
  *before* the GETok tokens are added and are checked to be ordinary BPE tokens (below the first
  added token), never untrained padding rows. ``lm_head`` rows get the same treatment from
  ``lm_head`` (once when tied). Rows added by a resize beyond the tokenizer are set to the mean of
  the ordinary rows (deterministic, unlike transformers' sampled ``mean_resizing``): a model rebuilt
  from the same base is bit-identical, which adapters rely on.
- ``GETOK_GRID_CODE=s`` (default 0) adds ``s x RMS(text mean) x grid_code(cell)`` to each new grid
  row: the text mean ignores digit order (``<grid12,14>`` and ``<grid14,12>`` start equal), the 2-D
  code (``getok_core.models.tokens.grid_code``, deterministic) tells every cell apart.
"""

from __future__ import annotations

import math
import os

from getok_core.codec.vocab import GetokVocab
from getok_core.models.tokens import (add_getok_tokens, check_single_ids, config_vocab_size, grid_code, init_text,
                                      ordinary_limit, set_config_vocab_size, source_ids, tokens_digest)

#: Environment variables read by the plugin (documented in docs/swift.md).
ENV_GRID_SIZE = "GETOK_GRID_SIZE"
ENV_GRID_CODE = "GETOK_GRID_CODE"
ENV_OFFSET_ROUNDS = "GETOK_OFFSET_ROUNDS"


def vocab_from_env() -> GetokVocab:
    """The GETok vocabulary of this run: ``GETOK_GRID_SIZE`` (default 32; the one grid size of the
    plugin: tokens, template, scheduler and rewards), ``GETOK_OFFSET_ROUNDS`` (default 1; does not
    change the tokens)."""
    try:
        n = int(os.environ.get(ENV_GRID_SIZE, "32"))
        r = int(os.environ.get(ENV_OFFSET_ROUNDS, "1"))
    except ValueError as exc:
        raise ValueError(f"{ENV_GRID_SIZE} / {ENV_OFFSET_ROUNDS} must be integers") from exc
    return GetokVocab(grid_size=n, offset_rounds=r)


def grid_code_scale_from_env() -> float:
    """``GETOK_GRID_CODE`` (default 0): the weight of the 2-D cell code
    (``getok_core.models.tokens.grid_code``) added to a new grid token's row, relative to the RMS
    of its text mean; 0 keeps the text mean alone."""
    try:
        return float(os.environ.get(ENV_GRID_CODE, "0"))
    except ValueError as exc:
        raise ValueError(f"{ENV_GRID_CODE} must be a number, got {os.environ[ENV_GRID_CODE]!r}") from exc


def _gathered(params):
    """DeepSpeed ZeRO-3 partitions weights at load: gather them to edit rows (no-op otherwise)."""
    import contextlib

    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
        if is_deepspeed_zero3_enabled():
            import deepspeed

            return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    except ImportError:
        pass
    return contextlib.nullcontext()


def _rows(weight) -> int:
    """Rows of a weight, also when DeepSpeed ZeRO-3 has partitioned it (``ds_shape``)."""
    shape = getattr(weight, "ds_shape", None)
    return int(shape[0] if shape is not None else weight.shape[0])


def embeddings_tied(model) -> bool:
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


def prepare_model_vocab(model, tokenizer, vocab: GetokVocab, config=None, pad_to_multiple_of: int = 128) -> dict:
    """Add the GETok tokens to ``tokenizer`` and, when ``model`` is given, resize its embeddings if
    the tokenizer outgrew them (to a multiple of ``pad_to_multiple_of``) and initialize the rows of
    the tokens that were new (see the module docstring). ``config`` (default ``model.config``) gets
    the new vocab size even when ``model`` is None. Returns an info dict (stored on the model as
    ``getok_info``)."""
    ids, new, sources = add_getok_tokens(tokenizer, vocab)
    code_scale = grid_code_scale_from_env()
    config = config if config is not None else getattr(model, "config", None)
    old_rows = config_vocab_size(config) if config is not None else None
    rows = old_rows
    if old_rows is not None and old_rows < len(tokenizer):
        rows = math.ceil(len(tokenizer) / pad_to_multiple_of) * pad_to_multiple_of
    if model is not None:
        import torch

        emb_rows = _rows(model.get_input_embeddings().weight)
        rows = max(rows or emb_rows, emb_rows)
        if emb_rows < len(tokenizer):
            rows = math.ceil(len(tokenizer) / pad_to_multiple_of) * pad_to_multiple_of
            model.resize_token_embeddings(rows, mean_resizing=False)
        limit = ordinary_limit(tokenizer)
        id_of = dict(zip(vocab.tokens, ids))
        mats = [model.get_input_embeddings().weight]
        if not embeddings_tied(model) and model.get_output_embeddings() is not None:
            mats.append(model.get_output_embeddings().weight)
        with _gathered(mats), torch.no_grad():
            for w in mats:
                if emb_rows < rows:  # rows added by the resize: the mean of the ordinary rows
                    total = torch.zeros(w.shape[1], dtype=torch.float64, device=w.device)
                    for a in range(0, limit, 8192):
                        total += w[a:min(a + 8192, limit)].double().sum(0)
                    w[emb_rows:] = (total / limit).to(w.dtype)
                code = grid_code(vocab, w.shape[1]) if code_scale else {}
                for t in new:  # sources are ordinary rows (< limit), targets are not: no snapshot needed
                    src = torch.tensor(sources[t], dtype=torch.long, device=w.device)
                    row = w.index_select(0, src).double().mean(0)
                    if t in code:  # + the cell's 2-D code, at code_scale x the text mean's RMS
                        row = row + code_scale * row.pow(2).mean().sqrt() * torch.from_numpy(code[t]).to(row)
                    w[id_of[t]] = row.to(w.dtype)
    if config is not None and rows is not None and rows != old_rows:
        set_config_vocab_size(config, rows)
    info = {"grid_size": vocab.grid_size, "offset_rounds": vocab.offset_rounds, "n_tokens": len(ids),
            "first_id": min(ids), "last_id": max(ids), "ids_contiguous": ids == list(range(min(ids), max(ids) + 1)),
            "digest": tokens_digest(vocab.tokens), "ids": list(ids), "newly_added": len(new), "grid_code": code_scale,
            "vocab_rows": rows, "tokenizer_len": len(tokenizer)}
    if model is not None:
        info["tied"] = embeddings_tied(model)
        model.getok_info = info
    return info


__all__ = ["vocab_from_env", "grid_code_scale_from_env", "init_text", "source_ids", "add_getok_tokens", "check_single_ids",
           "prepare_model_vocab", "embeddings_tied", "tokens_digest", "ENV_GRID_SIZE", "ENV_GRID_CODE", "ENV_OFFSET_ROUNDS"]
