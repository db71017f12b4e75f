"""Ground truths prepared for scoring (SPEC §6): each target's box, the region a predicted point
must hit (its mask as run lengths, never decoded for membership), its area, and a process-wide
cache so that a ground truth scored again (one reward function per component in ms-swift, one
call per sample in verl) is read once.

Frames: boxes and points are normalized (u, v); sizes are (W, H) pixels; masks are (H, W) bool
arrays and COCO RLEs (column-major runs).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..codec.coords import points_pixels
from ..codec.geometry import point_segment_distances
from ..codec.vocab import GetokVocab
from ..data import groundtruth
from ..data.masks import decode_rle, mask_box

#: Slack of the distance test of point and line targets (normalized units).
DIST_EPS = 1e-9


# ---------------------------------------------------------------------- RLE without decoding
def rle_string_runs(strings: list[str]) -> list[np.ndarray]:
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


def rle_runs(rles: list[dict]) -> list[np.ndarray | None]:
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
            for i, runs in zip(where, rle_string_runs(strs)):
                out[i] = runs
        except Exception:  # pragma: no cover - validated input never gets here
            pass
    for i, rle in enumerate(rles):
        h, w = (int(t) for t in rle["size"])
        runs = out[i]
        if runs is None or runs.size == 0 or runs.min() < 0 or int(runs.sum()) != h * w:
            out[i] = None
    return out


# ---------------------------------------------------------------------- one target
@dataclass(eq=False)
class TruthTarget:
    """One ground-truth target prepared for scoring.

    ``kind``: ``mask`` (the region is the mask, ``ends`` its cumulative run ends), ``box`` (the
    box), ``geom`` (the points / polyline widened by ``tol``, half a cell diagonal: point and
    line targets), ``none`` (an unreadable mask: no region) or ``pending`` (a mask whose runs
    ``set_runs`` has not given yet). ``box`` is normalized (from the mask when the target has
    none); ``area_px`` is the region's area in pixels.
    """

    kind: str
    box: tuple | None
    rle: dict | None = None
    area_px: float = 0.0
    ends: np.ndarray | None = None
    geom_pts: np.ndarray | None = None
    polyline: np.ndarray | None = None
    tol: float = 0.0
    _mask: np.ndarray | None = field(default=None, repr=False)
    _bbox: tuple | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, t: dict, size, vocab: GetokVocab) -> "TruthTarget":
        """The target of a ``groundtruth.loads`` target dict in an image of ``size`` = (W, H)."""
        w, h = size
        box = None if t.get("box") is None else tuple(float(b) for b in t["box"])
        tol = math.sqrt(0.5) / vocab.grid_size
        if t.get("mask") is not None:
            return cls("pending", box, rle=t["mask"], tol=tol)
        if box is not None:
            return cls("box", box, area_px=(box[2] - box[0]) * w * (box[3] - box[1]) * h, tol=tol)
        pts = np.asarray([tuple(p) for p in t.get("points") or ()], float).reshape(-1, 2)
        line = None if t.get("polyline") is None else np.asarray(t["polyline"], float).reshape(-1, 2)
        allp = pts if line is None else np.concatenate([pts, line])
        cell = 1.0 / vocab.grid_size
        span_u = max(float(np.ptp(allp[:, 0])), cell) if allp.size else cell
        span_v = max(float(np.ptp(allp[:, 1])), cell) if allp.size else cell
        return cls("geom", None, area_px=span_u * w * span_v * h, geom_pts=pts, polyline=line, tol=tol)

    def set_runs(self, runs: np.ndarray | None) -> None:
        """Finish a mask target from its run lengths (None: unreadable, the target has no region)."""
        if runs is None:
            self.kind = "none"
            return
        self.ends = np.cumsum(runs)
        self.kind = "mask"
        self.area_px = float(runs[1::2].sum())
        if self.box is None:
            self.box = mask_box(self.mask())
            self._mask = None

    def mask(self) -> np.ndarray | None:
        """Boolean (H, W) mask (decoded once per batch), or None for a target without one."""
        if self.rle is None or self.ends is None:
            return None
        if self._mask is None:
            self._mask = decode_rle(self.rle)
        return self._mask

    def release(self) -> None:
        """Drop the decoded mask."""
        self._mask = None

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
        """Which of the normalized points ``uv`` (K, 2) lie in the target's region, in an image of
        ``size`` = (W, H) (a mask pixel by ``codec.coords.points_pixels``)."""
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
            if self.geom_pts.size:
                d = np.hypot(uv[:, None, 0] - self.geom_pts[None, :, 0], uv[:, None, 1] - self.geom_pts[None, :, 1])
                inside |= (d <= self.tol + DIST_EPS).any(axis=1)
            if self.polyline is not None and len(self.polyline):
                inside |= point_segment_distances(uv, self.polyline) <= self.tol + DIST_EPS
            return inside
        return np.zeros(k, bool)


# ---------------------------------------------------------------------- one ground truth
@dataclass(eq=False)
class Truth:
    """A ground truth read with ``groundtruth.loads(strict=False)`` and prepared for scoring
    (``read_truths`` builds them: mask targets are finished together, then ``finish``).
    ``ok`` False: the ground truth was rejected, ``error`` says why."""

    ok: bool
    error: str = ""
    gt: dict | None = None
    size: tuple[int, int] = (1, 1)
    task: str = "seg"
    no_target: bool = False
    targets: list[TruthTarget] = field(default_factory=list)
    image_key: str = ""
    image_path: str = ""
    extra: dict = field(default_factory=dict)
    _ignore: np.ndarray | None = field(default=None, repr=False)
    _mask_idx: list[int] = field(default_factory=list, repr=False)
    _mask_shift: np.ndarray | None = field(default=None, repr=False)
    _all_ends: np.ndarray | None = field(default=None, repr=False)
    _mask_prefix: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def read(cls, raw, vocab: GetokVocab) -> "Truth":
        """The ground truth of ``raw`` (JSON text or dict); never raises."""
        gt = groundtruth.loads(raw, strict=False)
        if gt is None:
            return cls(ok=False, error="ground truth: " + _rejection(raw))
        size = (int(gt["image_size"][0]), int(gt["image_size"][1]))
        path = gt.get("image_path") or ""
        return cls(ok=True, gt=gt, size=size, task=gt["task"], no_target=bool(gt["no_target"]),
                   targets=[TruthTarget.from_dict(t, size, vocab) for t in gt["targets"]],
                   image_key=gt.get("image_key") or path, image_path=path, extra=gt.get("extra") or {})

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
            t.release()

    def contains_all(self, uv: np.ndarray) -> np.ndarray:
        """(G, K) bool: which of the normalized points ``uv`` (K, 2) lie in each target's region.
        Mask targets share one ``searchsorted`` over their concatenated run ends."""
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
        """The (H, W) bool mask of pixels left out of mask IoU, or None."""
        if self.gt is None or self.gt.get("ignore") is None:
            return None
        if self._ignore is None:
            self._ignore = decode_rle(self.gt["ignore"])
        return self._ignore


def _rejection(raw) -> str:
    """Why ``groundtruth.loads`` rejects ``raw`` (its strict errors, at most 300 characters)."""
    try:
        groundtruth.loads(raw, strict=True)
    except groundtruth.GroundTruthError as exc:
        return "; ".join(exc.errors)[:300] or "invalid"
    except Exception as exc:  # loads(strict=True) wraps everything, but stay safe
        return f"{type(exc).__name__}: {exc}"[:300]
    return "invalid"  # pragma: no cover - loads(strict=False) returned None, strict did not raise


# ---------------------------------------------------------------------- the cache
class TruthCache:
    """Prepared ground truths of recent calls, keyed by (JSON text, grid size), least recently
    used dropped beyond ``size``; thread-safe. Only accepted ground truths are kept, without
    their decoded masks (``Truth.release``)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> Truth | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put_many(self, items: dict) -> None:
        """Keep the accepted truths of ``items`` ({key: Truth})."""
        with self._lock:
            for key, t in items.items():
                if t.ok:
                    self._items[key] = t
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: The process-wide cache the reward functions read through.
TRUTHS = TruthCache()


