"""GRPO rewards for GETok answers (SPEC §6): the grid stage and the offset-refinement stage.

Everything the trainers' adapters (``easyr1_plugin``, ``swift_plugin``) need lives here, once.

Grid stage (``score_grid`` / ``score_grid_batch``): components ``format``, ``nonrepeat``,
``box``, ``mask`` (only with a mask decoder) and ``points``. Refinement stage (``score_refine`` /
``score_refine_batch``): components ``format``, ``point``, ``box`` and ``mask_gain`` (only with a
mask decoder), relative to the turn-1 proposal. Every component is in [0, 1]; ``overall`` is the
weighted sum of the components present (``GridWeights`` / ``RefineWeights``), so it lies in
[0, sum of the weights of the components present]. ``docs/rewards.md`` gives every formula.

Nothing here raises on a response or a ground truth, whatever they hold: an unparsable answer
scores 0 on every component but ``nonrepeat``; a ground truth that ``groundtruth.loads`` rejects
scores 0 on every component (and ``overall``) with an error entry in ``RewardResult.errors``; a
mask decoder that fails on an image scores IoU 0 for the masks of that image, with an error entry.
Results are deterministic: the same inputs give the same numbers.

The batch functions group the mask-decoder requests of all responses by image and call
``decoder.decode`` once per batch (identical requests decoded once), so each image is encoded
once per batch.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data import groundtruth
from ..codec.answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, parse_answer, parse_offsets
from ..codec.coords import points_pixels
from ..codec.geometry import box_iou
from ..codec.text import as_text, strip_trailing_specials
from ..codec.instance import Instance, InstanceCells, anchors, apply_offsets, decode_instance
from ..codec.vocab import OFFSET_STEPS, GetokVocab

GRID_COMPONENTS = ("format", "nonrepeat", "box", "mask", "points")
REFINE_COMPONENTS = ("format", "point", "box", "mask_gain")
#: Elements each task's answer lines must hold, exactly (the grid ``format`` component).
TASK_ELEMENTS = {"seg": ("box", "seg"), "box": ("box",), "point": ("point",), "line": ("line",)}

_MAX_ERRORS = 20
_EPS = 1e-9


# ---------------------------------------------------------------------- configuration
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


@dataclass(frozen=True)
class RewardParams:
    """The constants of SPEC §6 (all defaults there).

    ``match_weights``: weights of box IoU, point-hit ratio and boxscore in the matching
    similarity S. ``boxscore_scale``: boxscore = max(0, 1 - mean corner L1 / (scale * diag)).
    ``mask_knots``: (IoU, reward) knots of the piecewise-linear mask reward. ``points_saturation``
    (5), ``points_spread_scale`` (0.2), ``points_penalty`` (0.02): the semantic-critical points
    quality q = hit * (1 - exp(-m / saturation)) * spread - penalty * m.
    """

    match_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    boxscore_scale: float = 0.25
    mask_knots: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.5, 0.2), (0.75, 0.6), (0.9, 1.0),
                                                   (1.0, 1.0))
    points_saturation: float = 5.0
    points_spread_scale: float = 0.2
    points_penalty: float = 0.02


DEFAULT_PARAMS = RewardParams()


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


# ---------------------------------------------------------------------- small pure functions
_SENTENCE_SPLIT = re.compile(r"[.!?\n]")


_MARKUP_RE = re.compile(r"</?(?:think|answer)>")


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
    return _unit(float(np.interp(float(iou), xs, ys)))


def boxscore(pred, target, size, scale: float = DEFAULT_PARAMS.boxscore_scale) -> float:
    """max(0, 1 - mean corner L1 distance / (scale * diagonal of ``target``)), both in pixels of
    an image of ``size`` = (W, H); 0 when either box is None or the target has no extent."""
    if pred is None or target is None:
        return 0.0
    w, h = size
    l1 = (abs(pred[0] - target[0]) * w + abs(pred[1] - target[1]) * h
          + abs(pred[2] - target[2]) * w + abs(pred[3] - target[3]) * h) / 2.0
    diag = math.hypot((target[2] - target[0]) * w, (target[3] - target[1]) * h)
    if diag <= 0:
        return 0.0
    return _unit(1.0 - l1 / (scale * diag))


def _unit(x) -> float:
    """``x`` as a float clamped into [0, 1] (NaN -> 0)."""
    x = float(x)
    if not x > 0.0:  # also NaN
        return 0.0
    return 1.0 if x > 1.0 else x


# ---------------------------------------------------------------------- RLE without decoding
def _runs_many(strings: list[str]) -> list[np.ndarray]:
    """Run lengths of COCO compressed RLE strings: ``masks.rle_string_counts`` vectorized over
    all strings at once (validated strings, as ``groundtruth.loads`` leaves them)."""
    lens = np.array([len(t) for t in strings], np.int64)
    if not strings or lens.sum() == 0:
        return [np.zeros(0, np.int64) for _ in strings]
    c = np.frombuffer("".join(strings).encode("ascii"), np.uint8).astype(np.int64) - 48
    last = (c & 0x20) == 0
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    count_of_char = np.cumsum(last) - last
    k = np.arange(c.size) - starts[count_of_char]
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    nbits = 5 * (k[ends] + 1)
    neg = (c[ends] & 0x10) != 0
    x[neg] |= -(np.int64(1) << nbits[neg])
    first = np.searchsorted(ends, np.cumsum(lens) - lens, side="left")
    ncounts = np.diff(np.append(first, ends.size))
    sid = np.repeat(np.arange(len(strings)), ncounts)
    li = np.arange(ends.size) - first[sid]
    odd = (li & 1) == 1
    even = ((li & 1) == 0) & (li >= 2)
    cs_odd = np.concatenate(([0], np.cumsum(np.where(odd, x, 0))))
    cs_even = np.concatenate(([0], np.cumsum(np.where(even, x, 0))))
    base = first[sid]
    runs = np.where(odd, cs_odd[1:] - cs_odd[base], np.where(even, cs_even[1:] - cs_even[base], x))
    return np.split(runs, np.cumsum(ncounts)[:-1])


def _string_runs(s: str) -> np.ndarray:
    """Run lengths of one COCO compressed RLE string (see ``_runs_many``)."""
    return _runs_many([s])[0]


def _rle_runs(rles: list[dict]) -> list[np.ndarray | None]:
    """Run lengths of validated RLEs (compressed strings decoded together), each checked to
    cover its H x W pixels (else None)."""
    out: list = [None] * len(rles)
    strs, where = [], []
    for i, rle in enumerate(rles):
        counts = rle["counts"]
        if isinstance(counts, list):
            out[i] = np.asarray(counts, np.int64)
        else:
            if isinstance(counts, (bytes, bytearray)):
                counts = bytes(counts).decode("ascii", errors="replace")
            strs.append(counts)
            where.append(i)
    if strs:
        try:
            for i, runs in zip(where, _runs_many(strs)):
                out[i] = runs
        except Exception:  # pragma: no cover - validated input never gets here
            pass
    for i, rle in enumerate(rles):
        h, w = (int(t) for t in rle["size"])
        runs = out[i]
        if runs is None or runs.size == 0 or runs.min() < 0 or int(runs.sum()) != h * w:
            out[i] = None
    return out


# ---------------------------------------------------------------------- prepared ground truth
class _Target:
    """One ground-truth target prepared for scoring: box (normalized), region membership, area.

    The region a predicted point must hit is the mask when there is one, else the box, else the
    points / polyline widened by half a cell diagonal (point and line targets).
    """

    __slots__ = ("box", "rle", "ends", "area_px", "geom_pts", "geom_segs", "tol", "_mask", "kind", "_bbox")

    def __init__(self, t: dict, size, vocab: GetokVocab):
        w, h = size
        self.rle = t.get("mask")
        self.box = None if t.get("box") is None else tuple(float(b) for b in t["box"])
        self.ends = None
        self._mask = self._bbox = None
        self.geom_pts = self.geom_segs = None
        self.tol = math.sqrt(0.5) / vocab.grid_size
        self.area_px = 0.0
        if self.rle is not None:
            self.kind = "pending"  # set_runs() finishes it
        elif self.box is not None:
            self.kind = "box"
            self.area_px = (self.box[2] - self.box[0]) * w * (self.box[3] - self.box[1]) * h
        else:
            pts = [tuple(p) for p in t.get("points") or ()]
            line = t.get("polyline")
            self.kind = "geom"
            self.geom_pts = np.asarray(pts, float).reshape(-1, 2)
            if line is not None:
                seg = np.asarray(line, float).reshape(-1, 2)
                self.geom_segs = (seg[:-1], seg[1:])
            allp = np.concatenate([self.geom_pts] + ([np.asarray(line, float).reshape(-1, 2)] if line else []))
            if allp.size:
                span_u = max(float(np.ptp(allp[:, 0])), 1.0 / vocab.grid_size)
                span_v = max(float(np.ptp(allp[:, 1])), 1.0 / vocab.grid_size)
            else:
                span_u = span_v = 1.0 / vocab.grid_size
            self.area_px = span_u * w * span_v * h

    def set_runs(self, runs: np.ndarray | None) -> None:
        """Finish a mask target from its run lengths (None: unreadable, the target has no region)."""
        if runs is None:
            self.kind = "none"
            return
        self.ends = np.cumsum(runs)
        self.kind = "mask"
        self.area_px = float(runs[1::2].sum())
        if self.box is None:
            from ..data.masks import mask_box

            self.box = mask_box(self.mask())
            self._mask = None

    def mask(self) -> np.ndarray | None:
        """Boolean (H, W) mask (decoded once per batch), or None for a target without one."""
        if self.rle is None or self.ends is None:
            return None
        m = self._mask
        if m is None:
            from pycocotools import mask as mask_utils

            from ..data.masks import to_coco

            m = self._mask = mask_utils.decode(to_coco(self.rle)).astype(bool)
        return m

    def pixel_bbox(self) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1), ends exclusive, of the decoded mask's pixels (empty: zeros)."""
        if self._bbox is None:
            m = self.mask()
            rows = np.flatnonzero(m.any(axis=1))
            if rows.size == 0:
                self._bbox = (0, 0, 0, 0)
            else:
                cols = np.flatnonzero(m.any(axis=0))
                self._bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        return self._bbox

    def mask_count(self) -> int:
        """Pixels in the mask (from the runs: no decoding)."""
        return int(self.area_px)

    def contains(self, uv: np.ndarray, size) -> np.ndarray:
        """Which of the normalized points ``uv`` (K, 2) lie in the target's region."""
        k = uv.shape[0]
        if k == 0:
            return np.zeros(0, bool)
        if self.kind == "mask":
            w, h = size
            row, col = points_pixels(uv, (w, h))
            return (np.searchsorted(self.ends, col * h + row, side="right") & 1).astype(bool)
        if self.kind == "box":
            b = self.box
            return (uv[:, 0] >= b[0]) & (uv[:, 0] <= b[2]) & (uv[:, 1] >= b[1]) & (uv[:, 1] <= b[3])
        if self.kind == "geom":
            inside = np.zeros(k, bool)
            if self.geom_pts is not None and self.geom_pts.size:
                d = np.hypot(uv[:, None, 0] - self.geom_pts[None, :, 0], uv[:, None, 1] - self.geom_pts[None, :, 1])
                inside |= (d <= self.tol + _EPS).any(axis=1)
            if self.geom_segs is not None:
                a, b = self.geom_segs
                ab = b - a
                den = np.maximum((ab ** 2).sum(axis=1), 1e-30)
                t = np.clip(((uv[:, None, :] - a[None]) * ab[None]).sum(axis=2) / den[None], 0.0, 1.0)
                proj = a[None] + t[..., None] * ab[None]
                d = np.hypot(uv[:, None, 0] - proj[..., 0], uv[:, None, 1] - proj[..., 1])
                inside |= (d <= self.tol + _EPS).any(axis=1)
            return inside
        return np.zeros(k, bool)


