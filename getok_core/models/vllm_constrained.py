"""Constrained decoding in vLLM (v1 engine): the GETok token automaton as a vLLM logits processor.

Two ways to constrain a GETok answer in vLLM (docs/grammar.md compares them):

- **automaton** (this module): ``LLM(..., logits_processors=[FQCN])`` (``vllm serve
  --logits-processors FQCN``) registers ``GetokVllmLogitsProcessor``; a request that carries
  ``SamplingParams(extra_args=request_args(spec))`` is decoded under ``models.constrained.GetokAutomaton``
  of its ``codec.grammar.AnswerSpec``: every answer valid (``parse_answer(...).valid``) by
  construction, box corner order and distinct ``<seg>`` cells included. Requests without the field
  are left alone. The automaton runs in Python, once per generated token of a constrained request.
- **grammar**: ``codec.grammar.to_lark(spec, token_ids)`` through vLLM's llguidance backend
  (``structured_outputs_config={"backend": "guidance"}``, ``StructuredOutputsParams(grammar=...)``):
  the answer's syntax, every GETok element one token id, but not what a grammar cannot say.

vLLM is imported only when the class is first looked up (module ``__getattr__``), so this module
imports without vLLM. The engine process resolves ``FQCN`` itself and builds the token table from
the served model's tokenizer (``vllm_config.model_config.tokenizer``) and its generation config's EOS.
"""

from __future__ import annotations

from ..codec.grammar import AnswerSpec, spec_from_json, spec_to_json
from .constrained import GetokAutomaton, token_table

#: The fully qualified name vLLM loads (``logits_processors=[FQCN]``, ``--logits-processors FQCN``).
FQCN = "getok_core.models.vllm_constrained:GetokVllmLogitsProcessor"
#: The ``SamplingParams.extra_args`` key holding a request's spec (``spec_to_json`` text).
EXTRA_ARG = "getok_spec"


def request_args(spec: AnswerSpec) -> dict:
    """The ``SamplingParams.extra_args`` (or the OpenAI server's ``vllm_xargs``) that decode one
    request under ``spec``."""
    return {EXTRA_ARG: spec_to_json(spec)}


def eos_ids(model: str, tokenizer) -> list[int]:
    """The ids that end an answer of ``model``: its ``generation_config.json`` ``eos_token_id``
    (what vLLM stops at), else the tokenizer's EOS."""
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except (OSError, ValueError):
        eos = None
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


class RequestMask:
    """The per-request logits processor: ``(output_ids, logits) -> logits`` with every token the
    automaton does not allow next set to -inf. ``output_ids`` is the request's generated ids so far
    (the same list, growing); the automaton is fed only what is new. A finished or dead automaton
    leaves the logits alone."""

    def __init__(self, automaton: GetokAutomaton):
        self.automaton, self.fed = automaton, 0
        self._plain = None

    def __call__(self, output_ids, logits):
        import torch

        auto = self.automaton
        for tok in output_ids[self.fed:]:
            auto.feed(tok)
        self.fed = len(output_ids)
        a = auto.allowed
        if a is None:
            return logits
        ids = list(a.ids)
        if a.plain:
            if self._plain is None:
                self._plain = sorted(auto.table.plain)
            ids += self._plain
        index = torch.tensor([i for i in ids if i < logits.shape[-1]], dtype=torch.long, device=logits.device)
        out = torch.full_like(logits, float("-inf"))
        out[index] = logits[index]
        return out


def _processor_class():
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    class GetokVllmLogitsProcessor(AdapterLogitsProcessor):
        """vLLM logits processor: requests whose ``extra_args`` hold ``EXTRA_ARG`` follow the
        GETok automaton of that spec (see the module docstring)."""

        def __init__(self, vllm_config, device, is_pin_memory):
            super().__init__(vllm_config, device, is_pin_memory)
            cfg = vllm_config.model_config
            self._model, self._tokenizer_path = cfg.model, cfg.tokenizer or cfg.model
            self._tokenizer = None
            self._tables: dict = {}

        def is_argmax_invariant(self) -> bool:
            return False  # it changes which token is the most likely

        def table(self, spec: AnswerSpec):
            key = (spec.vocab.grid_size, spec.vocab.offset_rounds, spec.think)
            if key not in self._tables:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
                self._tables[key] = token_table(self._tokenizer, spec, eos_ids(self._model, self._tokenizer))
            return self._tables[key]

        def new_req_logits_processor(self, params):
            text = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARG)
            if not text:
                return None
            spec = spec_from_json(text)
            return RequestMask(GetokAutomaton(spec, self.table(spec)))

    GetokVllmLogitsProcessor.__module__ = __name__
    GetokVllmLogitsProcessor.__qualname__ = "GetokVllmLogitsProcessor"
    return GetokVllmLogitsProcessor


_CLASS = None


def __getattr__(name):  # PEP 562: vLLM's class is built on first lookup (it needs vllm)
    global _CLASS
    if name == "GetokVllmLogitsProcessor":
        if _CLASS is None:
            _CLASS = _processor_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FQCN", "EXTRA_ARG", "request_args", "eos_ids", "RequestMask"]  # + GetokVllmLogitsProcessor (lazy)
