"""/preset and /defaults: per-server presets (Manage Server to save or delete, anyone to use) and per-user
defaults."""

from __future__ import annotations

import pytest

from tests.bot.harness import png
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.timeout(60)


def guild_of(fake: FakeDiscord):
    return next(iter(fake.world.guilds.values()))


async def test_saving_and_deleting_need_manage_server(fake: FakeDiscord, bot) -> None:
    for sub, options in (("save", {"name": "ink", "steps": 4}), ("delete", {"name": "ink"})):
        rec = await fake.dispatch_slash("preset", options, subcommand=sub)
        ack = await rec.wait_ack(2)
        assert ack.ephemeral and "Manage Server permission" in ack.content
    assert await bot.services.store.presets.list(guild_of(fake).id) == []


async def test_preset_lifecycle(fake: FakeDiscord, bot, pipeline) -> None:
    """A manager saves; anyone lists, shows, autocompletes and uses it; a duplicate is refused; a manager deletes."""
    guild = guild_of(fake)
    owner = guild.owner_id
    save = await fake.dispatch_slash("preset", {"name": "Ink", "style_weight": 600, "blend_mode": "append",
                                                "size": "1:1 small"}, subcommand="save", user_id=owner)
    ack = await save.wait_ack(2)
    assert ack.ephemeral and ack.data["embeds"][0]["title"] == "Saved preset “Ink”"
    dup = await fake.dispatch_slash("preset", {"name": "ink", "steps": 3}, subcommand="save", user_id=owner)
    assert "already exists" in (await dup.wait_ack(2)).content
    listing = await fake.dispatch_slash("preset", {}, subcommand="list")
    assert "**Ink**" in (await listing.wait_ack(2)).data["embeds"][0]["description"]
    shown = await fake.dispatch_slash("preset", {"name": "ink"}, subcommand="show")
    fields = {f["name"]: f["value"] for f in (await shown.wait_ack(2)).data["embeds"][0]["fields"]}
    assert fields["Blend mode"] == "append" and fields["Size"].startswith("1:1 small")
    complete = await fake.dispatch_autocomplete("stylize", {"preset": "i"}, focused="preset")
    await complete.wait_ack(2)
    assert complete.choices == [{"name": "Ink", "value": "Ink"}]
    use = await fake.dispatch_slash("preset", {"name": "Ink", "image": fake.add_attachment(png(), "r.png",
                                                                                           "image/png")},
                                    subcommand="use")
    await use.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
    (request,) = pipeline.requests
    assert request.blend_mode.value == "append" and (request.width, request.height) == (512, 512)
    gone = await fake.dispatch_slash("preset", {"name": "INK"}, subcommand="delete", user_id=owner)
    assert "Deleted" in (await gone.wait_ack(2)).content
    assert await bot.services.store.presets.list(guild.id) == []


async def test_saving_without_settings_uses_your_defaults(fake: FakeDiscord, bot) -> None:
    owner = guild_of(fake).owner_id
    empty = await fake.dispatch_slash("preset", {"name": "x"}, subcommand="save", user_id=owner)
    assert "at least one setting" in (await empty.wait_ack(2)).content
    await bot.services.store.defaults.set(owner, {"tokens": "image", "seed": 4})
    saved = await fake.dispatch_slash("preset", {"name": "mine"}, subcommand="save", user_id=owner)
    await saved.wait_ack(2)
    assert (await bot.services.store.presets.get(guild_of(fake).id, "mine")).params == {"tokens": "image"}


async def test_bad_preset_name_is_refused(fake: FakeDiscord, bot) -> None:
    rec = await fake.dispatch_slash("preset", {"name": "a\u200bb", "steps": 3}, subcommand="save",
                                    user_id=guild_of(fake).owner_id)
    assert "control characters" in (await rec.wait_ack(2)).content


async def test_defaults_show_set_reset(fake: FakeDiscord, bot) -> None:
    show = await fake.dispatch_slash("defaults", {}, subcommand="show")
    ack = await show.wait_ack(2)
    fields = {f["name"]: f["value"] for f in ack.data["embeds"][0]["fields"]}
    assert ack.ephemeral and fields["Style weight"] == "100.0" and fields["Blend mode"] == "pool"
    nothing = await fake.dispatch_slash("defaults", {}, subcommand="set")
    assert "at least one setting" in (await nothing.wait_ack(2)).content
    changed = await fake.dispatch_slash("defaults", {"style_weight": 300, "size": "16:9", "private": True},
                                        subcommand="set")
    await changed.wait_ack(2)
    stored = await bot.services.store.defaults.get(fake.default_user.id)
    assert (stored["style_weight"], stored["width"], stored["height"], stored["private"]) == (300, 1360, 768, True)
    one = await fake.dispatch_slash("defaults", {"setting": "size"}, subcommand="reset")
    await one.wait_ack(2)
    assert set(await bot.services.store.defaults.get(fake.default_user.id)) == {"style_weight", "private"}
    everything = await fake.dispatch_slash("defaults", {}, subcommand="reset")
    await everything.wait_ack(2)
    assert await bot.services.store.defaults.get(fake.default_user.id) == {}


async def test_private_default_makes_stylize_ephemeral(fake: FakeDiscord, bot) -> None:
    await bot.services.store.defaults.set(fake.default_user.id, {"private": True})
    rec = await fake.dispatch_slash("stylize", {"image": fake.add_attachment(png(), "r.png", "image/png"),
                                                "size": "1:1 small"})
    assert (await rec.wait_ack(2)).ephemeral
    await rec.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
