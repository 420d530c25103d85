"""bot.store.presets: name rules, case-insensitive uniqueness, overwrite, usage count, prefix listing."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.store import Store
from bot.store.presets import InvalidPresetName, PresetExistsError, validate_preset_name

GUILD, OTHER_GUILD = 111, 222


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "zvl.sqlite3")
    yield store
    await store.close()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "can't be empty"),
        ("   \t ", "can't be empty"),
        ("x" * 33, "at most 32 characters; got 33"),
        ("two\nlines", r"control characters or line breaks \(found U\+000A\)"),
        ("tab\there", r"U\+0009"),
        ("nul\x00", r"U\+0000"),
        ("zero\u200bwidth", r"U\+200B"),  # format character (Cf)
        ("rtl\u202eoverride", r"U\+202E"),
        ("para\u2029sep", r"U\+2029"),
    ],
)
def test_bad_names_get_clear_errors(name: str, message: str) -> None:
    with pytest.raises(InvalidPresetName, match=message):
        validate_preset_name(name)


def test_good_names_are_stripped() -> None:
    assert validate_preset_name("  Water colour ✿ ") == "Water colour ✿"
    assert validate_preset_name("x" * 32) == "x" * 32
    assert issubclass(InvalidPresetName, ValueError)


async def test_save_get_show(store: Store) -> None:
    when = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
    saved = await store.presets.save(GUILD, "  Watercolor ", {"blend_mode": "ADAIN", "steps": 8}, 5, now=when)
    assert (saved.name, saved.params, saved.created_by, saved.created_at, saved.uses) == (
        "Watercolor", {"blend_mode": "adain", "steps": 8}, 5, when, 0)  # fmt: skip
    assert await store.presets.get(GUILD, "WATERCOLOR") == saved
    assert await store.presets.show(GUILD, "watercolor ") == saved
    assert await store.presets.get(OTHER_GUILD, "watercolor") is None


async def test_names_are_unique_per_guild_ignoring_case(store: Store) -> None:
    await store.presets.save(GUILD, "Watercolor", {"steps": 8}, 5)
    with pytest.raises(PresetExistsError, match="'Watercolor' already exists"):
        await store.presets.save(GUILD, "WATERCOLOR", {"steps": 9}, 6)
    await store.presets.save(OTHER_GUILD, "watercolor", {"steps": 9}, 6)  # another guild is fine
    assert (await store.presets.get(GUILD, "watercolor")).params == {"steps": 8}


async def test_overwrite_replaces(store: Store) -> None:
    await store.presets.save(GUILD, "Watercolor", {"steps": 8}, 5)
    await store.presets.use(GUILD, "watercolor")
    replaced = await store.presets.save(GUILD, "watercolour".replace("u", ""), {"alpha": 0.5}, 6, overwrite=True)
    assert (replaced.name, replaced.params, replaced.created_by, replaced.uses) == ("watercolor", {"alpha": 0.5}, 6, 0)
    assert len(await store.presets.list(GUILD)) == 1


async def test_use_counts_and_returns_params(store: Store) -> None:
    await store.presets.save(GUILD, "Fast", {"steps": 4}, 5)
    assert await store.presets.use(GUILD, "fast") == {"steps": 4}
    assert await store.presets.use(GUILD, "FAST") == {"steps": 4}
    preset = await store.presets.get(GUILD, "fast")
    assert preset.uses == 2 and preset.last_used_at is not None
    assert await store.presets.use(GUILD, "missing") is None


async def test_list_is_a_case_insensitive_prefix_search_capped_at_25(store: Store) -> None:
    for i in range(30):
        await store.presets.save(GUILD, f"Style{i:02d}", {"steps": 4}, 5)
    await store.presets.save(GUILD, "other", {"steps": 4}, 5)
    await store.presets.save(OTHER_GUILD, "style-elsewhere", {"steps": 4}, 5)
    names = [p.name for p in await store.presets.list(GUILD, "sTyLe", limit=100)]
    assert len(names) == 25 and names[0] == "Style00" and names == sorted(names)
    assert [p.name for p in await store.presets.list(GUILD, "style1", limit=3)] == ["Style10", "Style11", "Style12"]
    assert [p.name for p in await store.presets.list(GUILD, "oth")] == ["other"]
    assert await store.presets.list(GUILD, "%") == [] and await store.presets.list(GUILD, "_") == []


async def test_delete(store: Store) -> None:
    await store.presets.save(GUILD, "Gone", {"steps": 4}, 5)
    assert await store.presets.delete(GUILD, "GONE") is True
    assert await store.presets.delete(GUILD, "gone") is False
    assert await store.presets.get(GUILD, "gone") is None


async def test_preset_params_are_validated(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown preset parameter 'private'"):
        await store.presets.save(GUILD, "p", {"private": True}, 5)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        await store.presets.save(GUILD, "p", {"alpha": 2}, 5)
    saved = await store.presets.save(GUILD, "p", {"target_std": 50, "fit_mode": "TRUNCATE", "steps": None}, 5)
    assert saved.params == {"target_std": 50.0, "fit_mode": "truncate"}
