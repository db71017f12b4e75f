"""EasyR1's data path on GETok files: ``create_dataloader`` (its ``RLHFDataset`` for train and val,
with the recipe's data keys, format prompt and pixel bounds, composed from the recipe's DRY_RUN
overrides) and ``collate_fn`` on rows of `getok prepare` (stage 1) and of `getok rollout-proposals`
(stage 2, transformers backend, run here under transformers 4), then the batch as the trainer makes
it (``DataProto.from_single_dict``) scored by EasyR1's reward manager built from the recipe's
``worker.reward`` config: the ground truth column reaches the reward unchanged.

The stage-1 model for rollout-proposals is the tiny model with the GETok tokens, taught one fixed
valid answer in-test (as tests/swift/test_rollout_proposals.py does), so its turn-1 answers parse.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_easyr1_recipes import compose, recipe_overrides

from getok_core import GetokVocab

REPO = Path(__file__).resolve().parents[2]
VOCAB = GetokVocab()
LIMIT, K = 3, 2


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loaders(easyr1, stage, train, val, model):
    """EasyR1's (config, train loader, val loader, tokenizer, processor) for the recipe of ``stage``
    on these files (one process for the overlong-prompt filter: 2 CPUs here)."""
    from transformers import AutoProcessor

    from verl.trainer.data_loader import create_dataloader

    args = recipe_overrides(stage, TRAIN_DATA=str(train), VAL_DATA=str(val), MODEL=str(model), MASK_DECODER="region",
                            ROLLOUT_BATCH="2")
    _, ppo = compose(easyr1, args + ["data.filter_overlong_prompts_workers=1"])
    proc = AutoProcessor.from_pretrained(ppo.worker.actor.model.model_path)
    train_loader, val_loader = create_dataloader(ppo.data, proc.tokenizer, proc)
    return ppo, train_loader, val_loader, proc.tokenizer, proc


def check_rows(easyr1, loader, rows, tokenizer, image_token_id):
    """EasyR1's items of ``rows`` (by index, then collate_fn): one image each, left-padded prompt
    ids holding the image tokens, the answer column as ``ground_truth``."""
    ds = loader.dataset
    assert len(ds) == len(rows)  # nothing filtered as overlong
    items = [ds[i] for i in range(len(rows))]
    batch = easyr1.dataset.collate_fn(items)
    assert batch["input_ids"].shape == (len(rows), ds.max_prompt_length)
    assert batch["position_ids"].shape == (len(rows), 4, ds.max_prompt_length)  # text + 3 mrope rows
    for i, row in enumerate(rows):
        assert batch["ground_truth"][i] == row["answer"]
        assert batch["multi_modal_data"][i] == {"images": row["images"]}
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert int((ids == image_token_id).sum()) > 0 and batch["attention_mask"][i][-1] == 1  # left padded
        assert tokenizer.decode(batch["raw_prompt_ids"][i]).endswith("<|im_start|>assistant\n")
    return batch


def score(easyr1, ppo, tokenizer, batch, responses):
    """The trainer's steps after generation: DataProto of the batch, union with the responses,
    EasyR1's reward manager from the recipe's worker.reward config."""
    data = easyr1.DataProto.from_single_dict(batch)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [tokenizer.encode(r, add_special_tokens=False) + [eos] for r in responses]
    width = max(map(len, ids))
    resp = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        resp[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    data = data.union(easyr1.DataProto.from_dict(tensors={"responses": resp, "response_mask": mask}))
    reward_tensor, metrics = easyr1.reward.AutoRewardManager(ppo.worker.reward, tokenizer).compute_reward(data)
    return reward_tensor, metrics


@pytest.fixture(scope="module")
def tokens_model(work, tiny_model, prepared) -> tuple[str, str]:
    """(model folder, answer): the tiny model with the GETok tokens, taught a fixed valid answer
    to the first LIMIT val prompts (as the transformers backend prompts them)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from getok_core.codec.answer import format_answer
    from getok_core.codec.instance import Instance
    from getok_core.data import groundtruth
    from getok_core.models import rollout as R
    from swift_plugin.getok_tokens import prepare_model_vocab  # framework-free (getok_core only)

    # one intra-op thread: a process whose OpenMP pool has run deadlocks in the forked workers of
    # EasyR1's overlong-prompt filter (datasets' num_proc, 16 for the val set), the next step here
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = read_jsonl(prepared / "easyr1" / "val.jsonl")[:LIMIT]
    t = groundtruth.loads(rows[0]["answer"])["targets"][0]
    (u1, v1, u2, v2) = t["box"]
    answer = format_answer([Instance(box=t["box"], points=[((u1 + u2) / 2, (v1 + v2) / 2), (0.01, 0.01)])], VOCAB)
    proc = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    prepare_model_vocab(model, proc.tokenizer, VOCAB)
    template = Path(R.default_format_prompt()).read_text()
    batches = []
    for row in rows:
        msgs = R.easyr1_messages(R.render_format_prompt(template, row["prompt"]))
        image = [R.load_image(row["images"][0], None, None)]
        full = proc.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        head = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        enc = proc(images=image, text=[full], return_tensors="pt", add_special_tokens=False)
        n_head = proc(images=image, text=[head], return_tensors="pt", add_special_tokens=False)["input_ids"].shape[1]
        batches.append((enc, enc["input_ids"][0, n_head:]))
    for name, p in model.named_parameters():
        p.requires_grad_(not ("embed_tokens" in name or "visual" in name))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for step in range(800):
        enc, target = batches[step % len(batches)]
        logits = model(**enc, logits_to_keep=len(target) + 1).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
        if len(losses) >= len(batches) and max(losses[-len(batches):]) < 0.005:
            break
    assert max(losses[-len(batches):]) < 0.005, "the tiny model did not learn the fixed answer"
    out = work / "stage1-model"
    model.eval()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out), answer


