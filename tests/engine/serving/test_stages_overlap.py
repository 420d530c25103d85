"""The two stages: job N+1 encodes while job N denoises, at most two jobs taken, sweeps, and a responsive loop."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from engine.serving.events import EventKind
from engine.serving.queue import Job, JobStatus
from tests.engine.serving.support import USERS, blocker, dit_order, entered, mkjob, req, wait_for, wait_thread_event, \
    wait_until
from tests.fakes import BatchingFake, FakePipeline

pytestmark = pytest.mark.timeout(60)


async def handed_off(w) -> bool:
    """Whether a job waits in the hand-off for the DiT."""
    return any(r.stage == "handoff" for r in (await w.status()).running)


# --- overlap -----------------------------------------------------------------------------------------------------
async def test_vl_of_next_job_runs_while_dit_of_current_job_runs(make_worker):
    pipe = FakePipeline()
    release_dit1 = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1", reference=1))
    await w.submit(mkjob("B1", reference=2))
    # B1's VL stage starts and finishes while A1's DiT stage is still held inside the DiT thread
    await wait_thread_event(entered(pipe, "vl", "B1"))
    await wait_for(lambda: ("text", "B1") in pipe.log, "B1 encoded")
    assert ("dit_end", "A1") not in pipe.log
    release_dit1.set()
    for label in ["A1", "B1"]:
        assert (await w.wait(label)).status is JobStatus.DONE
    log = pipe.log
    assert log.index(("dit_start", "A1")) < log.index(("vl_start", "B1")) < log.index(("dit_end", "A1"))
    # one thread per stage, and they are different threads
    assert len(pipe.threads["vl"]) == len(pipe.threads["dit"]) == 1
    assert pipe.threads["vl"] != pipe.threads["dit"]


async def test_at_most_two_jobs_taken_from_the_queue(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    await wait_until(lambda: handed_off(w), "B1 handed off")
    assert [j.id for j in await w.queue.snapshot()] == ["C1"]  # C1 not taken early: fairness stays live
    assert len((await w.status()).running) == 2
    release.set()
    await w.wait("C1")



# --- sweeps ---------------------------------------------------------------------------------------------------
async def test_sweep_extracts_once_and_reports_cells(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe)  # no generate_batch on this pipeline: cells run one by one
    cells = [req("S", reference=5, alpha=a, seeds=(s,)) for a in (0.2, 0.5) for s in (1, 2)]
    cells.append(req("S", reference=5, hidden_layer=-2))  # other VL settings: a second extraction
    job = Job(owner_id=1, requests=cells, id="SW", kind="sweep")
    sub = w.subscribe((await w.submit(job)) and "SW")
    outcome = await w.wait("SW")
    assert outcome.status is JobStatus.DONE and len(outcome.results) == 5
    assert [r.seeds for r in outcome.results] == [[1], [2], [1], [2], [0]]
    assert len([x for x in pipe.log if x[0] == "vl_start"]) == 2
    assert len([x for x in pipe.log if x[0] == "text"]) == 1  # one prompt, encoded once
    assert len(dit_order(pipe)) == 5  # no generate_batch on this pipeline: cells run one by one
    events = [e async for e in sub]
    assert [e.cells_done for e in events if e.kind is EventKind.CELL_DONE] == [1, 2, 3, 4, 5]
    assert {e.cell for e in events if e.kind is EventKind.STEP} == {0, 1, 2, 3, 4}


async def test_sweep_batches_cells_that_share_the_dit_settings(make_worker):
    pipe = BatchingFake()
    w = await make_worker(pipe, max_batch_pixels=3 * 64 * 64)
    cells = [req(f"c{i}", reference=5, alpha=0.1 * i) for i in range(4)]
    cells.append(req("big", reference=5, steps=5))  # other steps: its own call
    await w.submit(Job(owner_id=1, requests=cells, id="SW"))
    outcome = await w.wait("SW")
    assert outcome.status is JobStatus.DONE
    assert [r.params["prompt"] for r in outcome.results] == ["c0", "c1", "c2", "c3", "big"]
    assert pipe.batches == [["c0", "c1", "c2"]]  # c3 over the pixel budget, "big" alone: plain generate


# --- the event loop stays responsive -----------------------------------------------------------------------------
async def test_event_loop_stays_responsive_during_blocking_stages(make_worker):
    class BusyFake(FakePipeline):
        def encode_reference(self, request):
            a = torch.randn(256, 256)
            t_end = time.monotonic() + 0.4
            while time.monotonic() < t_end:  # blocking torch work in the VL thread
                a = torch.tanh(a @ a)
            return super().encode_reference(request)

        def generate(self, request, vl, text_emb=None, **kw):
            time.sleep(0.4)  # blocking in the DiT thread
            return super().generate(request, vl, text_emb, **kw)

    w = await make_worker(BusyFake())
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker():
        interval = 0.01
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            lags.append(time.perf_counter() - t0 - interval)

    tick = asyncio.create_task(ticker())
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    for label in ["A1", "B1", "C1"]:
        await w.wait(label)
    stop.set()
    await tick
    assert len(lags) > 20
    assert max(lags) < 0.2, f"max event-loop lag {max(lags):.3f}s"
