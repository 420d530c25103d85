"""bot.store.defaults: resolve_params precedence, parameter validation, per-user defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.store import Store
from bot.store.defaults import USER_DEFAULT_KEYS, global_defaults, resolve_params, validate_params
from engine.types import LayerWeight, StylizeRequest

G = {"steps": 9, "blend_mode": "pool", "style_weight": 100.0, "alpha": 0.3, "seed": "random", "private": False}

# (name, request, user, preset, expected subset of the result)
PRECEDENCE = [
    ("globals only", {}, None, None, {"steps": 9, "blend_mode": "pool", "alpha": 0.3}),
    ("preset over globals", {}, None, {"steps": 20}, {"steps": 20}),
    ("user over preset", {}, {"steps": 12}, {"steps": 20}, {"steps": 12}),
    ("request over user", {"steps": 4}, {"steps": 12}, {"steps": 20}, {"steps": 4}),
    ("None means not set", {"steps": None}, {"steps": None}, {"steps": 20}, {"steps": 20}),
    ("per key, not per layer", {"steps": 4}, {"blend_mode": "adain"}, {"seed": 7}, {"steps": 4, "blend_mode": "adain",
                                                                                   "seed": 7, "private": False}),
    ("keys only in the request pass", {"prompt": "a fox"}, None, None, {"prompt": "a fox", "steps": 9}),
    ("falsy values count as set", {"private": False, "seed": 0}, {"private": True, "seed": 5}, None,
     {"private": False, "seed": 0}),
    ("style weight fills alpha", {"style_weight": 1000}, None, None, {"style_weight": 1000.0, "alpha": 1.0}),
    ("alpha fills style weight", {}, {"alpha": 0.0}, None, {"style_weight": 0.0, "alpha": 0.0}),
    ("strength resolves as one setting", {}, {"alpha": 0.6}, {"style_weight": 900.0},
     {"alpha": 0.6, "style_weight": pytest.approx(485.714, abs=1e-3)}),
    ("request style weight beats user alpha", {"style_weight": 0}, {"alpha": 0.9}, None,
     {"style_weight": 0.0, "alpha": 0.0}),
    ("preset strength beats global", {}, None, {"alpha": 0.5}, {"alpha": 0.5}),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "user", "preset", "expected"), [c[1:] for c in PRECEDENCE],
                         ids=[c[0] for c in PRECEDENCE])  # fmt: skip
def test_resolve_params_precedence(request_: dict, user: dict | None, preset: dict | None, expected: dict) -> None:
    """request > user default > preset > global default, key by key."""
    result = resolve_params(request_, user, preset, G)
    assert {k: result.get(k) for k in expected} == expected


def test_resolve_params_is_pure() -> None:
    """Inputs are not modified and mutable values are copied."""
    user = {"layer": [[-6, 1.0], [-2, 0.5]]}
    result = resolve_params({}, user, None, G)
    result["layer"][0][1] = 9.0
    assert user == {"layer": [[-6, 1.0], [-2, 0.5]]} and "layer" not in G
    assert "missing" not in resolve_params({"missing": None}, None, None, G)


def test_global_defaults_follow_the_engine() -> None:
    d, r = global_defaults(), StylizeRequest()
    assert d["alpha"] == r.alpha and d["steps"] == r.steps and d["layer"] == r.hidden_layer
    assert d["blend_mode"] == r.blend_mode.value and d["style_weight"] == 100.0 and d["seed"] == "random"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"colour": "red"}, "unknown default 'colour'"),
        ({"steps": 0}, "steps must be between 1 and 100"),
        ({"steps": 4.5}, "steps must be a whole number"),
        ({"alpha": 1.7}, "alpha must be between 0 and 1"),
        ({"style_weight": float("nan")}, "style_weight must be a finite number"),
        ({"blend_mode": "smear"}, "blend_mode must be one of"),
        ({"width": 1000}, "width must be a multiple of 16"),
        ({"seed": "lucky"}, "seed must be 'random' or a whole number"),
        ({"private": "yes"}, "private must be true or false"),
        ({"layer": 3}, "layer must be between -64 and -1"),
        ({"layer": [[-6]]}, r"\[layer, weight\] pairs"),
        ({"style_weight": 200, "alpha": 0.2}, "not both"),
    ],
)
def test_validate_params_names_the_problem(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_params(params, USER_DEFAULT_KEYS, what="default")


def test_validate_params_normalises() -> None:
    checked = validate_params(
        {"blend_mode": "ADAIN", "tokens": "Image", "layer": [LayerWeight(-6, 1), (-2, 0.5)], "seed": "Random",
         "style_weight": 250, "steps": None},
        USER_DEFAULT_KEYS,
    )  # fmt: skip
    assert checked == {"blend_mode": "adain", "tokens": "image", "layer": [[-6, 1.0], [-2, 0.5]], "seed": "random",
                       "style_weight": 250.0, "steps": None}  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "zvl.sqlite3")
    yield store
    await store.close()


async def test_user_defaults_get_set_reset(store: Store) -> None:
    """Partial updates merge, None removes a key, reset forgets some or all; users are separate."""
    assert await store.defaults.get(1) == {}
    assert await store.defaults.set(1, {"steps": 12, "blend_mode": "ADAIN"}) == {"steps": 12, "blend_mode": "adain"}
    assert await store.defaults.set(1, {"private": True, "steps": None}) == {"blend_mode": "adain", "private": True}
    assert await store.defaults.get(1) == {"blend_mode": "adain", "private": True}
    assert await store.defaults.get(2) == {}
    assert await store.defaults.reset(1, ["private"]) == {"blend_mode": "adain"}
    assert await store.defaults.reset(1) == {} and await store.defaults.get(1) == {}


async def test_style_weight_and_alpha_replace_each_other(store: Store) -> None:
    await store.defaults.set(1, {"alpha": 0.5})
    assert await store.defaults.set(1, {"style_weight": 300}) == {"style_weight": 300.0}
    assert await store.defaults.set(1, {"alpha": 0.1}) == {"alpha": 0.1}


async def test_bad_defaults_change_nothing(store: Store) -> None:
    await store.defaults.set(1, {"steps": 12})
    with pytest.raises(ValueError, match="unknown default 'target_std'"):
        await store.defaults.set(1, {"steps": 20, "target_std": 50.0})  # presets may, user defaults may not
    assert await store.defaults.get(1) == {"steps": 12}


async def test_effective_settings_from_the_store(store: Store) -> None:
    """The documented chain end to end: stored user default and preset feed resolve_params."""
    await store.defaults.set(1, {"steps": 12})
    await store.presets.save(10, "fast", {"steps": 4, "blend_mode": "adain"}, created_by=2)
    preset = await store.presets.use(10, "FAST")
    result = resolve_params({"seed": 3}, await store.defaults.get(1), preset, global_defaults())
    assert (result["steps"], result["blend_mode"], result["seed"]) == (12, "adain", 3)