class _Truth:
    """A ground truth read with ``groundtruth.loads(strict=False)`` and prepared for scoring
    (``_truths`` builds them: mask targets are finished together, then ``finish``)."""

    __slots__ = ("ok", "error", "gt", "size", "task", "no_target", "targets", "image_key", "image_path",
                 "extra", "_ignore", "_mask_idx", "_mask_shift", "_all_ends", "_mask_prefix")

    def __init__(self, raw, vocab: GetokVocab):
        self._ignore = None
        self._mask_idx = []
        gt = groundtruth.loads(raw, strict=False)
        self.gt = gt
        self.ok = gt is not None
        self.error = ""
        if gt is None:
            self.error = "ground truth: " + _gt_reason(raw)
            self.size, self.task, self.no_target, self.targets = (1, 1), "seg", False, []
            self.image_key = self.image_path = ""
            self.extra = {}
            return
        self.size = (int(gt["image_size"][0]), int(gt["image_size"][1]))
        self.task = gt["task"]
        self.no_target = bool(gt["no_target"])
        self.targets = [_Target(t, self.size, vocab) for t in gt["targets"]]
        self.image_path = gt.get("image_path") or ""
        self.image_key = gt.get("image_key") or self.image_path
        self.extra = gt.get("extra") or {}

    def finish(self) -> None:
        """Index the mask targets' run ends for ``contains_all`` (after ``set_runs``)."""
        w, h = self.size
        self._mask_idx = [j for j, t in enumerate(self.targets) if t.kind == "mask"]
        hw = w * h
        if self._mask_idx:
            ends = [self.targets[j].ends for j in self._mask_idx]
            self._mask_shift = np.arange(len(ends), dtype=np.int64) * hw
            self._all_ends = np.concatenate([e + q * hw for q, e in enumerate(ends)])
            self._mask_prefix = np.concatenate(([0], np.cumsum([e.size for e in ends])[:-1])).astype(np.int64)

    def release(self) -> None:
        """Drop the decoded masks (the cache keeps the cheap parts only)."""
        self._ignore = None
        for t in self.targets:
            t._mask = None

    def contains_all(self, uv: np.ndarray) -> np.ndarray:
        """(G, K) bool: which of the points ``uv`` lie in each target's region. Mask targets
        share one ``searchsorted`` over their concatenated run ends."""
        g, k = len(self.targets), uv.shape[0]
        out = np.zeros((g, k), bool)
        if self._mask_idx:
            w, h = self.size
            row, col = points_pixels(uv, (w, h))
            idx = (col * h + row)[None, :] + self._mask_shift[:, None]
            pos = np.searchsorted(self._all_ends, idx.ravel(), side="right").reshape(idx.shape)
            out[self._mask_idx] = ((pos - self._mask_prefix[:, None]) & 1).astype(bool)
        for j, t in enumerate(self.targets):
            if t.kind != "mask":
                out[j] = t.contains(uv, self.size)
        return out

    def ignore(self) -> np.ndarray | None:
        if self.gt is None or self.gt.get("ignore") is None:
            return None
        m = self._ignore
        if m is None:
            from ..data.masks import decode_rle

            m = self._ignore = decode_rle(self.gt["ignore"])
        return m