def clear_cache() -> None:
    """Empty the (process-wide) ground-truth cache."""
    TRUTHS.clear()


def read_truths(ground_truths, vocab: GetokVocab, cache: TruthCache | None = TRUTHS) -> list[Truth]:
    """One prepared ground truth per entry; identical strings are read once (and kept in
    ``cache`` across calls; None: no cache); the masks of all new ones are run-length decoded
    together."""
    out: list = [None] * len(ground_truths)
    new: dict = {}  # key -> truth, for the texts read in this call
    fresh: list[Truth] = []
    for k, raw in enumerate(ground_truths):
        key = (raw, vocab.grid_size) if isinstance(raw, (str, bytes)) else None
        if key is not None:
            hit = new.get(key) or (cache.get(key) if cache is not None else None)
            if hit is not None:
                out[k] = hit
                continue
        t = Truth.read(raw, vocab)
        out[k] = t
        fresh.append(t)
        if key is not None:
            new[key] = t
    if fresh:
        pending = [tg for t in fresh for tg in t.targets if tg.kind == "pending"]
        for tg, runs in zip(pending, rle_runs([tg.rle for tg in pending])):
            tg.set_runs(runs)
        for t in fresh:
            t.finish()
        if cache is not None:
            cache.put_many(new)
    return out


def release(truths) -> None:
    """Drop the decoded masks of ``truths`` (each distinct one once)."""
    for t in {id(t): t for t in truths}.values():
        t.release()


__all__ = ["rle_string_runs", "rle_runs", "TruthTarget", "Truth", "TruthCache", "TRUTHS", "clear_cache",
           "read_truths", "release"]
