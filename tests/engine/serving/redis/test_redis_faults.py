"""Fault tests with real processes: ``engine serve`` workers (fixed-cost stand-in stages) behind a RedisEngine, on
a real redis-server. Each job is delivered exactly once, or fails with a clear message."""

from __future__ import annotations

import asyncio
import signal

import pytest

from engine.serving.events import EventKind
from engine.serving.queue import JobStatus, QueueUnavailable
from engine.serving.redis.queue import LOST_MESSAGE, RedisQueue, connect
from engine.serving.redis.remote import RedisEngine
from tests.engine.serving.redis.procs import WorkerProc, running_on, until
from tests.engine.serving.support import Recorder, mkjob

pytestmark = pytest.mark.slow
LEASE_S = 1.5


@pytest.fixture
async def cluster(redis_server, tmp_path):
    """``cluster.worker(name)``, ``cluster.engine()``: processes and engines, all stopped at the end."""

    class Cluster:
        workers: list[WorkerProc] = []
        engines: list[RedisEngine] = []

        async def worker(self, name: str, **kw) -> WorkerProc:
            proc = WorkerProc(redis_server.url, name, tmp_path, lease_s=LEASE_S, **kw).start()
            self.workers.append(proc)
            await proc.ready()
            return proc

        async def engine(self, recorder: Recorder | None = None, *, max_attempts: int = 2) -> RedisEngine:
            engine = RedisEngine(RedisQueue(connect(redis_server.url), max_per_user=5), recorder=recorder or Recorder(),
                                 lease_s=LEASE_S, max_attempts=max_attempts)
            await engine.start()
            self.engines.append(engine)
            return engine

    cluster = Cluster()
    yield cluster
    for engine in cluster.engines:
        await engine.stop()
    for proc in cluster.workers:
        proc.stop()


async def finals(queue: RedisQueue, job_id: str) -> list[bytes]:
    entries = await queue.client.xrange(queue.key("ev", job_id))
    return [f[b"kind"] for _id, f in entries if f[b"kind"] in (b"done", b"failed", b"cancelled")]


def finished(recorder: Recorder, job_id: str) -> list[str]:
    return [what for what, jid in recorder.calls if jid == job_id and what in ("done", "failed", "cancelled")]


async def test_kill_9_mid_job_is_requeued_and_delivered_once_by_another(cluster):
    w1, w2 = await cluster.worker("w1"), await cluster.worker("w2")
    recorder = Recorder()
    engine = await cluster.engine(recorder)
    job = mkjob("A1", steps=40)
    await engine.submit(job)
    victim = await until(lambda: running_on(engine.queue, job.id), "the job to be mid-DiT")
    {"w1": w1, "w2": w2}[victim].kill()
    outcome = await asyncio.wait_for(engine.wait(job.id), 60)
    assert outcome.status is JobStatus.DONE and len(outcome.results) == 1
    info = await engine.queue.job(job.id)
    assert info["worker"] != victim and info["attempts"] == "2"
    kinds = [e.kind for e in engine.subscribe(job.id).pending()]
    assert kinds.count(EventKind.STARTED) == 2 and kinds[-1] is EventKind.DONE
    assert finished(recorder, job.id) == ["done"] and await finals(engine.queue, job.id) == [b"done"]
    assert ("interrupted", job.id) in recorder.calls  # the bot's row went back to queued meanwhile


async def test_a_paused_zombie_cannot_finish_a_job_someone_else_took(cluster):
    w1, w2 = await cluster.worker("w1"), await cluster.worker("w2")
    procs = {"w1": w1, "w2": w2}
    recorder = Recorder()
    engine = await cluster.engine(recorder, max_attempts=3)
    job = mkjob("A1", steps=60)
    await engine.submit(job)
    zombie = await until(lambda: running_on(engine.queue, job.id), "the job to be mid-DiT")
    procs[zombie].signal(signal.SIGSTOP)
    rescuer = await until(lambda: _other(engine.queue, job.id, zombie), "another worker to take the job over")
    procs[zombie].signal(signal.SIGCONT)
    outcome = await asyncio.wait_for(engine.wait(job.id), 60)
    assert outcome.status is JobStatus.DONE and (await engine.queue.job(job.id))["worker"] == rescuer
    await until(lambda: _said(procs[zombie], "lease lost", "finish refused"), "the zombie to learn it lost the job")
    assert finished(recorder, job.id) == ["done"] and await finals(engine.queue, job.id) == [b"done"]


