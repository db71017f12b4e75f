"""``getok demo --web``: a Gradio page on the prediction API (``getok_core.inference``).

Pick an image (upload one, or load one of the bundled sample queries), type an expression, choose
the task, the refinement rounds, the mask decoder (region: no weights; sam / sam2: a
checkpoint path) and, optionally, grammar-constrained decoding, press Predict: the page shows the
answer tokens, the overlay (``Predictor.render``: grid, token cells, box, mask, refinement arrows)
and the dialogue of the refinement rounds. One ``Predictor`` path: ``DemoSession.answer`` calls ``Predictor.predict``
with the backend of ``load_backend(model=DIR)`` or ``load_backend(server=URL)``.

Gradio is imported inside ``build_app`` / ``run`` only (getok_core imports without it). The app
binds 127.0.0.1 by default, never makes a share link, and sets ``GRADIO_ANALYTICS_ENABLED=False``
before gradio loads (no telemetry, no version check).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from ..codec.vocab import GetokVocab
from ..data.images import load_image
from . import TASKS, Predictor, load_backend, sample_queries
from .predictor import Constraint
from .outputs import dialogue_text

#: Mask decoders the page offers (``getok_core.decoders`` names; "none": geometry only).
DECODER_CHOICES = ("region", "sam", "sam2", "none")
MAX_ROUNDS = 3
#: Element ids the browser test (tests/swift/test_web_demo.py) and custom CSS address.
IDS = {"image": "getok-image", "sample": "getok-sample", "load": "getok-load", "query": "getok-query",
       "task": "getok-task", "rounds": "getok-rounds", "decoder": "getok-decoder",
       "checkpoint": "getok-checkpoint", "sam_model": "getok-sam-model", "constrained": "getok-constrained",
       "submit": "getok-submit",
       "overlay": "getok-overlay", "answer": "getok-answer", "dialogue": "getok-dialogue",
       "status": "getok-status", "json": "getok-json"}


class DemoSession:
    """The page's state: one generation backend, the vocabulary, the sample queries
    ((image path, expression, task)) and the mask decoders built so far (one per
    (name, checkpoint, model)). ``decoder_kwargs(ns)``: the CLI's reading of decoder options
    (``getok_core.cli._decoder_kwargs``), given an ``argparse.Namespace`` with decoder, mode,
    sam_checkpoint, sam_model and device."""

    def __init__(self, backend, vocab: GetokVocab, samples: list[tuple[str, str, str]], decoder_kwargs,
                 device: str = "cpu", sampling=None, mode: str = "joint"):
        self.backend, self.vocab, self.samples = backend, vocab, list(samples)
        self.decoder_kwargs, self.device, self.sampling, self.mode = decoder_kwargs, device, sampling, mode
        self._decoders: dict = {}

    def sample_labels(self) -> list[str]:
        """One dropdown label per sample query: ``N. expression (task, file name)``."""
        return [f"{k + 1}. {q} ({t}, {Path(p).name})" for k, (p, q, t) in enumerate(self.samples)]

    def load_sample(self, label: str | None) -> tuple[np.ndarray, str, str]:
        """(RGB uint8 image, expression, task) of the sample whose label is ``label``."""
        labels = self.sample_labels()
        if label not in labels:
            raise ValueError(f"unknown sample {label!r}; the samples are {labels}")
        path, query, task = self.samples[labels.index(label)]
        return load_image(path), query, task

    def decoder(self, name: str, checkpoint: str = "", sam_model: str = ""):
        """The mask decoder ``name`` (None for "none"), built once per (name, checkpoint, model)."""
        if name not in DECODER_CHOICES:
            raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {name!r}")
        if name == "none":
            return None
        key = (name, checkpoint.strip(), sam_model.strip()) if name != "region" else (name,)
        if key not in self._decoders:
            from ..decoders import make_decoder

            ns = argparse.Namespace(decoder=name, mode=self.mode, sam_checkpoint=checkpoint.strip() or None,
                                    sam_model=sam_model.strip() or ("vit_h" if name == "sam" else ""),
                                    device=self.device)
            if name != "region" and not ns.sam_checkpoint:
                raise ValueError(f"decoder {name} needs a checkpoint: type its path in the checkpoint field "
                                 "(no weights are downloaded), or pick region")
            if name == "sam2" and not ns.sam_model:
                raise ValueError("decoder sam2 needs its config (e.g. configs/sam2.1/sam2.1_hiera_l.yaml) in the "
                                 "model field")
            if name != "region" and not Path(ns.sam_checkpoint).is_file():
                raise ValueError(f"{name} checkpoint {ns.sam_checkpoint!r}: no such file")
            self._decoders[key] = make_decoder(name, **self.decoder_kwargs(ns))
        return self._decoders[key]

    def answer(self, image, query: str, task: str, rounds: int, decoder: str = "region", checkpoint: str = "",
               sam_model: str = "", constrained: bool = False) -> dict:
        """Predict ``query`` on ``image`` (an (H, W, 3) uint8 array; ``constrained``: under the
        GETok grammar, ``predictor.Constraint()``): a dict with ``overlay``
        (RGB uint8), ``answer`` (the turn-1 answer text), ``dialogue`` (every turn, the
        refinement rounds' offsets included), ``status`` (Markdown) and ``json``
        (``Prediction.to_json()`` without mask RLEs). ValueError on a missing image / query."""
        if image is None:
            raise ValueError("no image: upload one or load a sample")
        if not query or not query.strip():
            raise ValueError("type an expression, e.g. 'the red circle'")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        rounds = int(rounds)
        if not 0 <= rounds <= MAX_ROUNDS:
            raise ValueError(f"rounds must be in 0..{MAX_ROUNDS}, got {rounds}")
        predictor = Predictor(self.backend, self.decoder(decoder, checkpoint, sam_model), self.vocab, rounds,
                              self.sampling, constraint=Constraint() if constrained else None)
        pred = predictor.predict(np.asarray(image, np.uint8)[..., :3], query.strip(), task)
        record = pred.to_json()
        for k in ("masks", "mask"):
            record.pop(k, None)
        return {"overlay": pred.overlay, "answer": pred.turns[0], "dialogue": dialogue_text(pred),
                "status": status_markdown(pred), "json": record}


def _code(text: str) -> str:
    """``text`` as a Markdown code span (parser errors quote tags such as ``<answer>``)."""
    return "`" + str(text).replace("`", "'") + "`"


def status_markdown(pred) -> str:
    """One Markdown paragraph: valid / invalid (with the parser's first errors), instances, masks,
    refinement rounds done and why they stopped."""
    if pred.valid:
        head = "**valid**, no target" if pred.no_target else f"**valid**, {len(pred.instances)} instance(s)"
    else:
        head = "**invalid** answer: " + "; ".join(_code(e) for e in pred.errors[:3])
    masks = f", {sum(int(np.any(m)) for m in pred.masks)} non-empty mask(s)" if pred.masks else ""
    rounds = f"; {pred.rounds_done} refinement round(s), {len(pred.moves)} anchor(s) moved"
    stop = f" (stopped: {pred.stop_reason})" if pred.stop_reason else ""
    return head + masks + rounds + stop


def build_app(session: DemoSession, title: str = "GETok demo"):
    """The Gradio Blocks page of ``session`` (not launched): inputs on the left, answer on the
    right; each handler is one call into ``session`` (its ValueError shown as a Gradio error)."""
    import gradio as gr

    labels = session.sample_labels()

    def on_load(label):
        try:
            return session.load_sample(label)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def on_predict(image, query, task, rounds, decoder, checkpoint, sam_model, constrained):
        try:
            r = session.answer(image, query, task, rounds, decoder, checkpoint or "", sam_model or "",
                               bool(constrained))
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return r["overlay"], r["answer"], r["dialogue"], r["status"], r["json"]

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nAsk a GETok model where something is. Predictions in orange (token cells "
                    "shaded, box, mask), refinement moves in cyan.")
        with gr.Row():
            with gr.Column():
                # PNG (gradio's default is lossy WebP): the model and the overlay see the exact pixels
                image = gr.Image(type="numpy", image_mode="RGB", format="png", label="Image", elem_id=IDS["image"])
                with gr.Row():
                    sample = gr.Dropdown(labels, value=labels[0] if labels else None, label="Bundled sample",
                                         elem_id=IDS["sample"], scale=3)
                    load = gr.Button("Load sample", elem_id=IDS["load"], scale=1)
                query = gr.Textbox(label="Expression", placeholder="the red circle", elem_id=IDS["query"])
                task = gr.Radio(list(TASKS), value="seg", label="Task", elem_id=IDS["task"])
                rounds = gr.Slider(0, MAX_ROUNDS, value=0, step=1, label="Refinement rounds",
                                   elem_id=IDS["rounds"])
                decoder = gr.Radio(list(DECODER_CHOICES), value="region", label="Mask decoder (seg)",
                                   elem_id=IDS["decoder"])
                checkpoint = gr.Textbox(label="SAM / SAM 2 checkpoint path (sam, sam2)",
                                        elem_id=IDS["checkpoint"])
                sam_model = gr.Textbox(label="SAM model type or SAM 2 config (default vit_h)",
                                       elem_id=IDS["sam_model"])
                constrained = gr.Checkbox(False, label="Constrained decoding (GETok grammar: valid answers)",
                                          elem_id=IDS["constrained"])
                submit = gr.Button("Predict", variant="primary", elem_id=IDS["submit"])
            with gr.Column():
                overlay = gr.Image(type="numpy", format="png", label="Overlay", interactive=False,
                                   elem_id=IDS["overlay"])
                status = gr.Markdown(elem_id=IDS["status"])
                answer = gr.Textbox(label="Answer tokens (turn 1)", lines=3, interactive=False,
                                    elem_id=IDS["answer"])
                dialogue = gr.Textbox(label="Dialogue (turn 1, then each refinement round's offsets)", lines=8,
                                      interactive=False, elem_id=IDS["dialogue"])
                with gr.Accordion("Geometry (JSON: normalized and pixels)", open=False):
                    record = gr.JSON(elem_id=IDS["json"])
        load.click(on_load, [sample], [image, query, task])
        inputs = [image, query, task, rounds, decoder, checkpoint, sam_model, constrained]
        outputs = [overlay, answer, dialogue, status, record]
        submit.click(on_predict, inputs, outputs)
        query.submit(on_predict, inputs, outputs)
    return app


# ---------------------------------------------------------------------- command
def add_arguments(parser) -> None:
    """The ``--web`` options of ``getok demo``."""
    a = parser.add_argument
    a("--web", action="store_true", help="serve the web demo (Gradio) instead of the text demo")
    a("--model", help="--web: model folder loaded with transformers (a merged GETok checkpoint)")
    a("--server", help="--web: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (swift deploy, vllm serve)")
    a("--served-model", help="--web: model name the --server serves (default: the first it lists)")
    a("--host", default="127.0.0.1", help="--web: address to bind (default 127.0.0.1: this machine only)")
    a("--port", type=int, default=7860, help="--web: port (default 7860)")
    a("--samples", help="--web: folder of the bundled sample dataset (written there when missing; default a "
                        "temporary folder)")
    a("--max-new-tokens", type=int, default=1024, help="--web: per model turn (default 1024)")
    a("--device", default="cpu", help="--web: torch device of --model and of SAM decoders (default cpu)")
    a("--dtype", default="auto", help="--web: torch dtype of --model (auto, float32, bfloat16...)")


def make_session(args) -> DemoSession:
    """The ``DemoSession`` of ``getok demo --web`` arguments (loads the model / connects)."""
    from ..models.rollout import SamplingConfig

    if (args.model is None) == (args.server is None):
        raise ValueError("getok demo --web needs exactly one of --model DIR or --server URL")
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model {args.model}: no such folder")
    root = args.samples or os.path.join(tempfile.mkdtemp(prefix="getok-demo-"), "sample_data")
    samples = sample_queries(root)
    backend = load_backend(args.model, args.server, args.served_model, device=args.device, dtype=args.dtype)
    sampling = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    return DemoSession(backend, GetokVocab(args.grid_size), samples, args.decoder_kwargs, args.device, sampling)


def run(args) -> int:
    """``getok demo --web``: build the page and serve it until interrupted."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ValueError("getok demo --web needs gradio (pip install gradio==6.31.0, as requirements/swift.in; "
                         "the swift environment has it)")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio loads: no telemetry, no version check
    session = make_session(args)
    app = build_app(session)
    print(f"getok demo --web: {len(session.samples)} sample queries; serving http://{args.host}:{args.port}",
          flush=True)
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False,
                                                   inbrowser=False, show_error=True, quiet=False,
                                                   footer_links=["settings"], mcp_server=False, pwa=False)
    return 0


__all__ = ["DemoSession", "build_app", "status_markdown", "add_arguments", "make_session", "run",
           "DECODER_CHOICES", "IDS", "MAX_ROUNDS"]
