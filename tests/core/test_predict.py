"""`getok predict` and its Python API on a replayed (trained-looking) answer with the region decoder:
the files, the geometry JSON, the masks, the refinement dialogue, and the overlay checked on pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from getok_core.cli import main as getok_main
from getok_core.codec.answer import format_answer, format_offsets
from getok_core.codec.instance import Instance
from getok_core.codec.vocab import GetokVocab
from getok_core.data.masks import decode_rle
from getok_core.data.writers import REFINE_PROMPT, question, swift_row
from getok_core.decoders import make_decoder
from getok_core.evaluation.viz import CELL_ALPHA, MOVE, PRED
from getok_core.inference import (Predictor, ReplayBackend, offset_moves, read_replay, sample_queries,
                                  user_prompt)
from getok_core.models.rollout import IM_END

W, H, N = 128, 96, 8          # a 128 x 96 image, an 8 x 8 grid: cells of 16 x 12 px
S = 4                         # the overlay's upscale (short side 96 -> 384)
GREY, RED = (120, 120, 120), (220, 40, 40)
VOCAB = GetokVocab(N)
#: the red rectangle: columns 32..79, rows 24..59 (normalized 0.25 .. 0.625)
RECT = np.zeros((H, W), bool)
RECT[24:60, 32:80] = True
#: a trained-looking answer: the rectangle's box (cells (2, 2), (4, 4)) and a seg point in cell (3, 3)
ANSWER = format_answer([Instance(box=(0.25, 0.25, 0.625, 0.625), points=[(0.4375, 0.4375)])], VOCAB)
#: the box the tokens mean (cell centres), and its pixels: columns 40..71, rows 30..53
BOX = (0.3125, 0.3125, 0.5625, 0.5625)
MASK = np.zeros((H, W), bool)
MASK[30:54, 40:72] = True


def blend(base, colour, alpha):
    return np.array(base, float) * (1 - alpha) + np.array(colour, float) * alpha


def close(pixel, expected, tol=3.0) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, float) - np.asarray(expected, float)) <= tol))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    img = np.empty((H, W, 3), np.uint8)
    img[:] = GREY
    img[RECT] = RED
    Image.fromarray(img).save(d / "scene.png")
    return d, img


def test_prompt_is_the_training_prompt():
    row = swift_row("x.png", question("seg", "the red box"), "<answer><none></answer>")
    assert user_prompt("seg", "the red box") == row["messages"][0]["content"]
    assert user_prompt("box", "it", prompt="Where? ") == "<image>Where? "
    with pytest.raises(ValueError, match="tasks training has prompts for"):
        user_prompt("poly", "it")


def test_answer_tokens():
    assert ANSWER == "<answer><box><grid2,2><grid4,4></box><seg><grid3,3></seg></answer>"


def test_cli_replay_writes_every_file(scene, tmp_path):
    d, img = scene
    rows = [{"image": "scene.png", "query": "the red box", "answers": [ANSWER]},
            {"image": "scene.png", "query": "the blue cat", "answer": "<answer><none></answer>"},
            {"image": "scene.png", "query": "the red box", "task": "box", "answer": "I think it is there"}]
    (d / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert getok_main(["predict", "--replay", str(d / "answers.jsonl"), "--out", str(out), "--grid-size", str(N),
                       "--no-progress"]) == 0
    index = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["valid"] for r in index] == [True, True, False]
    assert [r["no_target"] for r in index] == [False, True, False]
    assert [r["instances"] for r in index] == [1, 0, 0]
    first = index[0]["files"]
    assert set(first) == {"answer", "json", "mask", "overlay"}
    assert first["json"] == "0000-scene-the-red-box.json"
    assert "mask" not in index[1]["files"] and "overlay" in index[1]["files"]
    rec = json.loads((out / first["json"]).read_text())
    assert rec["turns"] == [ANSWER] and rec["prompt"] == user_prompt("seg", "the red box")
    assert rec["cells"] == [{"box": [[2, 2], [4, 4]], "points": [[3, 3]]}]
    inst = rec["instances"][0]
    assert inst["normalized"] == {"box": list(BOX), "points": [[0.4375, 0.4375]]}
    assert inst["pixels"] == {"box": [40.0, 30.0, 72.0, 54.0], "points": [[56.0, 42.0]]}
    assert inst["pixel_index"] == {"box": [40, 30, 71, 53], "points": [[42, 56]]}
    # the region decoder's mask: the rectangle clipped to the box; PNG and RLE agree
    png = np.asarray(Image.open(out / first["mask"])) > 0
    assert np.array_equal(png, MASK)
    assert np.array_equal(decode_rle(rec["mask"]["rle"]), MASK) and rec["mask"]["area"] == MASK.sum()
    assert np.array_equal(decode_rle(rec["masks"][0]["rle"]), MASK)
    assert Image.open(out / first["overlay"]).size == (W * S, H * S)
    text = (out / first["answer"]).read_text()
    assert ANSWER in text and "## assistant (turn 1)" in text
    assert json.loads((out / index[2]["files"]["json"]).read_text())["errors"]


def test_overlay_pixels(scene):
    """Token cells shaded, the box outlined, the mask filled, the seg point dotted, where the
    answer puts them (pixels of the 4x overlay)."""
    _, img = scene
    pred = Predictor(ReplayBackend([ANSWER]), make_decoder("region"), VOCAB).predict(img, "the red box")
    o = pred.overlay
    assert o.shape == (H * S, W * S, 3) and o.dtype == np.uint8
    mask_rgb = blend(RED, PRED, 0.45)
    cell = CELL_ALPHA / 255
    assert tuple(o[20, 480]) == GREY                              # background, far from all
    assert close(o[136, 264], mask_rgb)                           # mask, cell (4, 2): no token there
    assert close(o[106, 138], blend(RED, PRED, cell))             # token cell (2, 2), outside the mask
    assert tuple(o[160, 134]) == RED                              # cell (2, 3): no token, no mask
    assert close(o[180, 236], blend(mask_rgb, PRED, cell))        # token cell (3, 3), in the mask
    assert tuple(o[170, 160]) == PRED and tuple(o[170, 288]) == PRED   # the box's left and right edges
    assert tuple(o[168, 224]) == PRED                             # the seg point's dot
    assert not np.any(np.all(o == MOVE, axis=-1))                 # no refinement: no arrow
    # the same picture from a path and from a palette PIL image
    d, _ = scene
    again = Predictor(ReplayBackend([ANSWER]), make_decoder("region"), VOCAB)
    assert np.array_equal(again.predict(str(d / "scene.png"), "the red box").overlay, o)
    assert np.array_equal(again.predict(Image.fromarray(img).quantize(4), "the red box").overlay, o)


def test_refinement_round_moves_and_draws(scene):
    _, img = scene
    offsets = format_offsets([[(1, 1), (0, 0), None]], VOCAB)   # top-left corner +1,+1; delete the point
    backend = ReplayBackend([ANSWER, offsets])
    pred = Predictor(backend, make_decoder("region"), VOCAB, rounds=1).predict(img, "the red box")
    assert pred.turns == [ANSWER, offsets] and pred.user_turns[1] == REFINE_PROMPT
    step = VOCAB.offset_step(1)
    assert pred.moves == [((0.3125, 0.3125), (0.3125 + step, 0.3125 + step))]
    assert pred.deleted == [(0.4375, 0.4375)]
    assert pred.instances == [Instance(box=(0.3125 + step, 0.3125 + step, 0.5625, 0.5625))]
    assert pred.history[0] == [Instance(box=BOX, points=[(0.4375, 0.4375)])]
    assert pred.stop_reason == ""  # the box corners are left: the dialogue could go on
    o = pred.overlay
    mid = (round((0.3125 + step / 2) * W * S), round((0.3125 + step / 2) * H * S))
    assert tuple(o[mid[1], mid[0]]) == MOVE                       # the corner's arrow
    assert tuple(o[round(0.4375 * H * S), round(0.4375 * W * S)]) == MOVE  # the deleted point's cross
    # the second turn is the training dialogue: question, answer, refinement instruction
    assert pred.to_json()["rounds_done"] == 1
    with pytest.raises(ValueError, match="turn 3 asked, 2 stored"):
        Predictor(backend, None, VOCAB, rounds=2).predict(img, "the red box")


def test_offset_moves_never_raise():
    inst = [Instance(box=(0.1, 0.1, 0.5, 0.5))]
    assert offset_moves(inst, "garbage", VOCAB, 1) == ([], [])
    assert offset_moves(inst, "<answer><offset><DELETE><OFF0,0></offset></answer>", VOCAB, 1) == ([], [])


def test_replay_file_forms(scene, tmp_path):
    d, _ = scene
    prompt = user_prompt("seg", "the red box")
    rows = [{"messages": [{"role": "user", "content": prompt}], "images": [{"path": str(d / "scene.png")}],
             "response": ANSWER},                                          # a `swift infer` result row
            {"image": str(d / "scene.png"), "query": "the red box", "answers": ["<answer><none></answer>"]}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries, backend = read_replay(path)
    assert [q.rounds for q in queries] == [0, 0] and queries[0].prompt == prompt
    # the same prompt twice: answered in file order
    p = Predictor(backend, None, VOCAB)
    assert [p.predict(q.image, q.query, q.task, q.rounds, q.prompt).turns[0] for q in queries] == \
        [ANSWER, "<answer><none></answer>"]
    path.write_text(json.dumps({"image": "x.png", "query": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: no stored answer"):
        read_replay(path)
    item = (prompt + IM_END, [], 0)
    with pytest.raises(ValueError, match="no stored answer for the prompt"):
        ReplayBackend(by_prompt={"other": ["x"]}).generate([item], p.sampling)


def test_cli_counts_failures(scene, tmp_path, capsys):
    d, _ = scene
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"image": str(tmp_path / "missing.png"), "query": "q", "answer": ANSWER}) + "\n")
    assert getok_main(["predict", "--replay", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "failed 1" in captured.out and "cannot read image" in captured.err
    rec = json.loads((tmp_path / "o" / "predictions.jsonl").read_text())
    assert "cannot read image" in rec["error"]
    assert getok_main(["predict", "--replay", str(path), "--image", "x.png", "--out", str(tmp_path / "o")]) == 2


def test_sample_queries(tmp_path):
    qs = sample_queries(tmp_path / "sample")
    assert {t for _, _, t in qs} == {"seg", "box", "point", "line"}
    assert all((tmp_path / "sample").as_posix() in im for im, _, _ in qs)


def test_easyr1_rows_as_queries_then_eval(tmp_path):
    """`getok predict --input DIR/easyr1/SPLIT.jsonl` asks each row's own prompt with its ground
    truth's task; predictions.jsonl's ``response`` (the turn-1 answer) is what `getok eval --pred`
    scores, matched in order."""
    from getok_core.data import groundtruth
    from getok_core.inference.replay import read_queries

    data = tmp_path / "data"
    assert getok_main(["prepare", "--dataset", "sample", "--out", str(data), "--split", "val", "--formats", "easyr1",
                       "--no-progress"]) == 0
    path = data / "easyr1" / "val.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    queries = read_queries(path)
    assert len(queries) == len(rows)
    for q, row in zip(queries, rows):
        assert q.prompt == row["prompt"] and q.image == row["images"][0]
        assert q.task == groundtruth.loads(row["answer"], strict=True)["task"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "answer": "{"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'answer'"):
        read_queries(bad)
    # replayed answers written by predict, scored by eval: every answer <none> -> validity 1, one row per gt
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps({"image": q.image, "query": q.query, "task": q.task, "prompt": q.prompt,
                                          "answer": "<answer><none></answer>"}) + "\n" for q in queries))
    assert getok_main(["predict", "--replay", str(replay), "--decoder", "region", "--out", str(tmp_path / "p"),
                       "--no-progress"]) == 0
    preds = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    assert [p["response"] for p in preds] == ["<answer><none></answer>"] * len(rows)
    assert getok_main(["eval", "--pred", str(tmp_path / "p" / "predictions.jsonl"), "--data", str(data),
                       "--split", "val", "--out", str(tmp_path / "report"), "--decoder", "region"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["_meta"]["missing_predictions"] == 0
    assert all(v["format_validity"] == 1.0 for k, v in metrics.items() if not k.startswith("_"))
