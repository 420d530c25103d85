"""/queue (own jobs, positions, ETA, cancel) and /admin (bot admins only: owners, the app owner, the admin role)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.bot.harness import FakePipeline, make_settings, png, running_bot
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.timeout(60)


def stylize(fake: FakeDiscord, **kw):
    return fake.dispatch_slash("stylize", {"image": fake.add_attachment(png(), "r.png", "image/png"),
                                           "size": "1:1 small", "prompt": "held"}, **kw)


async def test_queue_show_and_cancel(fake: FakeDiscord, tmp_path: Path) -> None:
    gate = threading.Event()
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(gate=gate)) as bot:
        first, second = await stylize(fake), await stylize(fake)
        for rec in (first, second):
            await rec.wait_until(lambda r: len(r.edits) >= 1)
        shown = await fake.dispatch_slash("queue", {}, subcommand="show")
        ack = await shown.wait_ack(2)
        text = ack.data["embeds"][0]["description"]
        assert ack.ephemeral and "running" in text and "#1 in line" in text and "about" in text
        labels = [c["label"] for c in ack.data["components"][0]["components"]]
        assert labels == ["Cancel running", "Cancel #1"]
        active = await bot.services.worker.jobs_for(fake.default_user.id)
        queued_id = next(job.id for job, pos, _eta in active if pos == 1)
        stranger = fake.add_user("stranger")
        fake.add_member(first.guild_id, stranger.id)
        theirs = await fake.dispatch_slash("queue", {"job_id": queued_id[:8]}, subcommand="cancel",
                                           user_id=stranger.id)
        assert "not queued or running" in (await theirs.wait_ack(2)).content
        mine = await fake.dispatch_slash("queue", {"job_id": queued_id[:8]}, subcommand="cancel")
        assert (await mine.wait_ack(2)).content == "Cancelled."
        queued_rec = next(r for r in (first, second) if queued_id in str(r.edits[0].data["components"]))
        await queued_rec.wait_until(lambda r: any("Cancelled" in (q.content or "") for q in r.edits))
        complete = await fake.dispatch_autocomplete("queue", {"job_id": ""}, focused="job_id", subcommand="cancel")
        await complete.wait_ack(2)
        assert len(complete.choices) == 1 and "running" in complete.choices[0]["name"]
        gate.set()


ADMIN_CALLS = [("pause", {}, None), ("queue", {}, None), ("status", {}, None), ("stats", {}, "cache"),
               ("sync", {}, None), ("reload", {}, None)]


@pytest.mark.parametrize("sub, options, group", ADMIN_CALLS)
async def test_admin_refuses_non_admins(fake: FakeDiscord, bot, sub: str, options: dict, group: str | None) -> None:
    """Even a member Discord would show /admin to (Manage Server) is refused at run time."""
    guild = next(iter(fake.world.guilds.values()))
    manager = fake.add_user("manager")
    fake.add_member(guild.id, manager.id, roles=[fake.add_role(guild.id, "managers", 1 << 5).id])
    rec = await fake.dispatch_slash("admin", options, group=group, subcommand=sub, user_id=manager.id)
    ack = await rec.wait_ack(2)
    assert ack.ephemeral and ack.content == "This command is for the bot's admins."
    assert not bot.services.worker.paused


async def test_admins_from_settings_role_and_application(fake: FakeDiscord, tmp_path: Path) -> None:
    guild = next(iter(fake.world.guilds.values()))
    role = fake.add_role(guild.id, "bot admins")
    by_role, by_id = fake.add_user("role-admin"), fake.add_user("id-admin")
    fake.add_member(guild.id, by_role.id, roles=[role.id])
    fake.add_member(guild.id, by_id.id)
    fake.add_member(guild.id, fake.world.app_owner.id)
    settings = make_settings(tmp_path, fake, owner_ids=[by_id.id], admin_role_id=role.id)
    async with running_bot(settings) as bot:
        for user, sub in ((by_id.id, "pause"), (by_role.id, "resume"), (fake.world.app_owner.id, "pause")):
            rec = await fake.dispatch_slash("admin", {}, subcommand=sub, user_id=user)
            assert "admins" not in (await rec.wait_ack(2)).content
        assert bot.services.worker.paused


async def test_admin_operations(fake: FakeDiscord, tmp_path: Path) -> None:
    """Pause holds new jobs; queue lists everyone's; cancel stops another user's; status, cache, reload, sync."""
    admin = fake.add_user("admin")
    guild = next(iter(fake.world.guilds.values()))
    fake.add_member(guild.id, admin.id)
    pipeline = FakePipeline()
    async with running_bot(make_settings(tmp_path, fake, owner_ids=[admin.id]), pipeline):

        async def call(sub: str, options: dict | None = None, group: str | None = None):
            rec = await fake.dispatch_slash("admin", options or {}, group=group, subcommand=sub, user_id=admin.id)
            await rec.wait_until(lambda r: r.followups or (r.callback is not None and r.callback.type == 4))
            return rec.followups[-1] if rec.followups else rec.callback

        assert "Paused" in (await call("pause")).content
        held = await stylize(fake)
        await held.wait_until(lambda r: len(r.edits) >= 1)
        listing = (await call("queue")).data["embeds"][0]
        assert listing["title"] == "Queue (paused)" and f"<@{fake.default_user.id}>" in listing["description"]
        job_id = held.edits[0].data["components"][0]["components"][0]["custom_id"].rsplit(":", 1)[1]
        assert (await call("cancel", {"job_id": job_id})).content == f"Cancelled `{job_id[:8]}`."
        await held.wait_until(lambda r: any("cancelled by an admin" in (q.content or "") for q in r.edits))
        assert "Resumed" in (await call("resume")).content
        status = {f["name"]: f["value"] for f in (await call("status")).data["embeds"][0]["fields"]}
        assert status["State"] == "running" and "CPU only" in status["Devices"] and status["Queue"].startswith("0")
        assert status["Event-loop lag"].startswith("p50 ") and " p99 " in status["Event-loop lag"]
        stats = {f["name"]: f["value"] for f in (await call("stats", group="cache")).data["embeds"][0]["fields"]}
        assert stats["Entries"] == "0"
        assert "Removed 0" in (await call("clear", group="cache")).content
        assert "Reloaded dit" in (await call("reload", {"component": "dit"})).content
        assert pipeline.loaded["dit"]
        syncs = len(fake.syncs)
        assert "Synced 9 global commands" in (await call("sync")).content and len(fake.syncs) == syncs + 1