async def _other(queue: RedisQueue, job_id: str, zombie: str) -> str | None:
    worker = await running_on(queue, job_id, stepped=False)
    return worker if worker not in (None, zombie) else None


async def _said(proc: WorkerProc, *phrases: str) -> bool:
    text = proc.log()
    return any(p in text for p in phrases)


async def test_cancel_while_running_stops_the_worker(cluster):
    await cluster.worker("w1")
    recorder = Recorder()
    engine = await cluster.engine(recorder)
    job = mkjob("A1", steps=400)
    await engine.submit(job)
    await until(lambda: running_on(engine.queue, job.id), "the job to be mid-DiT")
    assert await engine.cancel(job.id, "cancelled by its owner")
    outcome = await asyncio.wait_for(engine.wait(job.id), 30)  # 400 steps would take 20 s: it stopped early
    assert (outcome.status, outcome.error) == (JobStatus.CANCELLED, "cancelled by its owner")
    assert finished(recorder, job.id) == ["cancelled"]


async def test_redis_restart_mid_queue_loses_nothing(cluster, redis_server):
    recorder = Recorder()
    engine = await cluster.engine(recorder)
    jobs = [mkjob(label, steps=20) for label in ("A1", "A2", "B1", "B2", "C1")]
    for job in jobs:
        await engine.submit(job)
    order = await engine.queue.order()
    redis_server.kill()
    redis_server.start()
    assert await engine.queue.order() == order  # AOF: the line survived as it was
    await cluster.worker("w1")
    holder = await until(lambda: running_on(engine.queue, order[0]), "the first job to be mid-DiT")
    redis_server.kill()
    redis_server.start()  # while a lease is held: the holder still finishes it
    outcomes = await asyncio.wait_for(asyncio.gather(*(engine.wait(j.id) for j in jobs)), 90)
    assert all(o.status is JobStatus.DONE for o in outcomes)
    assert (await engine.queue.job(order[0]))["worker"] == holder
    for job in jobs:
        assert finished(recorder, job.id) == ["done"]


async def test_redis_down_is_one_clear_line_then_recovery(cluster, redis_server):
    engine = await cluster.engine()
    redis_server.stop()
    with pytest.raises(QueueUnavailable) as info:
        await engine.submit(mkjob("A1"))
    assert str(info.value) == "the queue is unavailable, try again shortly"
    redis_server.start()
    await cluster.worker("w1")
    job = mkjob("A2")
    assert await engine.submit(job) == 1
    assert (await asyncio.wait_for(engine.wait(job.id), 60)).status is JobStatus.DONE


async def test_bot_restart_reconciles_rows_with_redis(cluster):
    first = await cluster.engine()
    done_meanwhile, queued, lost = mkjob("A1", steps=3), mkjob("B1", steps=3), mkjob("C1", steps=3)
    await first.submit(done_meanwhile)
    await first.submit(queued)
    await first.stop()  # the bot goes away; its rows say queued
    cluster.engines.remove(first)
    await cluster.worker("w1")
    await until(lambda: _status_is(first.queue, done_meanwhile.id, "done"), "A1 to finish while the bot is down")
    recorder = Recorder()
    second = await cluster.engine(recorder)
    # C1's row is queued but Redis never had it (lost with a Redis that had no AOF): enqueued again
    await second.restore([done_meanwhile, queued, lost])
    outcomes = await asyncio.wait_for(asyncio.gather(*(second.wait(j.id) for j in (done_meanwhile, queued, lost))), 60)
    assert [o.status for o in outcomes] == [JobStatus.DONE] * 3
    assert all(len(o.results) == 1 for o in outcomes)  # A1's results waited in Redis for the bot
    for job in (done_meanwhile, queued, lost):
        assert finished(recorder, job.id) == ["done"]


async def _status_is(queue: RedisQueue, job_id: str, status: str) -> bool:
    return ((await queue.job(job_id)) or {}).get("status") == status


async def test_poison_guard_fails_a_job_that_keeps_losing_its_worker(cluster):
    recorder = Recorder()
    engine = await cluster.engine(recorder, max_attempts=2)
    job = mkjob("A1", steps=400)
    await engine.submit(job)
    for attempt in (1, 2):
        proc = await cluster.worker(f"w{attempt}")
        await until(lambda: running_on(engine.queue, job.id), f"attempt {attempt} to be mid-DiT")
        proc.kill()
    outcome = await asyncio.wait_for(engine.wait(job.id), 60)
    assert (outcome.status, outcome.error) == (JobStatus.FAILED, LOST_MESSAGE % 2)
    assert finished(recorder, job.id) == ["failed"]
