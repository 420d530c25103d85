"""Failures fail one job with a message fit for the user, free memory in the stage thread, and never stop the worker."""

from __future__ import annotations

import asyncio
import io
import logging
import threading

import pytest
import torch
from PIL import Image

from engine.serving import faults
from engine.serving.faults import CORRUPT_MESSAGE, OOM_MESSAGE
from engine.serving.queue import Job, JobStatus
from tests.engine.serving.support import USERS, Recorder, mkjob, req, settings
from tests.fakes import FakePipeline

pytestmark = pytest.mark.timeout(60)


# --- faults ------------------------------------------------------------------------------------------------------
async def test_injected_exception_fails_only_that_job(make_worker, caplog):
    pipe = FakePipeline()
    pipe.fail[("dit", "A1")] = RuntimeError("boom in the attention kernel")
    rec = Recorder()
    w = await make_worker(pipe, recorder=rec)
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("B1"))
    with caplog.at_level(logging.ERROR, logger="engine.serving.faults"):
        outcome = await w.wait("A1")
    assert outcome.status is JobStatus.FAILED
    assert outcome.error == "generation failed (job A1); the admins have the details"
    assert "boom" not in outcome.error
    assert any("job=A1" in r.getMessage() and r.exc_info for r in caplog.records)
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert rec.outcomes["A1"].error == outcome.error


async def test_injected_oom_frees_memory_and_next_job_runs(make_worker, monkeypatch):
    freed: list[str] = []
    monkeypatch.setattr(faults, "free_memory", lambda: freed.append(threading.current_thread().name))
    pipe = FakePipeline()
    pipe.fail[("dit", "A1")] = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    pipe.fail[("vl", "B1")] = RuntimeError("CUDA error: out of memory")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    assert (await w.wait("A1")).error == OOM_MESSAGE
    assert (await w.wait("B1")).error == OOM_MESSAGE
    assert (await w.wait("C1")).status is JobStatus.DONE
    assert len(freed) == 2 and all(name.startswith("zvl-") for name in freed)  # freed in the stage threads


async def test_value_error_and_corrupt_reference_messages(make_worker, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[:-40])
    w = await make_worker()
    with Image.open(path) as truncated:  # lazily decoded: .load() raises OSError("image file is truncated ...")
        await w.submit(mkjob("bad1", "A"))
        await w.submit(Job(owner_id=2, requests=[req("B1", reference=truncated)], id="B1"))
        await w.submit(mkjob("C1"))
        assert (await w.wait("bad1")).error == "alpha must be between 0 and 1; got 1.7"
        assert (await w.wait("B1")).error == CORRUPT_MESSAGE
        assert (await w.wait("C1")).status is JobStatus.DONE


async def test_timeout_fails_job_and_stops_the_thread(make_worker):
    pipe = FakePipeline(step_s=0.01)
    w = await make_worker(pipe, settings=settings(job_timeout_s=0.3))
    await w.submit(mkjob("A1", steps=100_000))
    await w.submit(mkjob("B1"))
    outcome = await w.wait("A1")
    assert outcome.status is JobStatus.FAILED and outcome.error == "timed out after 0.3 s"
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert pipe.aborted == ["A1"]


async def test_slow_persistence_does_not_hold_the_next_job(make_worker):
    class SlowRecorder(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def on_finished(self, job, outcome):
            if job.id == "A1":
                await self.release.wait()  # e.g. the bot encoding a sweep's PNGs
            await super().on_finished(job, outcome)

    rec = SlowRecorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec)
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("B1"))
    assert (await w.wait("B1")).status is JobStatus.DONE  # served while A1 is still being persisted
    assert "A1" not in rec.outcomes
    rec.release.set()
    assert (await w.wait("A1")).status is JobStatus.DONE  # waiters wake once the outcome is stored
    assert "A1" in rec.outcomes
