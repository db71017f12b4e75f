"""Training rows for ms-swift (SFT), EasyR1 and verl (GRPO), the prompt templates they share,
and atomic JSONL / parquet writers.

Row formats (``docs/data.md`` shows each with an example):

- ms-swift: ``{"messages": [{"role": "user", "content": "<image>QUESTION"},
  {"role": "assistant", "content": ANSWER}], "images": [path]}``
- EasyR1: ``{"prompt": "<image>QUESTION", "answer": GROUND_TRUTH_JSON, "images": [path]}``
- verl: ``{"data_source": ..., "prompt": [{"role": "user", "content": "<image>QUESTION"}],
  "images": [path], "reward_model": {"style": "rule", "ground_truth": GROUND_TRUTH_JSON},
  "extra_info": {"index": i, ...}, "agent_name": ...}``

The answer text comes from ``getok_core.codec.answer.format_answer``: callers pass the instances (from
data preparation); writers never compute geometry. Questions come from ``PROMPT_TEMPLATES`` so
that SFT and RL data use the same wording.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable

from . import groundtruth
from .store import atomic_path
from .records import TASKS, Sample

IMAGE_TAG = "<image>"

#: Question templates per task; ``{expression}`` is replaced by the referring expression.
#: Template 0 is the default; ``template="auto"`` picks one per sample, deterministically.
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "seg": (
        "Please segment: {expression}. Answer with <box> and <seg> GETok tokens for each object, "
        "or <none> if there is no such object.",
        "Find {expression} and segment it. Answer with <box> and <seg> GETok tokens for each object, "
        "or <none> if there is no such object.",
    ),
    "box": (
        "Please locate: {expression}. Answer with a <box> of GETok tokens for each object, "
        "or <none> if there is no such object.",
        "Where is {expression}? Answer with a <box> of GETok tokens for each object, "
        "or <none> if there is no such object.",
    ),
    "point": (
        "Please point to: {expression}. Answer with a <point> GETok token for each object, "
        "or <none> if there is no such object.",
        "Point to {expression}. Answer with a <point> GETok token for each object, "
        "or <none> if there is no such object.",
    ),
    "line": (
        "Please trace: {expression}. Answer with a <line> of GETok tokens for each line, "
        "or <none> if there is none.",
        "Trace {expression}. Answer with a <line> of GETok tokens for each line, "
        "or <none> if there is none.",
    ),
}

#: The user turn that asks for a refinement (offset) answer after a proposal (SPEC §5).
REFINE_PROMPT = ("Refine your answer: for each object, give one <offset> line with one offset "
                 "token or <DELETE> per point, in order.")

#: verl's default single-turn agent loop; GETok's refinement agent loop is registered as
#: ``getok_refine`` by the verl plugin.
DEFAULT_AGENT = "single_turn_agent"
#: GETok's verl agent loop (``easyr1_plugin/agent_loop.py``): turn 1, then refinement rounds.
REFINE_AGENT = "getok_refine"


# ---------------------------------------------------------------------- questions
def question(task: str, expression: str, template: int | str = 0, *, key: str = "") -> str:
    """The question for ``expression`` in ``task``'s template ``template`` (an index into
    ``PROMPT_TEMPLATES[task]``, or ``"auto"``: chosen by a hash of ``key`` + ``expression``)."""
    if task not in PROMPT_TEMPLATES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("expression must be a non-empty string")
    templates = PROMPT_TEMPLATES[task]
    if template == "auto":
        template = zlib.crc32(f"{key}\x00{expression}".encode("utf-8")) % len(templates)
    if not isinstance(template, int) or not 0 <= template < len(templates):
        raise ValueError(f"template must be 'auto' or an index in [0, {len(templates)}), got {template!r}")
    text = expression.strip().rstrip(".")
    return templates[template].format(expression=text)


def _user_content(q: str) -> str:
    if IMAGE_TAG in q:
        raise ValueError(f"the question must not contain {IMAGE_TAG}: writers put it in front")
    return IMAGE_TAG + q


def _images(image_path) -> list[str]:
    path = os.fspath(image_path)
    if not path:
        raise ValueError("image path is empty")
    return [path]


def _gt_string(ground_truth) -> str:
    """A validated ground-truth JSON string from a dict or a string."""
    if isinstance(ground_truth, str):
        return groundtruth.dumps(groundtruth.loads(ground_truth, strict=True))
    return groundtruth.dumps(ground_truth)


# ---------------------------------------------------------------------- rows
def swift_row(image_path, question_text: str, answer: str,
              followups: Iterable[tuple[str, str]] = ()) -> dict:
    """An ms-swift row: the user question (after ``<image>``) and the assistant answer, then
    any further (user, assistant) turns from ``followups`` (e.g. the refinement turn)."""
    messages = [{"role": "user", "content": _user_content(question_text)},
                {"role": "assistant", "content": answer}]
    for user, assistant in followups:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, "images": _images(image_path)}


def swift_grpo_row(image_path, question_text: str, ground_truth) -> dict:
    """An ms-swift GRPO row: the user turn, and the ground-truth JSON in the ``solution`` column
    (ms-swift passes extra columns to reward functions; the getok ORMs read ``solution``)."""
    return {"messages": [{"role": "user", "content": _user_content(question_text)}],
            "images": _images(image_path), "solution": _gt_string(ground_truth)}


def easyr1_row(image_path, question_text: str, ground_truth) -> dict:
    """An EasyR1 row; ``ground_truth`` is a ground-truth dict or JSON string (validated)."""
    return {"prompt": _user_content(question_text), "answer": _gt_string(ground_truth),
            "images": _images(image_path)}


def verl_row(image_path, question_text: str, ground_truth, *, index: int = 0, data_source: str = "getok",
             extra_info: dict | None = None, agent_name: str = DEFAULT_AGENT) -> dict:
    """A verl row. ``extra_info`` is always a dict holding at least ``index`` (verl's naive
    reward manager writes into it, and parquet cannot store an empty struct)."""
    info = {"index": int(index)}
    info.update(extra_info or {})
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": _user_content(question_text)}],
        "images": _images(image_path),
        "reward_model": {"style": "rule", "ground_truth": _gt_string(ground_truth)},
        "extra_info": info,
        "agent_name": agent_name,
    }


def sample_question(sample: Sample, expression_index: int = 0, template: int | str = 0) -> str:
    """The question of ``sample``'s expression ``expression_index`` in its task's template."""
    return question(sample.task, sample.expressions[expression_index], template, key=sample.sample_id)


def swift_row_for(sample: Sample, instances, vocab, *, expression_index: int = 0,
                  template: int | str = 0, think: str | None = None,
                  followups: Iterable[tuple[str, str]] = ()) -> dict:
    """The ms-swift row of one expression of ``sample``: the answer is
    ``format_answer(instances, vocab, think)`` (``<none>`` when ``instances`` is empty)."""
    from ..codec.answer import format_answer

    answer = format_answer(list(instances), vocab, think=think)
    return swift_row(sample.image_path, sample_question(sample, expression_index, template), answer, followups)


def easyr1_row_for(sample: Sample, *, expression_index: int = 0, template: int | str = 0,
                   extra: dict | None = None) -> dict:
    """The EasyR1 row of one expression of ``sample`` (ground truth from ``make_ground_truth``)."""
    gt = groundtruth.make_ground_truth(sample, expression_index=expression_index, extra=extra)
    return easyr1_row(sample.image_path, sample_question(sample, expression_index, template), gt)


def verl_row_for(sample: Sample, *, index: int, expression_index: int = 0, template: int | str = 0,
                 data_source: str = "getok", agent_name: str = DEFAULT_AGENT,
                 extra: dict | None = None) -> dict:
    """The verl row of one expression of ``sample``; ``extra_info`` holds ``index``,
    ``sample_id``, ``expression_index`` and ``split``."""
    gt = groundtruth.make_ground_truth(sample, expression_index=expression_index, extra=extra)
    info = {"sample_id": sample.sample_id, "expression_index": int(expression_index), "split": sample.split}
    return verl_row(sample.image_path, sample_question(sample, expression_index, template), gt, index=index,
                    data_source=data_source, extra_info=info, agent_name=agent_name)


# ---------------------------------------------------------------------- atomic files
def write_jsonl(path, rows: Iterable[dict]) -> int:
    """Write ``rows`` as UTF-8 JSON lines, atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
    return n


