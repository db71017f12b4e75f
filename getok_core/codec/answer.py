"""Answer text: canonical formatting and a parser that never raises (SPEC §3).

Grid answer (one instance per line)::

    <think>...</think><answer><box><grid3,4><grid20,25></box><seg><grid10,12><grid14,18></seg>
    <point><grid7,9></point></answer>

Refinement answer (one ``<offset>`` element per turn-1 instance, one token per anchor)::

    <answer><offset><OFF0,1><OFF-1,0><OFF0,0><DELETE></offset></answer>

The parser reads the last ``<answer>`` block (or the whole text, thinking removed, when there is
none). It scans tags with one bounded pattern (``<`` + at most 64 non-bracket characters + ``>``),
so its time is linear in the input, and it stops at the caps ``MAX_INSTANCES`` /
``MAX_POINTS`` (the answer is then invalid), so what it builds is bounded whatever the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .text import as_text
from .instance import Instance, InstanceCells, anchors, decode_instance, encode_instance
from .vocab import DELETE, ELEMENTS, NONE, NUMBERED_RE, GetokVocab, Offset

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_TAG_RE = re.compile(r"<([^<>]{1,64})>")
_RANK = {kind: i for i, kind in enumerate(ELEMENTS)}
_MIN_CELLS = {"point": (1, 1), "box": (2, 2), "seg": (1, None), "line": (2, None), "poly": (3, None)}
_MAX_ERRORS = 50

#: Most instances one answer may hold (grid answer lines; ``<offset>`` lines of a refinement
#: answer). COCO's own detection evaluation keeps at most 100 detections per image, and no
#: referring or pointing dataset GETok prepares comes near it; an answer with more is invalid and
#: only its first ``MAX_INSTANCES`` instances are kept, so the work per answer stays bounded
#: (SPEC §3).
MAX_INSTANCES = 100
#: Most grid tokens (anchors: box corners, seg points, the point, polyline and polygon vertices)
#: the kept instances of one answer may hold together, and most offset tokens of a refinement
#: answer. ``getok prepare`` writes at most 2 + 32 anchors per seg instance (``--max-points``
#: 32), so 100 such instances need 3400; an answer with more is invalid and is cut before the
#: instance that passes the cap (SPEC §3).
MAX_POINTS = 4096


@dataclass
class Parsed:
    """Result of ``parse_answer``.

    ``instances``: the well-formed instances, decoded to normalized coordinates. ``cells``: the
    same instances as grid cells. ``valid``: True when ``errors`` is empty. ``no_target``: the
    answer is ``<none>`` or an empty ``<answer></answer>``. ``found_answer``: an ``<answer>`` tag
    was present. ``stray_text``: prose between elements (not an error by itself).
    """

    instances: list[Instance] = field(default_factory=list)
    valid: bool = False
    errors: list[str] = field(default_factory=list)
    no_target: bool = False
    cells: list[InstanceCells] = field(default_factory=list)
    found_answer: bool = False
    stray_text: list[str] = field(default_factory=list)


@dataclass
class ParsedOffsets:
    """Result of ``parse_offsets``: ``offsets[i]`` holds one entry per anchor of proposal
    instance i ((dx, dy), or None for ``<DELETE>``), or is None when that line is missing or
    malformed."""

    offsets: list[list[Offset | None] | None] = field(default_factory=list)
    valid: bool = False
    errors: list[str] = field(default_factory=list)
    found_answer: bool = False


# ---------------------------------------------------------------------- formatting
def _wrap(body: str, think: str | None) -> str:
    head = "" if think is None else f"{THINK_OPEN}{think}{THINK_CLOSE}"
    return f"{head}{ANSWER_OPEN}{body}{ANSWER_CLOSE}"


def format_cells(cells: InstanceCells, vocab: GetokVocab) -> str:
    """One canonical answer line for an instance given as cells."""
    parts: list[str] = []
    groups = {
        "point": None if cells.point is None else [cells.point],
        "box": None if cells.box is None else list(cells.box),
        "seg": list(cells.points) or None,
        "line": None if cells.polyline is None else list(cells.polyline),
        "poly": None if cells.polygon is None else list(cells.polygon),
    }
    for kind in ELEMENTS:
        group = groups[kind]
        if group is not None:
            parts.append(f"<{kind}>" + "".join(vocab.grid_token(*c) for c in group) + f"</{kind}>")
    return "".join(parts)


def format_answer(instances, vocab: GetokVocab, think: str | None = None,
                  simplify: bool = False) -> str:
    """Canonical answer text for ``instances`` (normalized geometry): one line per instance,
    ``<none>`` when there are none, prefixed by ``<think>think</think>`` when ``think`` is given.
    Raises ValueError on an empty or degenerate instance."""
    lines = [format_cells(encode_instance(inst, vocab, simplify=simplify), vocab) for inst in instances]
    return _wrap("\n".join(lines) if lines else NONE, think)


def format_offsets(offsets, vocab: GetokVocab, think: str | None = None) -> str:
    """Refinement answer: one ``<offset>`` line per instance; an entry is (dx, dy) or None
    (``<DELETE>``)."""
    lines = []
    for row in offsets:
        toks = [DELETE if o is None else vocab.offset_token(*o) for o in row]
        lines.append("<offset>" + "".join(toks) + "</offset>")
    return _wrap("\n".join(lines), think)


# ---------------------------------------------------------------------- parsing helpers
def _strip_think(text: str) -> str:
    """``text`` without ``<think>...</think>`` blocks (an unclosed block runs to the end)."""
    out, pos = [], 0
    while True:
        start = text.find(THINK_OPEN, pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        end = text.find(THINK_CLOSE, start)
        if end < 0:
            break
        pos = end + len(THINK_CLOSE)
    return "".join(out)


def _answer_region(text: str, errors: list[str]) -> tuple[str, bool]:
    """The body of the last ``<answer>`` block, or the thinking-free text when there is none."""
    start = text.rfind(ANSWER_OPEN)
    if start >= 0:
        body_start = start + len(ANSWER_OPEN)
        end = text.find(ANSWER_CLOSE, body_start)
        if end < 0:
            errors.append("unclosed <answer>: no </answer> after the last <answer>")
            return text[body_start:], True
        return text[body_start:end], True
    end = text.find(ANSWER_CLOSE)
    if end >= 0:
        errors.append("</answer> without <answer>")
        return _strip_think(text[:end]), False
    return _strip_think(text), False


def _short(s: str, limit: int = 40) -> str:
    s = s.strip()
    return repr(s if len(s) <= limit else s[:limit] + "...")


def _classify(tag: str):
    """(kind, value) of a tag's inner text."""
    t = tag.strip()
    if t in _RANK or t == "offset":
        return "open", t
    if t[:1] == "/" and (t[1:].strip() in _RANK or t[1:].strip() == "offset"):
        return "close", t[1:].strip()
    if t == "none":
        return "none", None
    if t == "DELETE":
        return "delete", None
    m = NUMBERED_RE.match(t)
    if m:
        return m.group(1), (int(m.group(2)), int(m.group(3)))
    return "other", t


