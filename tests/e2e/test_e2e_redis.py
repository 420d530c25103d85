"""The shared queue end to end: a real bot process with ``ZVL_REDIS_URL`` (it loads no models) and two real
``engine serve`` workers on the tiny models serve several users' /stylize through the fake Discord."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from engine.media.images import read_png_metadata
from tests.e2e.botproc import (
    BotProcess,
    child_env,
    ephemeral_texts,
    job_id_of,
    png_bytes,
    result_file,
    tiny_settings,
    wait_result,
)
from tests.e2e.conftest import Space, fake_discord, home_admin
from tests.fakediscord import FakeDiscord, FakeUser
from tests.engine.serving.redis.procs import WorkerProc
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(420)]


@dataclass
class Fleet:
    bot: BotProcess
    server: RedisServer


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rfake() -> AsyncIterator[FakeDiscord]:
    """The fleet's own fake Discord: sharing the package's, the Redis bot would take the embedded bot's session."""
    async with fake_discord("redis home") as fake:
        yield fake


@pytest.fixture(scope="module")
def radmin(rfake: FakeDiscord) -> FakeUser:
    return home_admin(rfake, "redis-admin")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_fleet(rfake, radmin, tiny_models, tmp_path_factory) -> AsyncIterator[Fleet]:
    """A redis-server, two workers (w1, w2) and a bot with ZVL_REDIS_URL; the bot must exit 0 on SIGTERM."""
    folder = tmp_path_factory.mktemp("rq")
    server = RedisServer(folder / "redis").start()
    settings = tiny_settings(tiny_models.zimage, tiny_models.qwen3vl, owner_ids=[radmin.id], redis_url=server.url)
    workers = [WorkerProc(server.url, name, folder, pipeline=None,
                          env=child_env(rfake, folder / name, settings)).start() for name in ("w1", "w2")]
    proc = BotProcess(rfake, folder / "bot", settings, name="redis-bot")
    try:
        await asyncio.gather(*(w.ready() for w in workers))
        await proc.start()
        yield Fleet(proc, server)
    finally:
        rc = await proc.stop()
        for worker in workers:
            worker.stop()
        server.stop()
    log = proc.log_text()
    assert rc == 0 and "Traceback" not in log, f"the bot exited {rc} or logged a traceback ({proc.log_path})"
    assert "engine worker started" not in log  # the bot ran no in-process worker: the GPU workers did the work


@pytest_asyncio.fixture(loop_scope="session")
async def rspace(rfake, redis_fleet, radmin, request) -> Space:
    guild = rfake.add_guild(f"rq {request.node.name}"[:90])
    rfake.add_member(guild.id, radmin.id)
    await rfake.announce_guild(guild.id)
    return Space(rfake, redis_fleet.bot, guild, radmin)


async def test_several_users_are_served_by_two_workers(rspace) -> None:
    users = [rspace.member(name) for name in ("ann", "bob", "cyd", "dee")]
    recs = [await rspace.stylize(user, prompt=f"a lighthouse {i}", seed=i) for i, user in enumerate(users)]
    finals = await asyncio.gather(*(wait_result(rec, timeout=300) for rec in recs))
    assert all(f is not None for f in finals)
    ids = [job_id_of(rec) for rec in recs]
    rows = {row["id"]: row for row in rspace.bot.jobs()}
    assert [rows[i]["status"] for i in ids] == ["done"] * 4
    assert all(rows[i]["result_paths"] for i in ids)  # the bot saved each job's images, once


async def test_admin_status_lists_both_workers(rspace) -> None:
    rec = await rspace.slash("admin", {}, rspace.admin, subcommand="status")
    embed = (await rec.wait_ack(10)).data["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert "**w1**" in fields["GPU workers"] and "**w2**" in fields["GPU workers"]
    assert fields["Queue"].startswith("0 queued")


async def test_several_references_and_a_negative_reach_the_workers(rspace) -> None:
    """Every image of the request crosses Redis: the worker blends both references at 2:1 and uses the negative."""
    user = rspace.member("fay")
    rec = await rspace.slash("stylize", {"image": rspace.ref(png_bytes((64, 48), (220, 30, 30))),
                                         "image2": rspace.ref(png_bytes((48, 64), (20, 40, 230)), "b.png"),
                                         "negative_image": rspace.ref(png_bytes((32, 32), (30, 200, 40)), "n.png"),
                                         "weights": "2,1", "prompt": "two styles", "seed": 3}, user)
    await wait_result(rec, timeout=300)
    params = read_png_metadata(result_file(rec).data)["params"]
    assert [r["size"] for r in params["reference_set"]] == [[64, 48], [48, 64]]
    assert [r["weight"] for r in params["reference_set"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert params["negative"]["size"] == [32, 32] and params["guidance_scale"] == 2.0


async def test_redis_down_is_one_clear_line_then_the_bot_recovers(rspace, redis_fleet) -> None:
    user = rspace.member("eve")
    redis_fleet.server.stop()
    try:
        rec = await rspace.stylize(user, prompt="a harbour at night")
        await rec.wait_until(lambda r: bool(ephemeral_texts(r)), timeout=60)
        assert ephemeral_texts(rec) == ["The queue is unavailable, try again shortly"]
    finally:
        redis_fleet.server.start()
    again = await rspace.stylize(user, prompt="a harbour at night")
    assert await wait_result(again, timeout=300) is not None


async def test_jobs_finished_while_the_bot_was_down_are_delivered_after_its_restart(rspace, redis_fleet) -> None:
    """The workers keep serving while the bot is away; its restart reconciles the rows with Redis and delivers each
    outcome once, into the same status message."""
    from engine.serving.redis.queue import RedisQueue, connect

    fake, bot = rspace.fake, rspace.bot
    alice, bob = rspace.member("alice"), rspace.member("bob")
    await rspace.pause()  # every worker: the jobs wait in Redis
    recs = [await rspace.stylize(alice, prompt="before the restart"), await rspace.stylize(bob, prompt="also")]
    for rec in recs:
        await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    ids = [job_id_of(rec) for rec in recs]
    assert await bot.stop() == 0
    queue = RedisQueue(connect(redis_fleet.server.url))
    try:
        await queue.publish("ctl:all", {"op": "resume"})
        for job_id in ids:
            while ((await queue.job(job_id)) or {}).get("status") != "done":
                await asyncio.sleep(0.05)  # polling the condition (bounded by the test timeout)
    finally:
        await queue.aclose()
    await bot.start()
    for job_id, rec in zip(ids, recs):
        await wait_result(rec, timeout=120)
        message = fake.message(rec.original_message_id)  # the result replaced the same status message
        assert message["attachments"] and message["embeds"][0]["footer"]["text"] == f"job {job_id}"
        assert sum(1 for r in rec.accepted if r.files) == 1, "delivered more than once"
    rows = {r["id"]: r for r in bot.jobs("guild_id = ?", (rspace.guild.id,))}
    assert [rows[i]["status"] for i in ids] == ["done", "done"]