def _gt_reason(raw) -> str:
    try:
        groundtruth.loads(raw, strict=True)
    except groundtruth.GroundTruthError as exc:
        return "; ".join(exc.errors)[:300] or "invalid"
    except Exception as exc:  # loads(strict=True) wraps everything, but stay safe
        return f"{type(exc).__name__}: {exc}"[:300]
    return "invalid"  # pragma: no cover - loads(strict=False) returned None, strict did not raise


#: Prepared ground truths of recent calls, keyed by (JSON text, grid size): reward functions
#: called once per sample (verl) or several times per batch (one per component in ms-swift) read
#: each ground truth once. Decoded masks are not kept (``_Truth.release``).
_TRUTH_CACHE: OrderedDict = OrderedDict()
_TRUTH_CACHE_SIZE = 256
_TRUTH_LOCK = threading.Lock()


def clear_cache() -> None:
    """Empty the ground-truth cache."""
    with _TRUTH_LOCK:
        _TRUTH_CACHE.clear()


def _truths(ground_truths, vocab: GetokVocab) -> list[_Truth]:
    """One prepared ground truth per entry; identical strings are read once (and cached across
    calls); the masks of all new ones are run-length decoded together."""
    out: list = [None] * len(ground_truths)
    new: dict = {}  # key -> truth, for the texts read in this call
    fresh: list[_Truth] = []
    for k, raw in enumerate(ground_truths):
        key = (raw, vocab.grid_size) if isinstance(raw, (str, bytes)) else None
        if key is not None:
            if key in new:
                out[k] = new[key]
                continue
            with _TRUTH_LOCK:
                hit = _TRUTH_CACHE.get(key)
                if hit is not None:
                    _TRUTH_CACHE.move_to_end(key)
            if hit is not None:
                out[k] = hit
                continue
        t = _Truth(raw, vocab)
        out[k] = t
        fresh.append(t)
        if key is not None:
            new[key] = t
    if fresh:
        pending = [tg for t in fresh for tg in t.targets if tg.kind == "pending"]
        for tg, runs in zip(pending, _rle_runs([tg.rle for tg in pending])):
            tg.set_runs(runs)
        for t in fresh:
            t.finish()
        with _TRUTH_LOCK:
            for key, t in new.items():
                if t.ok:
                    _TRUTH_CACHE[key] = t
            while len(_TRUTH_CACHE) > _TRUTH_CACHE_SIZE:
                _TRUTH_CACHE.popitem(last=False)
    return out


def _release(truths) -> None:
    for t in {id(t): t for t in truths}.values():
        t.release()


# ---------------------------------------------------------------------- parsed answers
@dataclass
class _Answer:
    """What the rewards need of a parsed grid answer."""

    cells: list[InstanceCells]
    valid: bool
    no_target: bool
    found: bool
    stray: bool
    errors: list[str]


_GRID_TOKEN_RE = re.compile(r"<grid\d{1,4},\d{1,4}>")
_TOKEN_CELLS: dict[int, dict[str, tuple[int, int]]] = {}


def _token_cells(n: int) -> dict[str, tuple[int, int]]:
    """{``<gridx,y>``: (x, y)} for an n x n grid (canonical spellings only)."""
    table = _TOKEN_CELLS.get(n)
    if table is None:
        table = {f"<grid{x},{y}>": (x, y) for y in range(n) for x in range(n)}
        _TOKEN_CELLS[n] = table
    return table
_SKELETON_LINE_RE = re.compile(
    "(?:<point>(\x00)</point>)?(?:<box>(\x00\x00)</box>)?(?:<seg>(\x00+)</seg>)?"
    "(?:<line>(\x00\x00+)</line>)?(?:<poly>(\x00\x00\x00+)</poly>)?")


def _fast_answer(text: str, vocab: GetokVocab) -> _Answer | None:
    """The parse of a canonical, valid answer (one ``<answer>`` block whose lines are canonical
    instances, ``<none>``, or nothing), or None to fall back to ``parse_answer``. Gives exactly
    what ``parse_answer`` gives on the texts it accepts (a test checks this).

    Grid tokens are replaced by a placeholder (NUL) and the skeleton of each line is matched
    against the canonical element order; the cells come from one ``findall``.
    """
    a = text.find(ANSWER_OPEN)
    if a < 0:
        return None
    b = text.find(ANSWER_CLOSE, a)
    if b < 0 or text.find(ANSWER_OPEN, a + 1) >= 0:
        return None
    body = text[a + len(ANSWER_OPEN):b]
    if body == "" or body == "<none>":
        return _Answer([], True, True, True, False, [])
    if "\x00" in body:
        return None
    tokens = _GRID_TOKEN_RE.findall(body)
    n = vocab.grid_size
    if n <= 128:
        table = _token_cells(n)
        try:
            cells_flat = [table[t] for t in tokens]
        except KeyError:  # outside the grid, or a non-canonical spelling (leading zeros)
            return None
    else:
        cells_flat = []
        for t in tokens:
            xs, ys = t[5:-1].split(",")
            x, y = int(xs), int(ys)
            if x >= n or y >= n or str(x) != xs or str(y) != ys:
                return None
            cells_flat.append((x, y))
    skeleton = _GRID_TOKEN_RE.sub("\x00", body)
    pos = 0
    out: list[InstanceCells] = []
    for line in skeleton.split("\n"):
        if not line:  # an empty line separates nothing (parse_answer: a no-op flush)
            continue
        m = _SKELETON_LINE_RE.fullmatch(line)
        if m is None:
            return None
        point, box, seg, pline, poly = m.groups()
        if point is not None:
            point = cells_flat[pos]
            pos += 1
        if box is not None:
            box = (cells_flat[pos], cells_flat[pos + 1])
            pos += 2
            if box[1][0] < box[0][0] or box[1][1] < box[0][1]:
                return None
        if seg is not None:
            k = len(seg)
            seg = tuple(cells_flat[pos:pos + k])
            pos += k
            if len(set(seg)) != k:
                return None
        if pline is not None:
            k = len(pline)
            pline = tuple(cells_flat[pos:pos + k])
            pos += k
        if poly is not None:
            k = len(poly)
            poly = tuple(cells_flat[pos:pos + k])
            pos += k
            if len(set(poly)) < 3:
                return None
        out.append(InstanceCells(box=box, points=seg or (), polyline=pline, polygon=poly, point=point))
    return _Answer(out, True, not out, True, False, [])


def _parse(text: str, vocab: GetokVocab) -> _Answer:
    fast = _fast_answer(text, vocab)
    if fast is not None:
        return fast
    p = parse_answer(text, vocab)
    return _Answer(list(p.cells), p.valid, p.no_target, p.found_answer, bool(p.stray_text), list(p.errors))