def test_stage1_prepare_rows(easyr1, prepared, tiny_model):
    train, val = prepared / "easyr1" / "train.jsonl", prepared / "easyr1" / "val.jsonl"
    ppo, train_loader, val_loader, tok, proc = loaders(easyr1, "grid", train, val, tiny_model)
    assert ppo.data.format_prompt.endswith("getok_grid.jinja")
    rows = read_jsonl(val)
    batch = check_rows(easyr1, val_loader, rows, tok, proc.image_token_id if hasattr(proc, "image_token_id")
                       else tok.convert_tokens_to_ids("<|image_pad|>"))
    assert len(train_loader.dataset) == len(read_jsonl(train))
    # the stage-1 question reaches the model as written (the grid template renders it unchanged)
    assert tok.decode(batch["raw_prompt_ids"][0]).count("<|vision_start|>") == 1
    reward_tensor, metrics = score(easyr1, ppo, tok, batch, ["garbage"] * len(rows))
    assert set(metrics) >= {"overall", "format", "box", "mask"} and metrics["format"] == [0.0] * len(rows)
    assert reward_tensor.shape[0] == len(rows)


def test_stage2_rollout_proposal_rows(easyr1, prepared, tokens_model, work):
    from getok_core.cli import main as getok_main
    from getok_core.codec.instance import anchors
    from getok_core.rewards.dialogue import start_refinement

    model, answer = tokens_model
    out = work / "val_refine.jsonl"
    assert getok_main(["rollout-proposals", "--model", model, "--prepared", str(prepared), "--split", "val",
                       "--backend", "transformers", "--num-samples", str(K), "--temperature", "0.1",
                       "--max-new-tokens", "40", "--limit", str(LIMIT), "--min-pixels", "0", "--dtype", "float32",
                       "--no-progress", "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == LIMIT * K and all(json.loads(r["answer"])["extra"]["proposal"] == answer for r in rows)
    ppo, _, val_loader, tok, proc = loaders(easyr1, "refine", out, out, model)
    batch = check_rows(easyr1, val_loader, rows, tok, tok.convert_tokens_to_ids("<|image_pad|>"))
    # the prompt holds the real two-turn exchange: the GETok answer as single ids, then the request
    text = tok.decode(batch["raw_prompt_ids"][0])
    assert answer in text and text.count("<|im_start|>assistant\n") == 2
    assert all(tok.convert_tokens_to_ids(t) in batch["raw_prompt_ids"][0] for t in ("<box>", "<seg>"))
    n = len(anchors(start_refinement(answer, VOCAB).instances[0]))
    keep = "<answer><offset>" + "<OFF0,0>" * n + "</offset></answer>"
    reward_tensor, metrics = score(easyr1, ppo, tok, batch, [keep] * len(rows))
    assert metrics["format"] == [1.0] * len(rows) and set(metrics) >= {"overall", "point", "box", "mask_gain"}
    assert np.allclose(reward_tensor.sum(-1).numpy(), metrics["overall"])
