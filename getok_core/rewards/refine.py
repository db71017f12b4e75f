"""The refinement-stage reward (SPEC §6, stage 2): components ``format``, ``point``, ``box`` and
``mask_gain`` (only with a mask decoder) of offset answers, relative to the turn-1 proposal.

Points and boxes are normalized (u, v); a round-r offset step is ``vocab.offset_step(r)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..codec.answer import ANSWER_CLOSE, ANSWER_OPEN, ParsedOffsets, parse_offsets
from ..codec.geometry import box_iou
from ..codec.instance import Instance, anchors, apply_offsets, decode_instance
from ..codec.text import as_text, strip_trailing_specials
from ..codec.vocab import OFFSET_STEPS, GetokVocab
from .answers import read_answer
from .decoding import DecodeBatch, decodable, mask_iou
from .matching import Predictions, match_batch
from .params import DEFAULT_PARAMS, REFINE_COMPONENTS, RefineWeights, RewardParams, RewardResult, weights_from
from .scores import weighted_result, zero_result
from .truth import Truth, TruthTarget, read_truths, release

#: Slack of the IoU comparisons of the ``box`` component.
IOU_EPS = 1e-9
#: The 9 one-step moves (dx, dy) of a point's neighbourhood, (0, 0) included.
_MOVES = np.array([(dx, dy) for dy in OFFSET_STEPS for dx in OFFSET_STEPS], float)
#: One canonical answer line of a refinement answer.
_OFFSET_LINE_RE = re.compile(r"<offset>(?:<OFF-?\d,-?\d>|<DELETE>)*</offset>")


@dataclass
class Proposal:
    """The turn-1 proposal of a response, as refined by the rounds before it: its ``instances``,
    the target each was matched to (``target_of``, None: unmatched), its parse ``errors`` and the
    decode request of each instance's mask (``req``; None: not decoded)."""

    instances: list[Instance]
    target_of: list[int | None]
    errors: list[str]
    req: list[int | None]


@dataclass
class OffsetState:
    """One offset answer on its way to a refinement reward: the ``format`` value, one point
    reward in [-1, 1] per instance with points (``point_r``), one box reward per instance with a
    box (``box_r``) and the decode request of each refined instance (``refined_req``; -1: nothing
    left to decode)."""

    truth: Truth
    proposal: Proposal
    offsets: ParsedOffsets
    fmt: float
    point_r: list[float] = field(default_factory=list)
    box_r: list[float] = field(default_factory=list)
    refined_req: list[int | None] = field(default_factory=list)

    def line(self, i: int):
        """The offsets of instance i's line, or None (missing or malformed)."""
        return self.offsets.offsets[i] if i < len(self.offsets.offsets) else None


def refine_format_ok(text: str, parsed_offsets) -> bool:
    """The refinement ``format`` rule: one ``<answer>`` block, at the end of the text (trailing
    whitespace / chat special tokens allowed; what comes before it is free: an optional
    ``<think>``, or the feedback turn of a multi-turn transcript), every non-blank line of it
    exactly one ``<offset>...</offset>``, and ``parse_offsets`` found no error (one line per
    turn-1 instance, one offset / ``<DELETE>`` per turn-1 anchor, no ``<DELETE>`` on a box
    corner)."""
    if not parsed_offsets.valid or not parsed_offsets.found_answer:
        return False
    t = strip_trailing_specials(text)
    if not t.endswith(ANSWER_CLOSE) or t.count(ANSWER_OPEN) != 1 or t.count(ANSWER_CLOSE) != 1:
        return False
    body = t[t.find(ANSWER_OPEN) + len(ANSWER_OPEN):-len(ANSWER_CLOSE)]
    return all(_OFFSET_LINE_RE.fullmatch(ln) for ln in body.split("\n") if ln.strip())


def refined_instances(instances: Sequence[Instance], offsets_text, vocab: GetokVocab, round: int) -> list[Instance]:
    """``instances`` after the offset answer ``offsets_text`` of refinement round ``round``:
    instance i moved by its line (deleted points leave; see ``instance.apply_offsets``); an
    instance whose line is missing or malformed stays as it was. Never raises."""
    po = parse_offsets(offsets_text, instances, vocab)
    out = []
    for i, inst in enumerate(instances):
        offs = po.offsets[i] if i < len(po.offsets) else None
        out.append(inst if offs is None else apply_offsets(inst, list(offs), vocab, round))
    return out


