"""Model output as text: coercion of whatever a framework hands over, trailing chat specials,
and the pattern of one GETok token. One definition each, used by the parser, the rewards, the
refinement dialogue and the plugins.
"""

from __future__ import annotations

import re

from .vocab import ELEMENTS

#: One GETok token, written exactly as ``GetokVocab.tokens`` writes it: ``<gridX,Y>``,
#: ``<OFFdx,dy>``, ``<DELETE>``, ``<none>`` and the structural tags. Digits are not bounded here:
#: whether a cell or an offset exists is the vocabulary's question (``GetokVocab.is_token``).
TOKEN_PATTERN = (r"<(?:grid\d+,\d+|OFF-?\d+,-?\d+|DELETE|none|/?(?:"
                 + "|".join((*ELEMENTS, "offset")) + r"))>")
TOKEN_RE = re.compile(TOKEN_PATTERN)
#: One grid token; group 1 and 2 are X and Y.
GRID_TOKEN_RE = re.compile(r"<grid(\d+),(\d+)>")

#: How far back from the end a trailing chat special (``<|name|>``) may start.
_MAX_SPECIAL = 64


def as_text(x) -> str:
    """``x`` as a str, never raising: a str as it is; bytes decoded as UTF-8 (bad bytes replaced);
    None -> ""; a list of OpenAI-style content parts -> its text parts joined; anything else
    ``str(x)`` ("" if that raises)."""
    if isinstance(x, str):
        return x
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", errors="replace")
    if x is None:
        return ""
    if isinstance(x, list) and all(isinstance(p, dict) for p in x):
        return "".join(p.get("text", "") for p in x if p.get("type") == "text" and isinstance(p.get("text"), str))
    try:
        return str(x)
    except Exception:
        return ""


def strip_trailing_specials(text: str) -> str:
    """``text`` without trailing whitespace and trailing chat special tokens ``<|name|>``
    (``<|im_end|>``, ``<|endoftext|>``, ...: a decoder that does not skip special tokens, a server
    or a framework's history keeps them), repeatedly. Nothing else is touched."""
    t = text.rstrip()
    while t.endswith("|>"):
        start = t.rfind("<|", max(0, len(t) - _MAX_SPECIAL))
        if start < 0 or "<" in t[start + 2:-2] or ">" in t[start + 2:-2]:
            break
        t = t[:start].rstrip()
    return t


__all__ = ["TOKEN_PATTERN", "TOKEN_RE", "GRID_TOKEN_RE", "as_text", "strip_trailing_specials"]
