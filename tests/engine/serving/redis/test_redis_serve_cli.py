"""``python -m engine serve`` as a process: usage errors, an unreachable queue, SIGTERM and drain (finish the held
job, leave the registry, exit 0), pause/resume reaching the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from engine.serving.queue import JobStatus
from engine.serving.redis import fleet
from engine.serving.redis.queue import RedisQueue, connect
from engine.serving.redis.remote import RedisEngine
from tests.engine.serving.redis.procs import ROOT, WorkerProc, running_on, until
from tests.engine.serving.support import Recorder, mkjob

pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict[str, str] | None = None, command: str = "serve") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("ZVL_")}
    return subprocess.run([sys.executable, "-m", "engine", command, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_serve_without_a_queue_url_is_a_usage_error():
    done = run_cli("--pipeline", "tests.engine.serving.redis.standin:fixed_cost")
    assert done.returncode == 2 and "--redis-url" in done.stderr and "Traceback" not in done.stderr


def test_serve_with_an_unreachable_queue_is_one_line(tmp_path):
    done = run_cli("--redis-url", f"unix://{tmp_path}/none.sock", "--pipeline",
                   "tests.engine.serving.redis.standin:fixed_cost")
    lines = [line for line in done.stderr.splitlines() if "cannot reach the queue" in line]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr


@pytest.fixture
async def engine(redis_server):
    made = RedisEngine(RedisQueue(connect(redis_server.url)), recorder=Recorder(), lease_s=30.0)
    await made.start()
    yield made
    await made.stop()


@pytest.mark.parametrize("how", ["sigterm", "drain"])
async def test_stopping_a_worker_finishes_its_job_then_exits_0(redis_server, tmp_path, engine, how):
    proc = WorkerProc(redis_server.url, "w1", tmp_path, lease_s=30.0, step_s=0.05).start()
    await proc.ready()
    job = mkjob("A1", steps=40)
    await engine.submit(job)
    await until(lambda: running_on(engine.queue, job.id), "the job to be mid-DiT")
    if how == "sigterm":
        proc.signal(signal.SIGTERM)
    else:
        await engine.queue.publish("ctl:w1", {"op": "drain"})
    outcome = await asyncio.wait_for(engine.wait(job.id), 60)
    assert outcome.status is JobStatus.DONE
    assert await asyncio.to_thread(proc.proc.wait, 60) == 0
    assert await fleet.live_workers(engine.queue) == []  # it left the registry


async def test_pause_and_resume_reach_the_workers(redis_server, tmp_path, engine):
    proc = WorkerProc(redis_server.url, "w1", tmp_path, lease_s=30.0).start()
    await proc.ready()

    async def paused(flag: bool) -> bool:
        workers = await fleet.live_workers(engine.queue)
        return bool(workers) and workers[0].paused is flag

    # once serving, the registry says so at once (an entry left from the start-up pause would let the wait below
    # pass before the pause command had reached the worker)
    assert await paused(False)
    engine.pause()
    await until(lambda: paused(True), "the worker to report itself paused")
    job = mkjob("A1")
    assert await engine.submit(job) == 1
    assert (await engine.queue.job(job.id))["status"] == "queued"  # a paused worker takes nothing
    engine.resume()
    assert (await asyncio.wait_for(engine.wait(job.id), 60)).status is JobStatus.DONE
    proc.stop()


async def test_engine_drain_stops_the_named_worker_and_names_a_missing_one(redis_server, tmp_path, engine):
    proc = WorkerProc(redis_server.url, "w1", tmp_path, lease_s=30.0).start()
    await proc.ready()
    unknown = await asyncio.to_thread(run_cli, "nobody", "--redis-url", redis_server.url, command="drain")
    assert unknown.returncode == 1 and "no worker named 'nobody'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and proc.proc.poll() is None  # w1 was not touched
    done = await asyncio.to_thread(run_cli, "w1", "--redis-url", redis_server.url, command="drain")
    assert done.returncode == 0 and "w1: draining" in done.stdout, done.stderr
    assert await asyncio.to_thread(proc.proc.wait, 60) == 0
    assert await fleet.live_workers(engine.queue) == []
    usage = await asyncio.to_thread(run_cli, "w1", command="drain")
    assert usage.returncode == 2 and "--redis-url" in usage.stderr
