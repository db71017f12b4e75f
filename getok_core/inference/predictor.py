"""Ask a GETok model about one image: the training prompt, turn 1, refinement rounds, masks, overlay.

``Predictor(backend, decoder, vocab, rounds).predict(image, query, task)`` returns a
``Prediction``. The backend is any object with the ``generate(items, cfg)`` protocol of
``getok_core.models.rollout`` (``TransformersBackend``, ``OpenAIBackend``, or this package's
``ReplayBackend``): ``items`` are (prompt, [PIL image], row) and the prompt is the EasyR1 form
(``<image>`` + question; later turns joined by ChatML markers with ``rollout.stage2_prompt``,
which Qwen2 / 2.5 / 3-VL's chat template renders as the real multi-turn conversation).

The dialogue is the training one (``rewards.dialogue``): turn 1 answers the question of
``data.writers.question`` (the ``getok prepare`` wording), each refinement round asks
``refine_message(state)`` and the offset answer moves the geometry (``dialogue.advance``), until
``dialogue_over``. Model output never raises: an invalid answer gives no instances and ``errors``.
With a ``Constraint`` every turn is decoded under the GETok grammar (``codec.grammar``): turn 1
under ``grid_spec`` of the task, each refinement round under ``refine_spec`` of the instances it
refines; the backend gets the spec per item (``generate(items, cfg, constraints=[spec])``).

Coordinates are normalized (u, v) in [0, 1] of the image as given (EXIF orientation applied);
masks are bool (H, W) in that frame.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..codec.answer import parse_answer, parse_offsets
from ..codec.grammar import AnswerSpec, Constraint
from ..codec.instance import Instance, InstanceCells, anchors
from ..codec.vocab import GetokVocab
from ..data.images import load_image, to_rgb
from ..data.writers import IMAGE_TAG, PROMPT_TEMPLATES, question
from ..models.rollout import SamplingConfig, render_format_prompt, stage2_prompt
from ..rewards.decoding import decodable
from ..rewards.dialogue import advance, clean_answer, dialogue_over, refine_message, start_refinement

#: Tasks a prompt can be built for (``data.writers.PROMPT_TEMPLATES``: what training asks).
TASKS = tuple(PROMPT_TEMPLATES)


def user_prompt(task: str, query: str, template: int | str = 0, format_prompt: str | None = None,
                prompt: str | None = None) -> str:
    """The turn-1 user text as training shows it: ``<image>`` + ``question(task, query,
    template)`` (the ``getok prepare`` rows), rendered through the EasyR1 ``format_prompt``
    template text when given (``rollout.render_format_prompt``). ``prompt``: a question of your
    own instead of the template (``<image>`` is put in front when it lacks one)."""
    if prompt is not None:
        text = prompt if IMAGE_TAG in prompt else IMAGE_TAG + prompt
    else:
        if task not in PROMPT_TEMPLATES:
            raise ValueError(f"task must be one of {TASKS} (the tasks training has prompts for), got {task!r}; "
                             "pass prompt= / --prompt for another question")
        text = IMAGE_TAG + question(task, query, template)
    return render_format_prompt(format_prompt, text)


def offset_moves(instances, offsets_text, vocab: GetokVocab, round: int):
    """(moves, deleted) of an offset answer for refinement round ``round``: ((u0, v0), (u1, v1))
    for every anchor its offset moved, and (u, v) of every point it deleted (``<DELETE>`` on a
    box corner keeps the corner: not listed). A missing or malformed line moves nothing. Never
    raises."""
    po = parse_offsets(offsets_text, list(instances), vocab)
    moves, deleted = [], []
    for inst, offs in zip(instances, po.offsets):
        if offs is None:
            continue
        for (kind, uv), off in zip(anchors(inst), offs):
            if off is None:
                if kind != "box":
                    deleted.append(tuple(uv))
                continue
            to = vocab.apply_offset(uv, off, round)
            if tuple(to) != tuple(uv):
                moves.append((tuple(uv), tuple(to)))
    return moves, deleted


@dataclass
class Prediction:
    """What a model answered about one image and query, decoded (see ``getok_core.inference``).

    Normalized coordinates; ``image_size`` (W, H) pixels; ``masks``: bool (H, W), one per final
    instance (seg task with a decoder, else empty); ``overlay``: RGB uint8 (h, w, 3) picture."""

    query: str
    task: str
    prompt: str
    image_size: tuple[int, int]
    turns: list[str]
    user_turns: list[str]
    instances: list[Instance]
    history: list[list[Instance]]
    cells: list[InstanceCells]
    valid: bool
    errors: list[str]
    no_target: bool
    stop_reason: str
    masks: list[np.ndarray] = field(default_factory=list)
    moves: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    overlay: np.ndarray | None = None
    image: str | None = None
    constrained: bool = False

    @property
    def mask(self) -> np.ndarray | None:
        """The union of ``masks`` (bool (H, W)), or None without masks."""
        if not self.masks:
            return None
        out = np.zeros_like(np.asarray(self.masks[0], bool))
        for m in self.masks:
            out |= np.asarray(m, bool)
        return out

    @property
    def rounds_done(self) -> int:
        return len(self.turns) - 1

    def to_json(self) -> dict:
        """The JSON record ``getok predict`` writes (``outputs.prediction_json``)."""
        from .outputs import prediction_json

        return prediction_json(self)

    def save(self, out_dir, stem: str) -> dict:
        """Write this prediction's files into ``out_dir`` (``outputs.save_prediction``); returns
        {kind: path}."""
        from .outputs import save_prediction

        return save_prediction(self, out_dir, stem)


class Predictor:
    """Turn 1 and ``rounds`` refinement rounds of a model behind ``backend``, masks from
    ``decoder`` (a ``MaskDecoder`` or None) and the overlay.

    ``sampling``: a ``rollout.SamplingConfig`` (default greedy, one answer, 1024 new tokens);
    ``format_prompt``: an EasyR1 format template text (None: the ms-swift training prompt);
    ``template``: the question template index (``data.writers.PROMPT_TEMPLATES``);
    ``constraint``: a ``Constraint`` (grammar-constrained turns; the backend must take
    ``constraints=``: ``rollout.TransformersBackend`` / ``OpenAIBackend``) or None."""

    def __init__(self, backend, decoder=None, vocab: GetokVocab | None = None, rounds: int = 0, sampling=None,
                 format_prompt: str | None = None, template: int | str = 0, overlay_min_side: int = 384,
                 constraint: Constraint | None = None):
        if not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"rounds must be an int >= 0, got {rounds!r}")
        self.backend, self.decoder = backend, decoder
        self.vocab = vocab or GetokVocab()
        self.rounds = rounds
        self.sampling = sampling or SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=1024)
        self.format_prompt, self.template = format_prompt, template
        self.overlay_min_side = overlay_min_side
        self.constraint = constraint
        self.calls = 0

    def _ask(self, prompt: str, image, spec: AnswerSpec | None = None) -> str:
        self.calls += 1
        items = [(prompt, [image], self.calls)]
        kw = {"constraints": [spec]} if spec is not None else {}
        texts = self.backend.generate(items, self.sampling, **kw)[0]
        return clean_answer(texts[0] if texts else "")

    def predict(self, image, query: str, task: str = "seg", rounds: int | None = None,
                prompt: str | None = None) -> Prediction:
        """The prediction for ``query`` on ``image`` (a path, an (H, W, 3) uint8 array or a PIL
        image): ``rounds`` refinement rounds (None: ``self.rounds``), the question of ``task``'s
        training template unless ``prompt`` is given."""
        from PIL import Image

        rounds = self.rounds if rounds is None else rounds
        path = str(image) if isinstance(image, (str, Path)) else None
        rgb = load_image(path) if path else to_rgb(image.convert("RGB") if hasattr(image, "convert") else image)
        pil = Image.fromarray(rgb)
        vocab = self.vocab
        text = user_prompt(task, query, self.template, self.format_prompt, prompt)
        c = self.constraint
        turns = [self._ask(text, pil, c.turn1(vocab, task) if c else None)]
        parsed = parse_answer(turns[0], vocab)
        state = start_refinement(turns[0], vocab)
        users, history, moves, deleted = [text], [list(parsed.instances)], [], []
        context = text
        while not dialogue_over(state, len(turns), 1 + rounds):
            instruction = refine_message(state)
            context = stage2_prompt(context, turns[-1], instruction)
            answer = self._ask(context, pil, c.refine(vocab, state.instances) if c else None)
            m, d = offset_moves(state.instances, answer, vocab, state.round)
            moves, deleted = moves + m, deleted + d
            state = advance(state, answer, vocab)
            turns.append(answer)
            users.append(instruction)
            history.append(list(state.instances))
        pred = Prediction(query=query, task=task, prompt=text, image_size=(rgb.shape[1], rgb.shape[0]),
                          turns=turns, user_turns=users, instances=history[-1], history=history,
                          cells=list(parsed.cells), valid=parsed.valid, errors=list(parsed.errors),
                          no_target=parsed.no_target, stop_reason=state.stop_reason, moves=moves,
                          deleted=deleted, image=path, constrained=c is not None)
        pred.masks = self._masks(pred, rgb, path)
        pred.overlay = self.render(pred, rgb)
        return pred

    def _masks(self, pred: Prediction, rgb: np.ndarray, path: str | None) -> list[np.ndarray]:
        """One bool (H, W) mask per final instance of a seg prediction (an instance with nothing
        to prompt gets an empty one); [] for other tasks or without a decoder."""
        if self.decoder is None or pred.task != "seg" or not pred.instances:
            return []
        key = path or "rgb:" + hashlib.sha1(rgb.tobytes()).hexdigest()[:16]
        todo = [i for i, inst in enumerate(pred.instances) if decodable(inst)]
        got = self.decoder.decode([(key, rgb, pred.instances[i]) for i in todo]) if todo else []
        h, w = rgb.shape[:2]
        out = [np.zeros((h, w), bool) for _ in pred.instances]
        for i, m in zip(todo, got):
            m = np.asarray(m, bool)
            if m.shape != (h, w):
                raise ValueError(f"mask decoder returned shape {m.shape} for an image of (H, W) = {(h, w)}")
            out[i] = m
        return out

    def render(self, pred: Prediction, rgb: np.ndarray) -> np.ndarray:
        """The overlay of ``pred`` on ``rgb``: grid, turn-1 token cells, final geometry, masks,
        refinement arrows and deleted points (``evaluation.viz.render_overlay``)."""
        from ..evaluation.viz import render_overlay

        caption = f"{pred.task}: {pred.query}" + (f" ({pred.rounds_done} refinement round(s))"
                                                 if pred.rounds_done else "")
        img = render_overlay(rgb, self.vocab, pred.instances, pred_masks=pred.masks, caption=caption,
                             min_side=self.overlay_min_side, cells=pred.cells, moves=pred.moves,
                             deleted=pred.deleted)
        return np.asarray(img.convert("RGB"), np.uint8)


__all__ = ["TASKS", "user_prompt", "offset_moves", "Constraint", "Prediction", "Predictor"]