def write_parquet(path, rows: Iterable[dict]) -> int:
    """Write ``rows`` (e.g. ``verl_row`` dicts) as a parquet file, atomically; returns the
    number of rows. Needs pyarrow (not a core dependency; verl installs it)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("write_parquet needs pyarrow, which getok does not install: "
                          "pip install pyarrow (the verl environment has it)") from exc
    rows = list(rows)
    if not rows:
        raise ValueError("write_parquet: no rows (parquet needs at least one row to know its columns)")
    for i, row in enumerate(rows):
        if "extra_info" in row and not (isinstance(row["extra_info"], dict) and row["extra_info"]):
            raise ValueError(f"row {i}: extra_info must be a non-empty dict (verl writes into it)")
    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return len(rows)


def write_rows(path, rows: Iterable[dict]) -> int:
    """``write_parquet`` for a ``.parquet`` path, ``write_jsonl`` otherwise."""
    if os.fspath(path).endswith(".parquet"):
        return write_parquet(path, rows)
    return write_jsonl(path, rows)


__all__ = ["PROMPT_TEMPLATES", "REFINE_PROMPT", "IMAGE_TAG", "DEFAULT_AGENT", "REFINE_AGENT", "question",
           "sample_question",
           "swift_row", "swift_grpo_row", "easyr1_row", "verl_row", "swift_row_for", "easyr1_row_for", "verl_row_for",
           "atomic_path", "write_jsonl", "write_parquet", "write_rows"]
