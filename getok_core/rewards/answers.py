"""Reading a grid answer for the rewards: the canonical parse (``codec.answer.parse_answer``)
behind a fast path for canonical, valid answers (a property test shows both read the same), and
the grid ``format`` rule (SPEC §6)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ..codec import answer as codec_answer
from ..codec.answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, Parsed, parse_answer
from ..codec.instance import InstanceCells
from ..codec.text import GRID_TOKEN_RE, strip_trailing_specials
from ..codec.vocab import GetokVocab

#: Elements each task's answer lines must hold, exactly (the grid ``format`` component).
TASK_ELEMENTS = {"seg": ("box", "seg"), "box": ("box",), "point": ("point",), "line": ("line",)}

#: One answer line with every grid token replaced by NUL, elements in the canonical order.
_SKELETON_LINE_RE = re.compile(
    "(?:<point>(\x00)</point>)?(?:<box>(\x00\x00)</box>)?(?:<seg>(\x00+)</seg>)?"
    "(?:<line>(\x00\x00+)</line>)?(?:<poly>(\x00\x00\x00+)</poly>)?")
#: Grid sizes up to this one read cells from a table of canonical spellings.
_TABLE_MAX = 128


@dataclass
class GridAnswer:
    """What the rewards read of a grid answer (the fields of ``codec.answer.Parsed`` they use):
    ``cells`` one ``InstanceCells`` per well-formed instance, ``valid`` no error, ``no_target``
    the answer is ``<none>`` / empty, ``found`` an ``<answer>`` tag was present, ``stray`` prose
    between elements, ``errors`` the parse errors."""

    cells: list[InstanceCells]
    valid: bool
    no_target: bool
    found: bool
    stray: bool = False
    errors: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, p: Parsed) -> "GridAnswer":
        """The reading of a ``parse_answer`` result."""
        return cls(list(p.cells), p.valid, p.no_target, p.found_answer, bool(p.stray_text), list(p.errors))


@lru_cache(maxsize=16)
def _cell_table(n: int) -> dict[tuple[str, str], tuple[int, int]]:
    """{(X, Y) digit strings: (x, y)} of the cells of an n x n grid (canonical spellings only)."""
    return {(str(x), str(y)): (x, y) for y in range(n) for x in range(n)}


def _cell(xs: str, ys: str, n: int) -> tuple[int, int] | None:
    """The cell of canonical digit strings (no leading zero) inside an n x n grid, else None."""
    for s in (xs, ys):
        if len(s) > len(str(n)) or (s[0] == "0" and s != "0"):
            return None
    x, y = int(xs), int(ys)
    return (x, y) if x < n and y < n else None


def _cells_of(body: str, n: int) -> list[tuple[int, int]] | None:
    """The cells of every grid token of ``body`` in order; None when one is off the grid or not
    canonically spelled."""
    found = GRID_TOKEN_RE.findall(body)
    if n <= _TABLE_MAX:
        table = _cell_table(n)
        try:
            return [table[t] for t in found]
        except KeyError:
            return None
    cells = [_cell(xs, ys, n) for xs, ys in found]
    return None if None in cells else cells


def _line_cells(line: str, cells: list, pos: int) -> tuple[InstanceCells | None, int]:
    """(the instance of one skeleton line whose tokens start at ``cells[pos]``, the next
    position); (None, pos) when the line is not a canonical, valid instance."""
    m = _SKELETON_LINE_RE.fullmatch(line)
    if m is None:
        return None, pos
    groups = []
    for g in m.groups():
        if g is None:
            groups.append(None)
        else:
            groups.append(tuple(cells[pos:pos + len(g)]))
            pos += len(g)
    point, box, seg, pline, poly = groups
    if box is not None and (box[1][0] < box[0][0] or box[1][1] < box[0][1]):
        return None, pos
    if (seg is not None and len(set(seg)) != len(seg)) or (poly is not None and len(set(poly)) < 3):
        return None, pos
    return InstanceCells(box=box, points=seg or (), polyline=pline, polygon=poly,
                         point=None if point is None else point[0]), pos


def fast_answer(text: str, vocab: GetokVocab) -> GridAnswer | None:
    """The reading of a canonical, valid answer (one ``<answer>`` block whose lines are canonical
    instances, ``<none>``, or nothing), or None to fall back to ``parse_answer``. Gives exactly
    what ``GridAnswer.of(parse_answer(text))`` gives on the texts it accepts (a property test
    checks this); about ten times faster.

    Grid tokens are replaced by a placeholder (NUL) and the skeleton of each line is matched
    against the canonical element order; the cells come from one ``findall``. An answer that may
    pass the caps ``codec.answer.MAX_INSTANCES`` / ``MAX_POINTS`` (more lines or ``<grid``
    tokens, counted before anything is built) is left to ``parse_answer``, which cuts it.
    """
    a = text.find(ANSWER_OPEN)
    if a < 0:
        return None
    b = text.find(ANSWER_CLOSE, a)
    if b < 0 or text.find(ANSWER_OPEN, a + 1) >= 0:
        return None
    body = text[a + len(ANSWER_OPEN):b]
    if body == "" or body == "<none>":
        return GridAnswer([], True, True, True)
    if ("\x00" in body or body.count("\n") >= codec_answer.MAX_INSTANCES
            or body.count("<grid") > codec_answer.MAX_POINTS):  # the caps: read where they are defined
        return None
    cells = _cells_of(body, vocab.grid_size)
    if cells is None:
        return None
    pos = 0
    out: list[InstanceCells] = []
    for line in GRID_TOKEN_RE.sub("\x00", body).split("\n"):
        if not line:  # an empty line separates nothing (parse_answer: a no-op flush)
            continue
        inst, pos = _line_cells(line, cells, pos)
        if inst is None:
            return None
        out.append(inst)
    return GridAnswer(out, True, not out, True)


def read_answer(text: str, vocab: GetokVocab) -> GridAnswer:
    """The reading of a grid answer: ``fast_answer`` when it applies, else ``parse_answer``."""
    fast = fast_answer(text, vocab)
    return fast if fast is not None else GridAnswer.of(parse_answer(text, vocab))


def cells_kinds(c: InstanceCells) -> tuple[str, ...]:
    """The element kinds an instance holds, in the canonical order (point, box, seg, line, poly)."""
    present = (("point", c.point is not None), ("box", c.box is not None), ("seg", bool(c.points)),
               ("line", c.polyline is not None), ("poly", c.polygon is not None))
    return tuple(kind for kind, here in present if here)


def grid_format_ok(text: str, ans: GridAnswer, task: str | None, think: bool = True) -> bool:
    """The grid ``format`` rule: ``<think>..</think><answer>..</answer>`` once each, nothing but
    whitespace around them (trailing chat special tokens allowed), the answer valid, every
    non-blank answer line one instance holding exactly the elements ``task`` asks for
    (``TASK_ELEMENTS``), or the answer ``<none>`` / empty. ``think=False``: the same with no
    thinking block, the text being ``<answer>..</answer>`` alone (no ``<think>`` / ``</think>``)."""
    t = strip_trailing_specials(text).lstrip()
    if not (t.startswith(THINK_OPEN if think else ANSWER_OPEN) and t.endswith(ANSWER_CLOSE)):
        return False
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        if t.count(tag) != (1 if think or tag in (ANSWER_OPEN, ANSWER_CLOSE) else 0):
            return False
    ao = t.find(ANSWER_OPEN)
    if think:
        tc = t.find(THINK_CLOSE)
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
    return want is None or all(cells_kinds(c) == want for c in ans.cells)


__all__ = ["TASK_ELEMENTS", "GridAnswer", "fast_answer", "read_answer", "cells_kinds", "grid_format_ok"]
