"""The worker's life: lazy loads, auto and idle unloads, reload, preload, pause/resume/status, restore and stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.serving.events import EventKind
from engine.serving.protocols import WorkerConfig
from engine.serving.queue import Job, JobStatus
from engine.serving.worker import EngineWorker
from tests.engine.serving.support import (
    USERS,
    Recorder,
    blocker,
    dit_order,
    entered,
    mkjob,
    req,
    settings,
    wait_for,
    wait_thread_event,
    wait_until,
)
from tests.fakes import WAIT, FakePipeline

pytestmark = pytest.mark.timeout(60)


async def reloading(w) -> bool:
    """Whether the worker's status says it reloads."""
    return (await w.status()).reloading


# --- lifecycle ---------------------------------------------------------------------------------------------------
async def test_lazy_load_and_vl_auto_unload(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe, settings=settings(vl_auto_unload=True))
    assert pipe.log == []  # nothing loaded before the first job
    await w.submit(mkjob("A1"))
    await w.wait("A1")
    loads = [x for x in pipe.log if x[0] in ("load", "unload")]
    assert loads == [("load", "vl"), ("unload", "vl"), ("load", "text"), ("load", "dit")]
    assert pipe.loaded == {"vl": False, "text": True, "dit": True}


async def test_vl_idle_unload(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe, settings=settings(vl_idle_unload_s=0.05))
    await w.submit(mkjob("A1"))
    await w.wait("A1")
    await wait_for(lambda: not pipe.loaded["vl"], "VL unloaded after idle")
    assert pipe.loaded["dit"]


async def test_reload_waits_for_running_job_and_loses_no_queued_job(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1", "A2"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    reload = asyncio.create_task(w.reload("dit"))
    await wait_until(lambda: reloading(w), "reload started")
    assert not reload.done()  # waiting for the running job
    release.set()
    result = await reload
    assert result["error"] is None and result["component"] == "dit"
    for label in ["A1", "B1", "C1", "A2"]:
        assert (await w.wait(label)).status is JobStatus.DONE
    log = pipe.log
    swap = log.index(("unload", "dit"))
    assert log.index(("dit_end", "A1")) < swap < log.index(("load", "dit"), swap)
    assert log.index(("dit_end", "B1")) < swap  # B1 was already taken (encoded): it finished first
    assert log.index(("dit_start", "C1")) > swap and log.index(("vl_start", "C1")) > swap


async def test_reload_all_with_a_factory_builds_a_new_pipeline(make_worker):
    built: list[FakePipeline] = []

    def factory() -> FakePipeline:
        built.append(FakePipeline())
        return built[-1]

    w = EngineWorker(config=WorkerConfig.from_settings(settings()), pipeline_factory=factory)
    await w.start()
    try:
        await w.submit(mkjob("A1"))
        await w.wait("A1")
        assert len(built) == 1
        result = await w.reload("all")
        assert result["error"] is None and len(built) == 2
        assert ("unload", "all") in built[0].log and built[1].loaded == {"vl": True, "text": True, "dit": True}
        await w.submit(mkjob("A2"))
        await w.wait("A2")
        assert ("dit_end", "A2") in built[1].log and ("dit_end", "A2") not in built[0].log
    finally:
        await w.stop()


@pytest.mark.parametrize("auto_unload", [False, True])
async def test_preload_loads_the_models_at_start_not_on_the_first_job(make_worker, auto_unload):
    """With ``preload`` the stage threads load their models right after start(); with ``vl_auto_unload`` Qwen3-VL
    is left to load on demand."""
    pipe = FakePipeline()
    w = await make_worker(pipe, settings=settings(preload=True, vl_auto_unload=auto_unload))
    await wait_for(lambda: pipe.loaded["dit"] and pipe.loaded["text"], "the start-up loads")
    assert pipe.loaded["vl"] is (not auto_unload)
    assert w.counters["done"] == 0  # no job was needed for that


async def test_failed_preload_is_reported_and_the_next_job_retries(make_worker):
    pipe = FakePipeline()
    pipe.load_error["dit"] = FileNotFoundError("/models/zimage/transformer: no such folder")
    w = await make_worker(pipe, settings=settings(preload=True))
    await wait_for(lambda: pipe.loaded["text"], "the encoder loads")
    for _ in range(100):
        if (await w.status()).model_error:
            break
        await asyncio.sleep(0.02)
    assert "no such folder" in (await w.status()).model_error
    del pipe.load_error["dit"]
    await w.submit(mkjob("A1"))
    assert (await w.wait("A1")).status is JobStatus.DONE


async def test_failed_model_load_keeps_worker_alive(make_worker):
    pipe = FakePipeline()
    pipe.load_error["dit"] = FileNotFoundError("/models/zimage/transformer: no such folder")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1"))
    outcome = await w.wait("A1")
    assert outcome.status is JobStatus.FAILED
    assert "Z-Image model could not be loaded" in outcome.error
    assert "/models" not in outcome.error  # the user sees no host paths; the admins see the cause
    status = await w.status()
    assert "no such folder" in status.model_error
    result = await w.reload("dit")
    assert result["error"] and "no such folder" in result["error"]
    del pipe.load_error["dit"]  # the admin fixes the folder
    await w.submit(mkjob("A2"))
    assert (await w.wait("A2")).status is JobStatus.DONE
    assert (await w.status()).model_error is None


async def test_pause_resume_and_status(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe)
    w.pause()
    await w.submit(mkjob("A1"))
    await asyncio.sleep(0.05)
    status = await w.status()
    assert status.paused is True and status.queue_depth == 1 and status.running == []
    assert pipe.log == []
    release = blocker(pipe, "dit", "A1")
    w.resume()
    await wait_thread_event(entered(pipe, "dit", "A1"))
    status = await w.status()
    assert status.running[0].job_id == "A1" and status.running[0].stage == "dit"
    assert status.loaded["dit"] is True
    release.set()
    await w.wait("A1")
    status = await w.status()
    assert status.recent[-1]["job_id"] == "A1" and status.counters["done"] == 1
    assert status.estimates["samples"]["dit"] == 1


# --- restart -----------------------------------------------------------------------------------------------------
async def test_restore_requeues_resumable_jobs_in_creation_order(make_worker):
    rec = Recorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec, start=False)
    now = time.time()
    jobs = [Job(owner_id=1, requests=[req("A2")], id="A2", created_at=now - 10),
            Job(owner_id=1, requests=[req("A1")], id="A1", created_at=now - 20),
            Job(owner_id=2, requests=[req("B1")], id="B1", created_at=now - 15)]
    positions = await w.restore(jobs)
    assert sorted(positions) == [1, 2, 3]
    await w.start()
    for job in jobs:
        assert (await w.wait(job.id)).status is JobStatus.DONE
    assert dit_order(pipe) == ["A1", "B1", "A2"]
    assert not [c for c in rec.calls if c[0] == "queued"]  # already stored as queued by the bot


