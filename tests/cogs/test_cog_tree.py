"""The command tree built offline by create_bot: every command and option, with descriptions, bounds, choices,
autocomplete and permissions, exactly as it would be synced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.client import command_payload, create_bot
from bot.params import BLEND_MODES, SIZES
from engine.sweep.presets import preset_names
from engine.types import style_weight_to_alpha
from tests.bot.harness import make_settings

ROOT = Path(__file__).resolve().parents[2]
SEED_SWEEPS = ["alpha", "layer", "token", "normalization", "outlier", "full", "vl_only_vs_qwen3", "style_transfer",
               "blend_comparison", "strength_sweep", "think_comparison"]
MANAGE_GUILD = 1 << 5


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    import asyncio

    async def build() -> list[dict[str, Any]]:
        bot = create_bot(make_settings(tmp_path_factory.mktemp("tree")))
        await bot.load_cogs()
        return command_payload(bot.tree)

    return asyncio.run(build())


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def walk(options: list[dict[str, Any]], path: str):
    for option in options:
        yield f"{path} {option['name']}", option
        yield from walk(option.get("options", []), f"{path} {option['name']}")


def test_every_command_is_there(payload) -> None:
    """The nine top-level commands and their subcommands."""
    commands = by_name(payload)
    assert set(commands) == {"stylize", "blendmode", "sweep", "defaults", "preset", "queue", "admin", "style",
                             "describe"}
    subs = {name: sorted(o["name"] for o in c.get("options", []) if o["type"] in (1, 2))
            for name, c in commands.items()}
    assert subs["blendmode"] == ["compare", "info", "set"]
    assert subs["defaults"] == ["reset", "set", "show"]
    assert subs["preset"] == ["delete", "list", "save", "show", "use"]
    assert subs["queue"] == ["cancel", "show"]
    assert subs["style"] == ["forget", "list", "show"]
    assert [o["name"] for o in commands["describe"]["options"]] == ["image"]
    assert commands["describe"]["options"][0]["type"] == 11 and commands["describe"]["options"][0]["required"]
    assert subs["admin"] == ["cache", "cancel", "pause", "queue", "reload", "resume", "status", "sync"]
    cache = by_name(commands["admin"]["options"])["cache"]
    assert sorted(o["name"] for o in cache["options"]) == ["clear", "stats"]


def test_descriptions_everywhere_within_limits(payload) -> None:
    """Every command and option has a description of 1-100 characters; names are valid."""
    for command in payload:
        assert 1 <= len(command["description"]) <= 100, command["name"]
        for path, option in walk(command.get("options", []), command["name"]):
            assert 1 <= len(option["description"]) <= 100, path
            assert option["name"] == option["name"].lower() and len(option["name"]) <= 32, path
            assert len(option.get("choices", [])) <= 25, path
            assert all(len(c["name"]) <= 100 for c in option.get("choices", [])), path
        assert len(command.get("options", [])) <= 25


def test_stylize_options(payload) -> None:
    """/stylize: an attachment or a style code (neither is required by Discord: the bot asks for one of them);
    ranges, choices and the preset autocomplete."""
    options = by_name(by_name(payload)["stylize"]["options"])
    assert list(options) == ["image", "prompt", "style_weight", "blend_mode", "layer", "tokens", "seed", "steps",
                             "size", "strength", "style_schedule", "append_selection", "preset", "private", "style",
                             "image2", "image3", "image4", "weights", "negative_image", "negative_style"]
    assert options["image"]["type"] == 11 and options["style"]["type"] == 3
    assert all(options[name]["type"] == 11 for name in ("image2", "image3", "image4", "negative_image"))
    assert options["weights"]["type"] == 3 and options["weights"]["max_length"] == 60
    assert not any(o.get("required") for o in options.values())
    weight = options["style_weight"]
    assert (weight["type"], weight["min_value"], weight["max_value"]) == (4, 0, 1000)
    assert style_weight_to_alpha(weight["max_value"]) == 1.0
    assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 100)
    assert (options["seed"]["min_value"], options["seed"]["max_value"]) == (0, 2**32 - 1)
    assert (options["prompt"]["type"], options["prompt"]["min_length"], options["prompt"]["max_length"]) == (3, 1, 1500)
    assert options["layer"]["max_value"] == -1
    assert 0 < options["strength"]["min_value"] and options["strength"]["max_value"] == 1.0
    assert [c["value"] for c in options["blend_mode"]["choices"]] == [m.value for m in BLEND_MODES]
    assert [c["value"] for c in options["size"]["choices"]] == list(SIZES)
    assert {"1:1", "3:2", "2:3", "16:9", "9:16"} <= set(SIZES)
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in SIZES.values())
    assert {c["value"] for c in options["tokens"]["choices"]} == {"full", "text", "image", "image_no_markers"}
    assert options["preset"]["autocomplete"] is True
    assert options["private"]["type"] == 5
    assert [c["value"] for c in options["style_schedule"]["choices"]] == ["constant", "early", "late", "ramp",
                                                                          "ramp_down"]
    assert [c["value"] for c in options["append_selection"]["choices"]] == ["pool", "attention"]


def test_preset_names_autocomplete(payload) -> None:
    """Every option naming a server preset autocompletes from the server's presets."""
    preset = by_name(by_name(payload)["preset"]["options"])
    for sub in ("use", "show", "delete"):
        assert by_name(preset[sub]["options"])["name"]["autocomplete"] is True
    assert by_name(preset["save"]["options"])["name"].get("autocomplete") is not True


def test_sweep_options(payload) -> None:
    """/sweep offers every seed preset (and the engine's others) and value lists as text."""
    options = by_name(by_name(payload)["sweep"]["options"])
    presets = [c["value"] for c in options["preset"]["choices"]]
    assert presets == preset_names() and set(SEED_SWEEPS) <= set(presets)
    for name in ("alphas", "layers", "modes", "token_modes", "strengths", "seeds", "schedules", "selections"):
        assert options[name]["type"] == 3 and options[name]["max_length"] == 200


def test_admin_is_hidden_and_guild_only(payload) -> None:
    """/admin defaults to Manage Server (hidden from others) and only exists in servers."""
    commands = by_name(payload)
    assert int(commands["admin"]["default_member_permissions"]) == MANAGE_GUILD
    assert commands["admin"]["contexts"] == [0]
    assert all(c.get("default_member_permissions") is None for n, c in commands.items() if n != "admin")


def test_python_m_bot_commands_prints_the_same_json(payload, tmp_path: Path) -> None:
    """`python -m bot commands` works offline without a token and prints exactly the synced payload."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
    env["ZVL_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "bot", "commands"], cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == payload
