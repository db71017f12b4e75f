"""The GETok vocabulary in a Hugging Face tokenizer and model: adding the tokens, resizing the
embeddings, initializing the new rows. Needs transformers / torch (imported inside functions), not
ms-swift, so it serves any trainer.

Decisions (docs/swift.md explains them):

- The GETok tokens are added as **non-special** ``AddedToken(tok, special=False, normalized=False)``.
  An added token is matched as a whole before BPE (so each GETok token encodes to exactly one id and
  is never split) whether or not it is special; but ``decode(skip_special_tokens=True)``, which
  EasyR1, verl and vLLM use on responses, drops special tokens, so special GETok tokens would vanish
  from the text the rewards read. Non-special tokens survive.
- New rows are initialized from rows with meaning: a grid token from the mean embedding of the text
  of its coordinates (``<grid12,14>`` <- tokens of ``"12,14"``), an offset token from
  ``"offset dx,dy"``, ``<DELETE>`` and the tags from the tokens of their spelling (``<box>`` <- ``"<"
  "box" ">"``). The source ids come from the tokenizer *before* the GETok tokens are added and are
  checked to be ordinary BPE tokens (below the first added token), never untrained padding rows.
  ``lm_head`` rows get the same treatment from ``lm_head`` (once when tied). Rows added by a resize
  beyond the tokenizer are set to the mean of the ordinary rows (deterministic, unlike transformers'
  sampled ``mean_resizing``): a model rebuilt from the same base is bit-identical, which adapters
  rely on.
"""

from __future__ import annotations

import hashlib
import math
import os

from getok_core.codec.vocab import GetokVocab

#: Environment variables read by the plugin (documented in docs/swift.md).
ENV_GRID_SIZE = "GETOK_GRID_SIZE"
ENV_OFFSET_ROUNDS = "GETOK_OFFSET_ROUNDS"


def vocab_from_env() -> GetokVocab:
    """The GETok vocabulary of this run: ``GETOK_GRID_SIZE`` (default 32),
    ``GETOK_OFFSET_ROUNDS`` (default 1; does not change the tokens)."""
    try:
        n = int(os.environ.get(ENV_GRID_SIZE, "32"))
        r = int(os.environ.get(ENV_OFFSET_ROUNDS, "1"))
    except ValueError as exc:
        raise ValueError(f"{ENV_GRID_SIZE} / {ENV_OFFSET_ROUNDS} must be integers") from exc
    return GetokVocab(grid_size=n, offset_rounds=r)


def init_text(token: str, vocab: GetokVocab) -> str:
    """The plain text whose token embeddings are averaged to initialize ``token``'s row."""
    cell = vocab.token_cell(token)
    if cell is not None:
        return f"{cell[0]},{cell[1]}"
    off = vocab.token_offset(token)
    if off is not None:
        return f"offset {off[0]},{off[1]}"
    return token  # <DELETE>, <box>, </box>, <none>, ...: their spelling


def tokens_digest(tokens) -> str:
    """A short digest of a token list (stored with adapters to catch a vocabulary mismatch)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:16]


def _text_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def source_ids(tokenizer, vocab: GetokVocab) -> dict[str, list[int]]:
    """For every GETok token, the ids of its init text in ``tokenizer`` (call before adding)."""
    return {tok: _text_ids(tokenizer, init_text(tok, vocab)) for tok in vocab.tokens}


def _ordinary_limit(tokenizer) -> int:
    """Ids below this are ordinary BPE tokens (the first added token's id, or the vocab size)."""
    added = [i for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}]
    base = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    return min([base, *added]) if added else base


def add_getok_tokens(tokenizer, vocab: GetokVocab):
    """Add the GETok tokens (non-special) to ``tokenizer``.

    Returns ``(ids, new, sources)``: the id of every token of ``vocab.tokens``, the tokens that were
    not there before, and the init source ids of those (computed before adding). Raises ValueError
    if a GETok token is already in the tokenizer as a *special* token (e.g. from
    ``--new_special_tokens``): it would be stripped by ``skip_special_tokens=True``.
    """
    from tokenizers import AddedToken

    existing = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(t, "special", False):
            special.add(str(t))
    bad = [t for t in vocab.tokens if t in special]
    if bad:
        raise ValueError(
            f"{len(bad)} GETok token(s) (e.g. {bad[0]}) are already special tokens of this tokenizer, so "
            "decode(skip_special_tokens=True) would drop them from responses. Do not pass the GETok tokens "
            "with --new_special_tokens: the getok_* model types add them as non-special tokens.")
    new = [t for t in vocab.tokens if t not in existing]
    limit = _ordinary_limit(tokenizer)
    sources = {}
    for t in new:
        ids = _text_ids(tokenizer, init_text(t, vocab))
        if not ids or any(i >= limit for i in ids):
            raise RuntimeError(f"init text of {t} maps to non-ordinary ids {ids} (limit {limit})")
        sources[t] = ids
    if new:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False,
                                         single_word=False) for t in new])
    ids = tokenizer.convert_tokens_to_ids(list(vocab.tokens))
    check_single_ids(tokenizer, vocab.tokens, ids)
    return list(ids), new, sources


def check_single_ids(tokenizer, tokens, ids=None) -> None:
    """Every token encodes to exactly its one id, alone and inside text, and survives
    ``decode(skip_special_tokens=True)``. Raises RuntimeError otherwise."""
    if ids is None:
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
    for t, i in zip(tokens, ids):
        got = _text_ids(tokenizer, t)
        if got != [i]:
            raise RuntimeError(f"GETok token {t} encodes to {got}, expected [{i}]")
    sample = "".join(tokens[:64])
    if _text_ids(tokenizer, sample) != list(ids[:64]):
        raise RuntimeError("GETok tokens do not encode one id each when concatenated")
    if tokenizer.decode(list(ids[:64]), skip_special_tokens=True) != sample:
        raise RuntimeError("GETok tokens do not survive decode(skip_special_tokens=True)")


def _set_vocab_size(config, n: int) -> None:
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "vocab_size"):
            cfg.vocab_size = n


def _get_vocab_size(config) -> int | None:
    text = getattr(config, "text_config", None)
    n = getattr(text, "vocab_size", None) if text is not None else None
    return n if n is not None else getattr(config, "vocab_size", None)


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
    config = config if config is not None else getattr(model, "config", None)
    old_rows = _get_vocab_size(config) if config is not None else None
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
        limit = _ordinary_limit(tokenizer)
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
                for t in new:  # sources are ordinary rows (< limit), targets are not: no snapshot needed
                    src = torch.tensor(sources[t], dtype=torch.long, device=w.device)
                    w[id_of[t]] = w.index_select(0, src).double().mean(0).to(w.dtype)
    if config is not None and rows is not None and rows != old_rows:
        _set_vocab_size(config, rows)
    info = {"grid_size": vocab.grid_size, "offset_rounds": vocab.offset_rounds, "n_tokens": len(ids),
            "first_id": min(ids), "last_id": max(ids), "ids_contiguous": ids == list(range(min(ids), max(ids) + 1)),
            "digest": tokens_digest(vocab.tokens), "ids": list(ids), "newly_added": len(new),
            "vocab_rows": rows, "tokenizer_len": len(tokenizer)}
    if model is not None:
        info["tied"] = embeddings_tied(model)
        model.getok_info = info
    return info


__all__ = ["vocab_from_env", "init_text", "source_ids", "add_getok_tokens", "check_single_ids",
           "prepare_model_vocab", "embeddings_tied", "tokens_digest", "ENV_GRID_SIZE", "ENV_OFFSET_ROUNDS"]
