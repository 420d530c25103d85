"""The real bot process stopped with SIGTERM while jobs wait, then started again: the jobs complete."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.botproc import job_id_of, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]


async def test_sigterm_with_a_queue_then_restart_completes_every_job(space) -> None:
    fake, bot = space.fake, space.bot
    alice, bob = space.member("alice"), space.member("bob")
    await space.pause()
    recs = [await space.stylize(alice, prompt="before the restart 1"),
            await space.slash("sweep", {"image": space.ref(), "alphas": "0.3,0.7", "prompt": "restart sweep"}, bob),
            await space.stylize(alice, prompt="before the restart 2", seed=77)]
    for rec in recs:
        await rec.wait_ack(3)
        await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    ids = [job_id_of(rec) for rec in recs]
    syncs = len(fake.syncs)

    since = len(bot.log_text())
    assert await bot.stop() == 0
    log = bot.log_text()[since:]
    assert "SIGTERM received" in log and "(3 job(s) left queued)" in log and "services closed" in log, log
    assert "Traceback" not in log
    rows = {r["id"]: r for r in bot.jobs("guild_id = ?", (space.guild.id,))}
    assert [rows[i]["status"] for i in ids] == ["queued"] * 3
    assert all(rows[i]["message_id"] == rec.original_message_id for i, rec in zip(ids, recs))

    await bot.start()
    assert len(fake.syncs) == syncs, "the restart re-synced unchanged commands"
    for rec in recs[::2]:
        await wait_result(rec, timeout=120)
    await recs[1].wait_until(lambda r: any(f.filename == "cells.json" for f in r.files), timeout=120)
    rows = {r["id"]: r for r in bot.jobs("guild_id = ?", (space.guild.id,))}
    assert [rows[i]["status"] for i in ids] == ["done"] * 3
    for job_id, rec in zip(ids, recs):
        message = fake.message(rec.original_message_id)  # the result replaced the same status message
        assert message["attachments"] and message["embeds"][0]["footer"]["text"] == f"job {job_id}"
        assert sum(1 for r in rec.accepted if r.files) == 1, "delivered more than once"
    cells = json.loads(next(f for f in recs[1].files if f.filename == "cells.json").data)
    assert [c["params"]["alpha"] for c in cells["cells"]] == [0.0, 0.3, 0.7]
    assert "restart: 3 job(s) resumed" in bot.log_text()[since:]


async def test_sigterm_mid_job_finishes_it_refuses_newcomers_and_resumes_the_rest(space) -> None:
    """SIGTERM while a job runs: the running job finishes within the shutdown grace and is delivered before the
    process exits; a command or button arriving during the drain gets a private "restarting" refusal; what was
    still queued runs after the restart. Every job is delivered exactly once."""
    fake, bot = space.fake, space.bot
    alice, bob, carol = space.member("alice"), space.member("bob"), space.member("carol")
    earlier = await space.stylize(carol, prompt="an earlier result")
    await wait_result(earlier)

    running = await space.stylize(alice, prompt="running at SIGTERM", size="1:1 small", steps=50)
    await running.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    queued = [await space.stylize(bob, prompt=f"queued at SIGTERM {i}") for i in range(2)]
    for rec in queued:
        await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    running_id = job_id_of(running)
    while not bot.jobs("id = ? AND status = 'running'", (running_id,)):
        await asyncio.sleep(0.02)

    since = len(bot.log_text())
    stopping = asyncio.ensure_future(bot.stop())
    while "SIGTERM received" not in bot.log_text()[since:]:
        await asyncio.sleep(0.01)
    late = await space.stylize(carol, prompt="too late")
    button = await fake.dispatch_component(earlier.original_message_id, f"zvl:reroll:{job_id_of(earlier)}",
                                           user_id=carol.id)
    for rec in (late, button):
        ack = await rec.wait_ack(3)
        assert ack.ephemeral and "restarting" in ack.content, ack.content
    assert await stopping == 0
    assert "Traceback" not in bot.log_text()[since:]
    assert sum(1 for r in running.accepted if r.files) == 1, "the running job was not delivered before the exit"
    assert not bot.jobs("owner_id = ?", (carol.id,))[1:], "a refused request became a job"

    await bot.start()
    for rec in queued:
        await wait_result(rec, timeout=120)
    rows = bot.jobs("guild_id = ?", (space.guild.id,))
    assert {r["status"] for r in rows} == {"done"} and len(rows) == 4
    for rec in (earlier, running, *queued):
        assert sum(1 for r in rec.accepted if r.files) == 1, "delivered more than once"