async def test_stop_interrupts_after_grace_and_keeps_queued_jobs(make_worker):
    rec = Recorder()
    pipe = FakePipeline(step_s=0.005)
    w = await make_worker(pipe, recorder=rec)
    release = blocker(pipe, "dit", "A1")
    await w.submit(mkjob("A1", steps=20))
    await w.submit(mkjob("A2"))
    await w.submit(mkjob("B1"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    sub = w.subscribe("A1")
    await w.stop(grace_s=0.1)
    assert ("interrupted", "A1") in rec.calls and ("done", "A1") not in rec.calls
    requeued = [e for e in sub.pending() if e.kind is EventKind.QUEUED][-1]  # told it is queued again
    assert requeued.position == 1 and requeued.message == "the bot is restarting"
    assert {j.id for j in await w.queue.snapshot()} >= {"A1", "A2"}
    assert [j.id for j in await w.queue.snapshot()][0] == "A1"  # back at the front
    release.set()
    await w.start()  # same process: picks up where it stopped
    for label in ["A1", "A2", "B1"]:
        assert (await w.wait(label)).status is JobStatus.DONE


async def test_stop_while_paused_with_queued_jobs_returns_at_once(make_worker):
    w = await make_worker()
    w.pause()
    await w.submit(mkjob("A1"))
    await asyncio.wait_for(w.stop(grace_s=30.0), WAIT)  # nothing runs: no grace to wait out
    assert [j.id for j in await w.queue.snapshot()] == ["A1"]
    w.resume()
    await w.start()
    assert (await w.wait("A1")).status is JobStatus.DONE


async def test_stop_waits_for_running_job_within_grace(make_worker):
    rec = Recorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec)
    release = blocker(pipe, "dit", "A1")
    await w.submit(mkjob("A1"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    asyncio.get_running_loop().call_later(0.05, release.set)
    await w.stop(grace_s=WAIT)
    assert rec.outcomes["A1"].status is JobStatus.DONE
    assert ("interrupted", "A1") not in rec.calls
