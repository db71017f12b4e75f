"""What a reward is made of: the component names of both stages, their weights in ``overall``,
the constants of SPEC §6 (``RewardParams``) and the result type (``RewardResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

GRID_COMPONENTS = ("format", "nonrepeat", "box", "mask", "points")
REFINE_COMPONENTS = ("format", "point", "box", "mask_gain")


@dataclass(frozen=True)
class GridWeights:
    """Weights of the grid-stage components in ``overall``. Defaults: format 0.5, nonrepeat 0.5,
    box 1, mask 1, points 1, so ``overall`` is in [0, 4] with a mask decoder and [0, 3] without
    (the mask component is then absent and its weight unused)."""

    format: float = 0.5
    nonrepeat: float = 0.5
    box: float = 1.0
    mask: float = 1.0
    points: float = 1.0

    def __post_init__(self):
        _check_weights(self)


@dataclass(frozen=True)
class RefineWeights:
    """Weights of the refinement-stage components. Defaults: format 0.5, point 1, box 1,
    mask_gain 1: ``overall`` in [0, 3.5] with a mask decoder, [0, 2.5] without."""

    format: float = 0.5
    point: float = 1.0
    box: float = 1.0
    mask_gain: float = 1.0

    def __post_init__(self):
        _check_weights(self)


def _check_weights(w) -> None:
    for f in fields(w):
        v = getattr(w, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{type(w).__name__}.{f.name} must be a finite number, got {v!r}")


def weights_from(value, cls):
    """A weights object of class ``cls`` from None (defaults), an instance, or a mapping
    (unknown keys raise ValueError: a typo in a config must not go unnoticed)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if hasattr(value, "items"):
        names = {f.name for f in fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {sorted(map(str, unknown))}; known: {sorted(names)}")
        return cls(**{k: float(v) for k, v in value.items()})
    raise ValueError(f"weights must be a {cls.__name__}, a mapping or None, got {type(value).__name__}")


@dataclass(frozen=True)
class RewardParams:
    """The constants of SPEC §6 (all defaults there).

    ``match_weights``: weights of box IoU, point-hit ratio and boxscore in the matching
    similarity S. ``boxscore_scale``: boxscore = max(0, 1 - mean corner L1 / (scale * diag)).
    ``mask_knots``: (IoU, reward) knots of the piecewise-linear mask reward. ``points_saturation``
    (5), ``points_spread_scale`` (0.2), ``points_penalty`` (0.02): the semantic-critical points
    quality q = hit * (1 - exp(-m / saturation)) * spread - penalty * m. ``think`` (True): the grid
    ``format`` rule wants one ``<think>...</think>`` before the answer (SPEC §6); False: the text is
    the answer block alone, no ``<think>`` (a model fine-tuned on answers without thinking).
    """

    match_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    boxscore_scale: float = 0.25
    mask_knots: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.5, 0.2), (0.75, 0.6), (0.9, 1.0),
                                                   (1.0, 1.0))
    points_saturation: float = 5.0
    points_spread_scale: float = 0.2
    points_penalty: float = 0.02
    think: bool = True

    def __post_init__(self):
        if not isinstance(self.think, bool):
            raise ValueError(f"RewardParams.think must be True or False, got {self.think!r}")


DEFAULT_PARAMS = RewardParams()


@dataclass
class RewardResult:
    """One response's reward. ``components`` maps each component present to its value in
    [0, 1]; ``overall`` is their weighted sum; ``errors`` lists what went wrong (parse errors of
    the answer, a rejected ground truth, a failing decoder), capped at 20 entries; ``details``
    holds the matching (pairs (prediction, target)) and the mask IoUs, for inspection."""

    overall: float
    components: dict[str, float]
    errors: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """``{"overall": ..., <component>: ...}``: every value a float (what the trainers log)."""
        return {"overall": float(self.overall), **{k: float(v) for k, v in self.components.items()}}

    def copy(self) -> "RewardResult":
        """An independent copy (its own dicts and lists)."""
        return RewardResult(self.overall, dict(self.components), list(self.errors), dict(self.details))


__all__ = ["GRID_COMPONENTS", "REFINE_COMPONENTS", "GridWeights", "RefineWeights", "weights_from", "RewardParams",
           "DEFAULT_PARAMS", "RewardResult"]
