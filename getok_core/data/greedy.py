"""Greedy mask-to-token conversion (SPEC §4, paper §3.2.1 Eq. 1).

Given a ground-truth mask M and one proposal mask P_k per grid point (k row-major over the
n x n grid, ``k = y * n + x``), pick grid points greedily until the union of their proposals
reaches IoU ``tau`` with M or ``max_points`` points are taken. The chosen points become the
``<seg>`` tokens of M; the achieved IoU is the upper bound a perfect mask decoder could reach.

Masks are boolean (H, W) arrays in pixels of the original image (index [row, column]) or COCO
RLE dicts (``getok_core.data.masks``). All arithmetic is exact and at full resolution: masks are
stored as 8 x 8 pixel tiles, one 64-bit word per tile, only non-empty tiles kept, and every IoU is
a ratio of exact pixel counts, so results equal the plain full-array loop bit for bit (same
indices, same float64 IoU).

Proposals of one image are packed once (:class:`PackedProposals`) and reused by every
referring expression of that image. Per GT mask the work is then: intersect M with every
proposal through the tiles of M only, and after each point taken, update the overlap of the
union with every proposal through the tiles new to the union; the candidates' IoUs between two
takes follow from these counts in one vectorized step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .masks import decode_rle, encode_rle, rle_ious

__all__ = ["PackedProposals", "greedy_select", "index_to_cell", "DEFAULT_TAU", "DEFAULT_MAX_POINTS"]

DEFAULT_TAU = 0.9
DEFAULT_MAX_POINTS = 32

_TILE = 8                      # tiles are 8 x 8 pixels: one uint64 word each
_PACK_BATCH = 64               # proposals packed per batch (bounds the temporary memory)

_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount_lut(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64 word by a byte lookup table (numpy < 2 has no ``bitwise_count``)."""
    w = np.ascontiguousarray(words, np.uint64)
    return _POP8[w.view(np.uint8)].reshape(*w.shape, 8).sum(axis=-1, dtype=np.int64)


#: Set bits per uint64 word (an integer array of the same shape).
popcount = getattr(np, "bitwise_count", popcount_lut)


def index_to_cell(k: int, grid_size: int) -> tuple[int, int]:
    """Grid cell (column x, row y) of proposal index ``k`` (row-major: ``k = y * n + x``)."""
    if not 0 <= k < grid_size * grid_size:
        raise ValueError(f"index {k} outside a {grid_size}x{grid_size} grid")
    return int(k % grid_size), int(k // grid_size)


def _tiles(masks: np.ndarray) -> np.ndarray:
    """(B, H, W) bool -> (B, Ty * Tx) uint64: one word per 8 x 8 tile, row-major tiles, zero padded."""
    return _tiles_from_rows(np.packbits(masks, axis=-1))


def _tiles_from_rows(rows: np.ndarray) -> np.ndarray:
    """Row-packed (B, H, ceil(W / 8)) uint8 -> (B, Ty * Tx) uint64 tile words.

    Byte j of a tile word is row j of the tile (8 columns, ``np.packbits`` bit order): the same
    layout for every mask, which is all that AND and popcount need.
    """
    b, h, tx = rows.shape
    ty = -(-h // _TILE)
    if ty * _TILE != h:
        rows = np.concatenate([rows, np.zeros((b, ty * _TILE - h, tx), np.uint8)], axis=1)
    words = rows.reshape(b, ty, _TILE, tx).transpose(0, 1, 3, 2)          # (B, Ty, Tx, 8) bytes
    return np.ascontiguousarray(words).reshape(b, ty * tx, _TILE).view(np.uint64)[..., 0]


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], stops[i])`` over i (int64)."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths                      # start of each range in the output
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, lengths)


def _as_mask(mask) -> np.ndarray:
    """A bool (H, W) array from a bool / 0-1 array or a COCO RLE dict."""
    if isinstance(mask, dict):
        return decode_rle(mask)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    return m.astype(bool, copy=False)


