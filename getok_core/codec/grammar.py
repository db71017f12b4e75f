"""The GETok answer grammar for constrained decoding (``getok grammar``; docs/grammar.md).

From the vocabulary and a request (task, most instances, most cells per element, ``<think>`` or
not), or from a turn-1 answer for its refinement turn, build an ``AnswerSpec`` and render it as

- a text regex (``to_regex``): for engines that constrain text, e.g. vLLM's
  ``StructuredOutputsParams(regex=...)`` and ms-swift's ``--structured_outputs_regex``. It matches
  text, so the model may spell a cell from BPE pieces; the answer still parses;
- a Lark grammar for llguidance (``to_lark``): with ``token_ids`` (token -> id of a tokenizer) every
  GETok element is one token id (``<[151665-152688]>``), e.g. through vLLM's
  ``structured_outputs_config={"backend": "guidance"}`` with ``StructuredOutputsParams(grammar=...)``.

Both accept exactly the canonical answers of the request: ``format_answer`` / ``format_offsets``
text (instances one per line, elements in canonical order, no spaces), or ``<none>``. What a
grammar cannot say (a box's bottom-right cell not left of / above its top-left one, distinct
``<seg>`` cells, 3 distinct polygon cells) is left to ``parse_answer``, or enforced by the token
automaton of ``getok_core.models.constrained`` (a transformers ``LogitsProcessor``).

Pure Python: no framework import. Think text is ``[^<>]*`` (no tag can hide inside it).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .answer import (_MIN_CELLS, ANSWER_CLOSE, ANSWER_OPEN, MAX_INSTANCES, MAX_POINTS, THINK_CLOSE, THINK_OPEN,
                     parse_answer)
from .instance import anchors
from .vocab import DELETE, ELEMENTS, NONE, OFFSET_STEPS, GetokVocab

#: Elements each line of a task's answer holds, in canonical order (``rewards.answers.TASK_ELEMENTS``
#: plus ``poly``); ``any``: one or more elements of ``ELEMENTS``, each at most once, in order.
TASK_LINES = {"seg": ("box", "seg"), "box": ("box",), "point": ("point",), "line": ("line",),
              "poly": ("poly",), "any": ELEMENTS}
TASKS = tuple(TASK_LINES)
#: Think text: any characters but ``<`` and ``>``.
THINK_TEXT_RE = r"[^<>]*"


@dataclass(frozen=True)
class ElementRule:
    """One element of an answer line: ``kind`` and its grid-token count bounds (inclusive)."""

    kind: str
    min_cells: int
    max_cells: int


@dataclass(frozen=True)
class AnswerSpec:
    """What a constrained answer may be.

    Grid answer (``refine is None``): ``<answer>`` then ``<none>`` (when ``allow_none``) or 1 to
    ``max_instances`` lines joined by a newline, each holding the ``elements`` in order: all of
    them, or for ``any_subset`` a non-empty subsequence. Refinement answer: one ``<offset>`` line
    per turn-1 instance; ``refine[i][j]`` is True when anchor j of instance i may be ``<DELETE>``
    (False for box corners). ``think``: a ``<think>...</think>`` block comes first.
    """

    vocab: GetokVocab
    think: bool = False
    elements: tuple[ElementRule, ...] = ()
    any_subset: bool = False
    max_instances: int = 1
    allow_none: bool = True
    refine: tuple[tuple[bool, ...], ...] | None = None


def grid_spec(vocab: GetokVocab, task: str = "any", max_instances: int = 8, max_points: int = 32,
              think: bool = False, allow_none: bool = True) -> AnswerSpec:
    """The spec of a grid answer for ``task`` (one of ``TASKS``): at most ``max_instances`` lines,
    at most ``max_points`` grid tokens per ``<seg>`` / ``<line>`` / ``<poly>`` element. Raises
    ValueError on a bad request or one past the parser's caps (``MAX_INSTANCES``, ``MAX_POINTS``)."""
    if task not in TASK_LINES:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if not 1 <= max_instances <= MAX_INSTANCES:
        raise ValueError(f"max_instances must be in [1, {MAX_INSTANCES}], got {max_instances}")
    kinds = TASK_LINES[task]
    if vocab.grid_size ** 2 < 3:  # a polygon needs 3 distinct cells
        if task == "poly":
            raise ValueError(f"a {vocab.grid_size}x{vocab.grid_size} grid has no polygon of 3 distinct cells")
        kinds = tuple(k for k in kinds if k != "poly")
    need = max([1] + [_MIN_CELLS[k][0] for k in kinds if _MIN_CELLS[k][1] is None])  # seg 1, line 2, poly 3
    if max_points < need:
        raise ValueError(f"max_points must be at least {need} for task {task}, got {max_points}")
    rules = tuple(ElementRule(k, _MIN_CELLS[k][0], _MIN_CELLS[k][1] or max_points) for k in kinds)
    per_line = sum(r.max_cells for r in rules)
    if max_instances * per_line > MAX_POINTS:
        raise ValueError(f"{max_instances} instances of up to {per_line} grid tokens pass the parser's cap of "
                         f"{MAX_POINTS} grid tokens per answer (codec.answer.MAX_POINTS)")
    return AnswerSpec(vocab, think=think, elements=rules, any_subset=task == "any", max_instances=max_instances,
                      allow_none=allow_none)


