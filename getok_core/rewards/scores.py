"""The small scores every component is built from (SPEC §6), each in [0, 1]: the sentence
non-repetition score, the piecewise-linear mask reward, the boxscore, the clamp into [0, 1], and
the weighted result of a set of components."""

from __future__ import annotations

import re

import numpy as np

from ..codec.text import as_text
from .params import DEFAULT_PARAMS, RewardParams, RewardResult

#: At most this many error entries in a ``RewardResult`` (then one "... and k more").
MAX_ERRORS = 20

_SENTENCE_SPLIT = re.compile(r"[.!?\n]")
_MARKUP_RE = re.compile(r"</?(?:think|answer)>")


def unit(x) -> float:
    """``x`` as a float clamped into [0, 1] (NaN -> 0)."""
    x = float(x)
    if not x > 0.0:  # also NaN
        return 0.0
    return 1.0 if x > 1.0 else x


def nonrepeat_score(text) -> float:
    """1 when no sentence (``text`` split on . ! ? and newlines, each stripped and case-folded,
    empty ones ignored) occurs twice or more, else 0. The ``<think>`` / ``<answer>`` tags
    (and their closing tags) count as sentence boundaries, so "<think>It is red. It is red."
    repeats."""
    seen = set()
    for s in _SENTENCE_SPLIT.split(_MARKUP_RE.sub("\n", as_text(text))):
        s = s.strip().casefold()
        if not s:
            continue
        if s in seen:
            return 0.0
        seen.add(s)
    return 1.0


def mask_reward(iou: float, params: RewardParams = DEFAULT_PARAMS) -> float:
    """Piecewise-linear mask reward of a mask IoU through ``params.mask_knots`` (clamped to
    the first / last knot outside their range)."""
    xs, ys = zip(*params.mask_knots)
    return unit(float(np.interp(float(iou), xs, ys)))


def boxscore_matrix(pred, target, size, scale: float = DEFAULT_PARAMS.boxscore_scale) -> np.ndarray:
    """Boxscore of every normalized box of ``pred`` (N, 4) against every box of ``target``
    (M, 4) in an image of ``size`` = (W, H): max(0, 1 - mean corner L1 distance in pixels /
    (scale * pixel diagonal of the target)), an (N, M) array in [0, 1]. A row of NaN (no box)
    and a target without extent score 0."""
    p = np.asarray(pred, float).reshape(-1, 4)[:, None, :]
    t = np.asarray(target, float).reshape(-1, 4)[None, :, :]
    w, h = float(size[0]), float(size[1])
    d = np.abs(p - t)
    l1 = ((d[..., 0] + d[..., 2]) * w + (d[..., 1] + d[..., 3]) * h) / 2.0
    diag = np.hypot((t[..., 2] - t[..., 0]) * w, (t[..., 3] - t[..., 1]) * h)
    with np.errstate(invalid="ignore", divide="ignore"):
        bs = np.where(diag > 0, 1.0 - l1 / (scale * np.where(diag > 0, diag, 1.0)), 0.0)
    return np.clip(np.nan_to_num(bs, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)


def boxscore(pred, target, size, scale: float = DEFAULT_PARAMS.boxscore_scale) -> float:
    """``boxscore_matrix`` of one pair of normalized boxes; 0 when either is None."""
    if pred is None or target is None:
        return 0.0
    return float(boxscore_matrix([pred], [target], size, scale)[0, 0])


def weighted_result(components: dict[str, float], weights, errors: list[str], details: dict) -> RewardResult:
    """The ``RewardResult`` of ``components`` (each clamped into [0, 1]): ``overall`` their sum
    weighted by the same-named fields of ``weights``; at most ``MAX_ERRORS`` error entries."""
    comps = {k: unit(v) for k, v in components.items()}
    overall = float(sum(getattr(weights, k) * v for k, v in comps.items()))
    errs = errors[:MAX_ERRORS] + ([f"... and {len(errors) - MAX_ERRORS} more"] if len(errors) > MAX_ERRORS else [])
    return RewardResult(overall=overall, components=comps, errors=errs, details=details)


def zero_result(names, with_mask: bool, mask_name: str, weights, error: str) -> RewardResult:
    """Every component of ``names`` 0 (``mask_name`` left out without a decoder), one error."""
    comps = {k: 0.0 for k in names if with_mask or k != mask_name}
    return weighted_result(comps, weights, [error], {})


__all__ = ["MAX_ERRORS", "unit", "nonrepeat_score", "mask_reward", "boxscore", "boxscore_matrix",
           "weighted_result", "zero_result"]
