"""The ms-swift reward functions (``swift_plugin.getok_rewards``) registered in ``swift.rewards.orms``:
the grid and refinement ORMs give the core rewards' values (getok_core.rewards).

A 100 x 100 image and a 10 x 10 grid, as in tests/core/test_rewards.py: target M1 is the square of
columns 25..54, rows 35..64 (box (0.25, 0.35, 0.55, 0.65)).
"""

import math

import pytest
from swift.rewards import orms
from testkit import ground_truth, square, target

import swift_plugin.getok_rewards as sr
from getok_core import GetokVocab, format_offsets

V = GetokVocab(grid_size=10)
M1 = square(25, 54, 35, 64)
BOX1 = [0.25, 0.35, 0.55, 0.65]
Q3 = (1 - math.exp(-3 / 5)) - 0.02 * 3  # points quality of 3 well-spread points all inside
PERFECT = "<box><grid2,3><grid5,6></box><seg><grid3,4><grid4,5><grid3,5></seg>"


def ans(lines, think="It is the square."):
    return f"<think>{think}</think><answer>{chr(10).join(lines)}</answer>"


PROPOSAL = ans(["<box><grid2,3><grid5,6></box><seg><grid2,4><grid5,4><grid3,5><grid8,8><grid5,6><grid4,4></seg>"])


def approx(x):
    return pytest.approx(x, abs=1e-9)


def test_swift_orms(monkeypatch):
    names = sr.register()
    assert {"getok_grid", "getok_format", "getok_box", "getok_points", "getok_refine"} <= set(names) <= set(orms)
    monkeypatch.setenv("GETOK_GRID_SIZE", "10")  # the one source of the run's grid size
    sr.configure()
    try:
        g = ground_truth([target(M1, BOX1)], extra={"proposal": PROPOSAL})
        completions = [ans([PERFECT]), "nonsense"]
        assert orms["getok_grid"]()(completions, solution=[g, g]) == [approx(2 + Q3), approx(0.5)]
        assert orms["getok_points"]()(completions, ground_truth=[g, g]) == [approx(Q3), 0.0]
        with pytest.raises(ValueError):
            orms["getok_mask"]()  # no decoder configured
        msgs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": PROPOSAL},
                 {"role": "user", "content": "refine"}, {"role": "assistant", "content": "c"}]]
        off = format_offsets([[(0, 0)] * 8], V)
        assert orms["getok_refine_format"]()([off], solution=[ground_truth([target(M1, BOX1)])],
                                             messages=msgs) == [1.0]
        assert orms["getok_refine_box"]()([off], solution=[g]) == [1.0]  # proposal from extra
    finally:
        sr.configure()
