"""Use a trained GETok model: ask it about an image, decode and draw its answer (``getok predict``).

- ``Predictor(backend, decoder, vocab, rounds).predict(image, query, task) -> Prediction``
  (``predictor``): the training prompt, turn 1, refinement rounds, masks, the overlay;
- backends: ``load_backend(model=DIR)`` (transformers), ``load_backend(server=URL)`` (an
  OpenAI-compatible endpoint: ``swift deploy``, ``vllm serve``), both from
  ``getok_core.models.rollout``; ``ReplayBackend`` (``replay``): answers produced elsewhere;
- ``Prediction.save(out_dir, stem)`` / ``to_json()`` (``outputs``): the files ``getok predict``
  writes; ``predict``: the command; ``sample_queries(root)``: queries on the bundled sample images.

Importing this package imports no torch / transformers / openai: backends load them when built.
"""

from __future__ import annotations

from .predictor import TASKS, Constraint, Prediction, Predictor, offset_moves, user_prompt
from .replay import Query, ReplayBackend, read_queries, read_replay


def load_backend(model: str | None = None, server: str | None = None, served_model: str | None = None,
                 device: str = "cpu", dtype: str = "auto", api_key: str | None = None):
    """A generation backend: ``model`` (a model folder) through transformers on ``device``, or
    ``server`` (an OpenAI-compatible base URL such as http://127.0.0.1:8000/v1) serving
    ``served_model`` (default: the first model the server lists)."""
    from ..models.rollout import OpenAIBackend, make_backend

    if (model is None) == (server is None):
        raise ValueError("give exactly one of model (a model folder) or server (an OpenAI-compatible URL)")
    if model is not None:
        return make_backend("transformers", model, device=device, dtype=dtype)
    backend = OpenAIBackend(server, served_model or "", api_key=api_key, concurrency=1)
    if not served_model:
        listed = [m.id for m in backend.client.models.list().data]
        if not listed:
            raise ValueError(f"{server} serves no model: pass served_model / --served-model")
        backend.model = listed[0]
    return backend


def sample_queries(root, limit: int = 6) -> list[tuple[str, str, str]]:
    """(image path, expression, task) of a few val expressions of the bundled sample dataset
    under ``root`` (written there by ``getok sample`` first when missing): seg expressions, one as
    a box query, a point and a line one."""
    from pathlib import Path

    from ..data.loaders import load_dataset
    from ..data.sample_data import write_sample_dataset

    if not (Path(root) / "README.txt").exists():
        write_sample_dataset(root)
    picked: dict[str, list] = {"seg": [], "point": [], "line": []}
    for s in load_dataset("sample", root, split="val"):
        if s.task in picked and s.targets and len(picked[s.task]) < max(1, limit - 3):
            picked[s.task].append((s.image_path, s.expressions[0], s.task))
    seg = picked["seg"]
    out = seg[:1] + [(seg[0][0], seg[0][1], "box")] + seg[1:] if seg else []
    return (out + picked["point"][:1] + picked["line"][:1])[:limit]


__all__ = ["TASKS", "Constraint", "Prediction", "Predictor", "offset_moves", "user_prompt", "Query", "ReplayBackend",
           "read_queries", "read_replay", "load_backend", "sample_queries"]