def _cells_kinds(c: InstanceCells) -> tuple[str, ...]:
    kinds = []
    if c.point is not None:
        kinds.append("point")
    if c.box is not None:
        kinds.append("box")
    if c.points:
        kinds.append("seg")
    if c.polyline is not None:
        kinds.append("line")
    if c.polygon is not None:
        kinds.append("poly")
    return tuple(kinds)


def grid_format_ok(text: str, ans: _Answer, task: str | None) -> bool:
    """The grid ``format`` rule: ``<think>..</think><answer>..</answer>`` once each, nothing but
    whitespace around them (trailing chat special tokens allowed), the answer valid, every
    non-blank answer line one instance holding exactly the elements ``task`` asks for
    (``TASK_ELEMENTS``), or the answer ``<none>`` / empty."""
    t = strip_trailing_specials(text).lstrip()
    if not (t.startswith(THINK_OPEN) and t.endswith(ANSWER_CLOSE)):
        return False
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        if t.count(tag) != 1:
            return False
    tc = t.find(THINK_CLOSE)
    ao = t.find(ANSWER_OPEN)
    if not (tc < ao and t[tc + len(THINK_CLOSE):ao].strip() == ""):
        return False
    if not ans.valid or ans.stray or not ans.found:
        return False
    if ans.no_target:
        return True
    body = t[ao + len(ANSWER_OPEN):-len(ANSWER_CLOSE)]
    lines = [ln for ln in body.split("\n") if ln.strip()]
    if len(lines) != len(ans.cells):
        return False
    want = TASK_ELEMENTS.get(task or "")
    if want is not None and any(_cells_kinds(c) != want for c in ans.cells):
        return False
    return True


