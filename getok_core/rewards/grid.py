"""The grid-stage reward (SPEC §6, stage 1): components ``format``, ``nonrepeat``, ``box``,
``mask`` (only with a mask decoder) and ``points`` of grid answers against ground truths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..codec.instance import decode_instance
from ..codec.text import as_text
from ..codec.vocab import GetokVocab
from .answers import GridAnswer, grid_format_ok, read_answer
from .decoding import DecodeBatch, decodable, mask_iou
from .matching import Matching, Predictions, match_batch, mean_nn_batch, points_quality, spread_of
from .params import DEFAULT_PARAMS, GRID_COMPONENTS, GridWeights, RewardParams, RewardResult, weights_from
from .scores import mask_reward, nonrepeat_score, weighted_result, zero_result
from .truth import Truth, read_truths, release


@dataclass
class GridState:
    """One response on its way to a grid reward: its truth and answer, the ``format`` and
    ``nonrepeat`` values, then (with targets and predictions) the matching, the mean
    nearest-neighbour distance of each prediction's points (pixels) and the decode request of
    each matched pair (pair index -> request index)."""

    truth: Truth
    answer: GridAnswer
    fmt: float
    nonrep: float
    preds: Predictions | None = None
    matching: Matching | None = None
    nn: list[float] = field(default_factory=list)
    requests: dict[int, int] = field(default_factory=dict)


def score_grid(response, ground_truth, vocab: GetokVocab | None = None, decoder=None,
               weights: GridWeights | dict | None = None, params: RewardParams = DEFAULT_PARAMS) -> RewardResult:
    """Grid-stage reward of one response; see ``score_grid_batch``."""
    return score_grid_batch([response], [ground_truth], vocab, decoder, weights, params)[0]


def score_grid_batch(responses: Sequence, ground_truths: Sequence, vocab: GetokVocab | None = None,
                     decoder=None, weights: GridWeights | dict | None = None,
                     params: RewardParams = DEFAULT_PARAMS) -> list[RewardResult]:
    """Grid-stage rewards of ``responses`` against ``ground_truths`` (ground-truth JSON strings
    or dicts, one per response; identical ones are read once).

    ``decoder``: a ``MaskDecoder`` (``decode(requests)``) for the ``mask`` component, or None to
    leave that component out. The masks of all matched predictions of the batch are decoded in
    one call, each distinct (image, instance) once, with the ground truth's ``image_path`` as the
    image source and its ``image_key`` (or path) as the cache key.
    """
    vocab = GetokVocab() if vocab is None else vocab
    weights = weights_from(weights, GridWeights)
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses for {len(ground_truths)} ground truths")
    truths = read_truths(ground_truths, vocab)
    batch = None if decoder is None else DecodeBatch(decoder)
    staged: list = []  # ("broken", error) | ("same", earlier index) | ("ok", GridState)
    memo: dict = {}
    for response, truth in zip(responses, truths):
        text = as_text(response)
        if not truth.ok:
            staged.append(("broken", truth.error))
            continue
        key = (text, id(truth))
        if key in memo:  # identical response to the same ground truth: same reward
            staged.append(("same", memo[key]))
            continue
        memo[key] = len(staged)
        staged.append(("ok", _grid_state(text, truth, vocab, params.think)))
    _match_states([st for kind, st in staged if kind == "ok" and st.preds is not None], vocab, params, batch)
    out: list[RewardResult] = []
    for kind, st in staged:
        if kind == "broken":
            out.append(zero_result(GRID_COMPONENTS, batch is not None, "mask", weights, st))
        elif kind == "same":
            out.append(out[st].copy())
        else:
            out.append(_grid_result(st, weights, params, batch))
    release(truths)
    return out


def _grid_state(text: str, truth: Truth, vocab: GetokVocab, think: bool = True) -> GridState:
    ans = read_answer(text, vocab)
    st = GridState(truth, ans, 1.0 if grid_format_ok(text, ans, truth.task, think) else 0.0, nonrepeat_score(text))
    if not truth.no_target and ans.cells:
        st.preds = Predictions.of(ans.cells, vocab)
    return st


def _match_states(scored: list[GridState], vocab: GetokVocab, params: RewardParams, batch) -> None:
    """Match, measure the spread of and queue the masks of the states with predictions."""
    for st, m in zip(scored, match_batch([(st.preds, st.truth) for st in scored], params)):
        st.matching = m
    for st, nn in zip(scored, mean_nn_batch([(st.preds, st.truth.size) for st in scored])):
        st.nn = nn
    if batch is None:
        return
    for st in scored:
        for k, (i, j) in enumerate(st.matching.pairs):
            if st.truth.targets[j].kind == "mask":
                inst = decode_instance(st.answer.cells[i], vocab)
                if decodable(inst):
                    st.requests[k] = batch.add(st.truth, inst)
    batch.run()


def _grid_result(st: GridState, weights: GridWeights, params: RewardParams, batch) -> RewardResult:
    truth, ans = st.truth, st.answer
    comps = {"format": st.fmt, "nonrepeat": st.nonrep}
    errors = list(ans.errors)
    pairs = [] if st.matching is None else st.matching.pairs
    details: dict = {"pairs": list(pairs)}
    if truth.no_target:
        v = 1.0 if ans.no_target else 0.0
        comps.update(box=v, **({"mask": v} if batch is not None else {}), points=v)
        return weighted_result(comps, weights, errors, details)
    denom = max(len(ans.cells), len(truth.targets))
    box_sum = pts_num = pts_den = mask_sum = 0.0
    ious = []
    for k, (i, j) in enumerate(pairs):
        target, m = truth.targets[j], st.matching
        if st.preds.boxes[i] is not None and target.box is not None:
            box_sum += 0.5 * m.iou[i, j] + 0.5 * m.boxscore[i, j]
        n_pts = st.preds.counts[i]
        if n_pts:
            spread = spread_of(st.nn[i], n_pts, target.area_px, params.points_spread_scale)
            pts_num += n_pts * points_quality(n_pts, m.hit[i, j], spread, params)
            pts_den += n_pts
        if batch is not None:
            miou = 0.0
            idx = st.requests.get(k)
            if idx is not None:
                pred, err = batch.mask(idx)
                if err:
                    errors.append(err)
                miou = mask_iou(pred, target, truth.ignore())
            ious.append(miou)
            mask_sum += mask_reward(miou, params)
    comps["box"] = box_sum / denom if denom else 0.0
    if batch is not None:
        comps["mask"] = mask_sum / denom if denom else 0.0
        details["mask_ious"] = ious
    comps["points"] = (pts_num / pts_den) * (len(pairs) / denom) if pts_den > 0 and denom else 0.0
    if batch is not None and batch.reports_fallback:
        details["mask_fallback"] = batch.fallback_share(st.requests.values())
    return weighted_result(comps, weights, errors, details)


__all__ = ["GridState", "score_grid", "score_grid_batch"]
