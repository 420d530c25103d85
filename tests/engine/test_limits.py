"""engine.limits: every bound accepts its ends and refuses one step outside them, wrong types and NaN, with a message
naming the parameter and the range. The expected ranges are written out here, independently of the table."""

from __future__ import annotations

import pytest

from engine.limits import LIMITS, Bound

#: name -> (lo, hi, the smallest step outside each end, kind), as issue 12 and the engine's documentation state them.
EXPECTED = {
    "style_weight": (0, 1000, 1, float),
    "alpha": (0.0, 1.0, 0.01, float),
    "layer": (-64, -1, 1, int),
    "layer_weight": (0, 1000, 1, float),
    "seed": (0, 2**32 - 1, 1, int),
    "steps": (1, 100, 1, int),
    "strength": (0.05, 1.0, 0.01, float),
    "width": (16, 2048, 16, int),
    "height": (16, 2048, 16, int),
    "guidance_scale": (0.0, 20.0, 0.5, float),
    "shift": (0.0, 20.0, 0.5, float),
    "target_std": (0.0, 10000.0, 1, float),
    "outlier_threshold": (1.0, 10000.0, 1, float),
    "append_tokens": (1, 1024, 1, int),
}
OPEN_BELOW = {"shift", "target_std", "outlier_threshold"}


def test_the_table_holds_exactly_the_documented_bounds() -> None:
    assert set(LIMITS) == set(EXPECTED) | {"prompt"}
    for name, (lo, hi, _step, kind) in EXPECTED.items():
        bound = LIMITS[name]
        assert (bound.name, bound.lo, bound.hi, bound.kind, bound.lo_open) == (name, lo, hi, kind, name in OPEN_BELOW)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ends_are_accepted_and_one_step_outside_is_refused(name: str) -> None:
    lo, hi, step, kind = EXPECTED[name]
    bound = LIMITS[name]
    assert bound.check(hi) == hi and isinstance(bound.check(hi), kind)
    if name in OPEN_BELOW:
        assert bound.check(lo + step) == lo + step
        refused_low = lo
    else:
        assert bound.check(lo) == lo
        refused_low = lo - step
    for bad in (refused_low, hi + step):
        with pytest.raises(ValueError, match=rf"^{name} must be .*{bound.describe()}.*; got {bad!r}$"):
            bound.check(bad)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("bad", ["5", None, True, [1], float("nan"), float("inf")])
def test_wrong_types_and_non_finite_numbers_are_refused(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        LIMITS[name].check(bad)


def test_messages_name_the_option_and_the_range() -> None:
    with pytest.raises(ValueError) as info:
        LIMITS["steps"].check(1000)
    assert str(info.value) == "steps must be between 1 and 100; got 1000"
    with pytest.raises(ValueError) as info:
        LIMITS["seed"].check(2**32, "seeds")
    assert str(info.value) == "seeds must be between 0 and 4294967295; got 4294967296"
    with pytest.raises(ValueError) as info:
        LIMITS["shift"].check(0)
    assert str(info.value) == "shift must be greater than 0 and at most 20; got 0"
    with pytest.raises(ValueError) as info:
        LIMITS["steps"].check(2.5)
    assert str(info.value) == "steps must be a whole number between 1 and 100; got 2.5"


def test_integer_bounds_refuse_fractions_and_float_bounds_accept_integers() -> None:
    assert LIMITS["style_weight"].check(250) == 250.0 and isinstance(LIMITS["style_weight"].check(250), float)
    with pytest.raises(ValueError, match="whole number"):
        LIMITS["seed"].check(3.0)


def test_sizes_must_be_multiples_of_16() -> None:
    assert LIMITS["width"].check(1248) == 1248
    with pytest.raises(ValueError, match=r"^height must be a multiple of 16; got 1000$"):
        LIMITS["height"].check(1000)
    assert LIMITS["width"].describe() == "between 16 and 2048, a multiple of 16"


def test_prompt_length_bounds() -> None:
    bound = LIMITS["prompt"]
    assert bound.check("x") == "x" and bound.check("é" * 1500) == "é" * 1500
    for bad in ("", "x" * 1501):
        with pytest.raises(ValueError, match=rf"^prompt must be 1 to 1500 characters long; got {len(bad)} characters$"):
            bound.check(bad)
    with pytest.raises(ValueError, match="^prompt must be text"):
        bound.check(5)


def test_membership_and_a_custom_bound() -> None:
    bound = Bound("ratio", float, 0.5, 2.0)
    assert 1 in bound and 0.5 in bound and 2.5 not in bound and "1" not in bound
    assert bound.describe() == "between 0.5 and 2"
