"""RedisEngine (the bot's side) and a worker's stack (``serve.build``) in one event loop over a real redis-server,
with the suite's fake pipeline: submit -> the worker's two stages -> results through Redis -> the recorder once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine.serving.events import EventKind
from engine.serving.queue import JobStatus, QueueFull
from engine.serving.redis.queue import RedisQueue, connect
from engine.serving.redis.remote import RedisEngine
from engine.serving.redis.serve import build, start_serving, stop_serving
from tests.engine.serving.support import Recorder, mkjob, settings, wait_for
from tests.fakes import FakePipeline


@pytest.fixture
async def fleet(redis_server):
    """``await fleet(n_workers, pipe=...)`` -> (engine, recorder, [pipes]); everything stopped at the end."""
    made: list = []

    async def make(n: int = 1, *, gate: threading.Event | None = None, **kw):
        cfg = settings(redis_url=redis_server.url, redis_lease_s=kw.pop("lease_s", 3.0), max_jobs_per_user=3, **kw)
        pipes = []
        for i in range(n):
            pipe = FakePipeline(gate=gate)
            worker, member, sink, _rec = build(cfg, f"w{i}", lambda p=pipe: p)
            made.append((worker, member, sink, await start_serving(worker, member, sink)))
            pipes.append(pipe)
        recorder = Recorder()
        engine = RedisEngine(RedisQueue(connect(redis_server.url), max_per_user=3), recorder=recorder,
                             lease_s=cfg.redis_lease_s)
        await engine.start()
        made.append(engine)
        return engine, recorder, pipes

    yield make
    for item in reversed(made):
        if isinstance(item, RedisEngine):
            await item.stop()
        else:
            await stop_serving(*item, grace_s=5.0)


async def test_a_job_is_served_and_delivered_once(fleet):
    engine, recorder, _pipes = await fleet(1)
    job = mkjob("A1")
    assert await engine.submit(job) == 1
    kinds = [event.kind async for event in engine.subscribe(job.id)]
    outcome = await engine.wait(job.id)
    assert outcome.status is JobStatus.DONE
    assert [r.images[0].size for r in outcome.results] == [(64, 64)]
    assert outcome.results[0].params["prompt"] == "A1"
    assert kinds[0] is EventKind.QUEUED and kinds[-1] is EventKind.DONE and EventKind.STARTED in kinds
    assert EventKind.STEP in kinds
    assert [c for c in recorder.calls if c[1] == job.id] == [("queued", "A1"), ("started", "A1"), ("done", "A1")]
    assert await engine.queue.client.keys(engine.queue.key("res", "*")) == []  # results dropped once saved


async def test_caps_reach_the_bot_as_queue_full(fleet):
    gate = threading.Event()
    engine, _recorder, _pipes = await fleet(1, gate=gate)
    for i in range(3):
        await engine.submit(mkjob(f"A{i}"))
    with pytest.raises(QueueFull) as info:
        await engine.submit(mkjob("A9"))
    assert info.value.scope == "user"
    gate.set()


async def test_cancel_while_running_and_while_queued(fleet):
    gate = threading.Event()
    engine, recorder, pipes = await fleet(1, gate=gate)
    first, second = mkjob("A1"), mkjob("A2")
    await engine.submit(first)
    await engine.submit(second)
    await wait_for(lambda: pipes[0].entered.get(("dit", "A1")) is not None or ("dit_start", "A1") in pipes[0].log,
                   "A1 in the DiT")
    assert await engine.cancel(second.id, "by owner")
    assert await engine.cancel(first.id, "by admin")
    one, two = await asyncio.gather(engine.wait(first.id), engine.wait(second.id))
    assert (one.status, one.error) == (JobStatus.CANCELLED, "by admin")
    assert (two.status, two.error) == (JobStatus.CANCELLED, "by owner")
    await wait_for(lambda: "A1" in pipes[0].aborted, "the DiT thread to stop at a step")  # not run to the end
    assert not await engine.cancel(first.id)


async def test_two_workers_serve_users_in_fair_order(fleet):
    engine, recorder, pipes = await fleet(2)
    jobs = [mkjob(label) for label in ("A1", "A2", "A3", "B1", "B2", "C1")]
    for job in jobs:
        await engine.submit(job)
    outcomes = await asyncio.gather(*(engine.wait(j.id) for j in jobs))
    assert all(o.status is JobStatus.DONE for o in outcomes)
    assert sorted(c[1] for c in recorder.calls if c[0] == "done") == sorted(j.id for j in jobs)
    served = [label for pipe in pipes for what, label in pipe.log if what == "dit_start"]
    assert sorted(served) == sorted(j.id for j in jobs)


async def test_status_lists_the_workers_and_the_queue(fleet):
    engine, _recorder, _pipes = await fleet(2)
    status = await engine.status()
    assert sorted(w.name for w in status.workers) == ["w0", "w1"]
    assert all(w.loaded.get("dit") for w in status.workers)
    assert status.queue_depth == 0


async def test_a_restart_during_an_outage_reconciles_once_redis_returns(fleet, redis_server):
    engine, recorder, _pipes = await fleet(1)
    job = mkjob("A1")
    redis_server.stop()
    assert await engine.restore([job]) == [0]  # the bot starts anyway
    redis_server.start()
    outcome = await asyncio.wait_for(engine.wait(job.id), 60)
    assert outcome.status is JobStatus.DONE and [c for c in recorder.calls if c[0] == "done"] == [("done", "A1")]


async def test_positions_follow_the_global_line(fleet):
    engine, _recorder, _pipes = await fleet(0)  # no worker: the line moves by arrivals and cancels only
    await engine.submit(mkjob("A1"))
    assert await engine.submit(mkjob("A2")) == 2
    sub = engine.subscribe("A2")
    await engine.submit(mkjob("B1"))  # B1 takes the second turn: A2 moves back
    assert [(await engine.position(j))[0] for j in ("A1", "B1", "A2")] == [1, 2, 3]

    async def next_position() -> int:
        while True:
            event = await asyncio.wait_for(sub.__anext__(), 30)
            if event.kind is EventKind.POSITION:
                return event.position

    assert await next_position() == 3
    assert await engine.cancel("A1")
    assert await next_position() == 2
    assert [j.id for j, _pos, _eta in await engine.jobs_for(1)] == ["A2"]
