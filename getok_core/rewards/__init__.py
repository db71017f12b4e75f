"""GRPO rewards for GETok answers (SPEC §6): the grid stage and the offset-refinement stage.

Modules: ``params`` (weights, parameters, ``RewardResult``), ``scores`` (the per-component
formulas), ``truth`` (the parsed ground truth and its cache), ``answers`` (reading a grid
answer), ``matching`` (predictions to targets), ``decoding`` (masks for a batch, shared decoders),
``grid`` and ``refine`` (the two stages), ``setup`` (reward kwargs -> decoder, weights, stage).
Two more are not imported here (they import this package): ``dialogue`` (the refinement
dialogue: stop reasons, rounds, replay, dialogue scoring) and ``frameworks`` (what the EasyR1,
verl and ms-swift adapters share: stage dispatch, result flattening, reading their arguments).

Grid stage (``grid``: ``score_grid`` / ``score_grid_batch``): components ``format``,
``nonrepeat``, ``box``, ``mask`` (only with a mask decoder) and ``points``. Refinement stage
(``refine``: ``score_refine`` / ``score_refine_batch``): components ``format``, ``point``, ``box``
and ``mask_gain`` (only with a mask decoder), relative to the turn-1 proposal. Every component is
in [0, 1]; ``overall`` is the weighted sum of the components present (``GridWeights`` /
``RefineWeights``), so it lies in [0, sum of the weights of the components present].
``docs/rewards.md`` gives every formula.

Nothing here raises on a response or a ground truth, whatever they hold: an unparsable answer
scores 0 on every component but ``nonrepeat``; a ground truth that ``groundtruth.loads`` rejects
scores 0 on every component (and ``overall``) with an error entry in ``RewardResult.errors``; a
mask decoder that fails on an image scores IoU 0 for the masks of that image, with an error entry.
Results are deterministic: the same inputs give the same numbers.

The batch functions group the mask-decoder requests of all responses by image and call
``decoder.decode`` once per batch (identical requests decoded once), so each image is encoded
once per batch.

Modules: ``params`` (components, weights, constants, ``RewardResult``), ``scores`` (the small
[0, 1] scores), ``truth`` (ground truths prepared for scoring, and their cache), ``answers``
(reading a grid answer, the format rule), ``matching`` (Hungarian matching, spread, points
quality), ``decoding`` (mask decode batches, shared decoders), ``grid``, ``refine``, ``setup``
(adapter keyword arguments), ``dialogue`` (the refinement dialogue).
"""

from ..codec.geometry import box_iou
from .answers import TASK_ELEMENTS, grid_format_ok
from .decoding import cached_decoder
from .grid import score_grid, score_grid_batch
from .params import (DEFAULT_PARAMS, GRID_COMPONENTS, REFINE_COMPONENTS, GridWeights, RefineWeights, RewardParams,
                     RewardResult, weights_from)
from .refine import refine_format_ok, refined_instances, score_refine, score_refine_batch
from .scores import boxscore, mask_reward, nonrepeat_score
from .setup import SETUP_KEYS, RewardSetup, setup_from_kwargs
from .truth import clear_cache

__all__ = ["GridWeights", "RefineWeights", "RewardParams", "DEFAULT_PARAMS", "RewardResult",
           "GRID_COMPONENTS", "REFINE_COMPONENTS", "TASK_ELEMENTS",
           "score_grid", "score_grid_batch", "score_refine", "score_refine_batch",
           "nonrepeat_score", "mask_reward", "box_iou", "boxscore", "grid_format_ok", "refine_format_ok",
           "weights_from", "refined_instances", "clear_cache", "cached_decoder", "RewardSetup", "setup_from_kwargs",
           "SETUP_KEYS"]
