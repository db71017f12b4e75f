"""Binary masks and COCO run-length encoding (RLE), over pycocotools.

A mask is a boolean array of shape (H, W) in the original image frame. An RLE is the COCO dict
``{"size": [H, W], "counts": str}`` (compressed counts as text, so it survives JSON). Both forms
give the same IoU: tests check them against each other. Every RLE is checked in Python before it
reaches pycocotools (``rle_problem``), whose C code trusts its input.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean (H, W) mask, counts as an ASCII string."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


#: Largest mask side accepted from data (pixels).
MAX_SIDE = 100_000
#: Largest image area (H x W pixels) accepted from data: 2**27, about 134 megapixels, so a
#: 12000 x 9000 (108 MP) phone photo fits while one decoded bool mask stays at 128 MiB. A ground
#: truth or an RLE over it is rejected before anything of its size is allocated (a
#: 70000 x 70000 mask took 9.6 GB per reward call; 100000 x 100000 crashed pycocotools).
MAX_PIXELS = 2**27


def size_problem(w, h) -> str | None:
    """None when an image of (W, H) = (``w``, ``h``) pixels is within ``MAX_SIDE`` per side and
    ``MAX_PIXELS`` in area, else the reason (naming the size and the cap)."""
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        return f"size {w}x{h} (WxH) out of range: each side must be in [1, {MAX_SIDE}]"
    if w * h > MAX_PIXELS:
        return (f"size {w}x{h} (WxH) is {w * h:,} pixels, over the cap of {MAX_PIXELS:,} "
                f"(getok_core.data.masks.MAX_PIXELS)")
    return None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x, limit: int = 40) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[:limit] + "..."


def rle_string_counts(s: str) -> np.ndarray | None:
    """Run lengths (int64 array) of a COCO compressed RLE string, or None when it is malformed.

    The encoding (pycocotools ``rleToString``): each count is split into 5-bit groups, low
    first, one character (48 + group, 0x20 = more groups follow) per group, the last group's bit
    0x10 being the sign; counts from the fourth on are stored as differences to the count two
    before. A count must end up in [0, 2**32). Vectorized with numpy (a reward reads dozens of
    masks per step).
    """
    try:
        c = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48
    except (UnicodeEncodeError, AttributeError):
        return None
    if c.size == 0:
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() >= 64:
        return None
    last = (c & 0x20) == 0                      # the character that ends a count
    if not last[-1]:
        return None                             # truncated
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    group = np.cumsum(last) - last              # the count each character belongs to
    k = np.arange(c.size) - starts[group]       # its 5-bit group index inside the count
    if k.max() >= 7:
        return None                             # more than 35 bits
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    x[neg] |= -(np.int64(1) << (5 * (k[ends][neg] + 1)))
    # counts[i] = x[i] + counts[i - 2] for i >= 3: running sums over odd and over even indices >= 2
    i = np.arange(x.size)
    runs = x.copy()
    odd = i % 2 == 1
    runs[odd] = np.cumsum(x[odd])
    even = (i % 2 == 0) & (i >= 2)
    runs[even] = np.cumsum(x[even])
    if runs.min() < 0 or runs.max() >= 2**32:
        return None
    return runs


def rle_problem(rle, size: tuple[int, int] | None = None) -> str | None:
    """None when ``rle`` is a well-formed COCO RLE (of an image of ``size`` = (W, H) when given),
    else the reason. Accepts compressed counts (str or bytes) and uncompressed counts (list)."""
    if not isinstance(rle, dict):
        return f"RLE must be an object with 'size' and 'counts', got {type(rle).__name__}"
    extra = set(rle) - {"size", "counts"}
    if extra:
        return f"RLE has unknown key(s) {sorted(map(str, extra))}"
    sz = rle.get("size")
    if not (isinstance(sz, (list, tuple)) and len(sz) == 2 and all(_is_int(t) for t in sz)):
        return f"RLE size must be [height, width] integers, got {_short(sz)}"
    h, w = sz
    why = size_problem(w, h)
    if why:
        return f"RLE {why}"
    if size is not None and (w, h) != (size[0], size[1]):
        return f"RLE size [H, W] = [{h}, {w}] does not match the image size (W, H) = ({size[0]}, {size[1]})"
    counts = rle.get("counts")
    if isinstance(counts, (bytes, bytearray)):
        try:
            counts = bytes(counts).decode("ascii")
        except UnicodeDecodeError:
            return "RLE counts are not ASCII"
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            return "RLE counts string is corrupt"
    elif isinstance(counts, list):
        if not all(_is_int(c) and 0 <= c < 2**32 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        runs = counts
    else:
        return f"RLE counts must be a string or a list, got {type(counts).__name__}"
    total = int(np.sum(runs))
    if total != h * w:
        return f"RLE counts cover {total} pixels, the mask has {h * w}"
    return None


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO *uncompressed* RLE counts of a bool (H, W) mask: the lengths of its column-major runs,
    starting with a run of zeros (0 when the first pixel is set). ``{"size": [H, W], "counts":
    uncompressed_counts(m)}`` is the form COCO uses for crowd annotations."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    return ([0] if flat[0] else []) + [int(r) for r in runs]


def to_coco(rle: dict) -> dict:
    """An RLE dict in the form pycocotools takes (compressed counts as bytes). Raises ValueError
    on a malformed RLE: pycocotools does not check counts, and corrupt ones crash the process."""
    problem = rle_problem(rle)
    if problem:
        raise ValueError(problem)
    h, w = (int(t) for t in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd annotations)
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean (H, W) mask of an RLE (compressed or uncompressed counts)."""
    return mask_utils.decode(to_coco(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    """Number of pixels in an RLE mask."""
    return int(mask_utils.area(to_coco(rle)))


def rle_iou(a: dict, b: dict) -> float:
    """IoU of two RLE masks of the same size; 0 when both are empty."""
    return float(mask_utils.iou([to_coco(a)], [to_coco(b)], [0])[0, 0])


def rle_ious(rles, target: dict) -> np.ndarray:
    """IoU of each RLE in ``rles`` with ``target`` (same size), as a float64 (K,) array."""
    if not rles:
        return np.zeros(0)
    return np.asarray(mask_utils.iou([to_coco(r) for r in rles], [to_coco(target)], [0]), float)[:, 0]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape; 0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """Boolean mask of COCO polygons (each a flat [x1, y1, x2, y2, ...] list in pixels)."""
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not polys:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Normalized box (u1, v1, u2, v2) spanning the mask's pixels (pixel edges), None if empty."""
    m = np.asarray(mask, bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    h, w = m.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h
