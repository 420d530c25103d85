"""bot.params: options -> resolved parameters -> StylizeRequest, and back from a stored record."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bot.jobs import nearby_alpha
from bot.params import (
    SIZES,
    GenerationOptions,
    build_request,
    defaults_from,
    fix_seed,
    preset_from,
    settings_defaults,
    size_of,
)
from bot.store import resolve_params
from engine.types import BlendMode, LayerWeight, StylizeRequest, TokenMode, style_weight_to_alpha
from tests.bot.harness import make_settings


@pytest.fixture
def defaults(tmp_path: Path) -> dict:
    return settings_defaults(make_settings(tmp_path, alpha=0.45, steps=7, width=768, height=768))


def test_settings_are_the_bottom_layer(defaults: dict) -> None:
    """Nothing given anywhere: the operator's settings decide (alpha shown as the matching style weight)."""
    resolved = resolve_params(GenerationOptions().request_layer(), {}, None, defaults)
    assert (resolved["alpha"], resolved["steps"], resolved["width"]) == (0.45, 7, 768)
    assert style_weight_to_alpha(resolved["style_weight"]) == pytest.approx(0.45)


def test_options_beat_user_defaults_beat_preset(defaults: dict) -> None:
    """Per key: the command, then the user's defaults, then the preset, then the settings."""
    options = GenerationOptions(style_weight=500, size="16:9")
    user = {"blend_mode": "adain", "steps": 12, "style_weight": 50}
    preset = {"steps": 20, "tokens": "image", "layer": -8}
    resolved = resolve_params(options.request_layer(), user, preset, defaults)
    assert resolved["style_weight"] == 500 and resolved["alpha"] == style_weight_to_alpha(500)
    assert (resolved["width"], resolved["height"]) == SIZES["16:9"]
    assert (resolved["blend_mode"], resolved["steps"], resolved["tokens"], resolved["layer"]) == ("adain", 12,
                                                                                                  "image", -8)


def test_build_request_and_record_round_trip(defaults: dict) -> None:
    """A request built from resolved parameters survives record() -> StylizeRequest.from_record (what a restart does)."""
    resolved = fix_seed(resolve_params({"layer": -6, "blend_mode": "append"}, {}, None, defaults))
    assert isinstance(resolved["seed"], int) and 0 <= resolved["seed"] < 2**32
    request = build_request(resolved, prompt="a fox", reference=None, strength=0.7)
    assert (request.blend_mode, request.tokens, request.seeds, request.strength) == (
        BlendMode.APPEND, TokenMode.FULL, (resolved["seed"],), 0.7)
    again = StylizeRequest.from_record(request.record())
    assert again == request
    mixed = request.replace(hidden_layer=(LayerWeight(-6, 0.7), LayerWeight(-8, 0.3)))
    assert StylizeRequest.from_record(mixed.record()).hidden_layer == mixed.hidden_layer


def test_fix_seed_keeps_a_given_seed() -> None:
    assert fix_seed({"seed": 42})["seed"] == 42


def test_size_of_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="size must be one of"):
        size_of("5:4")


def test_saved_settings_leave_out_seed_and_privacy(defaults: dict) -> None:
    """'Save as my defaults' / 'as server preset' keep the look, not the seed (nor privacy)."""
    resolved = fix_seed(resolve_params({"private": True, "seed": 9}, {}, None, defaults))
    assert "seed" not in defaults_from(resolved) and "private" not in defaults_from(resolved)
    assert "seed" not in preset_from(resolved) and preset_from(resolved)["style_weight"] == resolved["style_weight"]


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.3, 0.97, 1.0])
def test_nearby_alpha_is_close_and_in_range(alpha: float) -> None:
    rng = random.Random(1)
    for _ in range(50):
        new = nearby_alpha(alpha, rng)
        assert 0.01 <= new <= 1.0 and 0.0 < abs(new - alpha) <= 0.1 + 1e-9 or alpha == 0.0


def test_cooldown_starts_only_when_a_job_is_accepted() -> None:
    from discord import app_commands

    from bot.checks import Cooldowns

    now = [100.0]
    cooldowns = Cooldowns(3.0, clock=lambda: now[0])
    cooldowns.check(1)  # nothing accepted yet: no wait
    cooldowns.start(1)
    with pytest.raises(app_commands.CommandOnCooldown) as caught:
        cooldowns.check(1)
    assert caught.value.retry_after == pytest.approx(3.0)
    cooldowns.check(2)
    now[0] += 3.01
    cooldowns.check(1)
    assert Cooldowns(0).remaining(1) is None


def test_jobs_stored_before_schedules_replay_as_they_ran(defaults: dict) -> None:
    """A resolved dict without style_schedule / append_selection (an older job row) builds today's request."""
    resolved = fix_seed(resolve_params({}, {}, None, defaults))
    old = {k: v for k, v in resolved.items() if k not in ("style_schedule", "append_selection")}
    request = build_request(old, prompt="a fox", reference=None, strength=None)
    assert (request.style_schedule.value, request.append_selection.value) == ("constant", "pool")
    assert build_request(resolved, prompt="a fox", reference=None, strength=None) == request
