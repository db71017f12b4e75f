"""The ms-swift plugin (swift_plugin/): model type, template, datasets and the getok_lora tuner,
in-process and through the real `swift` CLI (sft, infer --adapters, export --merge_lora) on a tiny
random Qwen2.5-VL with the real Qwen2.5 tokenizer, on CPU, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from getok_core import GetokVocab, parse_answer

pytestmark = pytest.mark.swift
import swift  # noqa: F401  (tests/swift run in the swift environment: a missing package fails)
import torch

VOCAB = GetokVocab()
FIRST_GETOK_ID = 151665  # right after Qwen2.5's 151665 tokens (151643 BPE + 22 added)
from conftest import OTHER_FAMILIES as OTHER_TIED  # noqa: E402  (family -> tied embeddings)


def lora_args(**kw):
    """The ms-swift arguments GetokLoraTuner.prepare_model reads (sft defaults)."""
    d = dict(target_modules=["all-linear"], freeze_llm=False, freeze_vit=True, freeze_aligner=True, lora_rank=8,
             lora_alpha=32, lora_dropout=0.0, lora_bias="none", modules_to_save=[], use_rslora=False,
             use_dora=False, init_weights=True)
    d.update(kw)
    return SimpleNamespace(**d)


# ---------------------------------------------------------------------- the tiny model
def test_tiny_model_has_the_real_qwen_tokenizer_and_consistent_processor(tiny_model):
    from transformers import AutoConfig, AutoProcessor

    from getok_core.models.tiny_model import QWEN2_5_VL_ADDED_TOKENS

    proc = AutoProcessor.from_pretrained(tiny_model)
    tok = proc.tokenizer
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert len(tok) == 151665
    for i, (content, special) in enumerate(QWEN2_5_VL_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(content) == 151643 + i
        assert (content in tok.all_special_tokens) == special or content == "<|endoftext|>"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    cfg = AutoConfig.from_pretrained(tiny_model)
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id) == (151655, 151656, 151652)
    assert proc.image_processor.patch_size == cfg.vision_config.patch_size == 14
    assert proc.image_processor.merge_size == cfg.vision_config.spatial_merge_size == 2
    assert proc.video_processor.merge_size == 2
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size <= 128
    assert cfg.text_config.num_hidden_layers == 2
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_tiny_model_command_line(monkeypatch, tmp_path, capsys):
    """`getok tiny-model --out DIR` (add_arguments / run, wired into the getok CLI)."""
    import argparse

    from getok_core.models import tiny_model

    calls = []
    monkeypatch.setattr(tiny_model, "build_tiny_model",
                        lambda out, fam, **kw: calls.append((out, fam, kw)) or str(out))
    p = argparse.ArgumentParser()
    tiny_model.add_arguments(p)
    for extra, fam, vision in (([], "qwen2_5_vl", (32, 2, 0.0)), (["--family", "qwen3_vl"], "qwen3_vl", (32, 2, 0.0)),
                               (["--vision-hidden", "64", "--vision-depth", "3"], "qwen2_5_vl", (64, 3, 0.0)),
                               (["--family", "qwen3_vl", "--vision-position-code", "0.5"], "qwen3_vl", (32, 2, 0.5))):
        args = p.parse_args(["--out", str(tmp_path / "m"), "--tie-word-embeddings", "--seed", "3", *extra])
        assert tiny_model.run(args) == 0
        assert calls.pop() == (str(tmp_path / "m"), fam, {"seed": 3, "tie_word_embeddings": True, "hidden_size": 64,
                                                          "num_layers": 2, "vision_hidden": vision[0],
                                                          "vision_depth": vision[1],
                                                          "vision_position_code": vision[2]})
        assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    with pytest.raises(SystemExit):
        p.parse_args(["--out", "m", "--family", "qwen4_vl"])


#: family -> (tokenizer length = first GETok id, patch size, architecture, processor class)
FAMILY_LAYOUT = {
    "qwen2_5_vl": (151665, 14, "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": (151669, 16, "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "qwen2_vl": (151657, 14, "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
}


def test_vision_position_code_starts_qwen3_vl_position_table_at_the_sincos_code(work, base_tokenizer):
    """``getok tiny-model --family qwen3_vl --vision-position-code S``: the vision tower's 48 x 48
    position table is S x ``sincos_code`` of each entry's centre (row-major: u = column, v = row),
    so the patches of a random tower differ by position; the rest of the weights are those of the
    same seed without it; Qwen2.5-VL (no learned position table) refuses the option."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from getok_core.models.tiny_model import VISION_CODE_MAX_FREQ, build_qwen_tokenizer, build_tiny_model
    from getok_core.models.tokens import sincos_code

    tok = build_qwen_tokenizer("qwen3_vl")
    plain_path = build_tiny_model(work / "pos-plain", "qwen3_vl", seed=0, tokenizer=tok)
    plain = load_file(Path(plain_path) / "model.safetensors")
    path = build_tiny_model(work / "pos-code", "qwen3_vl", seed=0, tokenizer=tok, vision_position_code=0.35)
    coded = load_file(Path(path) / "model.safetensors")
    key = next(k for k in coded if k.endswith("visual.pos_embed.weight"))
    table = coded[key].double().numpy()
    side = 48
    assert table.shape[0] == side * side
    assert np.allclose(np.sqrt((table ** 2).mean(1)), 0.35)
    u, v = (13 + 0.5) / side, (30 + 0.5) / side  # column 13, row 30
    expected = 0.35 * sincos_code([[u, v]], table.shape[1], max_freq=VISION_CODE_MAX_FREQ)[0]
    assert np.allclose(table[30 * side + 13], expected, atol=1e-6)
    assert abs(float(plain[key].std()) - 0.02) < 0.005  # transformers' N(0, 0.02) without the option
    assert all(torch.equal(coded[k], plain[k]) for k in plain if k != key)
    assert json.loads((Path(path) / "getok_tiny_model.json").read_text())["vision_position_code"] == 0.35
    with pytest.raises(ValueError, match="no learned position table"):
        build_tiny_model(work / "pos-bad", "qwen2_5_vl", tokenizer=base_tokenizer, vision_position_code=0.35)


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen2_vl"])
def test_tiny_model_of_each_family_has_its_real_tokenizer_and_layout(name, family_model, tiny_model):
    """Qwen3-VL: Qwen2.5's 22 added tokens then <tool_response> </tool_response> <think> </think>
    (151665..151668, not special), its published chat template (no default system prompt), patch 16;
    Qwen2-VL: the 14 chat / vision markers only, patch 14."""
    import hashlib

    from transformers import AutoConfig, AutoProcessor

    from getok_core.models import tiny_model as tm

    fam = tm.family(name)
    path = family_model(name, tied=OTHER_TIED[name])
    n, patch, arch, proc_cls = FAMILY_LAYOUT[name]
    proc = AutoProcessor.from_pretrained(path)
    tok = proc.tokenizer
    assert type(proc).__name__ == proc_cls and len(tok) == n == fam.first_getok_id
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    for i, (content, special) in enumerate(fam.added_tokens):
        assert tok.convert_tokens_to_ids(content) == 151643 + i
        assert (content in tok.all_special_tokens) == special or content == "<|endoftext|>"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.architectures == [arch] and cfg.tie_word_embeddings == OTHER_TIED[name]
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id) == (151655, 151656, 151652)
    assert proc.image_processor.patch_size == proc.video_processor.patch_size == cfg.vision_config.patch_size == patch
    assert proc.image_processor.merge_size == proc.video_processor.merge_size == cfg.vision_config.spatial_merge_size
    assert cfg.vision_config.spatial_merge_size == 2 and fam.image_factor == 2 * patch
    hi = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    if name == "qwen3_vl":
        assert hashlib.sha256(tok.chat_template.encode()).hexdigest() == tm.QWEN3_VL_CHAT_TEMPLATE_SHA256
        assert hi == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
        assert tok.decode([151667, 9707, 151668], skip_special_tokens=True) == "<think>Hello</think>"
        assert cfg.text_config.rope_parameters["mrope_interleaved"] and cfg.vision_config.deepstack_visual_indexes
    else:
        assert hi.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
        assert "<think>" not in tok.get_vocab() and "<tool_call>" not in tok.get_vocab()
    # the same BPE ranks as the Qwen2.5-VL tokenizer
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(tiny_model)
    text = "Find the red car, 12,14 offset -1,0 <box> 猫"
    assert tok.encode(text, add_special_tokens=False) == base.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------------- tokens and rows
