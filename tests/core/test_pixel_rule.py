"""One pixel rule (SPEC §1, ``codec.coords.point_pixel``): the GRPO reward, the evaluation metric,
the region decoder and the proposals' grid pixels put every decoded cell centre on the same pixel,
the one exact arithmetic gives: col = floor((2x + 1) W / (2n)), row likewise.

Grid sizes that are not powers of two put cell centres exactly on pixel edges for many image
sizes (n = 10, W = 180, cell 3: 63.0, which u * W computes as 62.99999999999999): the case where
the reward and the metric used to disagree.
"""

import numpy as np
import pytest
from testkit import ground_truth, target

from getok_core import GetokVocab
from getok_core.codec.coords import point_pixel, points_pixels
from getok_core.evaluation.metrics import point_accuracy
from getok_core.prepare.proposals import grid_pixels
from getok_core.rewards import score_grid_batch

#: (grid size n, image (W, H)): the issue's case, then odd sizes that put many centres on edges.
#: Each W puts some centres exactly on a pixel edge ((2x + 1) W divisible by 2n); each H is odd.
CASES = [(10, (180, 180)), (12, (56, 37)), (24, (112, 77)), (40, (240, 131)), (44, (136, 311)),
         (48, (160, 97))]


def exact_pixels(n: int, size) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every cell centre, row-major (k = y n + x), in integer arithmetic."""
    w, h = size
    ys, xs = np.divmod(np.arange(n * n), n)
    return ((2 * ys + 1) * h) // (2 * n), ((2 * xs + 1) * w) // (2 * n)


def centres(n: int) -> np.ndarray:
    vocab = GetokVocab(grid_size=n)
    return np.array([vocab.cell_point((k % n, k // n)) for k in range(n * n)])


@pytest.mark.parametrize("n,size", CASES)
def test_every_cell_centre_lands_on_the_exact_pixel(n, size):
    rows, cols = exact_pixels(n, size)
    uv = centres(n)
    assert [point_pixel(p, size) for p in uv] == list(zip(rows.tolist(), cols.tolist()))
    r2, c2 = points_pixels(uv, size)
    assert np.array_equal(r2, rows) and np.array_equal(c2, cols)
    r3, c3 = grid_pixels(size, n)  # the pixel SAM / region proposals are prompted at
    assert np.array_equal(r3, rows) and np.array_equal(c3, cols)
    # the cases are chosen so that the tolerance matters: some centres sit exactly on an edge
    assert (((2 * np.arange(n) + 1) * size[0]) % (2 * n) == 0).any()


@pytest.mark.parametrize("n,size", CASES)
def test_reward_and_metric_hit_the_same_pixel(n, size):
    """For every cell: a one-pixel mask on the exact pixel is hit by both the reward's ``points``
    component and ``point_accuracy``; the same mask one pixel to the left (or up) is missed by both."""
    w, h = size
    vocab = GetokVocab(grid_size=n)
    rows, cols = exact_pixels(n, size)
    responses, points, gts, masks, expect = [], [], [], [], []
    for k in range(n * n):
        x, y = k % n, k // n
        text = f"<answer><seg><grid{x},{y}></seg></answer>"
        for dr, dc, hit in ((0, 0, True), (0, -1, False), (-1, 0, False)):
            r, c = rows[k] + dr, cols[k] + dc
            if r < 0 or c < 0:
                continue
            m = np.zeros((h, w), bool)
            m[r, c] = True
            responses.append(text)
            points.append([vocab.cell_point((x, y))])
            gts.append(ground_truth([target(mask=m)], size=size, image_key=f"px-{n}-{k}"))
            masks.append(m)
            expect.append(hit)
    results = score_grid_batch(responses, gts, vocab)
    reward_hit = [res.components["points"] > 0 for res in results]
    metric = point_accuracy(points, masks)
    metric_hit = [s == 1.0 for s in metric["per_sample"]]
    assert reward_hit == expect
    assert metric_hit == expect