def refine_spec(vocab: GetokVocab, turn1, think: bool = False) -> AnswerSpec:
    """The spec of the refinement turn of ``turn1``: a turn-1 answer text (it must parse as valid)
    or its list of instances. One ``<offset>`` line per instance, one ``<OFF..>`` or ``<DELETE>``
    per anchor (``instance.anchors`` order), ``<OFF..>`` only on box corners."""
    if isinstance(turn1, str):
        parsed = parse_answer(turn1, vocab)
        if not parsed.valid:
            raise ValueError(f"the turn-1 answer is not valid: {'; '.join(parsed.errors[:3])}")
        turn1 = parsed.instances
    rows = tuple(tuple(kind != "box" for kind, _ in anchors(inst)) for inst in turn1)
    if len(rows) > MAX_INSTANCES or sum(map(len, rows)) > MAX_POINTS:
        raise ValueError(f"the turn-1 answer passes the parser's caps ({MAX_INSTANCES} instances, "
                         f"{MAX_POINTS} anchors)")
    return AnswerSpec(vocab, think=think, refine=rows)


def spec_to_json(spec: AnswerSpec) -> str:
    """``spec`` as a JSON string (for a request field that crosses processes, e.g. vLLM's
    ``SamplingParams.extra_args``); ``spec_from_json`` reads it back to an equal spec."""
    d = {"grid_size": spec.vocab.grid_size, "offset_rounds": spec.vocab.offset_rounds, "think": spec.think,
         "elements": [[r.kind, r.min_cells, r.max_cells] for r in spec.elements], "any_subset": spec.any_subset,
         "max_instances": spec.max_instances, "allow_none": spec.allow_none,
         "refine": None if spec.refine is None else [list(r) for r in spec.refine]}
    return json.dumps(d, separators=(",", ":"))


