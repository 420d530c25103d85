"""Start-up and shutdown: command sync (dev guild / global, skipped when unchanged), restart recovery of
interrupted and queued jobs, and the notices for jobs that cannot be resumed."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from bot.store import JobStatus, Store
from bot.store.db import utcnow
from bot.store.jobs import EXPIRED_ERROR
from tests.bot.harness import FakePipeline, make_settings, png, running_bot
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.timeout(60)


async def test_global_sync_once_then_skipped_when_unchanged(fake: FakeDiscord, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, fake)
    async with running_bot(settings):
        pass
    assert [s.guild_id for s in fake.syncs] == [None]
    assert {c["name"] for c in fake.commands()} == {"stylize", "blendmode", "sweep", "defaults", "preset", "queue",
                                                    "admin", "style", "describe"}
    async with running_bot(settings):
        pass
    assert len(fake.syncs) == 1


async def test_dev_guild_sync_only(fake: FakeDiscord, tmp_path: Path) -> None:
    guild = next(iter(fake.world.guilds.values()))
    async with running_bot(make_settings(tmp_path, fake, dev_guild_id=guild.id)):
        pass
    assert [s.guild_id for s in fake.syncs] == [guild.id] and len(fake.commands(guild.id)) == 9


async def test_interrupted_job_resumes_after_restart(fake: FakeDiscord, tmp_path: Path) -> None:
    """Shut down mid-job: the job is stored as queued again; the next start runs it and finishes the same status
    message. A second job still waiting in the queue survives too."""
    settings = make_settings(tmp_path, fake)
    gate = threading.Event()
    recs = []
    async with running_bot(settings, FakePipeline(gate=gate), shutdown_grace_s=0.2):
        for prompt in ("first", "second"):
            rec = await fake.dispatch_slash("stylize", {"image": fake.add_attachment(png(), "r.png", "image/png"),
                                                        "size": "1:1 small", "prompt": prompt})
            await rec.wait_until(lambda r: len(r.edits) >= 1)
            recs.append(rec)
    store = await Store.open(settings.db_path)
    try:
        rows = await store.jobs.list_active()
        assert [(r.params["prompt"], r.status) for r in rows] == [("first", JobStatus.QUEUED),
                                                                  ("second", JobStatus.QUEUED)]
        assert rows[0].attempts == 1
    finally:
        await store.close()
    pipeline = FakePipeline()
    async with running_bot(settings, pipeline) as bot:
        for rec in recs:
            await rec.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
            assert fake.message(rec.original_message_id)["embeds"][0]["title"] == "Stylized"
        assert [r.prompt for r in pipeline.requests] == ["first", "second"]
        assert await bot.services.store.jobs.list_active() == []


async def test_unresumable_jobs_fail_with_a_reason(fake: FakeDiscord, tmp_path: Path) -> None:
    """A queued job older than a day expires; one whose reference file is gone fails saying so."""
    settings = make_settings(tmp_path, fake)
    store = await Store.open(settings.db_path)
    params = {"prompt": "p", "resolved": {}, "request": {}, "reference": {"path": str(tmp_path / "gone.png")},
              "sweep": None, "delivery": {"private": False, "upload_limit": 1 << 20}}
    stale = await store.jobs.create(1, "stylize", params, now=utcnow() - timedelta(days=2))
    lost = await store.jobs.create(1, "stylize", params)
    await store.close()
    async with running_bot(settings) as bot:
        stale_row, lost_row = [await bot.services.store.jobs.get(j.id) for j in (stale, lost)]
    assert (stale_row.status, stale_row.error) == (JobStatus.FAILED, EXPIRED_ERROR)
    assert lost_row.status is JobStatus.FAILED and "no longer stored" in lost_row.error
