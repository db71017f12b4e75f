"""The ground-truth JSON that rewards and metrics read (format version 1).

EasyR1 passes a dataset's ``answer`` column to the reward function unchanged and verl passes
``reward_model.ground_truth``; neither lets images reach the reward. So everything a reward needs
travels in one JSON string per row: the image size, the targets (masks as COCO RLE, geometry
normalized), the no-target flag, the ignore region and keys for a SAM embedding cache.

    gt = make_ground_truth(sample)          # dict, validated
    text = dumps(gt)                        # compact JSON string (what the datasets store)
    gt = loads(text)                        # dict, validated; raises GroundTruthError
    gt = loads(text, strict=False)          # dict or None; never raises, whatever ``text`` is

Every field is documented in ``docs/data.md``. Masks are checked without pycocotools: a corrupt
RLE would make pycocotools write past its buffer, so ``rle_problem`` decodes the counts in Python
first and every reader of untrusted RLE should call it.
"""

from __future__ import annotations

import json
import math

from . import masks
from .masks import MAX_PIXELS, MAX_SIDE, rle_problem, rle_string_counts  # noqa: F401 (re-exported)
from .records import TASKS, Sample, Target

#: Format version written by ``make_ground_truth`` and the only one ``loads`` accepts.
VERSION = 1

_TOP_KEYS = ("version", "sample_id", "image_key", "image_path", "image_size", "task", "expression",
             "expression_index", "no_target", "targets", "ignore", "extra")
_REQUIRED = ("version", "image_size", "task", "targets")
_TARGET_KEYS = ("mask", "box", "points", "polyline")
_MAX_ERRORS = 20


