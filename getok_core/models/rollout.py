"""EasyR1 stage-2 data from real stage-1 rollouts (``getok rollout-proposals``).

EasyR1 has no multi-turn rollout, so its refinement stage trains on prompts whose first turn was
generated beforehand by the stage-1 checkpoint. For every row of ``DIR/easyr1/SPLIT.jsonl``
(written by ``getok prepare``) this module samples K turn-1 answers, reads each with
``refine.start_refinement`` and writes one stage-2 row per refinable answer:

    {"prompt": "<image>QUESTION<|im_end|>\\n<|im_start|>assistant\\nTURN1<|im_end|>\\n<|im_start|>user\\nREFINE",
     "images": [...], "answer": GROUND_TRUTH_JSON with extra["proposal"] = TURN1}

EasyR1 wraps a prompt in ONE user message (``<|im_start|>user\\n`` ... ``<|im_end|>\\n<|im_start|>assistant\\n``),
so the turn markers inside the prompt make the rendered text, and its token ids, those of the
real two-turn conversation [user: image + question, assistant: turn 1, user: refinement
instruction] under the ChatML template of Qwen2/2.5/3-VL (``chat_template_matches`` checks a
model's template). ``easyr1_plugin/reward.py:refine_reward`` reads the proposal from the ground
truth. Degenerate turn-1 answers (``RefineState.stop_reason``, or chat markup in the answer) are
not written; they are counted by reason in the summary JSON, and every answer stays in the
rollouts file.

Resumable: the answers of each input row are appended to ``OUT.rollouts.jsonl`` as soon as they
exist; a rerun of the same command generates only the missing rows, then writes ``OUT`` and
``OUT.summary.json`` atomically from that file. Backends: ``transformers`` (any device; the tests
use CPU), ``openai`` (any OpenAI-compatible server, e.g. ``swift deploy``; images as data URLs) and
``vllm`` (offline ``vllm.LLM``; tested on CPU in the vllm environment). Every backend takes per-item
grammar constraints (``codec.grammar.AnswerSpec``): ``getok predict --constrained`` and
``rollout-proposals --constrained`` (each turn 1 under its row's task grammar). torch, transformers, vllm, openai and
jinja2 are imported inside the functions that need them.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data import groundtruth
from ..rewards.dialogue import STOP_REASONS, clean_answer, refine_message, start_refinement
from ..data.store import RecordStore, atomic_path
from ..codec.vocab import GetokVocab
from ..data.writers import IMAGE_TAG, write_jsonl

#: ChatML turn markers (Qwen2 / 2.5 / 3-VL chat templates).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
#: An extra degenerate reason: the answer holds text EasyR1 would misread (an ``<image>`` tag, a
#: chat marker), so it cannot be embedded in a prompt.
MARKUP = "chat_markup"
REASONS = STOP_REASONS + (MARKUP,)
#: EasyR1's example defaults for ``data.min_pixels`` / ``data.max_pixels``.
EASYR1_MIN_PIXELS, EASYR1_MAX_PIXELS = 262144, 4194304
BACKENDS = ("vllm", "openai", "transformers")


@dataclass(frozen=True)
class SamplingConfig:
    """How turn-1 answers are sampled. ``temperature`` 0 = greedy (one answer, copied K times)."""

    num_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if not self.temperature >= 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and max_new_tokens >= 1")


# ---------------------------------------------------------------------- prompts
def default_format_prompt() -> str:
    """Path of the bundled stage-1 format prompt ``easyr1_plugin/format_prompt/getok_grid.jinja``."""
    from importlib import resources

    return str(resources.files("easyr1_plugin").joinpath("format_prompt/getok_grid.jinja"))


def render_format_prompt(template: str | None, content: str) -> str:
    """``content`` rendered through an EasyR1 ``format_prompt`` template text (stripped, then a
    jinja2 ``Template`` rendered with ``content``, as EasyR1 does); ``content`` itself when
    ``template`` is None or empty."""
    if not template:
        return content
    from jinja2 import Template

    return Template(template.strip()).render(content=content)


def easyr1_messages(prompt: str) -> list[dict]:
    """The chat messages EasyR1 builds from a (formatted) prompt of an image row: one user
    message, its content split on ``<image>`` into image and text parts."""
    content = []
    for i, part in enumerate(prompt.split(IMAGE_TAG)):
        if i:
            content.append({"type": "image"})
        if part:
            content.append({"type": "text", "text": part})
    return [{"role": "user", "content": content}]


def stage2_prompt(turn1_prompt: str, turn1: str, instruction: str) -> str:
    """The EasyR1 prompt of the turn-2 context: the turn-1 user text (formatted, with
    ``<image>``), the model's turn-1 answer and the refinement instruction, joined by ChatML
    turn markers (EasyR1 adds the outer ``<|im_start|>user`` / ``<|im_end|>`` itself)."""
    return f"{turn1_prompt}{IM_END}\n{IM_START}assistant\n{turn1}{IM_END}\n{IM_START}user\n{instruction}"


def conversation(turn1_prompt: str, turn1: str, instruction: str) -> list[dict]:
    """The same context as real chat messages (what a multi-turn trainer shows at turn 2)."""
    first = easyr1_messages(turn1_prompt)[0]
    return [first, {"role": "assistant", "content": turn1},
            {"role": "user", "content": [{"type": "text", "text": instruction}]}]


def chat_template_matches(processor) -> bool:
    """Whether ``processor``'s chat template renders ``stage2_prompt`` in one user message
    exactly as the real two-turn conversation (True for Qwen2 / 2.5 / 3-VL's ChatML)."""
    q, a, r = f"{IMAGE_TAG}Where is it?", "<answer><point><grid1,2></point></answer>", "Refine."
    one = processor.apply_chat_template(easyr1_messages(stage2_prompt(q, a, r)), add_generation_prompt=True,
                                        tokenize=False)
    real = processor.apply_chat_template(conversation(q, a, r), add_generation_prompt=True, tokenize=False)
    return one == real


def degenerate_reason(turn1: str, vocab: GetokVocab):
    """(reason, state): reason "" when ``turn1`` makes a stage-2 row, else one of ``REASONS``."""
    state = start_refinement(turn1, vocab)
    if state.stop_reason:
        return state.stop_reason, state
    if IMAGE_TAG in turn1 or IM_START in turn1 or IM_END in turn1:
        return MARKUP, state
    return "", state


def stage2_row(row: dict, turn1_prompt: str, turn1: str, state, index: int) -> dict:
    """The EasyR1 stage-2 row of input ``row`` and its turn-1 answer number ``index``: the
    ground truth gains ``extra["proposal"]`` (the answer text) and ``extra["proposal_index"]``."""
    gt = groundtruth.loads(row["answer"], strict=True)
    gt["extra"] = {**gt.get("extra", {}), "proposal": turn1, "proposal_index": int(index)}
    return {"prompt": stage2_prompt(turn1_prompt, turn1, refine_message(state)),
            "answer": groundtruth.dumps(gt), "images": list(row.get("images") or [])}


# ---------------------------------------------------------------------- images
def load_image(path, min_pixels: int | None = EASYR1_MIN_PIXELS, max_pixels: int | None = EASYR1_MAX_PIXELS):
    """An RGB PIL image scaled (aspect kept) into [min_pixels, max_pixels] like EasyR1's data
    loader, so the stage-1 policy sees the image as in training; 0 / None skips a bound."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        img = im.copy()
    for bound, outside in ((max_pixels, lambda area: area > max_pixels), (min_pixels, lambda area: area < min_pixels)):
        if bound and outside(img.width * img.height):
            f = math.sqrt(bound / (img.width * img.height))
            img = img.resize((int(img.width * f), int(img.height * f)))
    return img.convert("RGB") if img.mode != "RGB" else img


def data_url(image) -> str:
    """A PNG data URL of a PIL image (the OpenAI ``image_url`` form)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------- backends
class TransformersBackend:
    """Hugging Face ``generate`` (one prompt at a time; CPU or one GPU). Seeds per input row."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(model)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        self.device = device
        self._tables: dict = {}  # (grid size, think) -> constrained.TokenTable
        _warn_template(self.processor)

    def generate(self, items: list[tuple[str, list, int]], cfg: SamplingConfig, constraints=None) -> list[list[str]]:
        """``items``: (formatted prompt, PIL images, row index); K answer texts per item.
        ``constraints``: None, or per item an ``AnswerSpec`` (``codec.grammar``) or None: that item
        is decoded under ``models.constrained.GetokLogitsProcessor`` with a token budget of at
        least the grammar's longest answer (``max_length()``), so it is never cut."""
        torch = self.torch
        out = []
        for k, (prompt, images, row) in enumerate(items):
            text = self.processor.apply_chat_template(easyr1_messages(prompt), add_generation_prompt=True,
                                                      tokenize=False)
            inputs = self.processor(images=images or None, text=[text], add_special_tokens=False,
                                    return_tensors="pt").to(self.device)
            greedy = cfg.temperature == 0
            kw = dict(max_new_tokens=cfg.max_new_tokens, do_sample=not greedy,
                      num_return_sequences=1 if greedy else cfg.num_samples)
            spec = constraints[k] if constraints else None
            if spec is not None:
                lp = self.logits_processor(spec)
                kw.update(logits_processor=[lp], max_new_tokens=max(cfg.max_new_tokens, lp.max_length()),
                          eos_token_id=list(lp.table.eos))
            if not greedy:
                kw.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
            torch.manual_seed(cfg.seed * 1_000_003 + row)
            with torch.no_grad():
                ids = self.model.generate(**inputs, **kw)
            n_in = inputs["input_ids"].shape[1]
            texts = self.processor.batch_decode(ids[:, n_in:], skip_special_tokens=True)
            out.append(texts * cfg.num_samples if greedy else texts)
        return out

    def logits_processor(self, spec):
        """A ``GetokLogitsProcessor`` of ``spec`` on this model's tokenizer; EOS: the model's
        ``generation_config.eos_token_id`` (what ``generate`` stops at), else the tokenizer's.
        The token table is built once per (grid size, think)."""
        from .constrained import GetokLogitsProcessor, token_table

        key = (spec.vocab.grid_size, spec.think)
        if key not in self._tables:
            eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
            self._tables[key] = token_table(self.processor.tokenizer, spec, eos)
        return GetokLogitsProcessor(spec, table=self._tables[key])


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (``swift deploy``, ``vllm serve``...); images are sent
    as PNG data URLs, K answers per request (``n``), ``concurrency`` requests at a time."""

    def __init__(self, endpoint: str, served_model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 600.0):
        from openai import OpenAI

        self.client = OpenAI(base_url=endpoint, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=3)
        self.model = served_model
        self.concurrency = max(1, int(concurrency))

    @staticmethod
    def messages(prompt: str, images: list) -> list[dict]:
        """EasyR1's user message with each image part as an ``image_url`` data URL."""
        msg = easyr1_messages(prompt)[0]
        it = iter(images)
        content = [{"type": "image_url", "image_url": {"url": data_url(next(it))}} if c["type"] == "image" else c
                   for c in msg["content"]]
        return [{"role": "user", "content": content}]

    @staticmethod
    def grammar_body(spec) -> dict:
        """The request fields that constrain an answer to ``spec``'s text regex (``codec.grammar.to_regex``):
        ``structured_outputs: {"regex": R}`` (vLLM's OpenAI server, ``vllm serve``) and
        ``structured_outputs_regex: R`` (``swift deploy --infer_backend vllm``: ms-swift's request
        field); each server ignores the other's field. Sent as the client's ``extra_body``."""
        from ..codec.grammar import to_regex

        regex = to_regex(spec)
        return {"structured_outputs": {"regex": regex}, "structured_outputs_regex": regex}

    def _one(self, item, cfg: SamplingConfig, spec=None) -> list[str]:
        prompt, images, row = item
        greedy = cfg.temperature == 0
        extra = {"extra_body": self.grammar_body(spec)} if spec is not None else {}
        resp = self.client.chat.completions.create(
            model=self.model, messages=self.messages(prompt, images), n=1 if greedy else cfg.num_samples,
            temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
            seed=cfg.seed * 1_000_003 + row, **extra)
        texts = [c.message.content or "" for c in sorted(resp.choices, key=lambda c: c.index)]
        if greedy:
            texts = texts[:1] * cfg.num_samples
        if len(texts) != cfg.num_samples:
            raise RuntimeError(f"the endpoint returned {len(texts)} answers for n={cfg.num_samples}")
        return texts

    def generate(self, items, cfg: SamplingConfig, constraints=None) -> list[list[str]]:
        """K answer texts per item; ``constraints``: None, or per item an ``AnswerSpec`` or None
        (that request carries ``grammar_body(spec)``)."""
        from concurrent.futures import ThreadPoolExecutor

        specs = list(constraints) if constraints else [None] * len(items)
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda it, spec: self._one(it, cfg, spec), items, specs))