def test_every_getok_token_is_one_non_special_id_that_survives_skip_special_tokens(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(VOCAB.tokens)
    assert ids == list(range(FIRST_GETOK_ID, FIRST_GETOK_ID + 1047))
    for t, i in zip(VOCAB.tokens, ids):
        assert tok.encode(t, add_special_tokens=False) == [i], t
    special = set(tok.all_special_ids)
    assert not special & set(ids)
    everything = "".join(VOCAB.tokens)
    assert tok.encode(everything, add_special_tokens=False) == ids  # never split, never merged
    assert tok.decode(ids, skip_special_tokens=True) == everything
    answer = "<think>a cat</think><answer><box><grid3,4><grid20,25></box><seg><grid10,12><grid14,18></seg>\n<none></answer>"
    enc = tok.encode(answer, add_special_tokens=False)
    assert tok.decode(enc + [tok.convert_tokens_to_ids("<|im_end|>")], skip_special_tokens=True) == answer
    # <think> / <answer> stay plain text (the ecosystem's format rewards expect them so)
    vocab = tok.get_vocab()
    assert all(t not in vocab for t in ("<think>", "</think>", "<answer>", "</answer>"))


def test_special_tokens_would_vanish_from_responses(tiny_model):
    """Why the GETok tokens are NOT special: decode(skip_special_tokens=True), as EasyR1 / verl /
    vLLM decode responses, drops special tokens."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_tokens([AddedToken("<grid1,2>", special=True, normalized=False)], special_tokens=True)
    tok.add_tokens([AddedToken("<grid3,4>", special=False, normalized=False)])
    ids = tok.encode("<box><grid1,2><grid3,4></box>", add_special_tokens=False)
    assert tok.convert_tokens_to_ids("<grid1,2>") in ids and tok.convert_tokens_to_ids("<grid3,4>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "<box><grid3,4></box>"


def test_loader_initializes_new_rows_from_meaningful_rows(loaded, tiny_model, base_tokenizer):
    from safetensors.torch import load_file

    import swift_plugin.getok_tokens as plugin_tokens
    from getok_core.models.tokens import init_text

    assert plugin_tokens.init_text is init_text  # the framework-free tokenizer code lives in the core

    model, processor = loaded
    tok = processor.tokenizer
    E = model.get_input_embeddings().weight.detach()
    W = model.get_output_embeddings().weight.detach()
    assert E.shape[0] == W.shape[0] == 152832 == model.config.text_config.vocab_size  # 152712 -> multiple of 128
    assert not model.getok_info["tied"] and E.data_ptr() != W.data_ptr()
    for t in ("<grid12,14>", "<grid0,31>", "<OFF-1,0>", "<DELETE>", "<box>", "</seg>", "<none>"):
        src = base_tokenizer.encode(init_text(t, VOCAB), add_special_tokens=False)  # the tokenizer before GETok
        assert src and max(src) < 151643, (t, src)  # ordinary BPE tokens: never padding / added rows
        i = tok.convert_tokens_to_ids(t)
        for M in (E, W):
            assert torch.allclose(M[i], M[src].double().mean(0).float(), atol=1e-7), t
    assert init_text("<grid12,14>", VOCAB) == "12,14" and init_text("<OFF-1,0>", VOCAB) == "offset -1,0"
    assert base_tokenizer.convert_ids_to_tokens(base_tokenizer.encode("<box>", add_special_tokens=False)) == [
        "<", "box", ">"]
    # rows added by the resize beyond the tokenizer: the mean of the ordinary rows (deterministic)
    assert torch.allclose(E[152712:], E[:151643].double().mean(0).float().expand(120, -1), atol=1e-7)
    # every original row is untouched
    orig = load_file(os.path.join(tiny_model, "model.safetensors"))
    key = next(k for k in orig if k.endswith("embed_tokens.weight"))
    assert torch.equal(E[:FIRST_GETOK_ID], orig[key][:FIRST_GETOK_ID])


def test_grid_code_option_adds_each_cells_code_to_its_text_mean(tiny_model, base_tokenizer, monkeypatch):
    """GETOK_GRID_CODE=s: a new grid row is its text mean + s x the mean's RMS x the cell's 2-D code;
    the other new rows keep the text mean; without it the digit-order collisions stay."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from getok_core.models.tokens import grid_code, init_text
    from swift_plugin.getok_tokens import prepare_model_vocab

    rows = {}
    for scale in ("0", "0.5"):
        monkeypatch.setenv("GETOK_GRID_CODE", scale)
        model = AutoModelForImageTextToText.from_pretrained(tiny_model, torch_dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(tiny_model)
        prepare_model_vocab(model, tok, VOCAB)
        rows[scale] = (model.get_input_embeddings().weight.detach().double(),
                       model.get_output_embeddings().weight.detach().double(), tok)
    E, W, tok = rows["0.5"]
    code = grid_code(VOCAB, E.shape[1])
    for t in ("<grid12,14>", "<grid14,12>", "<grid0,31>", "<OFF-1,0>", "<box>"):
        src = base_tokenizer.encode(init_text(t, VOCAB), add_special_tokens=False)
        i = tok.convert_tokens_to_ids(t)
        for M, M0 in ((E, rows["0"][0]), (W, rows["0"][1])):
            mean = M[src].mean(0)
            want = mean + 0.5 * mean.pow(2).mean().sqrt() * torch.from_numpy(code[t]) if t in code else mean
            assert torch.allclose(M[i], want, atol=1e-6), t
            assert torch.allclose(M0[i], mean, atol=1e-6), t  # GETOK_GRID_CODE=0: the text mean alone
    a, b = tok.convert_tokens_to_ids(["<grid12,14>", "<grid14,12>"])
    assert torch.equal(rows["0"][0][a], rows["0"][0][b]) and not torch.allclose(E[a], E[b])
    monkeypatch.setenv("GETOK_GRID_CODE", "lots")
    with pytest.raises(ValueError, match="GETOK_GRID_CODE must be a number"):
        prepare_model_vocab(None, AutoTokenizer.from_pretrained(tiny_model), VOCAB)


def test_getok_tokens_registered_as_special_are_refused(tiny_model, plugin):
    from transformers import AutoTokenizer

    from getok_core.models.tokens import add_getok_tokens

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_special_tokens({"additional_special_tokens": ["<grid0,0>"]})
    with pytest.raises(ValueError, match="skip_special_tokens"):
        add_getok_tokens(tok, VOCAB)


def test_grid_size_from_the_environment(tiny_model, loaded, images, monkeypatch, helpers):
    from transformers import AutoConfig, AutoTokenizer

    from swift_plugin.getok_tokens import prepare_model_vocab, vocab_from_env

    monkeypatch.setenv("GETOK_GRID_SIZE", "16")
    vocab = vocab_from_env()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = AutoConfig.from_pretrained(tiny_model)
    info = prepare_model_vocab(None, tok, vocab, config=config)
    assert (info["n_tokens"], info["first_id"], info["grid_size"]) == (16 * 16 + 23, FIRST_GETOK_ID, 16)
    assert info["vocab_rows"] == config.text_config.vocab_size == 152064  # 151944 tokens -> multiple of 128
    assert tok.encode("<grid15,15>", add_special_tokens=False) == [tok.convert_tokens_to_ids("<grid15,15>")]
    assert "<grid16,0>" not in tok.get_vocab()
    _, processor = loaded
    row = helpers.mem_row(images["640x480"])
    enc = helpers.make_template(processor).encode(row)  # the template reads the grid size too
    assert processor.tokenizer.decode([i for i in enc["labels"] if i != -100]) == (
        "<box><grid0,0><grid2,2></box><|im_end|>\n")


# ---------------------------------------------------------------------- the template
def test_standard_grounding_row_renders_getok_tokens(loaded, images, helpers):
    _, processor = loaded
    tok = processor.tokenizer
    template = helpers.make_template(processor)
    row = {"messages": [{"role": "user", "content": "<image>Find <ref-object> and <ref-object>."},
                        {"role": "assistant", "content": "<answer><bbox>\n<bbox></answer>"}],
           "images": [images["640x480"]],
           "objects": {"ref": ["the red car", "the dog"], "bbox": [[120, 80, 400, 360], [260, 220]]}}
    enc = template.encode(row)
    text = tok.decode(enc["input_ids"])
    assert text.endswith("<|vision_end|>Find the red car and the dog.<|im_end|>\n<|im_start|>assistant\n"
                         "<answer><box><grid6,5><grid19,23></box>\n<point><grid13,14></point></answer><|im_end|>\n")
    assert tok.decode([i for i in enc["labels"] if i != -100]) == (
        "<answer><box><grid6,5><grid19,23></box>\n<point><grid13,14></point></answer><|im_end|>\n")
    # the same boxes given normalized (norm1) or per mille (norm1000) give the same tokens
    for bbox_type, scale in (("norm1", (640, 480)), ("norm1000", (0.64, 0.48))):
        r = json.loads(json.dumps(row))
        r["objects"]["bbox_type"] = bbox_type
        r["objects"]["bbox"] = [[v / scale[i % 2] for i, v in enumerate(b)] for b in r["objects"]["bbox"]]
        assert tok.decode(template.encode(r)["input_ids"]) == text
    parsed = parse_answer(text.split("<|im_start|>assistant\n")[-1], VOCAB)
    assert parsed.valid and len(parsed.instances) == 2


def test_getok_text_passes_through_and_labels_cover_only_the_assistant_turn(loaded, prepared, helpers):
    _, processor = loaded
    tok = processor.tokenizer
    template = helpers.make_template(processor)
    for name in ("train.jsonl", "train_refine.jsonl"):
        row = helpers.read_jsonl(prepared / "swift" / name)[0]
        enc = template.encode(row)
        ids, labels = enc["input_ids"], enc["labels"]
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        labelled = [i for i, lab in enumerate(labels) if lab != -100]
        assert all(labels[i] == ids[i] for i in labelled)
        # the labelled spans are exactly the assistant answers (+ <|im_end|>\n), nothing of the prompt
        spans, cur = [], [labelled[0]]
        for i in labelled[1:]:
            if i == cur[-1] + 1:
                cur.append(i)
            else:
                spans.append(cur)
                cur = [i]
        spans.append(cur)
        assert [tok.decode([ids[i] for i in s]) for s in spans] == [a + "<|im_end|>\n" for a in answers]
        for a, s in zip(answers, spans):  # GETok tokens are single ids inside the training sequence
            assert [ids[i] for i in s][:-2] == tok.encode(a, add_special_tokens=False)
            assert parse_answer(a, VOCAB).valid or "<offset>" in a


def test_plain_resize_option(loaded, images, monkeypatch, helpers):
    _, processor = loaded
    row = helpers.mem_row(images["640x480"])
    base = helpers.make_template(processor).encode(row)
    assert base["image_grid_thw"].tolist() == [[1, 34, 46]]  # Qwen's dynamic resolution (476 x 644)
    monkeypatch.setenv("GETOK_IMAGE_SIZE", "448")
    resized = helpers.make_template(processor).encode(row)
    assert resized["image_grid_thw"].tolist() == [[1, 32, 32]]  # plain resize to 448 x 448
    tok = processor.tokenizer
    # the GETok answer is the same: the tokens are normalized
    assert tok.decode([i for i in resized["labels"] if i != -100]) == tok.decode(
        [i for i in base["labels"] if i != -100])
    monkeypatch.setenv("GETOK_IMAGE_SIZE", "450,300")  # rounded to multiples of 28
    assert helpers.make_template(processor).encode(row)["image_grid_thw"].tolist() == [[1, 22, 32]]


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen2_vl"])
def test_family_template_renders_the_same_getok_tokens(name, family_model, plugin, images, monkeypatch, helpers):
    """ms-swift's Qwen3-VL / Qwen2-VL templates normalize ``objects`` boxes to 0-1000
    (``norm_bbox = 'norm1000'``); the GETok templates replace that step, so the tokens are those of
    the box normalized by the original image size, as with Qwen2.5-VL (``norm_bbox = 'none'``).
    The plain resize rounds to the family's patch x merge (32 px for Qwen3-VL, 28 for Qwen2-VL)."""
    from swift.model import get_model_processor
    from swift.template import TEMPLATE_MAPPING

    assert TEMPLATE_MAPPING[name].template_cls.norm_bbox == "norm1000"
    assert TEMPLATE_MAPPING["qwen2_5_vl"].template_cls.norm_bbox == "none"
    _, processor = get_model_processor(family_model(name, tied=OTHER_TIED[name]), model_type=f"getok_{name}",
                                       load_model=False)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<grid0,0>") == FAMILY_LAYOUT[name][0]
    row = {"messages": [{"role": "user", "content": "<image>Find <ref-object>."},
                        {"role": "assistant", "content": "<answer><bbox></answer>"}],
           "images": [images["640x480"]], "objects": {"ref": ["the red car"], "bbox": [[120, 80, 400, 360]]}}
    answer = "<answer><box><grid6,5><grid19,23></box></answer><|im_end|>\n"
    template = helpers.make_template(processor, template_type=f"getok_{name}")
    enc = template.encode(json.loads(json.dumps(row)))
    assert tok.decode([i for i in enc["labels"] if i != -100]) == answer
    text = tok.decode(enc["input_ids"])
    assert "Find the red car.<|im_end|>" in text and text.startswith(
        "<|im_start|>user\n" if name == "qwen3_vl" else "<|im_start|>system\nYou are a helpful assistant.")
    # ms-swift's own template on the same row: per-mille numbers (what GETok replaces)
    plain = helpers.make_template(processor, template_type=name).encode(json.loads(json.dumps(row)))
    assert "(188,167),(625,750)" in tok.decode(plain["input_ids"])
    factor = 32 if name == "qwen3_vl" else 28
    monkeypatch.setenv("GETOK_IMAGE_SIZE", "450,300")
    resized = helpers.make_template(processor, template_type=f"getok_{name}").encode(json.loads(json.dumps(row)))
    w, h = round(450 / factor) * factor, round(300 / factor) * factor
    patch = factor // 2
    assert resized["image_grid_thw"].tolist() == [[1, h // patch, w // patch]]
    assert tok.decode([i for i in resized["labels"] if i != -100]) == answer


# ---------------------------------------------------------------------- datasets
def test_sample_dataset_by_name_and_prepared_jsonl_with_the_preprocessor(prepared, work, monkeypatch, images, helpers):
    from swift.dataset import load_dataset

    from swift_plugin import getok_dataset

    train, _ = load_dataset(["getok-sample"], num_proc=1)
    assert len(train) == len(helpers.read_jsonl(prepared / "swift" / "train.jsonl"))
    assert train[0]["messages"][1]["content"].startswith("<answer>")
    refine, _ = load_dataset(["getok-sample-refine#3"], num_proc=1)
    assert len(refine) == 3 and len(refine[0]["messages"]) == 4

    # a prepared file listed in GETOK_DATASET_PATHS: relative images resolved, invalid answers dropped
    d = work / "own"
    d.mkdir(exist_ok=True)
    os.makedirs(d / "img", exist_ok=True)
    import shutil
    shutil.copy(images["mem"], d / "img" / "a.png")
    good = {"messages": [{"role": "user", "content": "<image>Please segment: x."},
                         {"role": "assistant", "content": "<answer><box><grid1,1><grid5,5></box></answer>"}],
            "images": ["img/a.png"]}
    bad = {"messages": [{"role": "user", "content": "<image>Please segment: y."},
                        {"role": "assistant", "content": "<answer><box><grid1,1></box></answer>"}],
           "images": ["img/a.png"]}
    path = d / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    monkeypatch.setenv("GETOK_DATASET_PATHS", str(path))
    assert str(path) in getok_dataset.register()
    ds, _ = load_dataset([str(path)], num_proc=1, load_from_cache_file=False)
    assert len(ds) == 1
    img = ds[0]["images"][0]
    assert (img["path"] if isinstance(img, dict) else img) == str(d / "img" / "a.png")


def test_registered_names(plugin):
    from swift.model import MODEL_MAPPING
    from swift.template import TEMPLATE_MAPPING
    from swift.tuner_plugin import tuners_map

    from swift_plugin.getok_template import GetokTemplateMixin

    for name in ("getok_qwen2_5_vl", "getok_qwen2_vl", "getok_qwen3_vl"):
        assert MODEL_MAPPING[name].is_multimodal and MODEL_MAPPING[name].template == name
        assert issubclass(TEMPLATE_MAPPING[name].template_cls, GetokTemplateMixin)
        assert not MODEL_MAPPING[name].architectures  # plain Qwen-VL auto-detection is unchanged
    assert TEMPLATE_MAPPING["getok_qwen2_5_vl"].default_system == TEMPLATE_MAPPING["qwen2_5_vl"].default_system
    assert tuners_map["getok_lora"].__name__ == "GetokLoraTuner"
    assert plugin.REGISTERED["datasets"][:4] == ["getok-sample", "getok-sample-refine", "getok-sample-val",
                                                 "getok-sample-val-refine"]


# ---------------------------------------------------------------------- the tuner, in-process
def test_getok_lora_on_tied_embeddings(tiny_tied_model, plugin, images, tmp_path, helpers):
    """Qwen2.5-VL-3B ties embed_tokens and lm_head: one set of GETok rows, trained for both."""
    from swift.model import get_model_processor

    from swift_plugin.getok_tuner import GetokLoraTuner

    model, processor = get_model_processor(tiny_tied_model, model_type="getok_qwen2_5_vl",
                                           torch_dtype=torch.float32, device_map="cpu")
    assert model.getok_info["tied"] and model.lm_head.weight is model.get_input_embeddings().weight
    before = model.get_input_embeddings().weight.detach().clone()
    peft_model = GetokLoraTuner.prepare_model(lora_args(), model)
    trainable = {n: p.shape for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert list(trainable.values()) == [(1047, 64)] and "embed_tokens" in next(iter(trainable))
    assert type(peft_model.base_model.model.lm_head).__name__ == "TrainableTokensWrapper"
    template = helpers.make_template(processor)
    template.model = peft_model
    batch = template.data_collator([template.encode(helpers.mem_row(images["mem"]))])
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0)
    for _ in range(2):
        loss = peft_model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        logits = peft_model(**batch).logits
    GetokLoraTuner.save_pretrained(peft_model, tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    E = merged.get_input_embeddings().weight
    assert E is merged.get_output_embeddings().weight  # still tied
    ids = torch.tensor(merged.getok_info["ids"])
    rest = torch.ones(E.shape[0], dtype=torch.bool)
    rest[ids] = False
    assert torch.equal(E[rest], before[rest])
    assert (E[ids] != before[ids]).any(1).all()  # the trained rows (both sides: tied)
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, logits, atol=1e-4)


def test_adapter_refuses_another_vocabulary(tmp_path):
    from swift_plugin.getok_tuner import INFO_FILE, GetokLoraTuner

    (tmp_path / INFO_FILE).write_text(json.dumps({"grid_size": 32, "n_tokens": 1047, "first_id": FIRST_GETOK_ID}))
    model = SimpleNamespace(getok_info={"grid_size": 16, "n_tokens": 279, "first_id": FIRST_GETOK_ID})
    with pytest.raises(ValueError, match="GETOK_GRID_SIZE"):
        GetokLoraTuner.from_pretrained(model, str(tmp_path))
    with pytest.raises(ValueError, match="getok_qwen2_5_vl"):
        GetokLoraTuner.prepare_model(lora_args(), SimpleNamespace(named_modules=lambda: []))
    with pytest.raises(ValueError, match="modules_to_save"):
        from swift_plugin.getok_tuner import build_lora_config

        class Fake(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed_tokens = torch.nn.Embedding(4, 2)
                self.lm_head = torch.nn.Linear(2, 4, bias=False)
                self.getok_info = {"ids": [3]}

            def get_input_embeddings(self):
                return self.embed_tokens

            def get_output_embeddings(self):
                return self.lm_head

        build_lora_config(lora_args(modules_to_save=["embed_tokens"], target_modules=["q_proj"]), Fake())


# ---------------------------------------------------------------------- the real CLI
def vocab_rows(first_id: int) -> int:
    """The embedding rows after the GETok tokens: the next multiple of 128."""
    return -(-(first_id + 1047) // 128) * 128


def check_sft(cli, first_id: int, tied: bool) -> None:
    from safetensors import safe_open

    ckpt = cli["ckpt"]
    log = (cli["dir"] / "sft.log").read_text()
    assert f"GETok: 1047 tokens (grid 32) at ids {first_id}..{first_id + 1046}, 1047 newly added" in log
    assert "getok_lora: LoRA r=8" in log
    info = json.loads((ckpt / "getok_tuner.json").read_text())
    assert (info["grid_size"], info["first_id"], info["n_tokens"], info["vocab_rows"]) == (
        32, first_id, 1047, vocab_rows(first_id))
    with safe_open(str(ckpt / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        deltas = {k: tuple(f.get_slice(k).get_shape()) for k in keys if "trainable_tokens_delta" in k}
    assert all("lora_A" in k or "lora_B" in k or "trainable_tokens_delta" in k for k in keys), keys
    assert any("lora_A" in k for k in keys) and all("visual" not in k for k in keys)
    # embed_tokens and lm_head rows (one set when tied), never full copies
    assert sorted(deltas.values()) == [(1047, 64)] * (1 if tied else 2), deltas
    assert {k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in deltas} == (
        {"embed_tokens"} if tied else {"embed_tokens", "lm_head"})
    args = json.loads((ckpt / "args.json").read_text())
    assert args["tuner_type"] == "getok_lora" and os.path.isabs(args["custom_register_path"][0])
    assert args["model_type"] == cli["model_type"]
    losses = [json.loads(line)["loss"] for line in (ckpt.parent / "logging.jsonl").read_text().splitlines()
              if '"loss"' in line and "train_loss" not in line]
    assert losses[-1] < losses[0]


def test_swift_sft_trains_lora_and_only_the_getok_rows(cli):
    check_sft(cli, FIRST_GETOK_ID, tied=False)


def test_swift_infer_with_the_adapter_reloads_the_plugin_and_parses(cli, helpers):
    log = (cli["dir"] / "infer_adapter.log").read_text()
    assert "getok_lora" in log and "GETok: 1047 tokens" in log
    responses = [r["response"] for r in cli["adapter"]]
    assert len(responses) == 2
    for text in responses:  # never raises, whatever the tiny model says
        parse_answer(text, VOCAB)
    # the memorized standard grounding row: GETok tokens decoded (they are not special), a valid answer
    assert responses[0] == helpers.MEM_ANSWER
    parsed = parse_answer(responses[0], VOCAB)
    assert parsed.valid and parsed.cells[0].box == ((8, 7), (25, 26))


def check_export(cli, first_id: int) -> None:
    assert [r["response"] for r in cli["merged_out"]] == [r["response"] for r in cli["adapter"]]
    # the merged tokenizer already holds the tokens: nothing added, no row re-initialized
    assert cli["merged_info"]["newly_added"] == 0 and cli["merged_info"]["vocab_rows"] == vocab_rows(first_id)
    # the exported folder is a plain checkpoint of its family whose tokenizer holds the (non-special) tokens
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cli["merged"])
    ids = tok.convert_tokens_to_ids(VOCAB.tokens)
    assert ids == list(range(first_id, first_id + 1047)) and not set(ids) & set(tok.all_special_ids)
    assert tok.decode(ids[:5], skip_special_tokens=True) == "".join(VOCAB.tokens[:5])
    assert AutoConfig.from_pretrained(cli["merged"]).text_config.vocab_size == vocab_rows(first_id)


def test_swift_export_merge_gives_the_same_greedy_output(cli):
    check_export(cli, FIRST_GETOK_ID)


def check_merged_rows(cli, base, tied: bool) -> None:
    """Every embedding / lm_head row but the GETok rows is bit-identical to the base (after the
    plugin's deterministic init), the GETok rows hold the trained values, the vision tower and norms
    are untouched, and the LoRA-targeted linear layers changed."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(cli["merged"], dtype=torch.float32)
    assert type(merged).__name__ == type(base).__name__
    ids = torch.tensor(base.getok_info["ids"])
    with safe_open(str(cli["ckpt"] / "adapter_model.safetensors"), "pt") as f:
        deltas = {("lm_head" if "lm_head" in k else "embed"): f.get_tensor(k) for k in f.keys()
                  if "trainable_tokens_delta" in k}
    if tied:
        deltas["lm_head"] = deltas["embed"]
        assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    for side, get in (("embed", lambda m: m.get_input_embeddings().weight),
                      ("lm_head", lambda m: m.get_output_embeddings().weight)):
        b, m = get(base).detach(), get(merged).detach()
        assert b.shape == m.shape == (base.getok_info["vocab_rows"], 64)
        rest = torch.ones(b.shape[0], dtype=torch.bool)
        rest[ids] = False
        assert torch.equal(m[rest], b[rest]), side
        assert torch.equal(m[ids], deltas[side]), side
        assert (m[ids] != b[ids]).any(1).sum() > 1000, side
    changed, same = [], []
    merged_params = dict(merged.named_parameters())
    for n, p in base.named_parameters():
        if "embed_tokens" in n or "lm_head" in n:
            continue
        (same if torch.equal(p, merged_params[n]) else changed).append(n)
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert changed and all("language_model" in n and n.split(".")[-2] in lora_targets for n in changed), changed
    assert all("visual" in n or "norm" in n or n.endswith(".bias") for n in same), same
    assert any("visual" in n for n in same)


def test_merged_model_changed_only_lora_targets_and_getok_rows(cli, loaded):
    check_merged_rows(cli, loaded[0], tied=False)


# ---------------------------------------------------------------------- the other families, real CLI
def test_family_swift_sft_infer_export(family_cli, helpers):
    """Qwen3-VL (tied) and Qwen2-VL (untied) through the same chain as Qwen2.5-VL: swift sft with
    getok_lora (only LoRA and GETok rows trained), swift infer --adapters (the memorized answer,
    GETok tokens decoded), swift export --merge_lora (the same greedy output, only LoRA targets and
    GETok rows changed)."""
    from swift.model import get_model_processor

    fam, tied = family_cli["family"], family_cli["tied"]
    check_sft(family_cli, fam.first_getok_id, tied)
    log = (family_cli["dir"] / "infer_adapter.log").read_text()
    assert "getok_lora" in log and "GETok: 1047 tokens" in log
    response = family_cli["adapter"][0]["response"]
    assert response == helpers.MEM_ANSWER, response  # the memorized standard grounding row
    assert parse_answer(response, VOCAB).cells[0].box == ((8, 7), (25, 26))
    check_export(family_cli, fam.first_getok_id)
    base, _ = get_model_processor(family_cli["model"], model_type=fam.model_type, torch_dtype=torch.float32,
                                  device_map="cpu")
    assert base.getok_info["tied"] == tied
    check_merged_rows(family_cli, base, tied)


# ---------------------------------------------------------------------- the cluster recipe
def test_recipe_passes_only_sft_arguments(work):
    """recipes/sft_swift.sh (DRY_RUN): every flag is an ms-swift SftArguments field; sizes come from
    the environment."""
    import dataclasses
    import shlex
    import subprocess

    from swift.arguments import SftArguments

    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "sft_swift.sh")
    names = {f.name for f in dataclasses.fields(SftArguments)}
    env = dict(os.environ, DRY_RUN="1", NPROC="4", LORA_RANK="32", DATA="a.jsonl getok-sample", VAL_DATA="v.jsonl")
    out = subprocess.run(["bash", recipe], env=env, capture_output=True, text=True, check=True).stdout
    words = shlex.split(out)
    flags = [w[2:] for w in words if w.startswith("--")]
    assert flags and not [f for f in flags if f not in names]
    assert out.startswith("NPROC_PER_NODE=4 GETOK_GRID_SIZE=32")
    assert words[words.index("--lora_rank") + 1] == "32" and words[words.index("--tuner_type") + 1] == "getok_lora"
    i = words.index("--dataset")
    assert words[i + 1:i + 3] == ["a.jsonl", "getok-sample"]
    assert os.path.isabs(words[words.index("--custom_register_path") + 1])
