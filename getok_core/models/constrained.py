"""Constrained decoding with transformers ``generate``: a token-id automaton of the GETok answer
grammar (``codec.grammar.AnswerSpec``) and a ``LogitsProcessor`` that masks every other token.

The automaton walks token ids: GETok tokens are single ids (``<gridX,Y>``, ``<OFF..>``, tags), the
plain text around them (``<answer>``, ``</answer>``, the newline between instances, ``<think>``)
is forced as the tokenizer's own ids of that text, and think text is any ordinary token whose
spelling has no ``<`` / ``>``. Beyond a grammar it also enforces what ``parse_answer`` checks: a
box's bottom-right cell not left of / above its top-left cell, distinct ``<seg>`` cells, 3 distinct
``<poly>`` cells. When the answer closes only EOS is allowed, so ``generate`` stops there.

``max_new_tokens`` must cover ``GetokAutomaton.max_length()``: a cut answer is not closed.
torch is imported inside the processor only; the tokenizer is duck-typed (``convert_tokens_to_ids``,
``encode``, ``convert_ids_to_tokens``). docs/grammar.md says when to constrain (not in GRPO by
default: the mask changes the sampling distribution, the trainer's log-probs are unmasked).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codec.answer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from ..codec.grammar import AnswerSpec, ElementRule
from ..codec.vocab import DELETE, NONE, OFFSET_STEPS
from .tokens import check_single_ids, ordinary_limit, text_ids

NEWLINE = "\n"
#: Fixed texts the automaton forces, each as the tokenizer's ids of that text.
FIXED_TEXTS = (THINK_OPEN, THINK_CLOSE + ANSWER_OPEN, ANSWER_OPEN, ANSWER_CLOSE, NEWLINE)


@dataclass(frozen=True)
class TokenTable:
    """The token ids the automaton uses: ``ids`` GETok token -> id, ``text`` each of
    ``FIXED_TEXTS`` -> its ids, ``plain`` the ids think text may use (None: no think), ``eos``
    the ids that end generation."""

    ids: dict
    text: dict
    eos: tuple[int, ...]
    plain: frozenset | None = None


def token_table(tokenizer, spec: AnswerSpec, eos_token_id=None) -> TokenTable:
    """The table of ``tokenizer`` (which holds the GETok tokens: ``models.tokens.add_getok_tokens``).
    ``eos_token_id`` (an id or a list; default the tokenizer's) ends the answer. Raises ValueError
    when a GETok token is missing or not one id, or the fixed texts' first ids are ambiguous."""
    tokens = list(spec.vocab.tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t, i in zip(tokens, ids) if i is None or i == unk]
    if missing:
        raise ValueError(f"{len(missing)} GETok token(s) not in the tokenizer, e.g. {missing[:3]} "
                         f"(add them: getok_core.models.tokens.add_getok_tokens)")
    try:
        check_single_ids(tokenizer, tokens, ids)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from exc
    text = {s: tuple(text_ids(tokenizer, s)) for s in FIXED_TEXTS}
    if text[NEWLINE][0] == text[ANSWER_CLOSE][0]:
        raise ValueError("the newline and </answer> start with the same token id: the automaton cannot choose")
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    eos = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    plain = None
    if spec.think:
        limit = ordinary_limit(tokenizer)
        spelled = tokenizer.convert_ids_to_tokens(list(range(limit)))
        plain = frozenset(i for i, s in enumerate(spelled) if s and "<" not in s and ">" not in s)
        if text[THINK_CLOSE + ANSWER_OPEN][0] in plain:
            raise ValueError("the first token of </think> is a plain token: the automaton cannot choose")
    return TokenTable(dict(zip(tokens, ids)), text, eos, plain)


@dataclass(frozen=True)
class Allowed:
    """The ids allowed next: ``ids``, plus every plain think token when ``plain``."""

    ids: tuple[int, ...]
    plain: bool = False


class GetokAutomaton:
    """The token automaton of ``spec``: ``allowed`` is what may come next (None: the answer is
    done and EOS consumed, or a token outside the grammar was fed: ``dead``), ``feed(id)`` moves
    on and returns False for a token that was not allowed. ``max_think_tokens`` bounds think text."""

    def __init__(self, spec: AnswerSpec, table: TokenTable, max_think_tokens: int = 256):
        self.spec, self.table, self.max_think = spec, table, max_think_tokens
        v = spec.vocab
        n = v.grid_size
        self.cell_ids = {(x, y): table.ids[v.grid_token(x, y)] for y in range(n) for x in range(n)}
        self.cell_of = {i: c for c, i in self.cell_ids.items()}
        self.moves = tuple(table.ids[v.offset_token(dx, dy)] for dy in OFFSET_STEPS for dx in OFFSET_STEPS)
        self.dead = False
        self.done = False
        self._gen = self._walk()
        self.allowed = next(self._gen)

    def feed(self, token: int) -> bool:
        a = self.allowed
        if a is None:
            return self.done and not self.dead  # after EOS: anything (padding) is ignored
        if int(token) not in a.ids and not (a.plain and int(token) in self.table.plain):
            self.dead, self.allowed = True, None
            return False
        try:
            self.allowed = self._gen.send(int(token))
        except StopIteration:
            self.allowed, self.done = None, True
        return True

    def accepts(self, tokens) -> bool:
        """True when ``tokens`` (EOS excluded) is a complete answer: every token allowed, then EOS."""
        if not all(self.feed(t) for t in tokens) or self.allowed is None:
            return False
        return self.table.eos[0] in self.allowed.ids and self.feed(self.table.eos[0])

    def max_length(self) -> int:
        """The most tokens an answer of the spec takes, EOS included."""
        t, s = self.table.text, self.spec
        head = len(t[THINK_OPEN]) + self.max_think + len(t[THINK_CLOSE + ANSWER_OPEN]) if s.think else \
            len(t[ANSWER_OPEN])
        if s.refine is not None:
            body = sum(len(r) + 2 for r in s.refine) + len(t[NEWLINE]) * max(0, len(s.refine) - 1)
        else:
            line = sum(r.max_cells + 2 for r in s.elements)
            body = max(1, s.max_instances * line + (s.max_instances - 1) * len(t[NEWLINE]))
        return head + body + len(t[ANSWER_CLOSE]) + 1

    # ------------------------------------------------------------------ the walk (a generator)
    def _force(self, ids):
        for i in ids:
            yield Allowed((i,))

    def _walk(self):
        t, s = self.table, self.spec
        if s.think:
            yield from self._force(t.text[THINK_OPEN])
            close = t.text[THINK_CLOSE + ANSWER_OPEN]
            n = 0
            while (yield Allowed((close[0],), plain=n < self.max_think)) != close[0]:
                n += 1
            yield from self._force(close[1:])
        else:
            yield from self._force(t.text[ANSWER_OPEN])
        if s.refine is not None:
            yield from self._refine()
        else:
            yield from self._grid()
        yield Allowed(t.eos)

    def _refine(self):
        t = self.table
        free = self.moves + (t.ids[DELETE],)
        for i, row in enumerate(self.spec.refine):
            if i:
                yield from self._force(t.text[NEWLINE])
            yield Allowed((t.ids["<offset>"],))
            for may_delete in row:
                yield Allowed(free if may_delete else self.moves)
            yield Allowed((t.ids["</offset>"],))
        yield from self._force(t.text[ANSWER_CLOSE])

    def _grid(self):
        t, s = self.table, self.spec
        opens = {t.ids[f"<{r.kind}>"]: j for j, r in enumerate(s.elements)}
        first = tuple(t.ids[f"<{r.kind}>"] for r in (s.elements if s.any_subset else s.elements[:1]))
        nl, end = t.text[NEWLINE], t.text[ANSWER_CLOSE]
        tok = yield Allowed(first + ((t.ids[NONE],) if s.allow_none else ()))
        if tok == t.ids.get(NONE) and s.allow_none:
            yield from self._force(end)
            return
        for line in range(s.max_instances):
            if line:
                yield from self._force(nl[1:])
                tok = yield Allowed(first)
            while True:  # tok opens element j of this line
                j = opens[tok]
                yield from self._element(s.elements[j])
                later = s.elements[j + 1:] if s.any_subset else s.elements[j + 1:j + 2]
                nxt = tuple(t.ids[f"<{r.kind}>"] for r in later)
                complete = s.any_subset or j == len(s.elements) - 1
                ends = (((nl[0],) if line < s.max_instances - 1 else ()) + (end[0],)) if complete else ()
                tok = yield Allowed(nxt + ends)
                if tok not in nxt:
                    break
            if tok == end[0]:
                yield from self._force(end[1:])
                return

    def _element(self, r: ElementRule):
        """The grid tokens and the closing tag of one element (its opening tag consumed)."""
        close = self.table.ids[f"</{r.kind}>"]
        cells: list = []
        while True:
            opts = self._cells(r, cells) if len(cells) < r.max_cells else []
            distinct = len(set(cells))
            if len(cells) >= r.min_cells and (r.kind != "poly" or distinct >= 3):
                opts.append(close)
            tok = yield Allowed(tuple(opts))
            if tok == close:
                return
            cells.append(self.cell_of[tok])

    def _cells(self, r: ElementRule, cells: list) -> list[int]:
        """The grid ids allowed as the next cell of element ``r`` holding ``cells``."""
        if r.kind == "box" and cells:
            x1, y1 = cells[0]
            return [i for (x, y), i in self.cell_ids.items() if x >= x1 and y >= y1]
        if r.kind == "seg" or (r.kind == "poly" and r.max_cells - len(cells) <= 3 - len(set(cells))):
            used = set(cells)
            return [i for c, i in self.cell_ids.items() if c not in used]
        return list(self.cell_ids.values())


class GetokLogitsProcessor:
    """A transformers logits processor (``model.generate(logits_processor=[...])``): every row of
    the batch follows its own ``GetokAutomaton`` over the tokens generated after the prompt; the
    scores of tokens it does not allow are set to -inf. Rows are replayed from the start when
    their tokens change (beam search reorders rows). A row whose answer is done is left alone.
    A call whose ``input_ids`` is not one token longer than the last call's starts a new
    generation (the processor can be reused across ``generate`` calls)."""

    def __init__(self, spec: AnswerSpec, tokenizer=None, table: TokenTable | None = None, eos_token_id=None,
                 max_think_tokens: int = 256):
        self.spec = spec
        self.table = table if table is not None else token_table(tokenizer, spec, eos_token_id)
        self.max_think = max_think_tokens
        self._prompt_len = self._last_len = None
        self._rows: dict[int, tuple[list, GetokAutomaton]] = {}
        self._plain_index = None

    def automaton(self) -> GetokAutomaton:
        return GetokAutomaton(self.spec, self.table, self.max_think)

    def max_length(self) -> int:
        return self.automaton().max_length()

    def _row(self, r: int, generated: list) -> GetokAutomaton:
        seen, auto = self._rows.get(r, ([], None))
        if auto is None or generated[:len(seen)] != seen:
            seen, auto = [], self.automaton()
        for tok in generated[len(seen):]:
            auto.feed(tok)
        self._rows[r] = (list(generated), auto)
        return auto

    def __call__(self, input_ids, scores):
        import torch

        length = input_ids.shape[1]
        if self._last_len is None or length != self._last_len + 1:  # a new generate call
            self._prompt_len, self._rows = length, {}
        self._last_len = length
        keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        free = []
        for r in range(input_ids.shape[0]):
            auto = self._row(r, input_ids[r, self._prompt_len:].tolist())
            a = auto.allowed
            if a is None:
                free.append(r)
                continue
            keep[r, torch.tensor(a.ids, dtype=torch.long, device=scores.device)] = True
            if a.plain:
                if self._plain_index is None:
                    self._plain_index = torch.tensor(sorted(self.table.plain), dtype=torch.long)
                keep[r, self._plain_index.to(scores.device)] = True
        if free:
            keep[free] = True
        return scores.masked_fill(~keep, float("-inf"))


__all__ = ["TokenTable", "token_table", "Allowed", "GetokAutomaton", "GetokLogitsProcessor", "FIXED_TEXTS"]