CONSTRAIN_MODES = ("automaton", "grammar")


class VllmBackend:
    """Offline ``vllm.LLM``: prompts are rendered with the model's processor like EasyR1 and sent
    with their images. ``engine_args``: more ``LLM(...)`` keywords (e.g. ``max_model_len``,
    ``gpu_memory_utilization``). ``constrain``: how a constrained item is decoded
    (``models.vllm_constrained``): ``automaton`` (GETok's logits processor: valid by construction)
    or ``grammar`` (the Lark grammar of single GETok ids through vLLM's llguidance backend: syntax
    only). The engine has both (the processor registered, llguidance selected), so ``generate``
    may choose per call."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, seed: int = 0, constrain: str = "automaton",
                 engine_args: dict | None = None):
        from transformers import AutoProcessor
        from vllm import LLM

        from .vllm_constrained import FQCN

        if constrain not in CONSTRAIN_MODES:
            raise ValueError(f"constrain must be one of {CONSTRAIN_MODES}, got {constrain!r}")
        self.processor = AutoProcessor.from_pretrained(model)
        self.model, self.constrain = model, constrain
        self._tables: dict = {}
        self._ids = None
        _warn_template(self.processor)
        kw = dict(tensor_parallel_size=tensor_parallel_size, seed=seed, limit_mm_per_prompt={"image": 1},
                  logits_processors=[FQCN], structured_outputs_config={"backend": "guidance"})
        kw.update(engine_args or {})
        self.llm = LLM(model=model, **kw)

    def automaton(self, spec):
        """A ``GetokAutomaton`` of ``spec`` on this model's tokenizer (its length bound sizes
        ``max_tokens``); the token table is built once per (grid size, think)."""
        from .constrained import GetokAutomaton, token_table
        from .vllm_constrained import eos_ids

        key = (spec.vocab.grid_size, spec.think)
        if key not in self._tables:
            tok = self.processor.tokenizer
            self._tables[key] = token_table(tok, spec, eos_ids(self.model, tok))
        return GetokAutomaton(spec, self._tables[key])

    def sampling_params(self, cfg: SamplingConfig, row: int, spec=None, constrain: str | None = None):
        """vLLM ``SamplingParams`` of one item; with ``spec`` (``codec.grammar.AnswerSpec``) the
        request is constrained as ``constrain`` (default ``self.constrain``) says, with at least
        the grammar's longest answer as its token budget."""
        from vllm import SamplingParams

        constrain = constrain or self.constrain
        if constrain not in CONSTRAIN_MODES:
            raise ValueError(f"constrain must be one of {CONSTRAIN_MODES}, got {constrain!r}")
        greedy = cfg.temperature == 0
        kw = dict(n=1 if greedy else cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                  max_tokens=cfg.max_new_tokens, seed=cfg.seed * 1_000_003 + row)
        if spec is not None:
            kw["max_tokens"] = max(cfg.max_new_tokens, self.automaton(spec).max_length())
            if constrain == "grammar":
                from vllm.sampling_params import StructuredOutputsParams

                from ..codec.grammar import to_lark

                if self._ids is None:
                    self._ids = self.processor.tokenizer.get_vocab()
                kw["structured_outputs"] = StructuredOutputsParams(grammar=to_lark(spec, self._ids))
            else:
                from .vllm_constrained import request_args

                kw["extra_args"] = request_args(spec)
        return SamplingParams(**kw)

    def request(self, prompt: str, images: list) -> dict:
        """The vLLM prompt of one item: the EasyR1 user message under the model's chat template."""
        text = self.processor.apply_chat_template(easyr1_messages(prompt), add_generation_prompt=True, tokenize=False)
        return {"prompt": text, "multi_modal_data": {"image": images}} if images else {"prompt": text}

    def generate_outputs(self, items, cfg: SamplingConfig, constraints=None, constrain: str | None = None):
        """vLLM's ``RequestOutput`` per item (texts and token ids); arguments as ``generate``."""
        specs = list(constraints) if constraints else [None] * len(items)
        prompts = [self.request(prompt, images) for prompt, images, _ in items]
        params = [self.sampling_params(cfg, row, spec, constrain) for (_, _, row), spec in zip(items, specs)]
        return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(self, items, cfg: SamplingConfig, constraints=None, constrain: str | None = None) -> list[list[str]]:
        """K answer texts per item; ``constraints``: None, or per item an ``AnswerSpec`` or None;
        ``constrain``: ``automaton`` / ``grammar`` for this call (default ``self.constrain``)."""
        greedy = cfg.temperature == 0
        outs = self.generate_outputs(items, cfg, constraints, constrain)
        return [[o.text for o in r.outputs] * (cfg.num_samples if greedy else 1) for r in outs]


