"""The worker's queue: fair order, caps, refusals, cancelling, positions and ETAs."""

from __future__ import annotations

import pytest

from engine.serving.eta import StageEstimator
from engine.serving.queue import JobStatus, QueueFull
from tests.engine.serving.support import (
    USERS,
    Recorder,
    blocker,
    dit_order,
    entered,
    mkjob,
    settings,
    wait_for,
    wait_thread_event,
    wait_until,
)
from tests.fakes import FakePipeline

pytestmark = pytest.mark.timeout(60)


# --- queue through the worker ------------------------------------------------------------------------------------
async def test_fair_order_for_three_users(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe)
    w.pause()
    labels = ["A1", "A2", "A3", "A4", "B1", "B2", "C1"]
    for label in labels:
        await w.submit(mkjob(label, reference=None))
    w.resume()
    for label in labels:
        assert (await w.wait(label)).status is JobStatus.DONE
    assert dit_order(pipe) == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]


async def test_caps_refuse_at_once_with_a_clear_reason(make_worker):
    w = await make_worker(settings=settings(max_jobs_per_user=2, max_jobs_total=3))
    w.pause()
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("A2"))
    with pytest.raises(QueueFull, match="the limit is 2") as err:
        await w.submit(mkjob("A3"))
    assert err.value.scope == "user"
    await w.submit(mkjob("B1"))
    with pytest.raises(QueueFull, match="queue is full") as err:
        await w.submit(mkjob("C1"))
    assert err.value.scope == "total"
    with pytest.raises(KeyError):
        await w.wait("A3")  # refused jobs leave no trace


async def test_recorder_failure_refuses_the_job(make_worker):
    rec = Recorder()
    rec.fail_queued = True
    w = await make_worker(recorder=rec)
    w.pause()
    with pytest.raises(OSError):
        await w.submit(mkjob("A1"))
    assert len(w.queue) == 0
    rec.fail_queued = False
    await w.submit(mkjob("A1"))  # the id is free again
    w.resume()
    assert (await w.wait("A1")).status is JobStatus.DONE


async def in_stage(w, job_id: str, stage: str) -> bool:
    """Whether the worker's status shows ``job_id`` running in ``stage``."""
    return any(r.job_id == job_id and r.stage == stage for r in (await w.status()).running)


# --- cancel ------------------------------------------------------------------------------------------------------
async def test_cancel_queued_job(make_worker):
    rec = Recorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec)
    w.pause()
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("A2"))
    assert await w.cancel("A2", "cancelled by its owner") is True
    outcome = await w.wait("A2")
    assert outcome.status is JobStatus.CANCELLED and outcome.error == "cancelled by its owner"
    assert await w.position("A2") is None
    assert await w.cancel("A2", "cancelled by its owner") is False  # already over
    assert await w.cancel("nope", "cancelled by its owner") is False
    w.resume()
    assert (await w.wait("A1")).status is JobStatus.DONE
    assert "A2" not in dit_order(pipe)
    assert ("cancelled", "A2") in rec.calls and ("started", "A2") not in rec.calls


async def test_cancel_running_job_cooperatively_then_next_job_runs(make_worker):
    pipe = FakePipeline(step_s=0.01)
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1", steps=50))
    await w.submit(mkjob("B1"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    assert await w.cancel("A1", "cancelled by an admin") is True
    outcome = await w.wait("A1")  # finished at once, before the thread reached its next step
    assert outcome.status is JobStatus.CANCELLED and outcome.error == "cancelled by an admin"
    release.set()
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert pipe.aborted == ["A1"]  # should_abort stopped the thread at its next step
    log = pipe.log
    assert log.index(("dit_abort", "A1")) < log.index(("dit_start", "B1"))  # one DiT thread: no overlap of DiTs


async def test_cancel_job_waiting_in_the_handoff(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=int(label[0] == "B")))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    await wait_until(lambda: in_stage(w, "B1", "handoff"), "B1 in the hand-off")
    assert await w.cancel("B1", "cancelled by its owner")
    assert (await w.wait("B1")).status is JobStatus.CANCELLED
    # the hand-off is free again, so C1's encode stage starts while A1 still denoises
    await wait_for(lambda: ("text", "C1") in pipe.log, "C1 encoded")
    release.set()
    assert (await w.wait("C1")).status is JobStatus.DONE
    assert dit_order(pipe) == ["A1", "C1"]


# --- position / ETA ----------------------------------------------------------------------------------------------
async def test_position_and_eta_follow_the_two_stage_overlap(make_worker):
    est = StageEstimator(vl_s=1.0, text_s=0.0, dit_unit_s=1.0 / (64 * 64 / 1024**2))  # 1 s VL, 1 s per step
    w = await make_worker(estimator=est)
    w.pause()
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=int(label[0] == "B") + 5, steps=2))  # d = 2 s, v = 1 s
    got = {label: await w.position(label) for label in ["A1", "B1", "C1"]}
    assert [got[k][0] for k in ["A1", "B1", "C1"]] == [1, 2, 3]
    # flow shop: A1 done at 1+2=3; B1 encodes 1..2, waits for the DiT until 3, done at 5; C1 done at 7
    for label, expected in [("A1", 3.0), ("B1", 5.0), ("C1", 7.0)]:
        assert got[label][1] == pytest.approx(expected, abs=0.2)
    assert await w.position("zz") is None
    assert [(j.id, p) for j, p, _eta in await w.jobs_for(USERS["B"])] == [("B1", 2)]


async def test_position_zero_while_running(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("A2"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    assert (await w.position("A1"))[0] == 0
    release.set()
    await w.wait("A2")
