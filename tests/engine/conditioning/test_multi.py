"""engine.conditioning.multi: each mode's combination of several references, against its formula."""

from __future__ import annotations

import pytest
import torch

from engine.conditioning.append import blend_append
from engine.conditioning.multi import append_several, mean_caption, split_count

D = 16


def _rows(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_mean_caption_is_the_weighted_mean():
    a, b, c = _rows(7, 1), _rows(7, 2), _rows(7, 3)
    torch.testing.assert_close(mean_caption([a, b, c], [2, 1, 1]), 0.5 * a + 0.25 * b + 0.25 * c)
    torch.testing.assert_close(mean_caption([a], [5]), a)


def test_mean_caption_of_different_lengths_takes_the_heaviest_length():
    a, b = _rows(5, 1), _rows(9, 2)
    out = mean_caption([a, b], [1, 3])
    assert out.shape == (9, D)
    # a linear resample of a constant sequence is that constant: the mean of constants is known exactly
    ones, twos = torch.ones(5, D), torch.full((9, D), 2.0)
    torch.testing.assert_close(mean_caption([ones, twos], [1, 3]), torch.full((9, D), 0.25 + 1.5))


@pytest.mark.parametrize("total, weights, caps, expected", [
    (12, [2, 1], [100, 100], [8, 4]),
    (10, [1, 1, 1], [100, 100, 100], [4, 3, 3]),  # largest remainder, ties to the earlier
    (12, [2, 1], [3, 100], [3, 9]),  # a capped reference's rows go to the other
    (12, [1, 0], [100, 100], [12, 0]),
    (50, [1, 1], [10, 20], [10, 20]),  # never more than the images have
    (0, [1, 1], [5, 5], [0, 0]),
])
def test_split_count(total, weights, caps, expected):
    counts = split_count(total, weights, caps)
    assert counts == expected
    assert sum(counts) == min(total, sum(caps)) and all(c <= cap for c, cap in zip(counts, caps))


def test_append_several_splits_the_rows_by_weight():
    text, a, b = _rows(6, 0), _rows(12, 1), _rows(12, 2)  # 4x3 image grids
    out = append_several([(a, (4, 3)), (b, (4, 3))], text, 0.75, [2, 1], 8)  # round(0.75*8) = 6 rows: 4 + 2
    assert out.shape == (6 + 6, D)
    assert torch.equal(out[:6], text)
    # each part is what append of that reference alone gives with its share as the count (alpha = count / K)
    torch.testing.assert_close(out[6:10], blend_append(a, text, 4 / 8, torch.ones(12, dtype=torch.bool), 8,
                                                       image_grid=(4, 3))[6:])
    torch.testing.assert_close(out[10:], blend_append(b, text, 2 / 8, torch.ones(12, dtype=torch.bool), 8,
                                                      image_grid=(4, 3))[6:])


def test_append_several_at_alpha_zero_is_the_text():
    text = _rows(6, 0)
    out = append_several([(_rows(12, 1), (4, 3)), (_rows(12, 2), (4, 3))], text, 0.0, [1, 1], 8)
    assert torch.equal(out, text)


def test_append_several_scales_rows_to_the_row_scale():
    text = _rows(6, 0)
    out = append_several([(_rows(12, 1) * 7, (4, 3)), (_rows(12, 2) * 0.1, (4, 3))], text, 1.0, [1, 1], 8,
                         row_scale=2.5)
    rms = out[6:].pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 2.5))


@pytest.mark.parametrize("weights", [[1], [1, 2, 3], [0, 0], [-1, 2]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights"):
        mean_caption([_rows(3, 1), _rows(3, 2)], weights)
