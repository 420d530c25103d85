"""Result and status buttons: reroll, vary, save as defaults, save as preset (modal), delete, cancel; refusals for
other people; and buttons that still work after a restart."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from bot.store import JobStatus
from engine.media.images import read_png_metadata
from tests.bot.harness import FakePipeline, dispatch_modal_submit, make_settings, png, running_bot, wait_for
from tests.fakediscord import FakeDiscord, InteractionRecord

pytestmark = pytest.mark.timeout(60)
MANAGE_MESSAGES = 1 << 13


async def finished(fake: FakeDiscord, options: dict | None = None) -> tuple[InteractionRecord, str]:
    """Run /stylize to the end; returns the interaction and the job id."""
    ref = fake.add_attachment(png(), "ref.png", "image/png")
    rec = await fake.dispatch_slash("stylize", {"image": ref, "size": "1:1 small", **(options or {})})
    await rec.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
    message = fake.message(rec.original_message_id)
    return rec, message["embeds"][0]["footer"]["text"].removeprefix("job ")


async def press(fake: FakeDiscord, rec: InteractionRecord, action: str, job_id: str, **kw) -> InteractionRecord:
    return await fake.dispatch_component(rec.original_message_id, f"zvl:{action}:{job_id}", **kw)


async def status_becomes(bot, job_id: str, status: JobStatus, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        row = await bot.services.store.jobs.get(job_id)
        if row is not None and row.status is status:
            return True
        await asyncio.sleep(0.02)
    return False


def result_file(rec: InteractionRecord):
    return next(f for f in rec.files if f.filename.startswith("zvl-"))


async def test_reroll_makes_a_new_job_with_a_new_seed(fake: FakeDiscord, bot) -> None:
    rec, job_id = await finished(fake, {"seed": 5, "style_weight": 300})
    again = await press(fake, rec, "reroll", job_id)
    assert (await again.wait_ack(2)).type == 5
    await again.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
    before, after = (read_png_metadata(result_file(r).data)["params"] for r in (rec, again))
    assert after["seeds"] != [5] and after["alpha"] == before["alpha"]
    new_id = fake.message(again.original_message_id)["embeds"][0]["footer"]["text"].removeprefix("job ")
    row = await bot.services.store.jobs.get(new_id)
    assert row.params["source_job"] == job_id and row.owner_id == fake.default_user.id


async def test_vary_keeps_the_seed_and_nudges_alpha(fake: FakeDiscord, bot) -> None:
    rec, job_id = await finished(fake, {"seed": 5})
    again = await press(fake, rec, "vary", job_id)
    await again.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
    before, after = (read_png_metadata(result_file(r).data)["params"] for r in (rec, again))
    assert after["seeds"] == [5] and 0 < abs(after["alpha"] - before["alpha"]) <= 0.1 + 1e-9


async def test_someone_else_gets_a_private_refusal(fake: FakeDiscord, bot) -> None:
    """Every button refuses a stranger with an ephemeral message and changes nothing."""
    rec, job_id = await finished(fake)
    guild = next(iter(fake.world.guilds.values()))
    stranger = fake.add_user("stranger")
    fake.add_member(guild.id, stranger.id)
    for action in ("reroll", "vary", "defaults", "preset", "delete"):
        other = await press(fake, rec, action, job_id, user_id=stranger.id)
        ack = await other.wait_ack(2)
        assert ack.type == 4 and ack.ephemeral and "Only the person who asked" in ack.content
    assert fake.message(rec.original_message_id)
    assert await bot.services.store.defaults.get(stranger.id) == {}
    assert len(await bot.services.store.jobs.list_for_user(fake.default_user.id)) == 1


async def test_a_moderator_may_delete(fake: FakeDiscord, bot) -> None:
    rec, job_id = await finished(fake)
    guild = next(iter(fake.world.guilds.values()))
    mod = fake.add_user("mod")
    fake.add_member(guild.id, mod.id, roles=[fake.add_role(guild.id, "mods", MANAGE_MESSAGES).id])
    deleted = await press(fake, rec, "delete", job_id, user_id=mod.id)
    await deleted.wait_ack(2)
    await wait_for(lambda: rec.original_message_id in fake.world.deleted_messages, what="the deletion")


async def test_owner_deletes_and_saves_defaults(fake: FakeDiscord, bot) -> None:
    rec, job_id = await finished(fake, {"style_weight": 420, "blend_mode": "append", "seed": 3})
    saved = await press(fake, rec, "defaults", job_id)
    ack = await saved.wait_ack(2)
    assert ack.ephemeral and ack.data["embeds"][0]["title"] == "Saved as your defaults"
    stored = await bot.services.store.defaults.get(fake.default_user.id)
    assert stored["style_weight"] == 420 and stored["blend_mode"] == "append" and "seed" not in stored
    await (await press(fake, rec, "delete", job_id)).wait_ack(2)
    await wait_for(lambda: rec.original_message_id in fake.world.deleted_messages, what="the deletion")


async def test_save_as_preset_needs_manage_server_then_asks_a_name(fake: FakeDiscord, bot) -> None:
    rec, job_id = await finished(fake, {"blend_mode": "adain_per_dim"})
    refused = await press(fake, rec, "preset", job_id)
    assert "Manage Server" in (await refused.wait_ack(2)).content
    guild = next(iter(fake.world.guilds.values()))
    fake.world.guilds[guild.id].owner_id = fake.default_user.id  # the requester now manages the server
    asked = await press(fake, rec, "preset", job_id)
    assert (await asked.wait_ack(2)).type == 9 and asked.modal["title"] == "Save as server preset"
    submitted = await dispatch_modal_submit(fake, rec.original_message_id, asked.modal["custom_id"], {
        asked.modal["components"][0]["components"][0]["custom_id"]: "Dreamy"})
    ack = await submitted.wait_ack(2)
    assert ack.ephemeral and "Dreamy" in ack.data["embeds"][0]["title"]
    preset = await bot.services.store.presets.get(guild.id, "dreamy")
    assert preset.params["blend_mode"] == "adain_per_dim" and "seed" not in preset.params


async def test_cancel_button_stops_a_running_job(fake: FakeDiscord, tmp_path: Path) -> None:
    gate = threading.Event()
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(gate=gate)) as bot:
        rec = await fake.dispatch_slash("stylize", {"image": fake.add_attachment(png(), "r.png", "image/png"),
                                                    "size": "1:1 small"})
        await rec.wait_until(lambda r: len(r.edits) >= 1)
        custom_id = rec.edits[0].data["components"][0]["components"][0]["custom_id"]
        pressed = await fake.dispatch_component(rec.original_message_id, custom_id)
        assert (await pressed.wait_ack(2)).content == "Cancelled."
        await rec.wait_until(lambda r: any("Cancelled" in (q.content or "") for q in r.edits))
        job_id = custom_id.rsplit(":", 1)[1]
        assert await status_becomes(bot, job_id, JobStatus.CANCELLED)
        assert fake.message(rec.original_message_id)["components"] == []
        gate.set()


async def test_buttons_work_after_a_restart(fake: FakeDiscord, tmp_path: Path) -> None:
    """Job parameters come from the jobs table and the reference from its stored PNG."""
    settings = make_settings(tmp_path, fake)
    async with running_bot(settings):
        rec, job_id = await finished(fake, {"seed": 77, "prompt": "a lighthouse"})
    pipeline = FakePipeline()
    async with running_bot(settings, pipeline):
        again = await press(fake, rec, "reroll", job_id)
        await again.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
    (request,) = pipeline.requests
    assert request.prompt == "a lighthouse" and request.seeds != (77,) and request.reference.size == (64, 48)


async def test_a_missing_job_is_reported(fake: FakeDiscord, bot) -> None:
    """A button whose job row is gone (a database reset) answers so, privately."""
    rec, job_id = await finished(fake)
    await bot.services.store.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    gone = await press(fake, rec, "reroll", job_id)
    assert "no longer exists" in (await gone.wait_ack(2)).content
