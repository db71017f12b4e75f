"""Offset-aware training data (SPEC §5; paper §3.2.2 and appendix C.2).

Every cell of the ``n x n`` grid gets one of four categories relative to a ground-truth mask M
(a boolean (H, W) array in the original image frame, or a COCO RLE dict), and the offset target
that goes with it:

=============== ============================================================== ===============
category        rule (checked in this order)                                   target token
=============== ============================================================== ===============
``inside``      the cell centre p is in M                                      ``<OFF0,0>``
``ring``        p is not in M and some one-step move d != 0 lands in M         ``<OFFdx,dy>``
``hard_delete`` no one-step move reaches M, and p is in the ribbon E or in     ``<DELETE>``
                dilate(M, 2s)
``far``         otherwise                                                      ``<DELETE>``
=============== ============================================================== ===============

Conventions (the contract the tests check):

* **Step.** Round r (1-based, default 1) moves a point by s = (W / (n 2^r), H / (n 2^r)) pixels per
  axis: half a cell in round 1.
* **Cell centre.** Cell (x, y) (column x, row y) has its centre at p = ((x + 0.5) W / n,
  (y + 0.5) H / n) in pixel coordinates (pixel (col, row) covers [col, col+1) x [row, row+1)).
* **Pixel containment.** "q in A" for a position q = (qx, qy) in pixels means the pixel that
  contains q is in A: col = floor(qx), row = floor(qy), each clamped into the image ([0, W-1],
  [0, H-1]); the clamp only matters on the far image edge (q = W), where ``GetokVocab.apply_offset``
  clamps too. The same rule serves p and every landing position p + d * s. It is computed in exact
  integer arithmetic (p + d s = ((2x + 1) 2^(r-1) + dx) W / (n 2^r)), so it never suffers float
  rounding at pixel edges; ``codec.coords.point_pixel`` gives the same pixel from normalized coordinates.
* **Bands** (scipy.ndimage binary morphology). B_t is the rectangle of sides
  2 floor(t_x) + 1 by 2 floor(t_y) + 1 (a square when W = H). Inner I = erode(M, B_s); halo
  O = dilate(M, B_s) minus M; near zone dilate(M, B_2s); ribbon E = morphological gradient of M
  (dilate(M, 3x3) minus erode(M, 3x3)) dilated by a (2w + 1) square, w = ``ring_width`` pixels
  (w = 0: the gradient itself). The image frame is not an object boundary: erosions count pixels
  outside the image as foreground (``border_value=1``), like the distance transform, which only
  measures distance to background pixels inside the image; dilations count them as background.
* **Ring move.** Among the moves d in {-1, 0, 1}^2 minus (0, 0) whose landing pixel is in M,
  the chosen one is the first under the key: (1) landing pixel in I first; (2) larger Euclidean
  distance transform of M (``scipy.ndimage.distance_transform_edt``, pixels) at the landing pixel;
  (3) the shorter move: axis moves (one non-zero component) before diagonal ones; (4) token order:
  dy = -1, 0, 1, then dx = -1, 0, 1 (the order of ``GetokVocab.tokens``).

With B_s of half-width floor(s) and a landing pixel about s away from the background pixel that
holds p, a landing lies in I only when rounding puts it more than floor(s) pixels from p (s not an
integer); otherwise the distance transform decides.

``sample_refinement`` draws K cells per image-expression with quotas over the four categories and
builds the two-turn refinement conversation (turn 1: the quantized GT box and the sampled cells as
seg points; turn 2: one offset per anchor).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..codec.answer import format_answer, format_offsets
from ..codec.instance import Instance
from .masks import decode_rle, mask_box
from ..codec.vocab import DELETE, OFFSET_STEPS, Box, Cell, GetokVocab, Offset

#: Categories in decision and priority order; ``CellClassification.category`` holds their index.
CATEGORIES = ("inside", "ring", "hard_delete", "far")
INSIDE, RING, HARD_DELETE, FAR = range(4)
#: Default sampling quotas over CATEGORIES (SPEC §5: 40 / 40 / 10 / 10 %).
DEFAULT_QUOTAS = (0.4, 0.4, 0.1, 0.1)

#: The 8 one-step moves (dx, dy), d != 0, in tie-break order: axis moves before diagonal ones,
#: then token order (dy = -1, 0, 1, then dx = -1, 0, 1).
MOVES: tuple[Offset, ...] = tuple(sorted(
    ((dx, dy) for dy in OFFSET_STEPS for dx in OFFSET_STEPS if (dx, dy) != (0, 0)),
    key=lambda d: (abs(d[0]) + abs(d[1]), d[1], d[0])))


@dataclass(frozen=True)
class OffsetTarget:
    """The offset target of one grid cell: ``cell`` = (x, y), ``category`` in CATEGORIES,
    ``token`` its target token, ``offset`` = (dx, dy), or None for ``<DELETE>``."""

    cell: Cell
    category: str
    token: str
    offset: Offset | None


@dataclass(frozen=True)
class OffsetBands:
    """The morphological bands of SPEC §5 over the whole image, boolean (H, W) arrays.

    ``inner`` = I, ``halo`` = O, ``ribbon`` = E (gradient dilated by ``ring_width``), ``near`` =
    dilate(M, 2s); ``step`` = (s_x, s_y) in pixels.
    """

    inner: np.ndarray
    halo: np.ndarray
    ribbon: np.ndarray
    near: np.ndarray
    step: tuple[float, float]


@dataclass(frozen=True)
class CellClassification:
    """Vectorized categories of every cell, arrays indexed [y, x] (row, column) of shape (n, n).

    ``category``: int8 index into CATEGORIES; ``dx``, ``dy``: int8 offset components (0 where the
    target is ``<OFF0,0>`` or ``<DELETE>``); ``centre_pixel``: (rows, cols) of the cell centres,
    each of shape (n,).
    """

    category: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    centre_pixel: tuple[np.ndarray, np.ndarray]

    def target(self, x: int, y: int, vocab: GetokVocab) -> OffsetTarget:
        """OffsetTarget of cell (x, y)."""
        cat = int(self.category[y, x])
        if cat == INSIDE:
            off: Offset | None = (0, 0)
        elif cat == RING:
            off = (int(self.dx[y, x]), int(self.dy[y, x]))
        else:
            off = None
        token = DELETE if off is None else vocab.offset_token(*off)
        return OffsetTarget(cell=(x, y), category=CATEGORIES[cat], token=token, offset=off)


# ---------------------------------------------------------------------- helpers
def as_mask(mask) -> np.ndarray:
    """Boolean (H, W) array of a mask given as an array or a COCO RLE dict."""
    m = decode_rle(mask) if isinstance(mask, dict) else np.asarray(mask)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {m.shape}")
    return m.astype(bool, copy=False)


def step_pixels(size, vocab: GetokVocab, round: int = 1) -> tuple[float, float]:
    """Offset step of round ``round`` in pixels per axis for an image of ``size`` = (W, H)."""
    s = vocab.offset_step(round)
    return size[0] * s, size[1] * s


def _positions(length: int, n: int, round: int) -> np.ndarray:
    """Pixel index along one axis of every cell centre moved by d in (-1, 0, 1): shape (3, n).

    Exact: (x + 0.5) L / n + d L / (n 2^r) = ((2x + 1) 2^(r-1) + d) L / (n 2^r), floored and
    clamped into [0, L - 1].
    """
    x = np.arange(n, dtype=np.int64)
    num = (2 * x + 1)[None, :] * (1 << (round - 1)) + np.array(OFFSET_STEPS, np.int64)[:, None]
    return np.minimum((num * length) // (n << round), length - 1)


def _rect(half_x: int, half_y: int, op, mask: np.ndarray, border_value: int) -> np.ndarray:
    """``op`` (binary_erosion / binary_dilation) of ``mask`` by a centred rectangle with the given
    half sides, as two 1-D passes (exact for rectangles, and much faster than one 2-D pass)."""
    out = mask
    if half_x > 0:
        out = op(out, structure=np.ones((1, 2 * half_x + 1), bool), border_value=border_value)
    if half_y > 0:
        out = op(out, structure=np.ones((2 * half_y + 1, 1), bool), border_value=border_value)
    return out if out is not mask else mask.copy()


def offset_bands(mask, vocab: GetokVocab, ring_width: int = 1, round: int = 1) -> OffsetBands:
    """The bands I, O, E and dilate(M, 2s) of ``mask`` (see the module docstring)."""
    m = as_mask(mask)
    bands = _bands(m, vocab, ring_width, round, ("inner", "halo", "ribbon", "near"))
    sx, sy = step_pixels((m.shape[1], m.shape[0]), vocab, round)
    return OffsetBands(step=(sx, sy), **bands)


def _bands(m: np.ndarray, vocab: GetokVocab, ring_width, round: int, names) -> dict[str, np.ndarray]:
    """The bands ``names`` of M as full-image arrays.

    The morphology runs on M's bounding box grown by the reach of the widest operation (at least
    one pixel), which gives the same values as on the whole image: outside that box every band is
    empty, and the grown box's border, background wherever it is not the image edge, separates
    M from the crop's edge, so an erosion window that leaves the crop meets background first.
    """
    if not isinstance(ring_width, (int, np.integer)) or ring_width < 0:
        raise ValueError(f"ring_width must be an int >= 0, got {ring_width!r}")
    h, w = m.shape
    sx, sy = step_pixels((w, h), vocab, round)
    hx, hy = int(np.floor(sx)), int(np.floor(sy))
    h2x, h2y = int(np.floor(2 * sx)), int(np.floor(2 * sy))
    out = {name: np.zeros((h, w), bool) for name in names}
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(m.any(axis=0))
    px, py = max(hx, h2x, 1 + ring_width), max(hy, h2y, 1 + ring_width)
    r0, r1 = max(rows[0] - py, 0), min(rows[-1] + 1 + py, h)
    c0, c1 = max(cols[0] - px, 0), min(cols[-1] + 1 + px, w)
    crop = m[r0:r1, c0:c1]
    for name in names:
        if name == "inner":
            band = _rect(hx, hy, ndimage.binary_erosion, crop, 1)
        elif name == "halo":
            band = _rect(hx, hy, ndimage.binary_dilation, crop, 0) & ~crop
        elif name == "near":
            band = _rect(h2x, h2y, ndimage.binary_dilation, crop, 0)
        elif name == "ribbon":
            grad = (_rect(1, 1, ndimage.binary_dilation, crop, 0)
                    & ~_rect(1, 1, ndimage.binary_erosion, crop, 1))
            band = _rect(int(ring_width), int(ring_width), ndimage.binary_dilation, grad, 0)
        else:  # pragma: no cover - internal misuse
            raise ValueError(name)
        out[name][r0:r1, c0:c1] = band
    return out


def _distance_inside(m: np.ndarray) -> np.ndarray:
    """Euclidean distance transform of M (distance of each M pixel to the nearest background pixel
    of the image; 0 off M), computed on M's bounding box grown by one pixel, which gives the same
    values: the nearest background pixel of any M pixel lies in that box."""
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, m.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, m.shape[1])
    crop = m[r0:r1, c0:c1]
    out = np.zeros(m.shape, float)
    # The crop has a background pixel unless M fills the image; scipy's transform needs one.
    if not crop.all():
        out[r0:r1, c0:c1] = ndimage.distance_transform_edt(crop)
    return out


# ---------------------------------------------------------------------- classification
def classify_cells(mask, vocab: GetokVocab, ring_width: int = 1, round: int = 1) -> CellClassification:
    """Category and offset of every cell (vectorized over cells; see the module docstring)."""
    m = as_mask(mask)
    h, w = m.shape
    n = vocab.grid_size
    if not isinstance(round, (int, np.integer)) or round < 1:
        raise ValueError(f"refinement rounds are 1-based ints, got {round!r}")
    if not isinstance(ring_width, (int, np.integer)) or ring_width < 0:
        raise ValueError(f"ring_width must be an int >= 0, got {ring_width!r}")
    cols = _positions(w, n, round)  # (3, n): index 0, 1, 2 = d -1, 0, +1
    rows = _positions(h, n, round)
    crow, ccol = rows[1], cols[1]
    inside = m[crow[:, None], ccol[None, :]]
    category = np.full((n, n), FAR, np.int8)
    dx = np.zeros((n, n), np.int8)
    dy = np.zeros((n, n), np.int8)
    category[inside] = INSIDE
    if not m.any():
        return CellClassification(category, dx, dy, (crow, ccol))

    # One-step landings: (8, n, n) pixel indices, in MOVES order.
    lr = np.stack([rows[ddy + 1][:, None].repeat(n, 1) for _, ddy in MOVES])
    lc = np.stack([cols[ddx + 1][None, :].repeat(n, 0) for ddx, _ in MOVES])
    hit = m[lr, lc] & ~inside[None]
    reach = hit.any(axis=0)

    if reach.any():
        dist = _distance_inside(m)
        inner = _bands(m, vocab, ring_width, round, ("inner",))["inner"]
        in_inner = hit & inner[lr, lc]
        # Candidates: the landings in I when a cell has any, else all its landings in M.
        cand = np.where(in_inner.any(axis=0)[None], in_inner, hit)
        score = np.where(cand, dist[lr, lc], -1.0)
        best = np.argmax(score, axis=0)  # first maximum = tie order of MOVES
        moves = np.array(MOVES, np.int8)
        category[reach] = RING
        dx[reach] = moves[best[reach], 0]
        dy[reach] = moves[best[reach], 1]

    rest = ~inside & ~reach
    if rest.any():
        bands = _bands(m, vocab, ring_width, round, ("ribbon", "near"))
        at = (crow[:, None], ccol[None, :])
        category[rest & (bands["ribbon"][at] | bands["near"][at])] = HARD_DELETE
    return CellClassification(category, dx, dy, (crow, ccol))


def offset_targets(mask, vocab: GetokVocab, ring_width: int = 1, round: int = 1) -> list[OffsetTarget]:
    """One OffsetTarget per grid cell, row-major (cell (0, 0), (1, 0), ... (n-1, n-1)).

    ``mask``: boolean (H, W) array in the original image frame, or a COCO RLE dict.
    ``ring_width``: w of the ribbon E, in pixels. ``round``: the refinement round whose step s =
    (W, H) / (n 2^round) the moves use (1 = the paper's half cell). An empty mask makes every cell
    ``far``.
    """
    c = classify_cells(mask, vocab, ring_width, round)
    n = vocab.grid_size
    return [c.target(x, y, vocab) for y in range(n) for x in range(n)]


# ---------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Refinement:
    """A two-turn refinement conversation for one image-expression.

    ``instance``: turn 1, the proposal (``box`` = the quantized GT box, ``points`` = the centres of
    ``cells``). ``cells``: the sampled cells (x, y) in turn-1 order; ``categories``: their
    categories. ``offsets``: turn 2, one entry per anchor of ``instance`` (box top-left corner,
    bottom-right corner, then one per cell; None = ``<DELETE>``). ``box``: the GT box
    (normalized). ``turn1_text`` / ``turn2_text``: canonical answer texts (``format_answer`` /
    ``format_offsets``, no ``<think>``). ``pool_sizes``: how many cells of the grid fell in each
    category (CATEGORIES order); ``quota_counts``: how many the quotas asked for before
    redistribution.
    """

    instance: Instance
    cells: tuple[Cell, ...]
    categories: tuple[str, ...]
    offsets: tuple[Offset | None, ...]
    box: Box
    turn1_text: str
    turn2_text: str
    pool_sizes: tuple[int, int, int, int]
    quota_counts: tuple[int, int, int, int]

    @property
    def box_offsets(self) -> tuple[Offset, Offset]:
        return self.offsets[0], self.offsets[1]

    @property
    def point_offsets(self) -> tuple[Offset | None, ...]:
        return self.offsets[2:]

    def histogram(self) -> dict[str, int]:
        """Number of sampled points per category (every category present, in CATEGORIES order)."""
        return {c: self.categories.count(c) for c in CATEGORIES}


def quota_counts(k: int, quotas=DEFAULT_QUOTAS) -> tuple[int, int, int, int]:
    """Cells per category that ``quotas`` ask for out of ``k``: largest-remainder rounding
    (Hamilton): floor(k q_c) each, then one more to the largest fractional parts, ties to the
    earlier category (inside, ring, hard_delete, far). Quotas are normalized by their sum."""
    q = np.asarray(quotas, float)
    if q.shape != (4,) or not np.all(np.isfinite(q)) or np.any(q < 0) or q.sum() <= 0:
        raise ValueError(f"quotas must be 4 non-negative numbers with a positive sum, got {quotas!r}")
    exact = k * q / q.sum()
    base = np.floor(exact + 1e-9).astype(int)
    frac = np.round(exact - base, 9)
    for c in sorted(range(4), key=lambda c: (-frac[c], c))[: k - int(base.sum())]:
        base[c] += 1
    return tuple(int(t) for t in base)


def allocate(k: int, pool_sizes, quotas=DEFAULT_QUOTAS) -> tuple[int, int, int, int]:
    """Cells to draw per category: the quota counts, "taking what exists".

    A category with fewer cells than its quota gives all it has; the shortfall goes one cell at a
    time round-robin to inside and ring while either has cells left, then round-robin to
    hard_delete and far. The total is min(k, sum(pool_sizes)).
    """
    want = quota_counts(k, quotas)
    take = [min(wc, int(p)) for wc, p in zip(want, pool_sizes)]
    short = min(k, int(sum(pool_sizes))) - sum(take)
    for group in ((INSIDE, RING), (HARD_DELETE, FAR)):
        while short > 0 and any(take[c] < pool_sizes[c] for c in group):
            for c in group:
                if short > 0 and take[c] < pool_sizes[c]:
                    take[c] += 1
                    short -= 1
    return tuple(take)


def stable_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (e.g. sample_id, expression index), the same in every run
    and process (unlike ``hash``): ``np.random.default_rng(stable_seed(sample_id, i))``."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def sample_refinement(mask, vocab: GetokVocab, k: int = 16, quotas=DEFAULT_QUOTAS, rng=None,
                      box: Box | None = None, ring_width: int = 1,
                      shuffle: bool = True) -> Refinement | None:
    """Sample a two-turn refinement conversation (SPEC §5) for one image-expression.

    ``mask``: boolean (H, W) array or COCO RLE of the GT. ``k``: points per sample (fewer when the
    grid has fewer cells). ``quotas``: shares over (inside, ring, hard_delete, far); see
    ``allocate`` for the rounding and the redistribution of missing categories. ``rng``: a
    ``numpy.random.Generator`` or an int seed (the result is a function of it); None draws fresh
    entropy. ``box``: the GT box, normalized (u1, v1, u2, v2); default ``mask_box(mask)``.
    ``shuffle``: present the points in a random order (from ``rng``); False: row-major order.

    Returns None for an empty mask (no sample: the caller reports the skip).
    Turn 2 offsets: each box corner gets ``vocab.refine(decoded corner, true corner)``; each point
    its category's token (offset d, ``<OFF0,0>`` inside, ``<DELETE>`` otherwise). Round 1 only.
    """
    m = as_mask(mask)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not m.any():
        return None
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    cls = classify_cells(m, vocab, ring_width, 1)
    n = vocab.grid_size
    flat = cls.category.ravel()
    pools = [np.flatnonzero(flat == c) for c in range(4)]
    sizes = tuple(int(p.size) for p in pools)
    take = allocate(int(k), sizes, quotas)
    chosen = [gen.choice(pool, size=t, replace=False) if t else pool[:0] for pool, t in zip(pools, take)]
    picked = np.concatenate(chosen)
    picked = gen.permutation(picked) if shuffle else np.sort(picked)
    cells = tuple((int(i % n), int(i // n)) for i in picked)
    targets = [cls.target(x, y, vocab) for x, y in cells]

    gt_box = mask_box(m) if box is None else tuple(float(t) for t in box)
    proposal_box = vocab.cells_box(vocab.box_cells(gt_box))
    instance = Instance(box=proposal_box, points=tuple(vocab.cell_point(c) for c in cells))
    u1, v1, u2, v2 = gt_box
    true_corners = ((min(u1, u2), min(v1, v2)), (max(u1, u2), max(v1, v2)))
    anchor_corners = ((instance.box[0], instance.box[1]), (instance.box[2], instance.box[3]))
    corner_offsets = tuple(vocab.refine(a, t) for a, t in zip(anchor_corners, true_corners))
    offsets = corner_offsets + tuple(t.offset for t in targets)
    return Refinement(
        instance=instance, cells=cells, categories=tuple(t.category for t in targets),
        offsets=offsets, box=gt_box,
        turn1_text=format_answer([instance], vocab), turn2_text=format_offsets([offsets], vocab),
        pool_sizes=sizes, quota_counts=quota_counts(int(k), quotas))


__all__ = ["CATEGORIES", "DEFAULT_QUOTAS", "MOVES", "OffsetTarget", "OffsetBands", "CellClassification",
           "Refinement", "offset_targets", "classify_cells", "offset_bands", "sample_refinement",
           "quota_counts", "allocate", "stable_seed", "step_pixels", "as_mask"]
