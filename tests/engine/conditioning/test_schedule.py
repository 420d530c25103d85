"""engine.conditioning.schedule: α(k) per step against the documented formulas."""

from __future__ import annotations

import pytest

from engine.conditioning.schedule import step_alpha, step_alphas
from engine.types import StyleSchedule


@pytest.mark.parametrize("steps", [1, 2, 5, 9])
def test_constant_is_alpha_at_every_step(steps):
    assert step_alphas("constant", 0.4, steps) == [0.4] * steps


def test_early_and_late_split_at_half_and_add_up_to_constant():
    # 9 steps: k < 4.5 is the first half, so k = 0..4 are early's and 5..8 late's
    assert step_alphas("early", 0.5, 9) == [0.5] * 5 + [0.0] * 4
    assert step_alphas("late", 0.5, 9) == [0.0] * 5 + [0.5] * 4
    assert step_alphas("early", 0.5, 4) == [0.5, 0.5, 0.0, 0.0]
    for n in (1, 2, 3, 8, 9):
        both = [e + late for e, late in zip(step_alphas("early", 0.3, n), step_alphas("late", 0.3, n))]
        assert both == pytest.approx(step_alphas("constant", 0.3, n))


def test_ramps_are_linear_between_zero_and_alpha():
    a, n = 0.6, 4
    assert step_alphas(StyleSchedule.RAMP, a, n) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert step_alphas("ramp_down", a, n) == pytest.approx([0.6, 0.4, 0.2, 0.0])
    # one step: the whole alpha (there is no "from 0" to go through)
    assert step_alphas("ramp", a, 1) == [a] and step_alphas("ramp_down", a, 1) == [a]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="style_schedule must be one of constant, early, late, ramp, ramp_down"):
        step_alpha("sometimes", 0.3, 0, 4)
    with pytest.raises(ValueError, match="step must be between 0 and steps - 1"):
        step_alpha("ramp", 0.3, 4, 4)
