"""Progress events: their order through the worker, late subscribers, and the throttle."""

from __future__ import annotations

import asyncio

import pytest

from engine.serving.events import EventKind, ProgressEvent, throttle
from tests.engine.serving.support import Recorder, blocker, mkjob
from tests.fakes import FakePipeline

pytestmark = pytest.mark.timeout(60)


# --- progress ----------------------------------------------------------------------------------------------------
async def test_progress_events_in_order(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    rec = Recorder()
    w = await make_worker(pipe, recorder=rec)
    await w.submit(mkjob("A1", reference=1))
    await w.submit(mkjob("A2", reference=1))
    await w.submit(mkjob("B1", reference=2, steps=4))
    sub = w.subscribe("B1")
    release.set()
    events = [e async for e in sub]
    kinds = [e.kind.value for e in events]
    assert kinds == ["queued", "position", "started", "vl_started", "vl_finished",
                     "step", "step", "step", "step", "cell_done", "done"]
    assert [e.position for e in events[:3]] == [2, 1, 0]  # B1 overtook A2 on arrival
    assert [e.step for e in events if e.kind is EventKind.STEP] == [1, 2, 3, 4]
    assert events[-1].final
    # the recorder saw the same life
    assert [c for c in rec.calls if c[1] == "B1"] == [("queued", "B1"), ("started", "B1"), ("done", "B1")]
    # a late subscriber gets the history, ending with the final event
    late = [e.kind for e in [e async for e in w.subscribe("B1")]]
    assert late[0] is EventKind.QUEUED and late[-1] is EventKind.DONE
    with pytest.raises(KeyError):
        w.subscribe("nope")


async def test_throttle_keeps_final_event():
    t = [0.0]

    async def events():
        for step in range(1, 11):
            t[0] += 0.1
            yield ProgressEvent("j", EventKind.STEP, step=step, total=10)
        t[0] += 0.01
        yield ProgressEvent("j", EventKind.DONE)
        yield ProgressEvent("j", EventKind.STEP, step=99)  # nothing after the final event

    got = [e async for e in throttle(events(), 0.35, clock=lambda: t[0])]
    assert [e.step for e in got[:-1]] == [1, 5, 9]
    assert got[-1].kind is EventKind.DONE


async def test_throttle_passes_the_newest_held_event_when_the_interval_is_over():
    """A status message must not stay on a stale state: the held newest event goes out after the interval."""
    release = asyncio.Event()

    async def events():
        yield ProgressEvent("j", EventKind.STEP, step=1, total=9)
        yield ProgressEvent("j", EventKind.STEP, step=2, total=9)  # too soon: held
        yield ProgressEvent("j", EventKind.STEP, step=3, total=9)  # supersedes step 2
        await release.wait()  # the stage is busy for a long time
        yield ProgressEvent("j", EventKind.DONE)

    got = []
    async for event in throttle(events(), 0.05):
        got.append(event.step if event.kind is EventKind.STEP else event.kind)
        if len(got) == 2:
            release.set()
    assert got == [1, 3, EventKind.DONE]
