"""What the trainer adapters share (getok_core.rewards.frameworks): reading reward arguments and
batch columns, a setting given twice, the stage dispatch, the flat logged keys; and the
framework-free tokenizer code (getok_core.models.tokens) with a stand-in tokenizer.

Geometry as in test_rewards.py: a 100 x 100 image, a 10 x 10 grid; target square columns 25..54,
rows 35..64, box (0.25, 0.35, 0.55, 0.65).
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testkit import ground_truth, square, target

from getok_core import GetokVocab, format_offsets
from getok_core.models.tokens import (KeepGetokTokens, check_single_ids, getok_token_ids, grid_code, init_text,
                                      ordinary_limit, sincos_code, tokens_digest)
from getok_core.rewards import (GRID_COMPONENTS, REFINE_COMPONENTS, GridWeights, RefineWeights, RewardResult,
                                RewardSetup, score_grid_batch, score_refine_batch, setup_from_kwargs)
from getok_core.rewards.dialogue import score_dialogues, stage_turns
from getok_core.rewards.frameworks import (FALLBACK_KEY, check_stage, column, component_value, flatten,
                                           kwargs_from_json, message_text, previous_assistant, recorded_dialogues,
                                           score_batch, set_once, stage_keys)

V = GetokVocab(grid_size=10)
PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"
PROPOSAL = f"<think>t</think><answer>{PERFECT}</answer>"
OFFSETS = format_offsets([[(0, 0)] * 5], V)
GT = ground_truth([target(square(25, 54, 35, 64), box=(0.25, 0.35, 0.55, 0.65))])
GT_PROPOSAL = ground_truth([target(square(25, 54, 35, 64), box=(0.25, 0.35, 0.55, 0.65))],
                           extra={"proposal": PROPOSAL})
GRID = setup_from_kwargs({"grid_size": 10})
REFINE = setup_from_kwargs({"grid_size": 10, "stage": "refine"})


# ---------------------------------------------------------------------- reading reward arguments
def test_kwargs_from_json():
    assert kwargs_from_json(None, "X") == {} and kwargs_from_json("  ", "X") == {}
    assert kwargs_from_json('{"decoder": "region", "grid_size": 16}', "X") == {"decoder": "region", "grid_size": 16}
    with pytest.raises(ValueError, match="GETOK_REWARD_KWARGS"):
        kwargs_from_json("[1, 2]", "GETOK_REWARD_KWARGS")
    with pytest.raises(ValueError, match="GETOK_REWARD_KWARGS"):
        kwargs_from_json("{decoder: region", "GETOK_REWARD_KWARGS")


def test_a_setting_given_twice_must_agree():
    assert set_once({}, "grid_size", 32, "A", "B") == {"grid_size": 32}
    assert set_once({"grid_size": None, "x": 1}, "grid_size", 32, "A", "B") == {"grid_size": 32, "x": 1}
    assert set_once({"grid_size": 32}, "grid_size", 32, "A", "B") == {"grid_size": 32}
    assert set_once({"grid_size": "32"}, "grid_size", 32, "A", "B") == {"grid_size": 32}  # as an int
    with pytest.raises(ValueError) as err:
        set_once({"grid_size": 16}, "grid_size", 32, "GETOK_GRID_SIZE", "GETOK_REWARD_KWARGS")
    msg = str(err.value)
    assert all(s in msg for s in ("32", "16", "GETOK_GRID_SIZE", "GETOK_REWARD_KWARGS"))
    for other in ("x", True, [32]):
        with pytest.raises(ValueError):
            set_once({"grid_size": other}, "grid_size", 32, "A", "B")
    with pytest.raises(ValueError, match="'grid'.*'refine'"):
        set_once({"stage": "refine"}, "stage", "grid", "grid_reward", "reward_function_kwargs")
    kwargs = {"grid_size": 32}
    set_once(kwargs, "grid_size", 32, "A", "B")
    assert kwargs == {"grid_size": 32}  # the input is not modified


def test_check_stage():
    assert check_stage("grid") == "grid" and check_stage("refine") == "refine"
    with pytest.raises(ValueError, match="sft"):
        check_stage("sft")


def test_columns_and_messages():
    assert column({"solution": ["a", "b"], "ground_truth": ["c", "d"]}, ("solution", "ground_truth"), 2) == ["a", "b"]
    assert column({"solution": ["a"], "ground_truth": ["c", "d"]}, ("solution", "ground_truth"), 2) == ["c", "d"]
    assert column({}, ("solution",), 3) == [None] * 3
    assert message_text("x") == "x" and message_text("") == ""
    assert message_text([{"type": "text", "text": "a"}, {"type": "image", "image": "i"}, {"type": "text", "text": "b"}]) \
        == "ab"
    assert message_text([{"type": "image"}]) is None
    assert message_text([151, 152]) is None and message_text(None) is None  # token ids: no text
    msgs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "turn 1"},
             {"role": "user", "content": "refine"}, {"role": "assistant", "content": "c"}],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "c"}],
            [{"role": "assistant", "content": [1, 2, 3]}, {"role": "user", "content": "r"}, "c"],
            "not a conversation"]
    assert previous_assistant(msgs, 5) == ["turn 1", None, None, None, None]
    assert previous_assistant(None, 2) == [None, None]


def test_recorded_dialogues():
    infos = [{"turns": ["t1", "old last"]}, {}, {"turns": []}, None, {"turns": [7, "x"]}]
    got = recorded_dialogues(infos, ["c0", "c1", "c2", "c3", "c4", "c5"], "turns")
    assert got == [["t1", "c0"], None, None, None, ["", "c4"], None]
    assert recorded_dialogues(None, ["c"], "turns") == [None]


# ---------------------------------------------------------------------- stage dispatch
def test_single_answers_go_to_the_stage_scorer():
    responses = [f"<answer>{PERFECT}</answer>", "garbage"]
    got = score_batch(GRID, responses, [GT, GT])
    assert [r.scores() for r in got] == [r.scores() for r in score_grid_batch(responses, [GT, GT], V)]
    got = score_batch(REFINE, [OFFSETS, OFFSETS], [GT, GT_PROPOSAL], [PROPOSAL, None])
    ref = score_refine_batch([OFFSETS, OFFSETS], [GT, GT_PROPOSAL], V, [PROPOSAL, None])
    assert [r.scores() for r in got] == [r.scores() for r in ref]
    assert got[0].scores() == got[1].scores()  # a proposal given == the ground truth's extra["proposal"]
    assert got[0].components["format"] == 1.0 and got[0].components["point"] == 1.0


def test_dialogues_are_scored_as_dialogues_in_order():
    dialogues = [None, [PROPOSAL, OFFSETS], ["garbage"], None]
    responses = [OFFSETS, OFFSETS, "garbage", OFFSETS]
    truths = [GT_PROPOSAL, GT, GT, GT]
    for setup, stage in ((GRID, "grid"), (REFINE, "refine")):
        got = score_batch(setup, responses, truths, dialogues=dialogues)
        for k in (1, 2):
            assert got[k].scores() == score_dialogues([stage_turns(dialogues[k], stage)], [truths[k]], V)[0].scores()
        single = score_batch(setup, [responses[0], responses[3]], [truths[0], truths[3]])
        assert [got[0].scores(), got[3].scores()] == [r.scores() for r in single]
    assert set(score_batch(REFINE, ["x"], [GT], dialogues=[["garbage"]])[0].components) == \
        set(REFINE_COMPONENTS) - {"mask_gain"}  # a dialogue ended after turn 1: refinement components
    with pytest.raises(ValueError):
        score_batch(GRID, ["a", "b"], [GT])
    with pytest.raises(ValueError):
        score_batch(GRID, ["a"], [GT], dialogues=[None, None])


# ---------------------------------------------------------------------- flattening
def test_stage_keys():
    assert stage_keys("grid", True) == tuple(GRID_COMPONENTS)
    assert "mask" not in stage_keys("grid", False) and "mask_gain" not in stage_keys("refine", False)
    assert set(stage_keys("refine", True)) == set(REFINE_COMPONENTS)
    with pytest.raises(ValueError):
        stage_keys("third", True)


class _FallbackDecoder:
    fallback = "region"


def test_flatten_has_the_fixed_keys_of_the_stage():
    r = RewardResult(overall=1.5, components={"format": 1.0, "box": 0.5})
    row = flatten(r, GRID)
    assert row == {"overall": 1.5, "format": 1.0, "nonrepeat": 0.0, "box": 0.5, "points": 0.0}
    assert all(type(v) is float for v in row.values())
    assert list(flatten(r, REFINE, overall_key="score")) == ["score", *stage_keys("refine", False)]
    with_fallback = RewardSetup(V, _FallbackDecoder(), GridWeights(), RefineWeights(), stage="refine")
    row = flatten(r, with_fallback)
    assert row[FALLBACK_KEY] == 0.0 and row["mask_gain"] == 0.0  # every row of a batch: the same keys
    r.details[FALLBACK_KEY] = 0.25
    assert flatten(r, with_fallback)[FALLBACK_KEY] == 0.25
    assert FALLBACK_KEY not in flatten(r, GRID)  # no fallback configured
    assert component_value(r) == 1.5 and component_value(r, "box") == 0.5 and component_value(r, "mask") == 0.0


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from([PROPOSAL, OFFSETS, "", "garbage", "<answer><none></answer>"]),
                          st.sampled_from([GT, GT_PROPOSAL, "not json", None]), st.booleans()), min_size=1,
                max_size=4), st.sampled_from([GRID, REFINE]))
def test_every_row_of_a_batch_has_the_same_keys(batch, setup):
    responses = [r for r, _, _ in batch]
    truths = [g for _, g, _ in batch]
    dialogues = [[PROPOSAL, r] if d else None for r, _, d in batch]
    rows = [flatten(r, setup) for r in score_batch(setup, responses, truths, dialogues=dialogues)]
    assert all(list(row) == ["overall", *stage_keys(setup.stage, False)] for row in rows)
    assert all(type(v) is float and v >= 0 for row in rows for v in row.values())


# ---------------------------------------------------------------------- tokenizer code, framework-free
class FakeTokenizer:
    """A stand-in for a Hugging Face tokenizer: whole added tokens first, then one id per character."""

    def __init__(self, added: dict[str, int], special: set[str]):
        self.added = dict(added)
        self.special = set(special)
        self.vocab_size = 256

    def __len__(self):
        return self.vocab_size + len(self.added)

    def get_added_vocab(self):
        return dict(self.added)

    @property
    def all_special_ids(self):
        return [self.added[t] for t in self.special]

    def convert_tokens_to_ids(self, tokens):
        return [self.added[t] for t in tokens]

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            tok = next((t for t in self.added if text.startswith(t, i)), None)
            ids.append(self.added[tok] if tok else ord(text[i]) % 256)
            i += len(tok) if tok else 1
        return ids

    def decode(self, ids, skip_special_tokens=False):
        names = {i: t for t, i in self.added.items()}
        drop = set(self.all_special_ids) if skip_special_tokens else set()
        return "".join(names[i] if i in names else chr(i) for i in ids if i not in drop)


def test_init_text_and_digest():
    assert init_text("<grid3,7>", V) == "3,7" and init_text("<OFF-1,1>", V) == "offset -1,1"
    assert init_text("<DELETE>", V) == "<DELETE>" and init_text("<box>", V) == "<box>"
    assert tokens_digest(V.tokens) == tokens_digest(list(V.tokens)) != tokens_digest(GetokVocab(grid_size=12).tokens)
    assert len(tokens_digest(V.tokens)) == 16


@pytest.mark.parametrize("n,dim", [(10, 64), (32, 256), (2, 64)])
def test_grid_code_gives_every_cell_its_own_smooth_code(n, dim):
    import numpy as np

    vocab = GetokVocab(grid_size=n)
    code = grid_code(vocab, dim)
    assert list(code) == [t for t in vocab.tokens if vocab.token_cell(t) is not None]
    rows = np.stack(list(code.values()))
    assert rows.shape == (n * n, dim) and np.allclose((rows ** 2).mean(1), 1.0)
    gram = rows @ rows.T / dim  # cosine similarity (unit RMS rows)
    assert (gram[~np.eye(n * n, dtype=bool)] < 1 - 1e-6).all()  # no two cells share a code
    c = {vocab.token_cell(t): v for t, v in code.items()}
    cos = lambda a, b: float(c[a] @ c[b]) / dim  # noqa: E731
    for x in range(n - 2):  # a neighbour is closer than a cell two columns away, in every row
        for y in range(n):
            assert cos((x, y), (x + 1, y)) > cos((x, y), (x + 2, y))
    assert all(np.array_equal(a, b) for a, b in zip(code.values(), grid_code(vocab, dim).values()))  # fixed
    if n >= 10:  # the text mean cannot tell these apart (digit order); the code does
        assert cos((1, 2), (2, 1)) < 0.9
    assert len(next(iter(grid_code(vocab, 8).values()))) == 8  # 2 frequencies for a narrow model
    with pytest.raises(ValueError, match="below the code"):
        grid_code(vocab, 32, n_freq=16)
    uv = [vocab.cell_point(vocab.token_cell(t)) for t in code]
    assert np.array_equal(sincos_code(uv, dim, max_freq=n), rows)  # the cells' sincos_code


def test_sincos_code_of_a_position_table():
    """The vision position table's code (``tiny_model.position_table_code``, 48 x 48 entries, 64
    wide, the frequencies ``getok tiny-model --vision-position-code`` uses): RMS ``scale``, every
    entry its own code, the nearer entry the closer code along a row."""
    import numpy as np

    from getok_core.models.tiny_model import position_table_code

    side = 48
    code = position_table_code(side, 64, 0.5) / 0.5
    assert code.shape == (side * side, 64) and np.allclose((code ** 2).mean(1), 1.0)
    gram = code @ code.T / 64
    assert (gram[~np.eye(side * side, dtype=bool)] < 1 - 1e-6).all()
    row = gram[20 * side + 10, 20 * side: 21 * side]  # entry (row 20, column 10) against its row
    assert row[11] > row[12] > row[14] and row[9] > row[8] > row[6]


def test_keep_getok_tokens_decodes_them_even_when_special():
    added = {"<|im_end|>": 300, "<grid3,4>": 301, "<box>": 302, "</box>": 303, "<OFF-1,0>": 304, "<grid12,13>": 305,
             "<tool>": 306}
    tok = FakeTokenizer(added, special=set(added))
    assert getok_token_ids(tok) == {301, 302, 303, 304, 305}
    ids = tok.encode("<box><grid3,4></box> ok<OFF-1,0><grid12,13><tool><|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == " ok"  # the plain tokenizer drops them
    keep = KeepGetokTokens(tok)
    assert keep.decode(ids, skip_special_tokens=True) == "<box><grid3,4></box> ok<OFF-1,0><grid12,13>"
    assert keep.decode(ids) == tok.decode(ids)
    assert keep.vocab_size == 256  # everything else is the tokenizer's


def test_check_single_ids():
    tokens = ["<grid0,0>", "<grid0,1>", "<box>"]
    tok = FakeTokenizer({t: 300 + i for i, t in enumerate(tokens)}, special=set())
    check_single_ids(tok, tokens)
    assert ordinary_limit(tok) == 256
    tok.special = {"<box>"}  # a special GETok token does not survive skip_special_tokens=True
    with pytest.raises(RuntimeError, match="skip_special_tokens"):
        check_single_ids(tok, tokens)
    with pytest.raises(RuntimeError, match="encodes to"):
        check_single_ids(FakeTokenizer({"<grid0,0>": 300}, set()), ["<grid0,0>", "<grid0,1>"], [300, 301])
