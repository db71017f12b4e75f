"""The GETok vocabulary in a Hugging Face style tokenizer, framework-free: which text initializes
each new token's embedding row, adding the tokens as non-special added tokens, checking that each
encodes to one id, and decoding with the GETok tokens kept. Tokenizers are duck-typed (``encode``,
``decode``, ``get_vocab``, ``add_tokens``, ``convert_tokens_to_ids``, ``added_tokens_decoder``):
nothing here imports transformers or torch (``tokenizers.AddedToken`` is imported inside
``add_getok_tokens``). The model side (resizing and initializing embedding rows, torch) is the
ms-swift plugin's ``swift_plugin/getok_tokens.py``.

Why non-special: an added token is matched as a whole before BPE (one id, never split) whether or
not it is special, but ``decode(skip_special_tokens=True)``, which EasyR1, verl and vLLM use on
responses, drops special tokens, so special GETok tokens would vanish from the text the rewards read.
"""

from __future__ import annotations

import hashlib

from ..codec.text import TOKEN_RE
from ..codec.vocab import GetokVocab


def init_text(token: str, vocab: GetokVocab) -> str:
    """The plain text whose token embeddings are averaged to initialize ``token``'s row: a grid
    token the text of its cell (``<grid12,14>`` <- ``"12,14"``), an offset token ``"offset dx,dy"``,
    ``<DELETE>`` and the tags their spelling."""
    cell = vocab.token_cell(token)
    if cell is not None:
        return f"{cell[0]},{cell[1]}"
    off = vocab.token_offset(token)
    if off is not None:
        return f"offset {off[0]},{off[1]}"
    return token  # <DELETE>, <box>, </box>, <none>, ...: their spelling


def sincos_code(uv, dim: int, n_freq: int | None = None, max_freq: float = 1.0, seed: int = 0):
    """A 2-D sinusoidal code of points: ``uv`` (N, 2) in the normalized image frame -> float64 array
    (N, ``dim``), every row of unit RMS.

    Features ``sin / cos(pi * f * u)`` and the same of ``v`` for ``n_freq`` (default
    ``min(16, dim // 4)``) frequencies ``f`` geometric from 0.5 to ``max_freq``, mapped into ``dim``
    through fixed orthonormal directions (``seed``), so no coordinate of the embedding is singled
    out: nearby points get close codes, distinct points distinct ones."""
    import numpy as np

    n_freq = min(16, dim // 4) if n_freq is None else n_freq
    k = 4 * n_freq
    if n_freq < 1 or dim < k:
        raise ValueError(f"embedding width {dim} is below the code's {k} features (n_freq={n_freq})")
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    f = np.geomspace(0.5, max(max_freq, 0.5), n_freq)
    ang = np.pi * uv[:, :, None] * f[None, None, :]  # (points, 2, n_freq)
    feats = np.concatenate([np.sin(ang), np.cos(ang)], axis=2).reshape(len(uv), k)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))  # orthonormal columns
    code = feats @ q.T
    return code / np.sqrt((code ** 2).mean(axis=1, keepdims=True))


def grid_code(vocab: GetokVocab, dim: int, n_freq: int | None = None, seed: int = 0) -> dict:
    """The 2-D sinusoidal code (``sincos_code``) of every grid cell: grid token -> float64 vector
    of length ``dim`` and unit RMS, at the cell centre ``vocab.cell_point(cell)``, frequencies up to
    ``grid_size`` (whole image to one cell). Neighbouring cells get close codes and every cell a
    different one, unlike the mean of its text's digit embeddings, which ignores digit order
    (``<grid12,14>``, ``<grid14,12>`` and ``<grid11,24>`` share one)."""
    tokens = [t for t in vocab.tokens if vocab.token_cell(t) is not None]
    uv = [vocab.cell_point(vocab.token_cell(t)) for t in tokens]
    return dict(zip(tokens, sincos_code(uv, dim, n_freq, max_freq=vocab.grid_size, seed=seed)))


