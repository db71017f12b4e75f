"""Queries to predict, and a backend that replays answers produced elsewhere.

``Query``: one (image, query, task) to ask, from ``--image``/``--query`` or a JSONL of
``{"image", "query"[, "task"][, "prompt"]}`` rows, or the EasyR1 rows of ``getok prepare``
(``DIR/easyr1/SPLIT.jsonl``: the prompt, the image, the task of the ground truth) (``read_queries``).

``ReplayBackend``: the ``rollout`` backend protocol (``generate(items, cfg)``) answering from
stored model turns instead of a model: one scripted dialogue for every prompt
(``ReplayBackend(["<answer>...</answer>", "<answer><offset>...</offset></answer>"])``) or one per
turn-1 prompt (``by_prompt``). The turn asked is read from the prompt (the number of assistant
turns ``rollout.stage2_prompt`` put in it). ``read_replay(path)`` reads a JSONL of
``{"image", "query"[, "task"], "answers": [turn texts]}`` (or ``"answer": text``) rows, or the
result file of ``swift infer`` (``{"messages", "images", "response"}``): the queries and the backend
that renders their answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..data import groundtruth
from ..data.writers import IMAGE_TAG
from ..models.rollout import IM_END, IM_START
from .predictor import user_prompt

ASSISTANT = f"{IM_START}assistant\n"


@dataclass(frozen=True)
class Query:
    """One prediction to make. ``prompt``: a full question overriding the task template;
    ``rounds``: refinement rounds for this query (None: the predictor's); ``where``: the file
    and line it came from (for messages)."""

    image: str
    query: str
    task: str = "seg"
    prompt: str | None = None
    rounds: int | None = None
    where: str = ""


class ReplayBackend:
    """Answers from stored model turns. ``answers``: the turns (turn 1, then one offset answer per
    round) given to every prompt; ``by_prompt``: turn-1 prompt (``user_prompt``) -> its turns, or
    a list of such dialogues (the same question on several images), served in order: a turn-1
    request takes the prompt's next dialogue (after the last, the first again) and the later
    turns of that request come from it. Asking a turn that is not stored raises ValueError."""

    def __init__(self, answers=None, by_prompt: dict | None = None):
        if answers is None and not by_prompt:
            raise ValueError("ReplayBackend needs answers (a list of turn texts) or by_prompt")
        self.answers = None if answers is None else _dialogue(answers)
        self.by_prompt = {k: _dialogues(v) for k, v in (by_prompt or {}).items()}
        self._next = {k: 0 for k in self.by_prompt}
        self._current: dict[str, list[str]] = {}

    def _turns(self, first: str, turn: int) -> list[str]:
        if first not in self.by_prompt:
            if self.answers is None:
                raise ValueError(f"replay: no stored answer for the prompt {first[:120]!r}")
            return self.answers
        if turn == 0 or first not in self._current:
            dialogues = self.by_prompt[first]
            self._current[first] = dialogues[self._next[first] % len(dialogues)]
            self._next[first] += 1
        return self._current[first]

    def generate(self, items, cfg) -> list[list[str]]:
        out = []
        for prompt, _images, _row in items:
            first, turn = prompt.split(IM_END, 1)[0], prompt.count(ASSISTANT)
            turns = self._turns(first, turn)
            if turn >= len(turns):
                raise ValueError(f"replay: turn {turn + 1} asked, {len(turns)} stored for the prompt {first[:120]!r}")
            out.append([turns[turn]] * cfg.num_samples)
        return out


def _dialogues(value) -> list[list[str]]:
    """One dialogue (a text, or a list of turn texts) or a list of dialogues, as a list of dialogues."""
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value and isinstance(value[0], str)):
        return [_dialogue(value)]
    if not value:
        raise ValueError("a replayed prompt needs at least one dialogue")
    return [_dialogue(d) for d in value]


def _dialogue(turns) -> list[str]:
    turns = [turns] if isinstance(turns, str) else list(turns)
    if not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"a replayed dialogue must be a non-empty list of turn texts, got {turns!r:.120}")
    return turns


def _image_path(value, base: Path, where: str) -> str:
    if isinstance(value, list):  # swift rows: "images": [path] or [{"path": ...}]
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: field 'image' must be a path")
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists() and (base / path).exists():
        path = base / path
    return os.fspath(path)


def _swift_prompt(messages, where: str) -> str:
    user = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    if not isinstance(user, str) or not user.strip():
        raise ValueError(f"{where}: field 'messages' has no user text")
    return user


def _row_query(row, where: str, base: Path, task: str) -> tuple[Query, list[str] | None]:
    """The query of a JSONL row and its stored turns (None: the row has none)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object")
    if "messages" in row and "query" not in row:  # a `swift infer` result row
        prompt = _swift_prompt(row["messages"], where)
        image = _image_path(row.get("images"), base, where + " field 'images'")
        q = Query(image, prompt.replace(IMAGE_TAG, "").strip(), row.get("task", task), prompt=prompt, where=where)
        turns = [row["response"]] if isinstance(row.get("response"), str) else None
        return q, turns
    if "prompt" in row and "images" in row and "query" not in row:  # an EasyR1 row of `getok prepare`
        try:
            gt_task = groundtruth.loads(row["answer"], strict=True)["task"] if "answer" in row else task
        except ValueError as exc:
            raise ValueError(f"{where}: field 'answer': {exc}") from None
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: field 'prompt' must be a non-empty string")
        image = _image_path(row.get("images"), base, where + " field 'images'")
        return Query(image, prompt.replace(IMAGE_TAG, "").strip(), gt_task, prompt=prompt, where=where), None
    if not isinstance(row.get("query"), str) or not row["query"].strip():
        raise ValueError(f"{where}: field 'query' must be a non-empty string")
    turns = row.get("answers", [row["answer"]] if "answer" in row else None)
    if turns is not None and not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
        raise ValueError(f"{where}: field 'answers' must be a non-empty list of strings")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: field 'prompt' must be a string")
    return Query(_image_path(row.get("image"), base, where), row["query"], row.get("task", task), prompt,
                 where=where), turns


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None


def read_queries(path, task: str = "seg") -> list[Query]:
    """The queries of a JSONL file (rows ``{"image", "query"[, "task"][, "prompt"]}``; a relative
    image path is looked up beside the file when it is not found as given)."""
    base = Path(path).resolve().parent
    return [_row_query(row, f"{path}:{n}", base, task)[0] for n, row in _jsonl(path)]


def read_replay(path, task: str = "seg", template: int | str = 0, format_prompt: str | None = None):
    """(queries, ReplayBackend) of a JSONL of answered queries (module docstring): each query's
    ``rounds`` is its number of stored turns minus one; rows asking the same prompt (one question
    on several images) are answered in file order. Raises ValueError naming the line of a row
    without answers."""
    base = Path(path).resolve().parent
    queries, by_prompt = [], {}
    for n, row in _jsonl(path):
        where = f"{path}:{n}"
        q, turns = _row_query(row, where, base, task)
        if turns is None:
            raise ValueError(f"{where}: no stored answer (field 'answers', 'answer' or 'response')")
        key = user_prompt(q.task, q.query, template, format_prompt, q.prompt)
        by_prompt.setdefault(key, []).append(turns)
        queries.append(Query(q.image, q.query, q.task, q.prompt, len(turns) - 1, where))
    if not queries:
        raise ValueError(f"{path}: no rows")
    return queries, ReplayBackend(by_prompt=by_prompt)


__all__ = ["Query", "ReplayBackend", "read_queries", "read_replay"]
