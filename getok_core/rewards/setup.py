"""What a trainer adapter's keyword arguments select (``setup_from_kwargs``): the vocabulary,
the shared mask decoder, the weights of both stages, the refinement round and the stage."""

from __future__ import annotations

from dataclasses import dataclass

from ..codec.vocab import GetokVocab
from .decoding import NO_DECODER, cached_decoder
from .params import DEFAULT_PARAMS, GridWeights, RefineWeights, RewardParams, weights_from

#: Keyword arguments the adapters read themselves; every other one goes to the decoder.
SETUP_KEYS = ("decoder", "decoder_kwargs", "weights", "grid_size", "offset_rounds", "round", "stage", "think")


@dataclass
class RewardSetup:
    """What an adapter's keyword arguments select: the vocabulary, the mask decoder (or None),
    the weights of both stages, the refinement round, the stage (``grid`` / ``refine``) and the
    reward constants (``params``: ``think`` is the one an adapter sets)."""

    vocab: GetokVocab
    decoder: object
    grid_weights: GridWeights
    refine_weights: RefineWeights
    round: int = 1
    stage: str = "grid"
    params: RewardParams = DEFAULT_PARAMS


def _flag(value, name: str) -> bool:
    """A boolean setting: True / False, or the strings true / false / 1 / 0 (an environment
    variable, a command-line override); anything else raises ValueError naming ``name``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def setup_from_kwargs(kwargs: dict, ignore=()) -> RewardSetup:
    """A ``RewardSetup`` from an adapter's keyword arguments (EasyR1's
    ``worker.reward.reward_function_kwargs``, verl's ``custom_reward_function.reward_kwargs``).

    ``decoder``: ``region`` / ``sam`` / ``sam2`` / ``ray`` (the SAM service,
    ``getok_core.decoders.service``) / none; its arguments are ``decoder_kwargs`` (a mapping) plus
    every key that is not one of ``SETUP_KEYS`` (e.g. ``checkpoint``, ``device``, ``model_type``,
    ``mode``; for ``ray``: ``app``, ``address``, ``timeout_s``, ``retries``, ``fallback``).
    ``weights``: a mapping of component weights (of the stage scored; refine weights under the
    same names). ``grid_size`` (32), ``offset_rounds`` (1), ``round`` (1), ``stage`` (``grid``),
    ``think`` (true: the grid ``format`` wants ``<think>...</think>`` before the answer; false: the
    answer block alone, for a model fine-tuned without thinking).
    Keys in ``ignore`` are dropped. Raises ValueError on keys no one reads when there is no
    decoder (a typo must not pass silently), on a bad stage or weights.
    """
    kw = {k: v for k, v in dict(kwargs or {}).items() if k not in ignore}
    name = kw.pop("decoder", None)
    dec_kwargs = dict(kw.pop("decoder_kwargs", None) or {})
    weights = kw.pop("weights", None)
    grid_size = int(kw.pop("grid_size", 32))
    offset_rounds = int(kw.pop("offset_rounds", 1))
    rnd = int(kw.pop("round", 1))
    stage = str(kw.pop("stage", "grid"))
    think = _flag(kw.pop("think", True), "think")
    if stage not in ("grid", "refine"):
        raise ValueError(f"stage must be 'grid' or 'refine', got {stage!r}")
    if name in NO_DECODER and (kw or dec_kwargs):
        raise ValueError(f"unknown reward argument(s) {sorted(map(str, {**kw, **dec_kwargs}))} "
                         f"(decoder arguments need decoder=region|sam|sam2|ray; known: {list(SETUP_KEYS)})")
    dec_kwargs.update(kw)
    if hasattr(weights, "items"):
        weights = dict(weights.items())
    if weights is not None and not isinstance(weights, dict):
        raise ValueError(f"weights must be a mapping, got {type(weights).__name__}")
    return RewardSetup(
        vocab=GetokVocab(grid_size=grid_size, offset_rounds=offset_rounds),
        decoder=cached_decoder(name, **dec_kwargs),
        grid_weights=weights_from(weights, GridWeights) if stage == "grid" else GridWeights(),
        refine_weights=weights_from(weights, RefineWeights) if stage == "refine" else RefineWeights(),
        round=rnd, stage=stage, params=RewardParams(think=think))


__all__ = ["SETUP_KEYS", "RewardSetup", "setup_from_kwargs"]