@dataclass(frozen=True, eq=False, repr=False)
class PackedProposals:
    """The proposals P_0 .. P_{K-1} of one image, packed for repeated greedy selection.

    Every proposal is cut into 8 x 8 pixel tiles (one uint64 word each, row-major tiles) and only
    its non-empty tiles are kept ("entries"), once sorted by proposal then tile (``prop_ptr``,
    ``entry_tile``, ``entry_bits``: a CSR matrix K x tiles) and once by tile then proposal
    (``tile_ptr``, ``tile_prop``, ``tile_bits``: the CSC view, used to intersect all proposals with
    a mask at once, touching only the tiles of the mask).

    Fields: ``shape`` (H, W) in pixels; ``areas`` (K,) pixel counts; ``boxes`` (K, 4) pixel
    bounding boxes (x0, y0, x1, y1), half-open, all zero for an empty proposal (metadata for
    callers: the tile layout already confines all work to where the masks are); ``entry_tile`` /
    ``entry_bits`` the tile index and bits of each entry. Tiles are ceil(H / 8) x ceil(W / 8),
    zero padded past the image edge.
    """

    shape: tuple[int, int]
    areas: np.ndarray
    boxes: np.ndarray
    prop_ptr: np.ndarray
    entry_tile: np.ndarray
    entry_bits: np.ndarray
    tile_ptr: np.ndarray
    tile_prop: np.ndarray
    tile_bits: np.ndarray

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_masks(cls, masks) -> "PackedProposals":
        """Pack a (K, H, W) bool (or 0/1) array, or a sequence of (H, W) arrays of one shape."""
        if isinstance(masks, np.ndarray):
            if masks.ndim != 3:
                raise ValueError(f"proposals must be a (K, H, W) array, got shape {masks.shape}")
            shape, k = masks.shape[1:], masks.shape[0]
            get = lambda i, j: masks[i:j]                                # noqa: E731
        else:
            masks = list(masks)
            if not masks:
                raise ValueError("no proposals: the image shape is unknown")
            first = np.asarray(masks[0])
            if first.ndim != 2:
                raise ValueError(f"proposal masks must be 2-D (H, W), got shape {first.shape}")
            shape, k = first.shape, len(masks)

            def get(i, j):
                batch = [np.asarray(m) for m in masks[i:j]]
                for m in batch:
                    if m.shape != shape:
                        raise ValueError(f"proposal shapes differ: {m.shape} vs {shape}")
                return np.stack(batch)
        return cls._pack((int(shape[0]), int(shape[1])), k, get)

    @classmethod
    def from_rles(cls, rles) -> "PackedProposals":
        """Pack a list of COCO RLE dicts (all of one ``size`` [H, W])."""
        rles = list(rles)
        if not rles:
            raise ValueError("no proposals: the image shape is unknown")
        shape = tuple(int(t) for t in rles[0]["size"])

        def get(i, j):
            batch = np.empty((j - i, *shape), bool)           # C order: pycocotools decodes to F order
            for b, r in enumerate(rles[i:j]):
                m = decode_rle(r)
                if m.shape != shape:
                    raise ValueError(f"proposal shapes differ: {m.shape} vs {shape}")
                batch[b] = m
            return batch
        return cls._pack(shape, len(rles), get)

    @classmethod
    def _pack(cls, shape, k, get) -> "PackedProposals":
        h, w = shape
        areas = np.zeros(k, np.int64)
        boxes = np.zeros((k, 4), np.int64)
        ent_k, ent_t, ent_b = [], [], []
        for i in range(0, k, _PACK_BATCH):
            batch = np.ascontiguousarray(get(i, min(k, i + _PACK_BATCH)), dtype=bool)  # rows contiguous
            nb = len(batch)
            packed_rows = np.packbits(batch, axis=-1)                    # (B, H, ceil(W / 8))
            rows = packed_rows.any(axis=2)                               # (B, H)
            cols = np.unpackbits(np.bitwise_or.reduce(packed_rows, axis=1), axis=-1, count=w).astype(bool)
            has = rows.any(axis=1)
            boxes[i:i + nb] = np.where(has[:, None], np.stack([
                cols.argmax(axis=1), rows.argmax(axis=1),
                w - cols[:, ::-1].argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)], axis=1), 0)
            tiles = _tiles_from_rows(packed_rows)
            areas[i:i + nb] = popcount(tiles).sum(axis=1, dtype=np.int64)
            b_idx, t_idx = np.nonzero(tiles)                             # row-major: by proposal, tile
            ent_k.append(b_idx + i)
            ent_t.append(t_idx)
            ent_b.append(tiles[b_idx, t_idx])
        entry_k = np.concatenate(ent_k) if ent_k else np.zeros(0, np.int64)
        entry_tile = (np.concatenate(ent_t) if ent_t else np.zeros(0, np.int64)).astype(np.int32)
        entry_bits = np.concatenate(ent_b) if ent_b else np.zeros(0, np.uint64)
        n_tiles = (-(-h // _TILE)) * (-(-w // _TILE))
        prop_ptr = np.concatenate([[0], np.cumsum(np.bincount(entry_k, minlength=k))]).astype(np.int64)
        tile_order = np.argsort(entry_tile, kind="stable")
        tile_ptr = np.concatenate([[0], np.cumsum(np.bincount(entry_tile, minlength=n_tiles))])
        tile_ptr = tile_ptr.astype(np.int64)
        return cls((h, w), areas, boxes, prop_ptr, entry_tile, entry_bits,
                   tile_ptr, entry_k[tile_order].astype(np.int32), entry_bits[tile_order])

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return int(self.areas.shape[0])

    def __repr__(self) -> str:
        return (f"PackedProposals(K={len(self)}, shape={self.shape}, entries={self.entry_bits.size}, "
                f"nbytes={self.nbytes})")

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return sum(int(a.nbytes) for a in (self.areas, self.boxes, self.prop_ptr, self.entry_tile,
                                            self.entry_bits, self.tile_ptr, self.tile_prop, self.tile_bits))

    def intersections(self, mask) -> np.ndarray:
        """|P_k ∩ M| in pixels for every k (int64, (K,)); M a bool (H, W) array or a COCO RLE."""
        m = _as_mask(mask)
        if m.shape != self.shape:
            raise ValueError(f"mask shape {m.shape} differs from proposal shape {self.shape}")
        return self._intersections(_tiles(m[None])[0])

    def _intersections(self, mask_tiles: np.ndarray) -> np.ndarray:
        """|P_k ∩ M| for every k, M given by its tile words (T,)."""
        nz = np.flatnonzero(mask_tiles)
        return self._counts(nz, mask_tiles[nz])[0]

    def _counts(self, tiles: np.ndarray, words: np.ndarray, within: np.ndarray | None = None):
        """Per proposal, pixels in common with a sparse tile mask D (``tiles`` indices, ``words``
        their bits): ``|P_k ∩ D|`` and, if ``within`` (tile words of a mask M) is given,
        ``|P_k ∩ D ∩ M|`` (else None). Touches only the entries of D's tiles (CSC view)."""
        starts, stops = self.tile_ptr[tiles], self.tile_ptr[tiles + 1]
        lengths = stops - starts
        idx = _ranges(starts, stops)
        common = self.tile_bits[idx] & np.repeat(words, lengths)
        props = self.tile_prop[idx]
        n_all = np.bincount(props, weights=popcount(common), minlength=len(self)).astype(np.int64)
        if within is None:
            return n_all, None
        common &= np.repeat(within[tiles], lengths)
        n_in = np.bincount(props, weights=popcount(common), minlength=len(self)).astype(np.int64)
        return n_all, n_in

    def union_mask(self, indices) -> np.ndarray:
        """Bool (H, W) union of the proposals ``indices`` (for checks and visualisation)."""
        h, w = self.shape
        ty, tx = -(-h // _TILE), -(-w // _TILE)
        tiles = np.zeros(ty * tx, np.uint64)
        for k in indices:
            s = slice(self.prop_ptr[k], self.prop_ptr[k + 1])
            tiles[self.entry_tile[s]] |= self.entry_bits[s]
        bits = np.unpackbits(tiles.view(np.uint8).reshape(ty, tx, _TILE, 1), axis=-1)
        return bits.transpose(0, 2, 1, 3).reshape(ty * _TILE, tx * _TILE)[:h, :w].astype(bool)


def greedy_select(gt_mask, proposals, tau: float = DEFAULT_TAU,
                  max_points: int = DEFAULT_MAX_POINTS) -> tuple[list[int], float]:
    """Greedy choice of grid points whose proposals' union best covers ``gt_mask`` (SPEC §4).

    Arguments:
      gt_mask: the GT mask M, bool (H, W) array in pixels of the original image, or a COCO RLE.
      proposals: P_k, one per grid point, k row-major (``k = y * n + x``): a bool (K, H, W) array,
        a list of RLE dicts, or a :class:`PackedProposals` (pack once per image and reuse it).
      tau: stop once the achieved IoU is >= tau (in (0, 1]).
      max_points: stop after this many points (>= 0).

    Returns ``(indices, iou)``: proposal indices in the order they were taken (cell of k:
    :func:`index_to_cell`), and the IoU of the union U of their proposals with M, the float64 of
    ``|U ∩ M| / |U ∪ M|`` (what ``pycocotools.mask.iou`` gives). Proposals are visited by
    IoU(P_k, M) descending, ties by lower k; one is taken iff it raises the IoU of the union.
    An empty M, or no proposals (K == 0), gives ``([], 0.0)``: no ``<seg>`` tokens.
    Raises ValueError when the shapes of M and the proposals disagree (both shapes named).

    Called with an array or RLE list, it packs only the proposals that meet M (one-shot use);
    for several masks of one image, pass ``PackedProposals.from_masks(...)`` / ``from_rles``.
    """
    if not 0.0 < float(tau) <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau!r}")
    if int(max_points) != max_points or max_points < 0:
        raise ValueError(f"max_points must be an int >= 0, got {max_points!r}")
    m = _as_mask(gt_mask)
    keep = None
    if isinstance(proposals, PackedProposals):
        if proposals.shape != m.shape:
            raise ValueError(f"gt mask shape {m.shape} differs from proposal shape {proposals.shape}")
    else:
        proposals, keep = _pack_meeting(m, gt_mask, proposals)
        if proposals is None:
            return [], 0.0
    if len(proposals) == 0 or max_points == 0:
        return [], 0.0
    chosen, best = _select(_tiles(m[None])[0], proposals, float(tau), int(max_points))
    if keep is not None:
        chosen = [int(keep[i]) for i in chosen]
    return chosen, best


def _pack_meeting(m: np.ndarray, gt_mask, proposals):
    """One-shot call: pack only the proposals that meet M (no other can be taken, see _select).

    Returns ``(PackedProposals, original indices)``, or ``(None, None)`` when none meets M.
    Checks every proposal's shape against M's.
    """
    if isinstance(proposals, np.ndarray) and proposals.ndim != 3:
        raise ValueError(f"proposals must be a (K, H, W) array, got shape {proposals.shape}")
    if not isinstance(proposals, np.ndarray):
        proposals = list(proposals)
        if proposals and isinstance(proposals[0], dict):
            for r in proposals:
                size = tuple(int(t) for t in r["size"])
                if size != m.shape:
                    raise ValueError(f"gt mask shape {m.shape} differs from proposal shape {size}")
            if not m.any():
                return None, None
            gt_rle = gt_mask if isinstance(gt_mask, dict) else encode_rle(m)
            keep = np.flatnonzero(rle_ious(list(proposals), gt_rle) > 0).astype(np.int64)
            if keep.size == 0:
                return None, None
            return PackedProposals.from_rles([proposals[k] for k in keep]), keep
        for p in proposals:
            if np.shape(p) != m.shape:
                raise ValueError(f"gt mask shape {m.shape} differs from proposal shape {np.shape(p)}")
        proposals = (np.stack([np.asarray(p) for p in proposals]) if proposals
                     else np.zeros((0, *m.shape), bool))
    if proposals.shape[1:] != m.shape:
        raise ValueError(f"gt mask shape {m.shape} differs from proposal shape {proposals.shape[1:]}")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0 or proposals.shape[0] == 0:
        return None, None
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    crop = m[ys, xs]
    meets = np.concatenate([
        (proposals[i:i + _PACK_BATCH, ys, xs].astype(bool, copy=False) & crop).any(axis=(1, 2))
        for i in range(0, proposals.shape[0], _PACK_BATCH)])
    keep = np.flatnonzero(meets)
    if keep.size == 0:
        return None, None
    return PackedProposals.from_masks(proposals[keep]), keep


def _select(mt: np.ndarray, pp: PackedProposals, tau: float, max_points: int) -> tuple[list[int], float]:
    """The greedy loop over packed proposals, M given by its tile words ``mt``."""
    m_area = int(popcount(mt).sum(dtype=np.int64))
    if m_area == 0:
        return [], 0.0
    inter = pp._intersections(mt)                              # |P_k ∩ M|
    # Only proposals meeting M can be taken, and they come first in the visiting order. Proof that
    # the rest never raises the IoU: if P_k ∩ M = ∅ then (U ∪ P_k) ∩ M = U ∩ M while
    # (U ∪ P_k) ∪ M ⊇ U ∪ M, so IoU(U ∪ P_k, M) <= IoU(U, M) = best (best = 0 = IoU(∅, M) before
    # the first point, M being non-empty). Since IoU(P_k, M) = 0 exactly when P_k ∩ M = ∅, the
    # scan stops at the first zero.
    cand = np.flatnonzero(inter)
    if cand.size == 0:
        return [], 0.0
    iou0 = inter[cand] / (pp.areas[cand] + m_area - inter[cand])
    order = cand[np.argsort(-iou0, kind="stable")]            # cand ascending: ties by lower k
    c_inter, c_out = inter[order], pp.areas[order] - inter[order]   # |P ∩ M|, |P \ M|

    # U only changes when a point is taken, so between two takes IoU(U ∪ P_k, M) of every
    # remaining candidate is known at once from exact counts:
    #   |(U ∪ P) ∩ M| = |U ∩ M| + |P ∩ M| - |U ∩ P ∩ M|,
    #   |(U ∪ P) ∪ M| = |M| + |U \ M| + |P \ M| - |(U ∩ P) \ M|,
    # and the next point taken is the first candidate (in visiting order) whose IoU beats best.
    # The overlaps |U ∩ P| are kept up to date by adding, on each take, the pixels new to U.
    ov_all = np.zeros(len(pp), np.int64)                       # |U ∩ P_k|
    ov_in = np.zeros(len(pp), np.int64)                        # |U ∩ P_k ∩ M|
    u_tiles = np.zeros_like(mt)
    u_in = u_out = 0                                           # |U ∩ M|, |U \ M|
    best, chosen, pos = 0.0, [], 0
    while pos < order.size and best < tau and len(chosen) < max_points:
        ks = order[pos:]
        o_in, o_all = ov_in[ks], ov_all[ks]
        i_new = u_in + c_inter[pos:] - o_in
        o_new = u_out + c_out[pos:] - (o_all - o_in)
        c = i_new / (m_area + o_new)                           # float64 of exact counts
        hits = np.flatnonzero(c > best)
        if hits.size == 0:
            break
        j = int(hits[0])
        k = int(ks[j])
        chosen.append(k)
        best, u_in, u_out = float(c[j]), int(i_new[j]), int(o_new[j])
        pos += j + 1
        s = slice(pp.prop_ptr[k], pp.prop_ptr[k + 1])
        t = pp.entry_tile[s]
        fresh = pp.entry_bits[s] & ~u_tiles[t]                 # pixels of P_k new to U
        u_tiles[t] |= pp.entry_bits[s]
        if best < tau and len(chosen) < max_points and pos < order.size:
            keep = np.flatnonzero(fresh)
            d_all, d_in = pp._counts(t[keep], fresh[keep], mt)
            ov_all += d_all
            ov_in += d_in
    return chosen, best