def _warn_template(processor) -> None:
    try:
        ok = chat_template_matches(processor)
    except Exception as exc:  # a processor without a chat template: say so, do not stop
        ok, why = False, f" ({exc})"
    else:
        why = ""
    if not ok:
        print("rollout-proposals: warning: this model's chat template does not render the stage-2 prompt "
              f"as a two-turn conversation{why}; EasyR1 will show the turn markers as written "
              "(docs/rollout.md)", file=sys.stderr)


def make_backend(name: str, model: str, *, endpoint: str | None = None, served_model: str | None = None,
                 device: str = "cpu", dtype: str = "auto", concurrency: int = 8, tensor_parallel_size: int = 1,
                 seed: int = 0, constrain: str = "automaton", engine_args: dict | None = None):
    """The backend ``name`` (one of ``BACKENDS``)."""
    if name == "transformers":
        return TransformersBackend(model, device=device, dtype=dtype)
    if name == "openai":
        if not endpoint:
            raise ValueError("--backend openai needs --endpoint URL (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIBackend(endpoint, served_model or model, concurrency=concurrency)
    if name == "vllm":
        return VllmBackend(model, tensor_parallel_size=tensor_parallel_size, seed=seed, constrain=constrain,
                           engine_args=engine_args)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


# ---------------------------------------------------------------------- the run
def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sha(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def paths_for(out) -> dict[str, Path]:
    """The files of a run writing ``out``: the rollouts (resume state), its settings, the summary."""
    out = Path(out)
    return {"out": out, "rollouts": out.with_name(out.name + ".rollouts.jsonl"),
            "config": out.with_name(out.name + ".config.json"), "summary": out.with_name(out.name + ".summary.json")}


def rollout_proposals(input_path, out, backend, cfg: SamplingConfig, *, format_prompt: str | None = None,
                      vocab: GetokVocab | None = None, limit: int | None = None, batch_size: int = 16,
                      min_pixels: int | None = EASYR1_MIN_PIXELS, max_pixels: int | None = EASYR1_MAX_PIXELS,
                      identity: dict | None = None, constraint=None, progress: bool = True, log=print) -> dict:
    """Sample ``cfg.num_samples`` turn-1 answers per row of the EasyR1 file ``input_path`` with
    ``backend`` (``generate(items, cfg)``; None is allowed when every row is already done), and
    write the stage-2 rows to ``out``. ``format_prompt``: the stage-1 template text (None: the
    prompt as is). Returns the summary (also written to ``OUT.summary.json``). A rerun with other
    settings (``identity`` + sampling + input) into the same ``out`` raises ValueError.
    ``constraint``: None, or an ``inference.predictor.Constraint``: each turn 1 is decoded under the
    grammar of its row's task (``backend.generate(items, cfg, constraints=...)``; docs/grammar.md)."""
    t0 = time.time()
    vocab = vocab or GetokVocab()
    rows = _read_jsonl(input_path)[: limit if limit is not None and limit >= 0 else None]
    p = paths_for(out)
    config = {"input": os.path.abspath(input_path), "input_sha256": _sha(input_path),
              "sampling": asdict(cfg), "format_prompt": format_prompt, "grid_size": vocab.grid_size,
              "min_pixels": min_pixels, "max_pixels": max_pixels,
              "constraint": asdict(constraint) if constraint is not None else None, **(identity or {})}
    if p["config"].exists() and p["rollouts"].exists():
        old = json.loads(p["config"].read_text())
        if old != config:
            diff = sorted(k for k in {*old, *config} if old.get(k) != config.get(k))
            raise ValueError(f"{p['rollouts']} was made with other settings ({', '.join(diff)}): "
                             "rerun with the same ones, or delete it / choose another --out")
    p["out"].parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p["config"]) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=1) + "\n")

    prompts = [render_format_prompt(format_prompt, r["prompt"]) for r in rows]
    with RecordStore(p["rollouts"], key="row") as store:
        todo = [i for i in range(len(rows)) if str(i) not in store.done]
        if todo and backend is None:
            raise ValueError(f"{len(todo)} rows still need answers and no backend was given")
        bar = _progress(len(rows), len(rows) - len(todo), progress)
        for start in range(0, len(todo), max(1, batch_size)):
            chunk = todo[start:start + max(1, batch_size)]
            items = [(prompts[i], [load_image(im, min_pixels, max_pixels) for im in rows[i].get("images") or []], i)
                     for i in chunk]
            if constraint is None:
                answers = backend.generate(items, cfg)
            else:
                specs = [constraint.turn1(vocab, groundtruth.loads(rows[i]["answer"], strict=True)["task"])
                         for i in chunk]
                answers = backend.generate(items, cfg, constraints=specs)
            store.write({"row": str(i), "answers": [a if isinstance(a, str) else str(a) for a in ans]}
                        for i, ans in zip(chunk, answers))
            bar.update(len(chunk))
        bar.close()
    done = {int(r["row"]): r["answers"] for r in _read_jsonl(p["rollouts"])}
    summary = _write(rows, prompts, done, p, vocab)
    summary.update(elapsed_s=round(time.time() - t0, 2), generated_rows=len(todo), config=config)
    with atomic_path(p["summary"]) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1) + "\n")
    counts = ", ".join(f"{k} {v}" for k, v in summary["degenerate"].items() if v) or "none"
    log(f"rollout-proposals: {summary['answers']} turn-1 answers of {len(rows)} prompts -> {summary['written']} "
        f"stage-2 rows in {p['out']} (degenerate: {counts}); summary {p['summary']}")
    return summary