def _tokens(region: str):
    """Yield (kind, value, raw) for every tag and every run of text between tags."""
    pos = 0
    for m in _TAG_RE.finditer(region):
        if m.start() > pos:
            yield "text", region[pos:m.start()], region[pos:m.start()]
        kind, value = _classify(m.group(1))
        yield kind, value, m.group(0)
        pos = m.end()
    if pos < len(region):
        yield "text", region[pos:], region[pos:]


class _Errors(list):
    """A list of error strings capped at ``_MAX_ERRORS`` entries plus one summary entry."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def append(self, item):
        if len(self) < _MAX_ERRORS:
            super().append(item)
        else:
            self.dropped += 1

    def first(self, item) -> None:
        """Put ``item`` first (a message that must stay visible), keeping the cap."""
        self.insert(0, item)
        if len(self) > _MAX_ERRORS:
            self.pop()
            self.dropped += 1

    def final(self) -> list[str]:
        return list(self) + ([f"... and {self.dropped} more error(s)"] if self.dropped else [])


# ---------------------------------------------------------------------- grid answers
def parse_answer(text, vocab: GetokVocab) -> Parsed:
    """Parse a grid answer. Never raises: every problem is one entry of ``errors``.

    Instances are separated by newlines outside elements, or by an element that repeats a kind
    already in the current instance or comes before it in canonical order (point, box, seg, line,
    poly). A malformed element (wrong token count, bad or out-of-range token, unclosed, nested,
    text inside) is dropped and reported; the rest of its instance is kept. Past ``MAX_INSTANCES``
    instances or ``MAX_POINTS`` grid tokens the answer is invalid and cut: the instances before
    the one that passes the cap are kept, the rest is not read (the first error says so).
    """
    try:
        return _parse_answer(as_text(text), vocab)
    except Exception as exc:  # a parser bug must not kill a reward worker; tests keep this unreached
        return Parsed(errors=[f"internal parser error: {type(exc).__name__}: {exc}"])


def _parse_answer(text: str, vocab: GetokVocab) -> Parsed:
    errors = _Errors()
    region, found = _answer_region(text, errors)
    parser = _GridParser(vocab, errors, Parsed(found_answer=found))
    for kind, value, raw in _tokens(region):
        parser.feed(kind, value, raw)
        if parser.cut:  # past MAX_INSTANCES / MAX_POINTS: the rest is not read
            break
    return parser.finish()


class _GridParser:
    """The state of one linear scan over a grid answer's tokens: the instance being built (its
    elements by kind and the rank of the last one), the element open now (kind, cells, whether
    it is still well formed), whether ``<none>`` was seen, the grid tokens of the kept instances
    and of the current one, and ``cut``: why the scan stopped at a cap (``MAX_INSTANCES``,
    ``MAX_POINTS``), or ""."""

    def __init__(self, vocab: GetokVocab, errors: "_Errors", out: Parsed):
        self.vocab, self.errors, self.out = vocab, errors, out
        self.current: dict[str, object] = {}
        self.last_rank = -1
        self.open_kind: str | None = None
        self.open_cells: list = []
        self.open_ok = True
        self.saw_none = False
        self.n_points = 0       # grid tokens of the kept instances
        self.n_current = 0      # grid tokens of the elements of ``current``
        self.cut = ""

    def feed(self, kind: str, value, raw: str) -> None:
        """One token of ``_tokens``."""
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:  # an unknown tag: prose outside elements, an error inside one
            self._spoil(f"unknown tag {_short(raw)} inside <{self.open_kind}>",
                        else_stray=raw[:200])
        else:
            handler(value, raw)

    def finish(self) -> Parsed:
        out, errors = self.out, self.errors
        if self.open_kind is not None and not self.cut:
            errors.append(f"unclosed <{self.open_kind}>")
            self.open_ok = False
            self._close_element()
        if not self.cut:
            self._flush()
        if self.cut:  # the instance being read when a cap was passed is dropped
            errors.first(self.cut)
            out.errors = errors.final()
            out.valid = False
            return out
        if self.saw_none and out.instances:
            errors.append(f"<none> together with {len(out.instances)} instance(s)")
        out.no_target = not out.instances and (self.saw_none or (out.found_answer and not errors))
        if not out.found_answer and not out.instances and not self.saw_none and not errors:
            errors.append("no answer: no <answer> block and no GETok element")
        out.errors = errors.final()
        out.valid = not out.errors
        return out

    # ------------------------------------------------------------------ state changes
    def _spoil(self, message: str, else_stray: str | None = None) -> None:
        """Inside an element: report ``message`` and mark the element malformed. Outside one:
        keep ``else_stray`` as stray text (when given)."""
        if self.open_kind is not None:
            self.errors.append(message)
            self.open_ok = False
        elif else_stray is not None:
            self.out.stray_text.append(else_stray)

    def _stop(self, why: str) -> None:
        """Stop at a cap: the current instance and everything after it are dropped."""
        self.cut = (f"{why}: the answer is cut after instance {len(self.out.instances)} "
                    f"(getok_core.codec.answer caps, SPEC §3)")

    def _flush(self) -> None:
        if self.current and len(self.out.instances) >= MAX_INSTANCES:
            self._stop(f"more than {MAX_INSTANCES} instances")
            return
        if self.current:
            self.n_points += self.n_current
            c = self.current
            cells = InstanceCells(box=c.get("box"), points=c.get("seg", ()), polyline=c.get("line"),
                                  polygon=c.get("poly"), point=c.get("point"))
            self.out.cells.append(cells)
            self.out.instances.append(decode_instance(cells, self.vocab))
        self.current, self.last_rank, self.n_current = {}, -1, 0

    def _close_element(self) -> None:
        kind, cells = self.open_kind, self.open_cells
        self.open_kind, self.open_cells = None, []
        lo, hi = _MIN_CELLS[kind]
        if not self.open_ok:
            return
        errors, current = self.errors, self.current
        if len(cells) < lo or (hi is not None and len(cells) > hi):
            want = f"exactly {lo}" if lo == hi else f"at least {lo}"
            errors.append(f"<{kind}> has {len(cells)} grid token(s), needs {want}")
            return
        if kind == "seg":
            uniq = list(dict.fromkeys(cells))
            if len(uniq) < len(cells):
                errors.append(f"<seg> repeats {len(cells) - len(uniq)} grid token(s)")
            current["seg"] = tuple(uniq)
            self.n_current += len(uniq)
        elif kind == "box":
            (x1, y1), (x2, y2) = cells
            if x2 < x1 or y2 < y1:
                errors.append(f"<box> corners not top-left then bottom-right: {cells[0]}, {cells[1]}")
            current["box"] = (cells[0], cells[1])
            self.n_current += 2
        elif kind == "point":
            current["point"] = cells[0]
            self.n_current += 1
        elif kind == "poly" and len(set(cells)) < 3:
            errors.append(f"<poly> has {len(set(cells))} distinct cell(s), needs at least 3")
        else:
            current[kind] = tuple(cells)
            self.n_current += len(cells)

    # ------------------------------------------------------------------ one handler per token kind
    def _on_text(self, value: str, raw: str) -> None:
        if self.open_kind is not None:
            if value.strip():
                self._spoil(f"text inside <{self.open_kind}>: {_short(value)}")
            return
        if value.strip():
            self.out.stray_text.append(value.strip()[:200])
        if "\n" in value:
            self._flush()

    def _on_open(self, value: str, raw: str) -> None:
        if self.open_kind is not None:
            self._spoil(f"<{value}> inside unclosed <{self.open_kind}>")
            self._close_element()
        if value == "offset":
            self.errors.append("<offset> in a grid answer")
            return
        rank = _RANK[value]
        if value in self.current or rank < self.last_rank:
            self._flush()
        self.open_kind, self.open_cells, self.open_ok = value, [], True
        self.last_rank = rank

    def _on_close(self, value: str, raw: str) -> None:
        if self.open_kind == value:
            self._close_element()
        elif self.open_kind is not None:
            self._spoil(f"</{value}> closes <{self.open_kind}>")
            self._close_element()
        else:
            self.errors.append(f"</{value}> without an opening tag")

    def _on_grid(self, value, raw: str) -> None:
        x, y = value
        n = self.vocab.grid_size
        if self.open_kind is None:
            self.errors.append(f"grid token {raw} outside an element")
        elif not (0 <= x < n and 0 <= y < n):
            self._spoil(f"grid token {raw} outside the {n}x{n} grid")
        elif self.n_points + self.n_current + len(self.open_cells) >= MAX_POINTS:
            self._stop(f"more than {MAX_POINTS} grid tokens")
        else:
            self.open_cells.append((x, y))

    def _on_OFF(self, value, raw: str) -> None:
        self.errors.append(f"offset token {raw} in a grid answer")
        if self.open_kind is not None:
            self.open_ok = False

    _on_delete = _on_OFF

    def _on_none(self, value, raw: str) -> None:
        self.saw_none = True
        self._spoil(f"<none> inside <{self.open_kind}>")


# ---------------------------------------------------------------------- refinement answers
def parse_offsets(text, proposal_instances, vocab: GetokVocab) -> ParsedOffsets:
    """Parse a refinement answer against the turn-1 ``proposal_instances``. Never raises.

    Element i of the answer refines proposal instance i and must hold one offset token or
    ``<DELETE>`` per anchor (``instance.anchors`` order: box corners, then seg points, ...).
    A malformed or missing element gives None for that instance; extra elements are reported.
    Past ``MAX_INSTANCES`` lines or ``MAX_POINTS`` offset tokens the answer is invalid and the rest
    is not read.
    """
    try:
        return _parse_offsets(as_text(text), list(proposal_instances), vocab)
    except Exception as exc:  # see parse_answer
        return ParsedOffsets(offsets=[None] * _safe_len(proposal_instances),
                             errors=[f"internal parser error: {type(exc).__name__}: {exc}"])


def _safe_len(x) -> int:
    try:
        return len(x)
    except Exception:
        return 0


def _parse_offsets(text: str, proposals: list[Instance], vocab: GetokVocab) -> ParsedOffsets:
    errors = _Errors()
    region, found = _answer_region(text, errors)
    rows: list[list[Offset | None] | None] = []
    open_ = False
    row: list[Offset | None] = []
    row_ok = True

    def close_row():
        nonlocal row, row_ok, open_
        rows.append(row if row_ok else None)
        row, row_ok, open_ = [], True, False

    n_tokens = 0
    for kind, value, raw in _tokens(region):
        if len(rows) > MAX_INSTANCES or n_tokens > MAX_POINTS:  # a cap passed: the rest is not read
            break
        if kind == "text":
            if open_ and value.strip():
                errors.append(f"text inside <offset>: {_short(value)}")
                row_ok = False
        elif kind == "open":
            if open_:
                errors.append(f"<{value}> inside unclosed <offset>")
                row_ok = False
                close_row()
            if value != "offset":
                errors.append(f"<{value}> in a refinement answer")
                continue
            open_ = True
        elif kind == "close":
            if open_ and value == "offset":
                close_row()
            elif open_:
                errors.append(f"</{value}> closes <offset>")
                row_ok = False
                close_row()
            else:
                errors.append(f"</{value}> without an opening tag")
        elif kind in ("OFF", "delete"):
            n_tokens += 1
            if not open_:
                errors.append(f"offset token {raw} outside <offset>")
            elif kind == "delete":
                row.append(None)
            elif value[0] in (-1, 0, 1) and value[1] in (-1, 0, 1):
                row.append(value)
            else:
                errors.append(f"offset token {raw} outside {{-1, 0, 1}}^2")
                row_ok = False
        elif kind in ("grid", "none") or (kind == "other" and open_):
            errors.append(f"unexpected {_short(raw)} in a refinement answer")
            if open_:
                row_ok = False
    if len(rows) > MAX_INSTANCES or n_tokens > MAX_POINTS:
        errors.append(f"more than {MAX_INSTANCES} <offset> lines or {MAX_POINTS} offset tokens: "
                      f"the answer is cut (getok_core.codec.answer caps, SPEC §3)")
        rows, open_ = rows[:MAX_INSTANCES], False
    if open_:
        errors.append("unclosed <offset>")
        row_ok = False
        close_row()

    return _offsets_of_rows(rows, proposals, errors, ParsedOffsets(found_answer=found))


def _offsets_of_rows(rows, proposals: list[Instance], errors: "_Errors", out: ParsedOffsets) -> ParsedOffsets:
    """``out`` filled from the parsed ``<offset>`` rows, each checked against its proposal's anchors."""
    if len(rows) != len(proposals):
        errors.append(f"{len(rows)} <offset> line(s) for {len(proposals)} proposal instance(s)")
    for i, inst in enumerate(proposals):
        got = rows[i] if i < len(rows) else None
        if got is None:
            out.offsets.append(None)
            continue
        anc = anchors(inst)
        if len(got) != len(anc):
            errors.append(f"instance {i}: {len(got)} offset token(s) for {len(anc)} anchor(s)")
            out.offsets.append(None)
            continue
        bad = [j for j, ((k, _), o) in enumerate(zip(anc, got)) if k == "box" and o is None]
        if bad:
            errors.append(f"instance {i}: <DELETE> on box corner(s) {bad}")
        out.offsets.append(got)
    out.errors = errors.final()
    out.valid = not out.errors
    return out