def best_reachable_iou(box, target_box, vocab: GetokVocab, round: int) -> float:
    """Largest IoU with ``target_box`` over every one-step offset of both corners of ``box``
    (normalized boxes; the step of refinement round ``round``)."""
    d = np.array(OFFSET_STEPS, float) * vocab.offset_step(round)
    u1, v1, u2, v2 = (np.clip(box[k] + d, 0, 1) for k in range(4))
    # every (u1, u2) and (v1, v2) combination; corners re-sorted as apply_offsets does
    a1, a2 = np.minimum.outer(u1, u2).ravel(), np.maximum.outer(u1, u2).ravel()
    b1, b2 = np.minimum.outer(v1, v2).ravel(), np.maximum.outer(v1, v2).ravel()
    tu1, tv1, tu2, tv2 = target_box
    iw = np.clip(np.minimum(a2, tu2) - np.maximum(a1, tu1), 0, None)
    ih = np.clip(np.minimum(b2, tv2) - np.maximum(b1, tv1), 0, None)
    inter = iw[:, None] * ih[None, :]
    area = (a2 - a1)[:, None] * (b2 - b1)[None, :]
    union = area + (tu2 - tu1) * (tv2 - tv1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return float(np.nan_to_num(iou).max())


def score_refine(response, ground_truth, vocab: GetokVocab | None = None, proposal=None, decoder=None,
                 weights: RefineWeights | dict | None = None, params: RewardParams = DEFAULT_PARAMS,
                 round: int = 1) -> RewardResult:
    """Refinement-stage reward of one response; see ``score_refine_batch``."""
    return score_refine_batch([response], [ground_truth], vocab, None if proposal is None else [proposal],
                              decoder, weights, params, round)[0]


def _check_lengths(responses, ground_truths, proposals, prior_offsets, round) -> None:
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses for {len(ground_truths)} ground truths")
    if proposals is not None and len(proposals) != len(responses):
        raise ValueError(f"{len(proposals)} proposals for {len(responses)} responses")
    if not isinstance(round, int) or round < 1:
        raise ValueError(f"round must be an int >= 1, got {round!r}")
    if prior_offsets is not None and len(prior_offsets) != len(responses):
        raise ValueError(f"{len(prior_offsets)} prior_offsets for {len(responses)} responses")


def score_refine_batch(responses: Sequence, ground_truths: Sequence, vocab: GetokVocab | None = None,
                       proposals: Sequence | None = None, decoder=None,
                       weights: RefineWeights | dict | None = None, params: RewardParams = DEFAULT_PARAMS,
                       round: int = 1, prior_offsets: Sequence | None = None) -> list[RewardResult]:
    """Refinement-stage rewards of offset answers ``responses``.

    The turn-1 proposal of response k is ``proposals[k]`` when given (and not None), else the
    ground truth's ``extra["proposal"]`` (the turn-1 answer text). Proposal instances are
    matched to the targets with the grid stage's Hungarian matching; each refined instance is
    judged against the target its proposal was matched to (an unmatched one against no target).
    ``round`` is the refinement round (its offset step). With ``decoder`` None the
    ``mask_gain`` component is left out.

    Multi-round refinement: ``prior_offsets[k]`` (a sequence of offset answer texts, rounds
    ``round``, ``round + 1``, ...) is applied to the proposal first (``dialogue.advance``: deleted
    points leave, a malformed line leaves its instance as it was); response k is then round
    ``round + len(prior_offsets[k])`` and is judged relative to that refined geometry. The
    matching to targets stays the turn-1 proposal's.
    """
    vocab = GetokVocab() if vocab is None else vocab
    weights = weights_from(weights, RefineWeights)
    _check_lengths(responses, ground_truths, proposals, prior_offsets, round)
    truths = read_truths(ground_truths, vocab)
    batch = None if decoder is None else DecodeBatch(decoder)
    memo: dict = {}
    staged: list = []  # ("broken", error) | ("ok", OffsetState)
    for k, (response, truth) in enumerate(zip(responses, truths)):
        ptext = None if not truth.ok else _proposal_text(None if proposals is None else proposals[k], truth)
        if ptext is None:
            staged.append(("broken", truth.error or "no turn-1 proposal: pass proposals= or put the turn-1 "
                                                    "answer text in the ground truth's extra[\"proposal\"]"))
            continue
        prior = () if prior_offsets is None or prior_offsets[k] is None else tuple(
            as_text(t) for t in prior_offsets[k])
        pkey = (ptext, id(truth), prior)
        if pkey not in memo:
            memo[pkey] = _proposal(ptext, truth, vocab, params, batch, prior, round)
        prop = memo[pkey]
        if not prop.instances:
            staged.append(("broken", "turn-1 proposal has no instance to refine"
                           + (f" ({prop.errors[0]})" if prop.errors else "")))
            continue
        staged.append(("ok", _judge(as_text(response), truth, prop, vocab, batch, round + len(prior))))
    if batch is not None:
        batch.run()
    out = [zero_result(REFINE_COMPONENTS, batch is not None, "mask_gain", weights, st) if kind == "broken"
           else _refine_result(st, weights, batch) for kind, st in staged]
    release(truths)
    return out


def _proposal_text(proposal, truth: Truth) -> str | None:
    if proposal is not None:
        return as_text(proposal)
    value = truth.extra.get("proposal") if isinstance(truth.extra, dict) else None
    return value if isinstance(value, str) else None


def _proposal(ptext: str, truth: Truth, vocab: GetokVocab, params: RewardParams, batch, prior: tuple = (),
              first_round: int = 1) -> Proposal:
    ans = read_answer(ptext, vocab)
    instances = [decode_instance(c, vocab) for c in ans.cells]
    target_of: list = [None] * len(instances)
    if instances and truth.targets:
        for i, j in match_batch([(Predictions.of(ans.cells, vocab), truth)], params)[0].pairs:
            target_of[i] = j
    for r, offsets_text in enumerate(prior, start=first_round):
        instances = refined_instances(instances, offsets_text, vocab, r)
    req: list = [None] * len(instances)
    if batch is not None:
        for i, inst in enumerate(instances):
            j = target_of[i]
            if j is not None and truth.targets[j].kind == "mask" and decodable(inst):
                req[i] = batch.add(truth, inst)
    return Proposal(instances, target_of, ans.errors, req)


def _point_reward(anc, point_idx, offs, target: TruthTarget | None, size, step: float) -> float:
    """Mean point reward (Eq. 13) of one instance's points in [-1, 1]: start, landing and
    one-step neighbourhood positions tested against the target's region in one call."""
    m = len(point_idx)
    p0 = np.array([anc[a][1] for a in point_idx], float)
    deleted = np.array([offs[a] is None for a in point_idx])
    d = np.array([(0, 0) if offs[a] is None else offs[a] for a in point_idx], float)
    p1 = np.clip(p0 + d * step, 0.0, 1.0)  # GetokVocab.apply_offset, vectorized
    if target is None:  # an unmatched instance: deleting is right, moving is neutral
        return float(np.where(deleted, 1.0, 0.0).mean())
    pos = [p0, p1]
    if deleted.any():
        pos.append(np.clip(p0[deleted][:, None, :] + _MOVES[None] * step, 0.0, 1.0).reshape(-1, 2))
    inside = target.contains(np.concatenate(pos), size)
    in0, in1 = inside[:m], inside[m:2 * m]
    near = np.zeros(m, bool)
    if deleted.any():
        near[deleted] = inside[2 * m:].reshape(-1, 9).any(axis=1)
    moved_r = np.where(in1, 1.0, np.where(in0, -1.0, 0.0))
    deleted_r = np.where(~near, 1.0, np.where(in0, -1.0, 0.0))
    return float(np.where(deleted, deleted_r, moved_r).mean())


def _box_reward(box, refined_box, tbox, vocab: GetokVocab, round: int) -> float:
    """1 when the refined box's IoU with the target box rose, or stayed where no one-step move
    could raise it; else 0."""
    iou0, iou1 = box_iou(box, tbox), box_iou(refined_box, tbox)
    if iou1 > iou0 + IOU_EPS:
        return 1.0
    if abs(iou1 - iou0) <= IOU_EPS:
        best = 0.0 if tbox is None else best_reachable_iou(box, tbox, vocab, round)
        return 1.0 if best <= iou0 + IOU_EPS else 0.0
    return 0.0


def _judge(text: str, truth: Truth, prop: Proposal, vocab: GetokVocab, batch, round: int) -> OffsetState:
    """The point and box rewards of an offset answer, and its refined masks queued in ``batch``."""
    po = parse_offsets(text, prop.instances, vocab)
    st = OffsetState(truth, prop, po, 1.0 if refine_format_ok(text, po) else 0.0)
    for i, inst in enumerate(prop.instances):
        offs = st.line(i)
        j = prop.target_of[i]
        target = None if j is None else truth.targets[j]
        anc = anchors(inst)
        point_idx = [a for a, (kind, _) in enumerate(anc) if kind in ("points", "point")]
        if offs is None:
            st.point_r += [-1.0] if point_idx else []
            st.box_r += [0.0] if inst.box is not None else []
            st.refined_req.append(None)
            continue
        if point_idx:
            st.point_r.append(_point_reward(anc, point_idx, offs, target, truth.size, vocab.offset_step(round)))
        refined = apply_offsets(inst, list(offs), vocab, round)
        if inst.box is not None:
            st.box_r.append(_box_reward(inst.box, refined.box, None if target is None else target.box, vocab, round))
        req = None
        if batch is not None and prop.req[i] is not None:
            if refined == inst:
                req = prop.req[i]
            else:
                req = batch.add(truth, refined) if decodable(refined) else -1  # -1: an empty mask
        st.refined_req.append(req)
    return st


def _mask_gains(st: OffsetState, batch, errors: list[str]):
    """(gain in [-1, 1], (IoU before, IoU after) or None) of each proposal instance."""
    truth, prop = st.truth, st.proposal
    ignore = truth.ignore()
    out = []
    for i, req in enumerate(st.refined_req):
        j, r0 = prop.target_of[i], prop.req[i]
        if st.line(i) is None:
            out.append((-1.0, None))
        elif j is None or r0 is None:
            out.append((0.0, (0.0, 0.0)))  # no target mask: IoU0 = IoU1 = 0
        else:
            target = truth.targets[j]
            m0, e0 = batch.mask(r0)
            iou0 = mask_iou(m0, target, ignore)
            m1, e1 = (None, "") if req == -1 else batch.mask(req)
            iou1 = 0.0 if req == -1 else mask_iou(m1, target, ignore)
            for e in (e0, e1):
                if e and e not in errors:
                    errors.append(e)
            g = 0.0 if iou0 >= 1.0 else (iou1 - iou0) / (1.0 - iou0)
            out.append((min(1.0, max(-1.0, g)), (iou0, iou1)))
    return out


def _refine_result(st: OffsetState, weights: RefineWeights, batch) -> RewardResult:
    errors = list(st.offsets.errors)
    comps = {"format": st.fmt,
             "point": (float(np.mean(st.point_r)) + 1.0) / 2.0 if st.point_r else 0.0,
             "box": float(np.mean(st.box_r)) if st.box_r else 0.0}
    details: dict = {"target_of": list(st.proposal.target_of)}
    if batch is not None:
        gains = _mask_gains(st, batch, errors)
        comps["mask_gain"] = (float(np.mean([g for g, _ in gains])) + 1.0) / 2.0 if gains else 0.0
        details["mask_ious"] = [ious for _, ious in gains]
        if batch.reports_fallback:
            details["mask_fallback"] = batch.fallback_share(list(st.proposal.req) + list(st.refined_req))
    return weighted_result(comps, weights, errors, details)


__all__ = ["IOU_EPS", "Proposal", "OffsetState", "refine_format_ok", "refined_instances", "best_reachable_iou",
           "score_refine", "score_refine_batch"]