def tokens_digest(tokens) -> str:
    """A short digest of a token list (stored with adapters to catch a vocabulary mismatch)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:16]


def text_ids(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` without the tokenizer's special tokens (BOS ...)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def source_ids(tokenizer, vocab: GetokVocab) -> dict[str, list[int]]:
    """For every GETok token, the ids of its init text in ``tokenizer`` (call before adding)."""
    return {tok: text_ids(tokenizer, init_text(tok, vocab)) for tok in vocab.tokens}


def ordinary_limit(tokenizer) -> int:
    """Ids below this are ordinary BPE tokens (the first added token's id, or the vocab size)."""
    added = [i for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}]
    base = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    return min([base, *added]) if added else base


def special_tokens(tokenizer) -> set[str]:
    """The tokenizer's special tokens, added special tokens included."""
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(t, "special", False):
            special.add(str(t))
    return special


def add_getok_tokens(tokenizer, vocab: GetokVocab):
    """Add the GETok tokens (non-special) to ``tokenizer``.

    Returns ``(ids, new, sources)``: the id of every token of ``vocab.tokens``, the tokens that were
    not there before, and the init source ids of those (computed before adding; ordinary BPE ids,
    below ``ordinary_limit``, never untrained padding rows). Raises ValueError if a GETok token is
    already in the tokenizer as a *special* token (e.g. from ``--new_special_tokens``): it would be
    stripped by ``skip_special_tokens=True``; RuntimeError if an init text maps to a non-ordinary id
    or a token does not encode to its one id.
    """
    from tokenizers import AddedToken

    existing = tokenizer.get_vocab()
    special = special_tokens(tokenizer)
    bad = [t for t in vocab.tokens if t in special]
    if bad:
        raise ValueError(
            f"{len(bad)} GETok token(s) (e.g. {bad[0]}) are already special tokens of this tokenizer, so "
            "decode(skip_special_tokens=True) would drop them from responses. Do not pass the GETok tokens "
            "with --new_special_tokens: the getok_* model types add them as non-special tokens.")
    new = [t for t in vocab.tokens if t not in existing]
    limit = ordinary_limit(tokenizer)
    sources = {}
    for t in new:
        ids = text_ids(tokenizer, init_text(t, vocab))
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
        got = text_ids(tokenizer, t)
        if got != [i]:
            raise RuntimeError(f"GETok token {t} encodes to {got}, expected [{i}]")
    sample = "".join(tokens[:64])
    if text_ids(tokenizer, sample) != list(ids[:64]):
        raise RuntimeError("GETok tokens do not encode one id each when concatenated")
    if tokenizer.decode(list(ids[:64]), skip_special_tokens=True) != sample:
        raise RuntimeError("GETok tokens do not survive decode(skip_special_tokens=True)")


def getok_token_ids(tokenizer) -> set[int]:
    """The ids of the tokenizer's added tokens that are GETok tokens (``codec.text.TOKEN_RE``)."""
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    return {i for t, i in added.items() if TOKEN_RE.fullmatch(t)}


class KeepGetokTokens:
    """A tokenizer proxy whose ``decode(ids, skip_special_tokens=True)`` drops every special
    token except the GETok ones (``getok_token_ids``); everything else is the tokenizer's. For
    trainers that decode responses with ``skip_special_tokens=True`` when the GETok tokens were
    added as special tokens."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._drop = set(getattr(tokenizer, "all_special_ids", []) or []) - getok_token_ids(tokenizer)

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs):
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._drop]
        return self._tok.decode(ids, skip_special_tokens=False, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def config_vocab_size(config) -> int | None:
    """The vocabulary size of a model config (its ``text_config``'s for a multimodal model)."""
    text = getattr(config, "text_config", None)
    n = getattr(text, "vocab_size", None) if text is not None else None
    return n if n is not None else getattr(config, "vocab_size", None)


def set_config_vocab_size(config, n: int) -> None:
    """Set ``vocab_size`` on ``config`` and on its ``text_config`` (where they have one)."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "vocab_size"):
            cfg.vocab_size = n


__all__ = ["init_text", "sincos_code", "grid_code", "tokens_digest", "text_ids", "source_ids", "ordinary_limit",
           "special_tokens", "add_getok_tokens", "check_single_ids", "getok_token_ids", "KeepGetokTokens",
           "config_vocab_size", "set_config_vocab_size"]