# ---------------------------------------------------------------------- predictions & matching
class _Preds:
    """Geometry of a response's predicted instances: ``boxes[i]`` (normalized, or None) and the
    points of each instance (seg points, the single point, polyline vertices) concatenated in
    ``pts`` (K, 2), normalized, with ``starts[i]`` / ``counts[i]``."""

    __slots__ = ("cells", "boxes", "pts", "starts", "counts")

    def __init__(self, cells: list[InstanceCells], vocab: GetokVocab):
        self.cells = cells
        n = float(vocab.grid_size)
        boxes: list = []
        flat: list = []
        counts: list = []
        starts: list = []
        for c in cells:
            if c.box is None:
                boxes.append(None)
            else:
                boxes.append(vocab.cells_box(c.box))
            starts.append(len(flat) // 2)
            k0 = len(flat)
            for x, y in c.points:
                flat += (x, y)
            if c.point is not None:
                flat += c.point
            if c.polyline is not None:
                for x, y in c.polyline:
                    flat += (x, y)
            counts.append((len(flat) - k0) // 2)
        self.boxes, self.counts, self.starts = boxes, counts, starts
        self.pts = (np.array(flat, float).reshape(-1, 2) + 0.5) / n

    def points_of(self, i: int) -> np.ndarray:
        s = self.starts[i]
        return self.pts[s:s + self.counts[i]]


_NN_PAD = 64  # instances with more points than this take the k-d tree path


def _mean_nn_batch(items: list[tuple[_Preds, tuple[int, int]]]) -> list[list[float]]:
    """For each (predictions, image size): the mean nearest-neighbour distance in pixels among
    each instance's own points (0 for fewer than 2 points), computed for the whole batch at once
    on a padded (instances, points, points) array (instances of more than 64 points: k-d tree)."""
    out = [[0.0] * len(p.cells) for p, _ in items]
    if not items:
        return out
    counts = np.array([m for p, _ in items for m in p.counts], np.int64)
    if counts.size == 0 or counts.max() < 2:
        return out
    pts = np.concatenate([p.pts for p, _ in items])
    scale = np.repeat(np.array([size for _, size in items], float), [p.pts.shape[0] for p, _ in items], axis=0)
    pts = pts * scale
    inst_of_point = np.repeat(np.arange(counts.size), counts)
    start_of_point = np.repeat(np.cumsum(counts) - counts, counts)
    keep = (counts >= 2) & (counts <= _NN_PAD)
    means = np.zeros(counts.size)
    if keep.any():
        kept = np.flatnonzero(keep)
        renum = np.full(counts.size, -1, np.int64)
        renum[kept] = np.arange(kept.size)
        sel = keep[inst_of_point]
        rows = renum[inst_of_point[sel]]
        cols = (np.arange(pts.shape[0]) - start_of_point)[sel]
        mmax = int(counts[kept].max())
        xs = np.full((kept.size, mmax), np.inf)
        ys = np.full((kept.size, mmax), np.inf)
        xs[rows, cols] = pts[sel, 0]
        ys[rows, cols] = pts[sel, 1]
        with np.errstate(invalid="ignore"):
            dx = xs[:, :, None] - xs[:, None, :]
            dy = ys[:, :, None] - ys[:, None, :]
            d2 = dx * dx + dy * dy  # inf - inf (two padding slots) gives NaN: fmin skips it
            d2[:, np.arange(mmax), np.arange(mmax)] = np.inf
            nn = np.sqrt(np.fmin.reduce(d2, axis=2))
        nn[~np.isfinite(nn)] = 0.0  # padding rows
        means[kept] = nn.sum(axis=1) / counts[kept]
    big = np.flatnonzero(counts > _NN_PAD)
    if big.size:
        from scipy.spatial import cKDTree

        starts = np.cumsum(counts) - counts
        for g in big.tolist():
            px = pts[starts[g]:starts[g] + counts[g]]
            # a repeated point's nearest neighbour is its copy (distance 0): the tree holds each
            # distinct point once
            uniq, inverse, mult = np.unique(px, axis=0, return_inverse=True, return_counts=True)
            nn_u = np.zeros(len(uniq))
            if len(uniq) > 1:
                nn_u = cKDTree(uniq).query(uniq, k=2)[0][:, 1]
            nn_u[mult > 1] = 0.0
            means[g] = float(nn_u[np.ravel(inverse)].mean())
    flat = means.tolist()
    off = 0
    for r, (p, _) in enumerate(items):
        k = len(p.cells)
        out[r] = flat[off:off + k]
        off += k
    return out


def _match_batch(items: list[tuple[_Preds, _Truth]], params: RewardParams):
    """Hungarian matching on 1 - S for each (predictions, truth), vectorized over the batch:
    every (prediction, target) pair of the batch is scored in one numpy pass. Returns one
    (pairs [(i, j)], iou, boxscore, hit) per item, the last three as P x G nested lists."""
    a, b, c = params.match_weights
    res: list = [None] * len(items)
    nan4 = (np.nan,) * 4
    # global instance numbering (the order of ``pboxes``), target numbering per distinct truth
    pboxes: list = []
    tboxes: list = []
    tsizes: list = []
    base_p: list = []
    base_t: list = []
    spans: list = []
    tbase: dict[int, int] = {}
    for r, (p, t) in enumerate(items):
        pn, gn = len(p.cells), len(t.targets)
        if pn == 0 or gn == 0:
            zeros = [[0.0] * gn for _ in range(pn)]
            res[r] = ([], zeros, [list(z) for z in zeros], [list(z) for z in zeros])
            continue
        bt = tbase.get(id(t))
        if bt is None:
            bt = tbase[id(t)] = len(tboxes)
            tboxes.extend(tt.box if tt.box is not None else nan4 for tt in t.targets)
            tsizes.extend([t.size] * gn)
        base_p.append(len(pboxes))
        base_t.append(bt)
        pboxes.extend(bx if bx is not None else nan4 for bx in p.boxes)
        spans.append((r, pn, gn))
    if not spans:
        return res
    gmax = max(gn for _, _, gn in spans)
    # point hits: hit[global instance, target] from one contains_all per distinct truth
    hit_all = np.zeros((len(pboxes), gmax))
    groups: dict[int, list[int]] = {}
    for q, (r, pn, gn) in enumerate(spans):
        if items[r][0].pts.shape[0]:
            groups.setdefault(id(items[r][1]), []).append(q)
    for qs in groups.values():
        truth = items[spans[qs[0]][0]][1]
        preds = [items[spans[q][0]][0] for q in qs]
        pts = np.concatenate([p.pts for p in preds])
        counts = np.concatenate([p.counts for p in preds]).astype(np.int64)
        inst = np.concatenate([base_p[q] + np.arange(len(p.cells)) for q, p in zip(qs, preds)])
        nz = counts > 0
        starts = (np.cumsum(counts) - counts)[nz]
        inside = truth.contains_all(pts).astype(np.int64)  # (G, K)
        frac = np.add.reduceat(inside, starts, axis=1) / counts[nz]  # (G, instances with points)
        hit_all[inst[nz], :len(truth.targets)] = frac.T
    # every (prediction, target) pair
    pn_a = np.array([pn for _, pn, _ in spans], np.int64)
    gn_a = np.array([gn for _, _, gn in spans], np.int64)
    sizes = pn_a * gn_a
    span_of = np.repeat(np.arange(len(spans)), sizes)
    local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    gi = gn_a[span_of]
    i_loc, j_loc = local // gi, local % gi
    pidx = np.array(base_p, np.int64)[span_of] + i_loc
    tidx = np.array(base_t, np.int64)[span_of] + j_loc
    pb = np.array(pboxes, float)[pidx]
    tb = np.array(tboxes, float)[tidx]
    wh = np.array(tsizes, float)[tidx]
    with np.errstate(invalid="ignore", divide="ignore"):
        iw = np.minimum(pb[:, 2], tb[:, 2]) - np.maximum(pb[:, 0], tb[:, 0])
        ih = np.minimum(pb[:, 3], tb[:, 3]) - np.maximum(pb[:, 1], tb[:, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        union = ((pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1]) + (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
                 - inter)
        iou = inter / union
        d = np.abs(pb - tb)
        l1 = ((d[:, 0] + d[:, 2]) * wh[:, 0] + (d[:, 1] + d[:, 3]) * wh[:, 1]) / 2.0
        diag = np.hypot((tb[:, 2] - tb[:, 0]) * wh[:, 0], (tb[:, 3] - tb[:, 1]) * wh[:, 1])
        bs = 1.0 - l1 / (params.boxscore_scale * diag)
    iou = np.clip(np.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    bs = np.clip(np.nan_to_num(bs, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    hit = hit_all[pidx, j_loc]
    cost = 1.0 - (a * iou + b * hit + c * bs)
    iou_l, bs_l, hit_l = iou.tolist(), bs.tolist(), hit.tolist()
    off = 0
    for r, pn, gn in spans:
        k = pn * gn
        if pn == 1 and gn == 1:
            pairs = [(0, 0)]
        else:
            rows, cols = linear_sum_assignment(cost[off:off + k].reshape(pn, gn))
            pairs = list(zip(rows.tolist(), cols.tolist()))
        res[r] = (pairs, [iou_l[off + i * gn:off + (i + 1) * gn] for i in range(pn)],
                  [bs_l[off + i * gn:off + (i + 1) * gn] for i in range(pn)],
                  [hit_l[off + i * gn:off + (i + 1) * gn] for i in range(pn)])
        off += k
    return res


def _match(preds: _Preds, truth: _Truth, params: RewardParams):
    """``_match_batch`` of one item."""
    return _match_batch([(preds, truth)], params)[0]


def _spread_of(mean_nn: float, m: int, area_px: float, scale: float) -> float:
    """min(1, mean nearest-neighbour distance / (scale * sqrt(area))), 1 for a single point."""
    if m <= 1:
        return 1.0
    return min(1.0, mean_nn / (scale * math.sqrt(max(area_px, 1.0))))


def _points_quality(m: int, hit: float, spread: float, params: RewardParams) -> float:
    return _unit(hit * (1.0 - math.exp(-m / params.points_saturation)) * spread - params.points_penalty * m)


# ---------------------------------------------------------------------- mask decoding
class _DecodeBatch:
    """Collects (image_key, image source, Instance) requests, deduplicated, and decodes them with
    one ``decoder.decode`` call (falling back to one call per image when that call fails).

    A decoder with ``decode_flagged`` and a ``fallback`` configured (``sam_service.RaySamDecoder``
    with ``fallback="region"``) may decode some masks with the fallback and says which:
    ``reports_fallback`` is then True and ``fallback`` holds the request indices so decoded (the
    rewards' ``mask_fallback`` detail, present exactly when a fallback is configured)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.index: dict = {}
        self.requests: list = []
        self.shapes: list = []
        self.results: list = []
        self.failures: dict[int, str] = {}
        self.reports_fallback = hasattr(decoder, "decode_flagged") and getattr(decoder, "fallback", None) is not None
        self.fallback: set[int] = set()

    def _decode(self, idx) -> list:
        reqs = [self.requests[i] for i in idx]
        if not self.reports_fallback:
            return list(self.decoder.decode(reqs))
        out, flags = self.decoder.decode_flagged(reqs)
        self.fallback.update(i for i, f in zip(idx, flags) if f)
        return list(out)

    def fallback_share(self, idxs) -> float:
        """Share of the requests ``idxs`` decoded by the decoder's fallback (0 when none)."""
        idxs = [i for i in idxs if i is not None and i >= 0]
        return sum(i in self.fallback for i in idxs) / len(idxs) if idxs else 0.0

    def add(self, truth: _Truth, inst: Instance) -> int:
        key = (truth.image_key, inst)
        idx = self.index.get(key)
        if idx is None:
            idx = len(self.requests)
            self.index[key] = idx
            self.requests.append((truth.image_key, truth.image_path, inst))
            self.shapes.append((truth.size[1], truth.size[0]))
        return idx

    def run(self) -> None:
        n = len(self.requests)
        self.results = [None] * n
        if not n:
            return
        try:
            out = self._decode(range(n))
            if len(out) != n:
                raise ValueError(f"decoder returned {len(out)} masks for {n} requests")
            self._store(range(n), out)
            return
        except Exception as exc:
            first = f"{type(exc).__name__}: {exc}"[:200]
        groups: dict[str, list[int]] = {}
        for i, (key, _, _) in enumerate(self.requests):
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            try:
                out = self._decode(idx)
                if len(out) != len(idx):
                    raise ValueError(f"decoder returned {len(out)} masks for {len(idx)} requests")
                self._store(idx, out)
            except Exception as exc:
                why = f"mask decoder failed on image {key!r}: {type(exc).__name__}: {exc}"[:300]
                if len(groups) == 1 and first:
                    why = f"mask decoder failed on image {key!r}: {first}"
                for i in idx:
                    self.failures[i] = why

    def _store(self, idx, out) -> None:
        for i, m in zip(idx, out):
            try:
                arr = np.asarray(m).astype(bool, copy=False)
            except Exception as exc:
                self.failures[i] = f"mask decoder returned a non-array: {type(exc).__name__}"
                continue
            if arr.shape != self.shapes[i]:
                self.failures[i] = (f"mask decoder returned shape {arr.shape} for image "
                                    f"{self.requests[i][0]!r} of (H, W) = {self.shapes[i]}")
                continue
            self.results[i] = arr

    def mask(self, idx: int):
        """(mask or None, error or "")."""
        return self.results[idx], self.failures.get(idx, "")


def _mask_iou(pred: np.ndarray | None, target: _Target, ignore: np.ndarray | None) -> float:
    """IoU of a predicted mask with the target's mask, pixels of ``ignore`` left out; 0 when
    either is missing or the union is empty. The intersection is counted inside the target's
    bounding box only (the rest of the image cannot intersect)."""
    gt = target.mask()
    if pred is None or gt is None:
        return 0.0
    r0, r1, c0, c1 = target.pixel_bbox()
    if ignore is None:
        n_pred = np.count_nonzero(pred)
        n_gt = target.mask_count()
        inter = np.count_nonzero(pred[r0:r1, c0:c1] & gt[r0:r1, c0:c1]) if r1 > r0 else 0
    else:
        keep = ~ignore
        n_pred = np.count_nonzero(pred & keep)
        gt_k = gt[r0:r1, c0:c1] & keep[r0:r1, c0:c1]
        n_gt = np.count_nonzero(gt_k)
        inter = np.count_nonzero(pred[r0:r1, c0:c1] & gt_k) if r1 > r0 else 0
    union = n_pred + n_gt - inter
    return float(inter / union) if union else 0.0


def _decodable(inst: Instance) -> bool:
    return inst.box is not None or bool(inst.points)


# ---------------------------------------------------------------------- results
def _result(components: dict[str, float], weights, errors: list[str], details: dict) -> RewardResult:
    comps = {k: _unit(v) for k, v in components.items()}
    overall = float(sum(getattr(weights, k) * v for k, v in comps.items()))
    errs = errors[:_MAX_ERRORS] + ([f"... and {len(errors) - _MAX_ERRORS} more"] if len(errors) > _MAX_ERRORS else [])
    return RewardResult(overall=overall, components=comps, errors=errs, details=details)


def _broken(names, with_mask: bool, mask_name: str, weights, error: str) -> RewardResult:
    comps = {k: 0.0 for k in names if with_mask or k != mask_name}
    return _result(comps, weights, [error], {})


def _vocab(vocab) -> GetokVocab:
    return GetokVocab() if vocab is None else vocab


# ---------------------------------------------------------------------- grid stage
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
    vocab = _vocab(vocab)
    weights = weights_from(weights, GridWeights)
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses for {len(ground_truths)} ground truths")
    truths = _truths(ground_truths, vocab)
    with_mask = decoder is not None
    batch = _DecodeBatch(decoder) if with_mask else None
    staged: list = []
    memo: dict = {}
    states: list[_GridState] = []
    for response, truth in zip(responses, truths):
        text = as_text(response)
        if not truth.ok:
            staged.append(("broken", truth.error))
            continue
        key = (text, id(truth))
        if key in memo:  # identical response to the same ground truth: same reward
            staged.append(("same", memo[key]))
            continue
        ans = _parse(text, vocab)
        st = _GridState(truth, ans, 1.0 if grid_format_ok(text, ans, truth.task) else 0.0, nonrepeat_score(text))
        if not truth.no_target and ans.cells:
            st.preds = _Preds(ans.cells, vocab)
        memo[key] = len(staged)
        staged.append(("ok", st))
        states.append(st)
    scored = [st for st in states if st.preds is not None]
    for st, (pairs, iou, bs, hit) in zip(scored, _match_batch([(st.preds, st.truth) for st in scored], params)):
        st.pairs, st.iou, st.bs, st.hit = pairs, iou, bs, hit
    for st, nn in zip(scored, _mean_nn_batch([(st.preds, st.truth.size) for st in scored])):
        st.nn = nn
    if batch is not None:
        for st in scored:
            for k, (i, j) in enumerate(st.pairs):
                if st.truth.targets[j].kind != "mask":
                    continue
                inst = decode_instance(st.answer.cells[i], vocab)
                if _decodable(inst):
                    st.requests[k] = batch.add(st.truth, inst)
        batch.run()
    out: list[RewardResult] = []
    for kind, st in staged:
        if kind == "broken":
            out.append(_broken(GRID_COMPONENTS, with_mask, "mask", weights, st))
        elif kind == "same":
            prev = out[st]
            out.append(RewardResult(prev.overall, dict(prev.components), list(prev.errors), dict(prev.details)))
        else:
            out.append(_grid_components(st, weights, params, batch))
    _release(truths)
    return out


@dataclass
class _GridState:
    truth: _Truth
    answer: _Answer
    fmt: float
    nonrep: float
    preds: _Preds | None = None
    pairs: list = field(default_factory=list)
    iou: list = field(default_factory=list)
    bs: list = field(default_factory=list)
    hit: list = field(default_factory=list)
    nn: list = field(default_factory=list)
    requests: dict = field(default_factory=dict)  # pair index -> decode request index


def _grid_components(st: _GridState, weights: GridWeights, params: RewardParams, batch) -> RewardResult:
    truth, ans = st.truth, st.answer
    comps = {"format": st.fmt, "nonrepeat": st.nonrep}
    errors = list(ans.errors)
    details: dict = {"pairs": list(st.pairs)}
    if truth.no_target:
        v = 1.0 if ans.no_target else 0.0
        comps["box"] = v
        if batch is not None:
            comps["mask"] = v
        comps["points"] = v
        return _result(comps, weights, errors, details)
    denom = max(len(ans.cells), len(truth.targets))
    box_sum = 0.0
    pts_num = pts_den = 0.0
    mask_sum = 0.0
    ious = []
    for k, (i, j) in enumerate(st.pairs):
        target = truth.targets[j]
        if st.preds.boxes[i] is not None and target.box is not None:
            box_sum += 0.5 * st.iou[i][j] + 0.5 * st.bs[i][j]
        m = st.preds.counts[i]
        if m:
            spread = _spread_of(st.nn[i], m, target.area_px, params.points_spread_scale)
            pts_num += m * _points_quality(m, st.hit[i][j], spread, params)
            pts_den += m
        if batch is not None:
            miou = 0.0
            idx = st.requests.get(k)
            if idx is not None:
                pred, err = batch.mask(idx)
                if err:
                    errors.append(err)
                miou = _mask_iou(pred, target, truth.ignore())
            ious.append(miou)
            mask_sum += mask_reward(miou, params)
    comps["box"] = box_sum / denom if denom else 0.0
    if batch is not None:
        comps["mask"] = mask_sum / denom if denom else 0.0
        details["mask_ious"] = ious
    comps["points"] = (pts_num / pts_den) * (len(st.pairs) / denom) if pts_den > 0 and denom else 0.0
    if batch is not None and batch.reports_fallback:
        details["mask_fallback"] = batch.fallback_share(st.requests.values())
    return _result(comps, weights, errors, details)


# ---------------------------------------------------------------------- refinement stage
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


_OFFSET_LINE_RE = re.compile(r"<offset>(?:<OFF-?\d,-?\d>|<DELETE>)*</offset>")


def _proposal_text(proposal, truth: _Truth) -> str | None:
    if proposal is not None:
        return as_text(proposal)
    value = truth.extra.get("proposal") if isinstance(truth.extra, dict) else None
    return value if isinstance(value, str) else None


def score_refine(response, ground_truth, vocab: GetokVocab | None = None, proposal=None, decoder=None,
                 weights: RefineWeights | dict | None = None, params: RewardParams = DEFAULT_PARAMS,
                 round: int = 1) -> RewardResult:
    """Refinement-stage reward of one response; see ``score_refine_batch``."""
    return score_refine_batch([response], [ground_truth], vocab, None if proposal is None else [proposal],
                              decoder, weights, params, round)[0]


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
    ``round``, ``round + 1``, ...) is applied to the proposal first (``refine.advance``: deleted
    points leave, a malformed line leaves its instance as it was); response k is then round
    ``round + len(prior_offsets[k])`` and is judged relative to that refined geometry. The
    matching to targets stays the turn-1 proposal's.
    """
    vocab = _vocab(vocab)
    weights = weights_from(weights, RefineWeights)
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses for {len(ground_truths)} ground truths")
    if proposals is not None and len(proposals) != len(responses):
        raise ValueError(f"{len(proposals)} proposals for {len(responses)} responses")
    if not isinstance(round, int) or round < 1:
        raise ValueError(f"round must be an int >= 1, got {round!r}")
    if prior_offsets is not None and len(prior_offsets) != len(responses):
        raise ValueError(f"{len(prior_offsets)} prior_offsets for {len(responses)} responses")
    truths = _truths(ground_truths, vocab)
    with_mask = decoder is not None
    batch = _DecodeBatch(decoder) if with_mask else None
    prop_memo: dict = {}
    staged = []
    for k, (response, truth) in enumerate(zip(responses, truths)):
        if not truth.ok:
            staged.append(("broken", truth.error))
            continue
        ptext = _proposal_text(None if proposals is None else proposals[k], truth)
        if ptext is None:
            staged.append(("broken", "no turn-1 proposal: pass proposals= or put the turn-1 answer "
                                     "text in the ground truth's extra[\"proposal\"]"))
            continue
        prior = () if prior_offsets is None or prior_offsets[k] is None else tuple(
            as_text(t) for t in prior_offsets[k])
        pkey = (ptext, id(truth), prior)
        prop = prop_memo.get(pkey)
        if prop is None:
            prop = _proposal_state(ptext, truth, vocab, params, batch, prior, round)
            prop_memo[pkey] = prop
        if not prop["instances"]:
            staged.append(("broken", "turn-1 proposal has no instance to refine"
                           + (f" ({prop['errors'][0]})" if prop["errors"] else "")))
            continue
        staged.append(("ok", _refine_stage1(as_text(response), truth, prop, vocab, params, batch,
                                            round + len(prior))))
    if batch is not None:
        batch.run()
    out = []
    for kind, st in staged:
        if kind == "broken":
            out.append(_broken(REFINE_COMPONENTS, with_mask, "mask_gain", weights, st))
        else:
            out.append(_refine_stage2(st, weights, batch))
    _release(truths)
    return out


def _proposal_state(ptext: str, truth: _Truth, vocab: GetokVocab, params: RewardParams, batch,
                    prior: tuple = (), first_round: int = 1) -> dict:
    ans = _parse(ptext, vocab)
    instances = [decode_instance(c, vocab) for c in ans.cells]
    target_of: list = [None] * len(instances)
    if instances and truth.targets:
        pairs, _, _, _ = _match(_Preds(ans.cells, vocab), truth, params)
        for i, j in pairs:
            target_of[i] = j
    for r, offsets_text in enumerate(prior, start=first_round):
        instances = refined_instances(instances, offsets_text, vocab, r)
    req = [None] * len(instances)
    if batch is not None:
        for i, inst in enumerate(instances):
            j = target_of[i]
            if j is not None and truth.targets[j].kind == "mask" and _decodable(inst):
                req[i] = batch.add(truth, inst)
    return {"instances": instances, "target_of": target_of, "errors": ans.errors, "req": req}


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


#: The 9 one-step moves (dx, dy) of a point's neighbourhood, (0, 0) included.
_MOVES = np.array([(dx, dy) for dy in OFFSET_STEPS for dx in OFFSET_STEPS], float)


def _best_reachable_iou(box, target_box, vocab: GetokVocab, round: int) -> float:
    """Largest IoU with ``target_box`` over every one-step offset of both corners of ``box``."""
    s = vocab.offset_step(round)
    d = np.array(OFFSET_STEPS, float) * s
    u1 = np.clip(box[0] + d, 0, 1)
    v1 = np.clip(box[1] + d, 0, 1)
    u2 = np.clip(box[2] + d, 0, 1)
    v2 = np.clip(box[3] + d, 0, 1)
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


def _refine_stage1(text: str, truth: _Truth, prop: dict, vocab: GetokVocab, params: RewardParams, batch,
                   round: int) -> dict:
    instances = prop["instances"]
    po = parse_offsets(text, instances, vocab)
    fmt = 1.0 if refine_format_ok(text, po) else 0.0
    point_r: list[float] = []
    box_r: list[float] = []
    per_inst = []
    for i, inst in enumerate(instances):
        offs = po.offsets[i] if i < len(po.offsets) else None
        j = prop["target_of"][i]
        target = None if j is None else truth.targets[j]
        anc = anchors(inst)
        point_idx = [a for a, (kind, _) in enumerate(anc) if kind in ("points", "point")]
        if offs is None:
            if point_idx:
                point_r.append(-1.0)
            if inst.box is not None:
                box_r.append(0.0)
            per_inst.append(None)
            continue
        # point refinement (Eq. 13): start, landing and one-step neighbourhood positions of the
        # instance's points, tested against the target's region in one call
        if point_idx:
            m = len(point_idx)
            p0 = np.array([anc[a][1] for a in point_idx], float)
            deleted = np.array([offs[a] is None for a in point_idx])
            d = np.array([(0, 0) if offs[a] is None else offs[a] for a in point_idx], float)
            step = vocab.offset_step(round)
            p1 = np.clip(p0 + d * step, 0.0, 1.0)  # GetokVocab.apply_offset, vectorized
            if target is None:  # an unmatched instance: deleting is right, moving is neutral
                rs = np.where(deleted, 1.0, 0.0)
            else:
                pos = [p0, p1]
                if deleted.any():
                    nb = np.clip(p0[deleted][:, None, :] + _MOVES[None] * step, 0.0, 1.0).reshape(-1, 2)
                    pos.append(nb)
                inside = target.contains(np.concatenate(pos), truth.size)
                in0, in1 = inside[:m], inside[m:2 * m]
                near = np.zeros(m, bool)
                if deleted.any():
                    near[deleted] = inside[2 * m:].reshape(-1, 9).any(axis=1)
                moved_r = np.where(in1, 1.0, np.where(in0, -1.0, 0.0))
                deleted_r = np.where(~near, 1.0, np.where(in0, -1.0, 0.0))
                rs = np.where(deleted, deleted_r, moved_r)
            point_r.append(float(rs.mean()))
        refined = apply_offsets(inst, list(offs), vocab, round)
        if inst.box is not None:
            tbox = None if target is None else target.box
            iou0 = box_iou(inst.box, tbox)
            iou1 = box_iou(refined.box, tbox)
            if iou1 > iou0 + _EPS:
                box_r.append(1.0)
            elif abs(iou1 - iou0) <= _EPS:
                best = 0.0 if tbox is None else _best_reachable_iou(inst.box, tbox, vocab, round)
                box_r.append(1.0 if best <= iou0 + _EPS else 0.0)
            else:
                box_r.append(0.0)
        req = None
        if batch is not None and prop["req"][i] is not None:
            if refined == inst:
                req = prop["req"][i]
            elif _decodable(refined):
                req = batch.add(truth, refined)
            else:
                req = -1  # nothing left to decode: an empty mask
        per_inst.append(req)
    return {"truth": truth, "prop": prop, "po": po, "fmt": fmt, "point_r": point_r, "box_r": box_r,
            "per_inst": per_inst}


def _refine_stage2(st: dict, weights: RefineWeights, batch) -> RewardResult:
    truth, prop, po = st["truth"], st["prop"], st["po"]
    errors = list(po.errors)
    comps = {"format": st["fmt"]}
    comps["point"] = (float(np.mean(st["point_r"])) + 1.0) / 2.0 if st["point_r"] else 0.0
    comps["box"] = float(np.mean(st["box_r"])) if st["box_r"] else 0.0
    details: dict = {"target_of": list(prop["target_of"])}
    if batch is not None:
        gains = []
        ious = []
        ignore = truth.ignore()
        for i, req in enumerate(st["per_inst"]):
            if (po.offsets[i] if i < len(po.offsets) else None) is None:
                gains.append(-1.0)
                ious.append(None)
                continue
            j = prop["target_of"][i]
            r0 = prop["req"][i]
            if j is None or r0 is None:
                gains.append(0.0)  # no target mask: IoU0 = IoU1 = 0
                ious.append((0.0, 0.0))
                continue
            target = truth.targets[j]
            m0, e0 = batch.mask(r0)
            iou0 = _mask_iou(m0, target, ignore)
            if req == -1:
                iou1, e1 = 0.0, ""
            else:
                m1, e1 = batch.mask(req)
                iou1 = _mask_iou(m1, target, ignore)
            for e in (e0, e1):
                if e and e not in errors:
                    errors.append(e)
            g = 0.0 if iou0 >= 1.0 else (iou1 - iou0) / (1.0 - iou0)
            gains.append(min(1.0, max(-1.0, g)))
            ious.append((iou0, iou1))
        comps["mask_gain"] = (float(np.mean(gains)) + 1.0) / 2.0 if gains else 0.0
        details["mask_ious"] = ious
        if batch.reports_fallback:
            reqs = [prop["req"][i] for i in range(len(st["per_inst"]))] + list(st["per_inst"])
            details["mask_fallback"] = batch.fallback_share(reqs)
    return _result(comps, weights, errors, details)


# ---------------------------------------------------------------------- adapter configuration
_DECODERS: dict = {}
_DECODER_LOCK = threading.Lock()
_NO_DECODER = (None, "", "none", "None", "null", False)


class _LockedDecoder:
    """A shared decoder whose ``decode`` runs one call at a time (verl scores samples in a thread
    pool; SAM predictors keep per-image state)."""

    def __init__(self, decoder):
        self.decoder = decoder
        self._lock = threading.Lock()

    def decode(self, requests):
        with self._lock:
            return self.decoder.decode(requests)

    def __getattr__(self, name):
        return getattr(self.decoder, name)


def cached_decoder(name, **kwargs):
    """The mask decoder ``decoders.make_decoder(name, **kwargs)``, built once per process for
    each (name, kwargs) and shared (its ``decode`` serialized unless the decoder says it is
    ``thread_safe``, as the SAM service client does); None for no decoder (``None``, ``""``,
    ``"none"``)."""
    if name in _NO_DECODER:
        return None
    import json

    key = (str(name), json.dumps(kwargs, sort_keys=True, default=repr))
    with _DECODER_LOCK:
        dec = _DECODERS.get(key)
        if dec is None:
            from ..decoders.base import make_decoder

            dec = make_decoder(str(name), **kwargs)
            if not getattr(dec, "thread_safe", False):
                dec = _LockedDecoder(dec)
            _DECODERS[key] = dec
    return dec


#: Keyword arguments the adapters read themselves; every other one goes to the decoder.
SETUP_KEYS = ("decoder", "decoder_kwargs", "weights", "grid_size", "offset_rounds", "round", "stage")


@dataclass
class RewardSetup:
    """What an adapter's keyword arguments select: the vocabulary, the mask decoder (or None),
    the weights of both stages, the refinement round and the stage (``grid`` / ``refine``)."""

    vocab: GetokVocab
    decoder: object
    grid_weights: GridWeights
    refine_weights: RefineWeights
    round: int = 1
    stage: str = "grid"


def setup_from_kwargs(kwargs: dict, ignore=()) -> RewardSetup:
    """A ``RewardSetup`` from an adapter's keyword arguments (EasyR1's
    ``worker.reward.reward_function_kwargs``, verl's ``custom_reward_function.reward_kwargs``).

    ``decoder``: ``region`` / ``sam`` / ``sam2`` / ``ray`` (the SAM service,
    ``getok_core.decoders.service``) / none; its arguments are ``decoder_kwargs`` (a mapping) plus
    every key that is not one of ``SETUP_KEYS`` (e.g. ``checkpoint``, ``device``, ``model_type``,
    ``mode``; for ``ray``: ``app``, ``address``, ``timeout_s``, ``retries``, ``fallback``). ``weights``: a mapping of component weights (of the stage scored;
    refine weights under the same names). ``grid_size`` (32), ``offset_rounds`` (1), ``round``
    (1), ``stage`` (``grid``). Keys in ``ignore`` are dropped. Raises ValueError on keys no one
    reads when there is no decoder (a typo must not pass silently), on a bad stage or weights.
    """
    kw = {k: v for k, v in dict(kwargs or {}).items() if k not in ignore}
    name = kw.pop("decoder", None)
    dec_kwargs = dict(kw.pop("decoder_kwargs", None) or {})
    weights = kw.pop("weights", None)
    grid_size = int(kw.pop("grid_size", 32))
    offset_rounds = int(kw.pop("offset_rounds", 1))
    rnd = int(kw.pop("round", 1))
    stage = str(kw.pop("stage", "grid"))
    if stage not in ("grid", "refine"):
        raise ValueError(f"stage must be 'grid' or 'refine', got {stage!r}")
    if name in _NO_DECODER and (kw or dec_kwargs):
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
        round=rnd, stage=stage)


__all__ = ["GridWeights", "RefineWeights", "RewardParams", "DEFAULT_PARAMS", "RewardResult",
           "GRID_COMPONENTS", "REFINE_COMPONENTS", "TASK_ELEMENTS",
           "score_grid", "score_grid_batch", "score_refine", "score_refine_batch",
           "nonrepeat_score", "mask_reward", "box_iou", "boxscore", "grid_format_ok", "refine_format_ok",
           "weights_from", "refined_instances", "clear_cache", "cached_decoder", "RewardSetup", "setup_from_kwargs", "SETUP_KEYS"]