def spec_from_json(text: str) -> AnswerSpec:
    """The ``AnswerSpec`` of ``spec_to_json``'s text. Raises ValueError on anything else."""
    try:
        d = json.loads(text)
        vocab = GetokVocab(int(d["grid_size"]), int(d["offset_rounds"]))
        elements = tuple(ElementRule(str(k), int(a), int(b)) for k, a, b in d["elements"])
        if any(r.kind not in ELEMENTS or not 0 <= r.min_cells <= r.max_cells for r in elements):
            raise ValueError("bad element rule")
        refine = None if d["refine"] is None else tuple(tuple(bool(x) for x in r) for r in d["refine"])
        return AnswerSpec(vocab, think=bool(d["think"]), elements=elements, any_subset=bool(d["any_subset"]),
                          max_instances=int(d["max_instances"]), allow_none=bool(d["allow_none"]), refine=refine)
    except (TypeError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a GETok answer spec (codec.grammar.spec_to_json): {exc}") from exc


@dataclass(frozen=True)
class Constraint:
    """Grammar-constrained decoding (docs/grammar.md): turn 1 follows ``grid_spec(vocab, task,
    max_instances, max_points, think, allow_none)``, a refinement round ``refine_spec`` of the
    instances it refines (one ``<OFF..>`` / ``<DELETE>`` per anchor). Defaults: ``getok grammar``'s."""

    max_instances: int = 8
    max_points: int = 32
    think: bool = False
    allow_none: bool = True

    def turn1(self, vocab: GetokVocab, task: str) -> AnswerSpec:
        return grid_spec(vocab, task, self.max_instances, self.max_points, self.think, self.allow_none)

    def refine(self, vocab: GetokVocab, instances) -> AnswerSpec:
        return refine_spec(vocab, list(instances), self.think)


# ---------------------------------------------------------------------- shared pieces
def int_range_regex(n: int) -> str:
    """A regex of the decimal integers 0 .. n-1 without leading zeros (n >= 1)."""
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    return "(" + "|".join(_upto(str(n - 1))) + ")"


def _upto(m: str) -> list[str]:
    """Regex alternatives of the integers 0 .. int(m), no leading zeros."""
    if len(m) == 1:
        return [f"[0-{m}]" if m != "0" else "0"]
    alts = ["[0-9]"] + [f"[1-9][0-9]{{{k}}}" if k > 1 else "[1-9][0-9]" for k in range(1, len(m) - 1)]
    return alts + _same_length(m, first=True)


def _same_length(m: str, first: bool) -> list[str]:
    """Regex alternatives of the len(m)-digit strings <= m (the first digit >= 1 when ``first``)."""
    lo = 1 if first else 0
    d, rest = int(m[0]), m[1:]
    if not rest:
        return [_digit_class(lo, d)] if d >= lo else []
    out = []
    if d - 1 >= lo:
        out.append(_digit_class(lo, d - 1) + ("[0-9]" if len(rest) == 1 else f"[0-9]{{{len(rest)}}}"))
    out += [m[0] + tail for tail in _same_length(rest, first=False)]
    return out


def _digit_class(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _offset_digits() -> str:
    return "(" + "|".join(str(s) for s in OFFSET_STEPS) + ")"


def _line_choices(spec: AnswerSpec) -> list[list[ElementRule]]:
    """Each alternative of an answer line as (required first element, then optional ones) lists:
    for a fixed task one alternative of all elements; for ``any`` one per first element."""
    if not spec.any_subset:
        return [list(spec.elements)]
    return [list(spec.elements[i:]) for i in range(len(spec.elements))]


# ---------------------------------------------------------------------- text regex
def to_regex(spec: AnswerSpec) -> str:
    """The text regex of ``spec`` (Python ``re`` and vLLM's regex engines: groups, classes,
    ``{m,n}``, no look-around). Newlines are written ``\\n``."""
    n = spec.vocab.grid_size
    num = int_range_regex(n)
    cell = f"<grid{num},{num}>"
    head = f"{re.escape(THINK_OPEN)}{THINK_TEXT_RE}{re.escape(THINK_CLOSE)}" if spec.think else ""
    if spec.refine is not None:
        move = f"<OFF{_offset_digits()},{_offset_digits()}>"
        free = f"({move}|{re.escape(DELETE)})"
        lines = ["<offset>" + "".join(free if d else move for d in row) + "</offset>" for row in spec.refine]
        return head + "<answer>" + "\\n".join(lines) + "</answer>"

    def element(r: ElementRule) -> str:
        count = f"{{{r.min_cells}}}" if r.min_cells == r.max_cells else f"{{{r.min_cells},{r.max_cells}}}"
        body = cell if count == "{1}" else f"({cell}){count}"
        return f"<{r.kind}>{body}</{r.kind}>"

    alts = []
    for choice in _line_choices(spec):
        first, rest = choice[0], choice[1:]
        tail = "".join(f"({element(r)})?" for r in rest) if spec.any_subset else "".join(element(r) for r in rest)
        alts.append(element(first) + tail)
    line = alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")"
    k = spec.max_instances
    lines = line if k == 1 else f"{line}(\\n{line}){{0,{k - 1}}}"
    body = f"({re.escape(NONE)}|{lines})" if spec.allow_none else lines
    return f"{head}<answer>{body}</answer>"


def max_chars(spec: AnswerSpec) -> int | None:
    """The length, in characters, of the longest answer ``to_regex(spec)`` admits; None with
    ``think`` (think text is unbounded). A text-regex decode may spell each character with its
    own token, so ``max_new_tokens`` below this (plus one for EOS) can cut a constrained answer."""
    if spec.think:
        return None
    if spec.refine is not None:
        move = max(len(f"<OFF{a},{b}>") for a in OFFSET_STEPS for b in OFFSET_STEPS)
        lines = [len("<offset></offset>") + sum(max(move, len(DELETE)) if d else move for d in row)
                 for row in spec.refine]
        return len(ANSWER_OPEN) + len(ANSWER_CLOSE) + sum(lines) + max(len(lines) - 1, 0)
    m = spec.vocab.grid_size - 1
    cell = len(f"<grid{m},{m}>")
    line = sum(len(f"<{r.kind}></{r.kind}>") + r.max_cells * cell for r in spec.elements)
    body = spec.max_instances * line + spec.max_instances - 1
    if spec.allow_none:
        body = max(body, len(NONE))
    return len(ANSWER_OPEN) + body + len(ANSWER_CLOSE)


# ---------------------------------------------------------------------- Lark (llguidance)
def id_ranges(ids) -> str:
    """llguidance's token-set syntax for ``ids``: ``<[a-b,c,...]>`` (sorted, runs merged)."""
    ids = sorted(set(int(i) for i in ids))
    if not ids:
        raise ValueError("an empty token set")
    parts, start, prev = [], ids[0], ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return "<[" + ",".join(parts) + "]>"


def _lark_terms(spec: AnswerSpec, token_ids) -> dict[str, str]:
    """Rule name -> right-hand side of every GETok token class the grammar uses."""
    v = spec.vocab
    n = v.grid_size
    offsets = [v.offset_token(dx, dy) for dy in OFFSET_STEPS for dx in OFFSET_STEPS]
    tags = {f"{k}_{w}": f"<{'/' if w == 'c' else ''}{k}>" for k in (*ELEMENTS, "offset") for w in ("o", "c")}
    if token_ids is None:
        num = int_range_regex(n)
        out = {"cell": f'/<grid{num},{num}>/', "move": f'/<OFF{_offset_digits()},{_offset_digits()}>/',
               "delete": json.dumps(DELETE), "none": json.dumps(NONE)}
        out.update({name: json.dumps(tok) for name, tok in tags.items()})
        return out
    missing = [t for t in v.tokens if t not in token_ids]
    if missing:
        raise ValueError(f"{len(missing)} GETok token(s) are not in the tokenizer's vocabulary, e.g. "
                         f"{missing[:3]} (add them first: getok_core.models.tokens.add_getok_tokens)")
    grid = [token_ids[v.grid_token(x, y)] for y in range(n) for x in range(n)]
    out = {"cell": id_ranges(grid), "move": id_ranges(token_ids[t] for t in offsets),
           "delete": id_ranges([token_ids[DELETE]]), "none": id_ranges([token_ids[NONE]])}
    out.update({name: id_ranges([token_ids[tok]]) for name, tok in tags.items()})
    return out


def to_lark(spec: AnswerSpec, token_ids=None) -> str:
    """The llguidance Lark grammar of ``spec``. With ``token_ids`` (a mapping token -> id, e.g. a
    tokenizer's ``get_vocab()``) every GETok token is one token id; without, GETok tokens are text
    (like ``to_regex``). The plain parts (``<answer>``, ``\\n``, think text) are text."""
    t = _lark_terms(spec, token_ids)
    rules = ["%llguidance {}", ""]
    start = ("think " if spec.think else "") + "answer"
    rules.append(f"start: {start}")
    if spec.think:
        rules += [f"think: {json.dumps(THINK_OPEN)} THINK_TEXT {json.dumps(THINK_CLOSE)}",
                  f"THINK_TEXT: /{THINK_TEXT_RE}/"]
    if spec.refine is not None:
        rows = []
        for i, row in enumerate(spec.refine):
            rows.append(f"r{i}")
            rules.append(f"r{i}: offset_o " + " ".join("free" if d else "move" for d in row) + " offset_c")
        body = ' "\\n" '.join(rows)
        rules.append(f"answer: {json.dumps(ANSWER_OPEN)} {body} {json.dumps(ANSWER_CLOSE)}".replace("  ", " "))
        rules.append("free: move | delete")
        used = ["move", "delete", "offset_o", "offset_c"]
    else:
        used = ["cell"]
        for r in spec.elements:
            count = "" if r.min_cells == r.max_cells == 1 else (
                f"{{{r.min_cells}}}" if r.min_cells == r.max_cells else f"{{{r.min_cells},{r.max_cells}}}")
            rules.append(f"e_{r.kind}: {r.kind}_o cell{count} {r.kind}_c")
            used += [f"{r.kind}_o", f"{r.kind}_c"]
        alts = []
        for choice in _line_choices(spec):
            rest = [f"e_{r.kind}" + ("?" if spec.any_subset else "") for r in choice[1:]]
            alts.append(" ".join([f"e_{choice[0].kind}", *rest]))
        rules.append("inst: " + " | ".join(alts))
        k = spec.max_instances
        lines = "inst" if k == 1 else f'inst ("\\n" inst){{0,{k - 1}}}'
        body = f"none | {lines}" if spec.allow_none else lines
        rules.append(f"body: {body}")
        rules.append(f"answer: {json.dumps(ANSWER_OPEN)} body {json.dumps(ANSWER_CLOSE)}")
        if spec.allow_none:
            used.append("none")
    rules += [f"{name}: {t[name]}" for name in used]
    return "\n".join(rules) + "\n"


# ---------------------------------------------------------------------- tokenizer files
def tokenizer_ids(folder) -> dict[str, int]:
    """Token -> id of the added tokens of a Hugging Face tokenizer folder (``tokenizer.json``'s
    ``added_tokens``; the GETok tokens are added tokens). Read as JSON: no transformers."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise ValueError(f"{path}: no tokenizer.json (a Hugging Face fast tokenizer folder is needed)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}


# ---------------------------------------------------------------------- `getok grammar`
def add_arguments(parser) -> None:
    """Options of ``getok grammar``."""
    parser.add_argument("--grid-size", type=int, default=32, help="grid side n (default 32)")
    parser.add_argument("--task", default="any", choices=TASKS, help="elements of each answer line (default any)")
    parser.add_argument("--format", default="regex", choices=["regex", "lark"],
                        help="regex (text; --structured_outputs_regex) or lark (llguidance)")
    parser.add_argument("--tokenizer", help="tokenizer folder with the GETok tokens: lark token ids")
    parser.add_argument("--refine", metavar="TEXT", help="turn-1 answer: the grammar of its refinement turn")
    parser.add_argument("--max-instances", type=int, default=8, help="most answer lines (default 8)")
    parser.add_argument("--max-points", type=int, default=32,
                        help="most grid tokens of a seg / line / poly element (default 32, as getok prepare)")
    parser.add_argument("--think", action="store_true", help="a <think>...</think> block first")
    parser.add_argument("--no-none", action="store_true", help="forbid the <none> answer")
    parser.add_argument("--max-chars", action="store_true",
                        help="print the longest answer's length in characters instead (a floor for max_new_tokens "
                             "under --format regex; fails with --think, whose text is unbounded)")


def run(args) -> int:
    """``getok grammar``: print the regex or the Lark grammar."""
    vocab = GetokVocab(args.grid_size)
    if args.refine is not None:
        spec = refine_spec(vocab, sys.stdin.read() if args.refine == "-" else args.refine, think=args.think)
    else:
        spec = grid_spec(vocab, args.task, args.max_instances, args.max_points, args.think, not args.no_none)
    if args.max_chars:
        n = max_chars(spec)
        if n is None:
            print("getok grammar: --max-chars has no bound with --think (think text is unbounded)", file=sys.stderr)
            return 2
        print(n)
        return 0
    if args.format == "regex":
        if args.tokenizer:
            print("getok grammar: --tokenizer is ignored by --format regex (text)", file=sys.stderr)
        print(to_regex(spec))
    else:
        print(to_lark(spec, tokenizer_ids(args.tokenizer) if args.tokenizer else None), end="")
    return 0


__all__ = ["TASKS", "TASK_LINES", "ElementRule", "AnswerSpec", "grid_spec", "refine_spec", "to_regex", "max_chars", "to_lark",
           "id_ranges", "int_range_regex", "tokenizer_ids", "spec_to_json", "spec_from_json", "Constraint", "add_arguments", "run"]
