"""The GETok vocabulary: grid tokens, offset tokens, DELETE and structural tags (SPEC §2-3).

Coordinates are normalized image coordinates ``(u, v)``: ``u = x / W``, ``v = y / H`` in
[0, 1], origin at the top-left corner of the top-left pixel. A grid cell ``(x, y)`` is a column
``x`` and a row ``y`` of an ``n x n`` grid over the image, ``0 <= x, y < n``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

Cell = tuple[int, int]
Point = tuple[float, float]
Box = tuple[float, float, float, float]
Offset = tuple[int, int]

#: Elements of an answer line, in canonical order. Each has an opening and a closing tag.
ELEMENTS = ("point", "box", "seg", "line", "poly")
#: Every structural tag, in the order they appear in ``GetokVocab.tokens``.
STRUCTURAL_TAGS = tuple(
    tag for name in (*ELEMENTS, "offset") for tag in (f"<{name}>", f"</{name}>")
) + ("<none>",)
DELETE = "<DELETE>"
NONE = "<none>"
OFFSET_STEPS = (-1, 0, 1)

#: Tolerance (normalized units x n) of cell boundaries: a coordinate within EDGE_EPS of a cell
#: edge counts as on it, so decoded geometry (edges at x / n, centres) re-encodes to its cells
#: despite float rounding (15 / 44 * 44 == 14.999...).
EDGE_EPS = 1e-9

#: The inner text of a numbered token as readers accept it: ``grid`` or ``OFF``, then two integers
#: (spaces tolerated: ``<grid 3, 4>`` reads as ``<grid3,4>``). Groups: kind, first, second.
#: ``codec.text.TOKEN_PATTERN`` is the exact spelling ``tokens`` writes.
NUMBERED_RE = re.compile(r"(grid|OFF)\s*(-?\d{1,9})\s*,\s*(-?\d{1,9})\Z")


@dataclass(frozen=True)
class GetokVocab:
    """The GETok token set for an ``n x n`` grid and ``offset_rounds`` refinement rounds.

    ``grid_size`` is n (default 32: 1024 grid tokens). ``offset_rounds`` is R, the number of
    refinement rounds a model is trained for; the same 9 offset tokens serve every round, round r
    (1-based) moving a point by ``d / (n * 2**r)`` per axis.
    """

    grid_size: int = 32
    offset_rounds: int = 1

    DELETE = DELETE
    NONE = NONE

    def __post_init__(self):
        if not isinstance(self.grid_size, int) or not 1 <= self.grid_size <= 1024:
            raise ValueError(f"grid_size must be an int in [1, 1024], got {self.grid_size!r}")
        if not isinstance(self.offset_rounds, int) or not 0 <= self.offset_rounds <= 16:
            raise ValueError(f"offset_rounds must be an int in [0, 16], got {self.offset_rounds!r}")

    # ------------------------------------------------------------------ tokens
    @cached_property
    def tokens(self) -> list[str]:
        """Every new special token in a stable order: grid (row-major), offsets, DELETE, tags."""
        n = self.grid_size
        grid = [self.grid_token(x, y) for y in range(n) for x in range(n)]
        offsets = [self.offset_token(dx, dy) for dy in OFFSET_STEPS for dx in OFFSET_STEPS]
        return grid + offsets + [DELETE, *STRUCTURAL_TAGS]

    def grid_token(self, x: int, y: int) -> str:
        """Token of cell (column x, row y)."""
        if not (0 <= x < self.grid_size and 0 <= y < self.grid_size):
            raise ValueError(f"cell ({x}, {y}) outside a {self.grid_size}x{self.grid_size} grid")
        return f"<grid{int(x)},{int(y)}>"

    @staticmethod
    def offset_token(dx: int, dy: int) -> str:
        """Token of the offset (dx, dy), each in {-1, 0, 1}."""
        if dx not in OFFSET_STEPS or dy not in OFFSET_STEPS:
            raise ValueError(f"offset ({dx}, {dy}) outside {{-1, 0, 1}}^2")
        return f"<OFF{int(dx)},{int(dy)}>"

    def token_cell(self, token: str) -> Cell | None:
        """Cell of a grid token, or None when ``token`` is not a grid token of this grid."""
        m = NUMBERED_RE.match(token[1:-1]) if token[:1] == "<" and token[-1:] == ">" else None
        if m is None or m.group(1) != "grid":
            return None
        x, y = int(m.group(2)), int(m.group(3))
        if 0 <= x < self.grid_size and 0 <= y < self.grid_size:
            return x, y
        return None

    @staticmethod
    def token_offset(token: str) -> Offset | None:
        """(dx, dy) of an offset token, or None when ``token`` is not one."""
        m = NUMBERED_RE.match(token[1:-1]) if token[:1] == "<" and token[-1:] == ">" else None
        if m is None or m.group(1) != "OFF":
            return None
        dx, dy = int(m.group(2)), int(m.group(3))
        if dx in OFFSET_STEPS and dy in OFFSET_STEPS:
            return dx, dy
        return None

    # ------------------------------------------------------------------ points
    def _axis_cell(self, t: float) -> int:
        return min(max(math.floor(t * self.grid_size + EDGE_EPS), 0), self.grid_size - 1)

    def point_cell(self, uv: Point) -> Cell:
        """Cell containing the normalized point ``uv`` (clamped into the grid)."""
        u, v = _finite(uv, 2, "point")
        return self._axis_cell(u), self._axis_cell(v)

    def cell_point(self, cell: Cell) -> Point:
        """Normalized centre of ``cell``: ((x + 0.5) / n, (y + 0.5) / n)."""
        x, y = cell
        n = self.grid_size
        return (x + 0.5) / n, (y + 0.5) / n

    # ------------------------------------------------------------------ boxes
    def box_cells(self, box: Box) -> tuple[Cell, Cell]:
        """Top-left and bottom-right cells of a normalized box ``(u1, v1, u2, v2)``.

        Corners are sorted first. Top-left = floor(u1 n), bottom-right = ceil(u2 n - 1), clamped
        into the grid and never left of / above the top-left cell (Kosmos-2's patch indices, with
        cell edges known to ``EDGE_EPS``).
        """
        u1, v1, u2, v2 = _finite(box, 4, "box")
        u1, u2 = sorted((u1, u2))
        v1, v2 = sorted((v1, v2))
        n = self.grid_size
        x1, y1 = self._axis_cell(u1), self._axis_cell(v1)
        x2 = min(max(math.ceil(u2 * n - 1 - EDGE_EPS), x1), n - 1)
        y2 = min(max(math.ceil(v2 * n - 1 - EDGE_EPS), y1), n - 1)
        return (x1, y1), (x2, y2)

    def cells_box(self, cells: tuple[Cell, Cell]) -> Box:
        """Normalized box of two corner cells: cell centres, or a cell's edges on an axis where
        both corners share that cell (never a zero-width box)."""
        (x1, y1), (x2, y2) = cells
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        n = self.grid_size
        u1, u2 = ((x1 / n, (x1 + 1) / n) if x1 == x2 else ((x1 + 0.5) / n, (x2 + 0.5) / n))
        v1, v2 = ((y1 / n, (y1 + 1) / n) if y1 == y2 else ((y1 + 0.5) / n, (y2 + 0.5) / n))
        return u1, v1, u2, v2

    # ------------------------------------------------------------------ offsets
    def offset_step(self, round: int = 1) -> float:
        """Normalized step of refinement round ``round`` (1-based): 1 / (n * 2**round)."""
        if round < 1:
            raise ValueError(f"refinement rounds are 1-based, got {round}")
        return 1.0 / (self.grid_size * 2**round)

    def refine(self, anchor_uv: Point, target_uv: Point, round: int = 1) -> Offset:
        """Offset (dx, dy) that moves ``anchor_uv`` closest to ``target_uv`` in round ``round``.

        Per axis d in {-1, 0, 1} minimizes |a + d s - p|; ties go to the smaller move.
        """
        s = self.offset_step(round)
        a = _finite(anchor_uv, 2, "anchor")
        p = _finite(target_uv, 2, "target")
        return tuple(min(OFFSET_STEPS, key=lambda d: (abs(ai + d * s - pi), abs(d))) for ai, pi in zip(a, p))

    def apply_offset(self, uv: Point, offset: Offset, round: int = 1) -> Point:
        """Move ``uv`` by ``offset`` times the round's step, clamped into [0, 1]."""
        s = self.offset_step(round)
        dx, dy = offset
        u, v = uv
        return min(max(u + dx * s, 0.0), 1.0), min(max(v + dy * s, 0.0), 1.0)


def _finite(values, length: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(t) for t in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be {length} numbers, got {values!r}") from exc
    if len(out) != length or not all(math.isfinite(t) for t in out):
        raise ValueError(f"{what} must be {length} finite numbers, got {values!r}")
    return out