class GroundTruthError(ValueError):
    """A ground-truth JSON that does not follow format version 1; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid ground truth: " + "; ".join(self.errors))


# ---------------------------------------------------------------------- RLE checks
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


# ---------------------------------------------------------------------- building
def _box(b):
    return None if b is None else [float(t) for t in b]


def _pts(ps):
    return [[float(u), float(v)] for u, v in ps]


def _rle_out(rle):
    if rle is None:
        return None
    counts = rle["counts"]
    if isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts).decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def target_to_dict(t: Target) -> dict:
    """JSON object of a ``records.Target`` (all four keys present)."""
    return {"mask": _rle_out(t.mask), "box": _box(t.box), "points": _pts(t.points),
            "polyline": None if t.polyline is None else _pts(t.polyline)}


def target_from_dict(d: dict) -> Target:
    """``records.Target`` of a validated target object."""
    return Target(mask=d.get("mask"), box=None if d.get("box") is None else tuple(d["box"]),
                  points=tuple(tuple(p) for p in d.get("points") or ()),
                  polyline=None if d.get("polyline") is None else tuple(tuple(p) for p in d["polyline"]))


def make_ground_truth(sample: Sample, expression: str | None = None, *, expression_index: int = 0,
                      extra: dict | None = None) -> dict:
    """The ground-truth object of ``sample`` for one of its expressions.

    ``expression`` defaults to ``sample.expressions[expression_index]``. ``extra`` is a free JSON
    object kept under ``"extra"`` (e.g. the greedy seg upper-bound IoU). Raises GroundTruthError
    when the sample does not make a valid ground truth (e.g. a seg target without a mask).
    """
    if expression is None:
        expression = sample.expressions[expression_index] if sample.expressions else ""
    gt = {
        "version": VERSION,
        "sample_id": sample.sample_id,
        "image_key": sample.image_key,
        "image_path": sample.image_path,
        "image_size": [int(sample.image_size[0]), int(sample.image_size[1])],
        "task": sample.task,
        "expression": expression,
        "expression_index": int(expression_index),
        "no_target": not sample.targets,
        "targets": [target_to_dict(t) for t in sample.targets],
        "ignore": _rle_out(sample.ignore),
        "extra": dict(extra or {}),
    }
    errors = validate(gt)
    if errors:
        raise GroundTruthError(errors)
    return gt


def targets_of(gt: dict) -> list[Target]:
    """The targets of a validated ground truth as ``records.Target`` objects."""
    return [target_from_dict(t) for t in gt["targets"]]


# ---------------------------------------------------------------------- validation
def _short(x, limit: int = 40) -> str:
    try:
        s = repr(x)
    except Exception:  # a hostile __repr__ cannot reach here from JSON, but be safe
        s = f"<{type(x).__name__}>"
    return s if len(s) <= limit else s[:limit] + "..."


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_point_list(value, what: str, errors: list, min_len: int) -> list | None:
    if not isinstance(value, list):
        errors.append(f"{what} must be a list of [u, v] pairs, got {type(value).__name__}")
        return None
    if len(value) < min_len:
        errors.append(f"{what} needs at least {min_len} point(s), has {len(value)}")
        return None
    out = []
    for i, p in enumerate(value):
        if not (isinstance(p, list) and len(p) == 2 and all(_is_num(t) for t in p)):
            errors.append(f"{what}[{i}] must be [u, v] with finite numbers, got {_short(p)}")
            return None
        if not all(0.0 <= t <= 1.0 for t in p):
            errors.append(f"{what}[{i}] = {_short(p)} outside [0, 1]")
            return None
        out.append([float(p[0]), float(p[1])])
    return out


def _check_target(t, i: int, size, task: str, errors: list) -> dict | None:
    what = f"targets[{i}]"
    if not isinstance(t, dict):
        errors.append(f"{what} must be an object, got {type(t).__name__}")
        return None
    unknown = set(t) - set(_TARGET_KEYS)
    if unknown:
        errors.append(f"{what} has unknown key(s) {sorted(map(str, unknown))[:5]}")
        return None
    out = {"mask": None, "box": None, "points": [], "polyline": None}
    n_err = len(errors)
    mask = t.get("mask")
    if mask is not None:
        why = rle_problem(mask, size)
        if why:
            errors.append(f"{what}.mask: {why}")
        else:
            out["mask"] = _rle_out(mask)
    box = t.get("box")
    if box is not None:
        if not (isinstance(box, list) and len(box) == 4 and all(_is_num(b) for b in box)):
            errors.append(f"{what}.box must be [u1, v1, u2, v2] with finite numbers, got {_short(box)}")
        elif not all(0.0 <= b <= 1.0 for b in box):
            errors.append(f"{what}.box {_short(box)} outside [0, 1]")
        elif not (box[0] < box[2] and box[1] < box[3]):
            errors.append(f"{what}.box {_short(box)} is empty or inverted (needs u1 < u2, v1 < v2)")
        else:
            out["box"] = [float(b) for b in box]
    pts = t.get("points")
    if pts is not None:
        checked = _check_point_list(pts, f"{what}.points", errors, 0)
        out["points"] = checked or []
    line = t.get("polyline")
    if line is not None:
        out["polyline"] = _check_point_list(line, f"{what}.polyline", errors, 2)
    if len(errors) > n_err:
        return None
    if out["mask"] is None and out["box"] is None and not out["points"] and out["polyline"] is None:
        errors.append(f"{what} has no mask, box, points or polyline")
        return None
    need = {"seg": "mask", "box": "box", "point": "points", "line": "polyline"}.get(task)
    if need and not out[need]:
        errors.append(f"{what} has no {need}, which a {task!r} task needs")
        return None
    return out


def _normalize(obj) -> tuple[dict | None, list[str]]:
    """(normalized ground truth, []) or (None, problems)."""
    errors: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"ground truth must be a JSON object, got {type(obj).__name__}"]
    unknown = set(obj) - set(_TOP_KEYS)
    if unknown:
        errors.append(f"unknown key(s) {sorted(map(str, unknown))[:5]}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        errors.append(f"missing key(s) {missing}")
        return None, errors
    version = obj["version"]
    if not (_is_int(version) and version == VERSION):
        errors.append(f"version must be {VERSION}, got {_short(version)}")
        return None, errors
    out: dict = {"version": VERSION}
    for key in ("sample_id", "image_key", "image_path", "expression"):
        value = obj.get(key, "")
        if not isinstance(value, str):
            errors.append(f"{key} must be a string, got {type(value).__name__}")
        elif not _utf8(value):
            errors.append(f"{key} is not valid Unicode (lone surrogate)")
        out[key] = value if isinstance(value, str) else ""
    index = obj.get("expression_index", 0)
    if not (_is_int(index) and index >= 0):
        errors.append(f"expression_index must be a non-negative integer, got {_short(index)}")
    out["expression_index"] = index if _is_int(index) and index >= 0 else 0
    size = obj["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(t) for t in size)):
        errors.append(f"image_size must be [width, height] positive integers, got {_short(size)}")
        return None, errors
    why = masks.size_problem(size[0], size[1])  # before any target: nothing of that size is made
    if why:
        errors.append(f"image_size: {why}")
        return None, errors
    out["image_size"] = [size[0], size[1]]
    task = obj["task"]
    if not isinstance(task, str) or task not in TASKS:
        errors.append(f"task must be one of {list(TASKS)}, got {_short(task)}")
        return None, errors
    out["task"] = task
    targets = obj["targets"]
    if not isinstance(targets, list):
        errors.append(f"targets must be a list, got {type(targets).__name__}")
        return None, errors
    out["targets"] = []
    for i, t in enumerate(targets):
        checked = _check_target(t, i, tuple(size), task, errors)
        if checked is not None:
            out["targets"].append(checked)
        if len(errors) >= _MAX_ERRORS:
            break
    no_target = obj.get("no_target", not targets)
    if not isinstance(no_target, bool):
        errors.append(f"no_target must be true or false, got {_short(no_target)}")
    elif no_target != (not targets):
        errors.append(f"no_target is {str(no_target).lower()} but there are {len(targets)} target(s)")
    out["no_target"] = not targets
    ignore = obj.get("ignore")
    out["ignore"] = None
    if ignore is not None:
        why = rle_problem(ignore, tuple(size))
        if why:
            errors.append(f"ignore: {why}")
        else:
            out["ignore"] = _rle_out(ignore)
    extra = obj.get("extra", {})
    out["extra"] = {}
    if not isinstance(extra, dict):
        errors.append(f"extra must be an object, got {type(extra).__name__}")
    else:
        try:  # a copy, and proof that it is plain JSON (no NaN, no objects, valid Unicode)
            out["extra"] = json.loads(json.dumps(extra, allow_nan=False, ensure_ascii=False).encode("utf-8"))
        except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
            errors.append(f"extra must hold plain JSON (finite numbers, strings, lists, objects): {exc}"[:200])
    return (None, errors) if errors else ({k: out[k] for k in _TOP_KEYS}, [])


def expression_id(gt: dict) -> str:
    """``"SAMPLE_ID#EXPRESSION_INDEX"``: the key that matches predictions to ground truths."""
    return f"{gt.get('sample_id', '')}#{gt.get('expression_index', 0)}"


def validate(obj) -> list[str]:
    """Every problem of a ground-truth object (a parsed JSON value); [] when it is valid."""
    try:
        return _normalize(obj)[1]
    except Exception as exc:  # defensive: validation must not raise on any JSON value
        return [f"internal validation error: {type(exc).__name__}: {exc}"]


# ---------------------------------------------------------------------- (de)serializing
def dumps(gt: dict) -> str:
    """Compact JSON string of a ground-truth object; raises GroundTruthError when invalid."""
    norm, errors = _normalize(gt)
    if errors:
        raise GroundTruthError(errors)
    return json.dumps(norm, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def loads(text, strict: bool = True) -> dict | None:
    """The validated ground truth in ``text`` (str, bytes or an already parsed dict).

    The result has every key of the schema (defaults filled in) and every target has all four
    keys. ``strict=True`` raises GroundTruthError naming every problem; ``strict=False`` returns
    None instead and never raises, whatever ``text`` is (rewards face arbitrary input).
    """
    try:
        if isinstance(text, dict):
            obj = text
        else:
            if isinstance(text, (bytes, bytearray)):
                text = bytes(text).decode("utf-8")
            if not isinstance(text, str):
                raise GroundTruthError([f"ground truth must be a JSON string, got {type(text).__name__}"])
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise GroundTruthError([f"not JSON: {exc}"[:200]]) from None
        norm, errors = _normalize(obj)
        if errors:
            raise GroundTruthError(errors)
        return norm
    except GroundTruthError:
        if strict:
            raise
        return None
    except Exception as exc:
        if strict:
            raise GroundTruthError([f"unreadable ground truth: {type(exc).__name__}: {exc}"[:200]]) from exc
        return None


__all__ = ["VERSION", "GroundTruthError", "make_ground_truth", "dumps", "loads", "validate",
           "rle_problem", "rle_string_counts", "expression_id", "target_to_dict", "target_from_dict", "targets_of"]