def _write(rows, prompts, done, p, vocab) -> dict:
    degenerate = {r: 0 for r in REASONS}
    examples: dict[str, list] = {r: [] for r in REASONS}
    out_rows, distinct, answers = [], 0, 0
    for i, row in enumerate(rows):
        seen = set()
        for k, raw in enumerate(done[i]):
            answers += 1
            turn1 = clean_answer(raw)
            reason, state = degenerate_reason(turn1, vocab)
            if reason:
                degenerate[reason] += 1
                if len(examples[reason]) < 5:
                    examples[reason].append({"row": i, "answer_index": k, "answer": turn1[:300]})
                continue
            distinct += turn1 not in seen
            seen.add(turn1)
            out_rows.append(stage2_row(row, prompts[i], turn1, state, k))
    written = write_jsonl(p["out"], out_rows)
    return {"prompts": len(rows), "answers": answers, "written": written, "distinct_written": distinct,
            "degenerate": degenerate, "degenerate_examples": {k: v for k, v in examples.items() if v},
            "files": {k: str(v) for k, v in p.items()}}


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="prompt", desc="rollout-proposals")


# ---------------------------------------------------------------------- `getok rollout-proposals`
def add_arguments(parser) -> None:
    """Options of ``getok rollout-proposals``."""
    a = parser.add_argument
    a("--model", required=True, help="stage-1 checkpoint folder (a merged model); for --backend openai the "
                                     "served name unless --served-model is given")
    a("--prepared", required=True, help="a `getok prepare` output folder (reads DIR/easyr1/SPLIT.jsonl)")
    a("--split", default="train", help="split to roll out (default train)")
    a("--backend", required=True, choices=BACKENDS)
    a("--endpoint", help="OpenAI-compatible base URL for --backend openai, e.g. http://127.0.0.1:8000/v1")
    a("--served-model", help="model name the endpoint serves (default: --model)")
    a("--num-samples", type=int, default=8, help="turn-1 answers per prompt, K (default 8)")
    a("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1.0)")
    a("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    a("--max-new-tokens", type=int, default=1024, help="turn-1 length limit (default 1024)")
    a("--seed", type=int, default=0, help="sampling seed (per row: the same rows give the same answers)")
    a("--out", help="output JSONL (default DIR/easyr1/SPLIT_refine.jsonl)")
    a("--format-prompt", default="default",
      help="the stage-1 EasyR1 format_prompt Jinja file applied to each prompt before turn 1 (default: "
           "easyr1_plugin/format_prompt/getok_grid.jinja; 'none': the prompt as is)")
    a("--min-pixels", type=int, default=EASYR1_MIN_PIXELS, help="EasyR1 data.min_pixels (0: no bound)")
    a("--max-pixels", type=int, default=EASYR1_MAX_PIXELS, help="EasyR1 data.max_pixels (0: no bound)")
    a("--grid-size", type=int, default=32, help="grid side n of the model's vocabulary (default 32)")
    a("--limit", type=int, help="only the first N prompts")
    a("--batch-size", type=int, default=16, help="prompts per backend call, saved together (default 16)")
    a("--concurrency", type=int, default=8, help="parallel requests of --backend openai (default 8)")
    a("--device", default="cpu", help="torch device of --backend transformers (default cpu)")
    a("--dtype", default="auto", help="torch dtype of --backend transformers (auto, float32, bfloat16...)")
    a("--tensor-parallel-size", type=int, default=1, help="GPUs per model for --backend vllm")
    a("--engine-args", default="{}", metavar="JSON",
      help='more vllm.LLM keywords for --backend vllm, e.g. \'{"max_model_len": 4096}\'')
    a("--constrained", action="store_true",
      help="decode each turn 1 under the GETok grammar of its row's task (docs/grammar.md): every answer "
           "valid; it changes the sampling distribution")
    a("--constrain", default="automaton", choices=CONSTRAIN_MODES,
      help="--backend vllm --constrained: GETok's logits processor (automaton, default: valid by "
           "construction) or the llguidance Lark grammar (grammar: syntax only)")
    a("--max-instances", type=int, default=8, help="--constrained: most answer lines (default 8)")
    a("--max-points", type=int, default=32, help="--constrained: most grid tokens of a seg / line element "
                                                 "(default 32)")
    a("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """``getok rollout-proposals``: prints the summary path."""
    inp = Path(args.prepared) / "easyr1" / f"{args.split}.jsonl"
    if not inp.is_file():
        raise ValueError(f"{inp} not found: run `getok prepare ... --out {args.prepared}` with the easyr1 format")
    out = Path(args.out) if args.out else Path(args.prepared) / "easyr1" / f"{args.split}_refine.jsonl"
    fp = None if args.format_prompt == "none" else (
        default_format_prompt() if args.format_prompt == "default" else args.format_prompt)
    template = Path(fp).read_text(encoding="utf-8") if fp else None
    cfg = SamplingConfig(args.num_samples, args.temperature, args.top_p, args.max_new_tokens, args.seed)
    identity = {"model": args.model, "backend": args.backend, "served_model": args.served_model}
    constraint = None
    if args.constrained:
        from ..codec.grammar import Constraint

        constraint = Constraint(args.max_instances, args.max_points)
        constraint.turn1(GetokVocab(args.grid_size), "seg")  # a bad bound: one error before any model load
        if args.backend == "vllm":
            identity["constrain"] = args.constrain
    try:
        engine_args = json.loads(args.engine_args)
        if not isinstance(engine_args, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise ValueError(f"--engine-args must be a JSON object of vllm.LLM keywords: {exc}") from exc
    p = paths_for(out)
    # build the backend only when something is left to generate (a finished run just rewrites)
    lazy = _LazyBackend(lambda: make_backend(
        args.backend, args.model, endpoint=args.endpoint, served_model=args.served_model, device=args.device,
        dtype=args.dtype, concurrency=args.concurrency, tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed, constrain=args.constrain, engine_args=engine_args))
    rollout_proposals(inp, out, lazy, cfg, format_prompt=template, vocab=GetokVocab(args.grid_size),
                      limit=args.limit, batch_size=args.batch_size, min_pixels=args.min_pixels or None,
                      max_pixels=args.max_pixels or None, identity=identity, constraint=constraint,
                      progress=not args.no_progress,
                      log=lambda m: print(m, file=sys.stderr))
    print(p["summary"])
    return 0


class _LazyBackend:
    def __init__(self, factory):
        self.factory, self.backend = factory, None

    def generate(self, items, cfg, constraints=None):
        if self.backend is None:
            self.backend = self.factory()
        if constraints is None:
            return self.backend.generate(items, cfg)
        return self.backend.generate(items, cfg, constraints=constraints)


__all__ = ["SamplingConfig", "REASONS", "MARKUP", "BACKENDS", "default_format_prompt", "render_format_prompt",
           "easyr1_messages", "stage2_prompt", "conversation", "chat_template_matches",
           "degenerate_reason", "stage2_row", "load_image", "data_url", "TransformersBackend", "OpenAIBackend",
           "VllmBackend", "CONSTRAIN_MODES", "make_backend", "paths_for", "rollout_proposals", "add_arguments", "run"]
