"""bot.jobs Notifier: progress edits are coalesced (at most one per interval, the newest event shown, final not
throttled) and interaction tokens are used only while fresh."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

from bot.jobs import Delivery, Notifier
from engine.serving.events import EventKind, ProgressEvent
from engine.serving.queue import Job
from engine.types import StylizeRequest


class Events:
    """A stand-in for ``EngineWorker.subscribe``: an async iterator the test feeds."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        self.closed = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> ProgressEvent:
        if self.closed:
            raise StopAsyncIteration
        event = await self.queue.get()
        if event.final:
            self.closed = True
        return event

    def close(self) -> None:
        self.closed = True


class StubWorker:
    def __init__(self) -> None:
        self.events = Events()

    def subscribe(self, job_id: str) -> Events:
        return self.events


def job() -> Job:
    delivery = Delivery(owner_id=1, channel_id=2, guild_id=3, private=False, upload_limit=1 << 20, message_id=4)
    return Job(owner_id=1, requests=[StylizeRequest()], context={"delivery": delivery})


async def test_progress_edits_are_coalesced() -> None:
    """A burst of 30 step events in 0.15 s gives one immediate edit and one trailing edit with the newest step."""
    worker = StubWorker()
    notifier = Notifier(None, worker, None, interval=0.3)  # type: ignore[arg-type]
    shown: list[tuple[float, ProgressEvent]] = []

    async def show(_job: Job, event: ProgressEvent) -> None:
        shown.append((time.monotonic(), event))

    notifier._show = show  # type: ignore[method-assign]
    task = asyncio.create_task(notifier._progress(job()))
    for step in range(1, 31):
        worker.events.queue.put_nowait(ProgressEvent("j", EventKind.STEP, step=step, total=30))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.45)
    worker.events.queue.put_nowait(ProgressEvent("j", EventKind.DONE))
    await asyncio.wait_for(task, 2)
    assert [e.step for _t, e in shown] == [1, 30]
    assert shown[1][0] - shown[0][0] >= 0.3 - 0.01


async def test_slow_events_are_all_shown() -> None:
    worker = StubWorker()
    notifier = Notifier(None, worker, None, interval=0.05)  # type: ignore[arg-type]
    shown: list[ProgressEvent] = []

    async def show(_job: Job, event: ProgressEvent) -> None:
        shown.append(event)

    notifier._show = show  # type: ignore[method-assign]
    task = asyncio.create_task(notifier._progress(job()))
    for kind in (EventKind.QUEUED, EventKind.STARTED, EventKind.VL_STARTED):
        worker.events.queue.put_nowait(ProgressEvent("j", kind, position=1))
        await asyncio.sleep(0.08)
    worker.events.queue.put_nowait(ProgressEvent("j", EventKind.CANCELLED))
    await asyncio.wait_for(task, 2)
    assert [e.kind for e in shown] == [EventKind.QUEUED, EventKind.STARTED, EventKind.VL_STARTED]


def test_token_is_used_only_while_fresh() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    d = Delivery(owner_id=1, channel_id=2, guild_id=3, private=False, upload_limit=1, application_id=5, token="t",
                 token_created_at=now)
    assert d.token_usable(now + timedelta(minutes=13))
    assert not d.token_usable(now + timedelta(minutes=14, seconds=1))
    assert "t'" not in repr(d) and "token=" not in repr(d)


async def test_delivery_is_retried_after_network_errors() -> None:
    """A dropped connection while sending the result is retried; a 413 lowers the upload limit."""
    import aiohttp

    import discord

    from bot.jobs import Outgoing
    from engine.serving.queue import JobOutcome, JobStatus

    limits: list[int] = []

    async def render(_job, _outcome, limit):
        limits.append(limit)
        return Outgoing(content="done", uploads=[("a.png", b"x")])

    notifier = Notifier(None, StubWorker(), render, retry_delays=(0.0, 0.0))  # type: ignore[arg-type]
    failures = [aiohttp.ClientConnectionError("reset"), "413", None]

    async def place(_delivery, _out):
        failure = failures.pop(0)
        if failure == "413":
            class Response:
                status, reason = 413, "Payload Too Large"

            raise discord.HTTPException(Response(), {"code": 40005, "message": "too large"})
        if failure is not None:
            raise failure

    notifier._place = place  # type: ignore[method-assign]
    await notifier.deliver(job(), JobOutcome("j", JobStatus.DONE))
    assert failures == [] and limits == [1 << 20, 1 << 20, 1 << 19]
