"""Progress events of the engine worker, the bus that delivers them, and a rate limiter for their consumers.

The worker emits, per job and in this order: ``queued`` (with the position), ``position`` whenever the position or
ETA changes, ``started``, then per reference ``vl_cached`` or ``vl_started``/``vl_finished``, then ``step`` for
every DiT step (``cell``/``cells`` say which cells of a sweep the step belongs to), ``cell_done`` after each cell,
and exactly one final event: ``done``, ``failed`` or ``cancelled``. Events raised in the stage threads reach the
event loop through ``loop.call_soon_threadsafe``; none is emitted after the final one.

:class:`EventBus` keeps each job's history and live :class:`Subscription` s (in the job's :class:`EventLog`, which the
worker's registry holds) and calls the listeners for every event of every job.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

log = logging.getLogger(__name__)


class EventKind(str, Enum):
    QUEUED = "queued"  #: accepted; ``position``/``eta_s`` set
    POSITION = "position"  #: the queue moved; ``position``/``eta_s`` set
    STARTED = "started"  #: taken by the worker (position 0)
    VL_STARTED = "vl_started"  #: a reference is being read by Qwen3-VL (cache miss); ``device`` set
    VL_CACHED = "vl_cached"  #: a reference's embeddings came from the cache: the VL model was skipped
    VL_FINISHED = "vl_finished"  #: extraction done; ``seconds`` set
    STEP = "step"  #: DiT step ``step``/``total`` of cells ``cell``.. (a batch runs several cells at once)
    CELL_DONE = "cell_done"  #: ``cells_done`` of ``cells`` finished
    DONE = "done"  #: final: results ready
    FAILED = "failed"  #: final: ``message`` says why (user-safe)
    CANCELLED = "cancelled"  #: final: ``message`` says by whom / why

    def __str__(self) -> str:
        return self.value


FINAL_KINDS = frozenset({EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED})


@dataclass(frozen=True)
class ProgressEvent:
    job_id: str
    kind: EventKind
    position: int | None = None
    eta_s: float | None = None
    step: int | None = None
    total: int | None = None
    cell: int | None = None  #: 0-based index of the (first) cell the step belongs to
    cells: int | None = None  #: number of cells in the job
    cells_done: int | None = None
    message: str | None = None
    seconds: float | None = None
    device: str | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS


class Subscription:
    """``async for event in worker.subscribe(job_id)``: the job's events so far, then live ones, ending after the
    final event. ``close()`` stops early."""

    def __init__(self, job_id: str, history: list[ProgressEvent], on_close: Callable[[Subscription], None]) -> None:
        self.job_id = job_id
        self._queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        self._on_close = on_close
        self._ended = False
        for event in history:
            self._queue.put_nowait(event)

    def push(self, event: ProgressEvent) -> None:
        """Deliver one live event (on the loop)."""
        self._queue.put_nowait(event)

    def pending(self) -> list[ProgressEvent]:
        """The events delivered but not read yet, oldest first (they stay unread)."""
        items = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for event in items:
            self._queue.put_nowait(event)
        return items

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ProgressEvent:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event.final:
            self.close()
        return event

    def close(self) -> None:
        """Stop following the job."""
        self._ended = True
        self._on_close(self)


class EventLog(Protocol):
    """Where a job's events are kept (the worker's per-job state)."""

    history: list[ProgressEvent]
    subscriptions: list[Subscription]


class LiveRun(Protocol):
    """A running job as the bus sees it: step events update its progress; none passes once it is finished."""

    finished: bool
    step: int
    total: int


class EventBus:
    """Delivers each event to its job's history and subscriptions, then to every listener (on the loop thread)."""

    def __init__(self, find: Callable[[str], EventLog | None],
                 listeners: list[Callable[[ProgressEvent], None]] | None = None) -> None:
        self._find = find
        self.listeners = list(listeners or [])
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The loop that :meth:`call_from_thread` hands events to (``None``: none any more)."""
        self._loop = loop

    def emit(self, event: ProgressEvent) -> None:
        """On the loop thread only; nothing is kept after a job's final event."""
        log_ = self._find(event.job_id)
        if log_ is not None:
            if log_.history and log_.history[-1].final:
                return
            log_.history.append(event)
            for sub in list(log_.subscriptions):
                sub.push(event)
        for callback in self.listeners:
            try:
                callback(event)
            except Exception:
                log.exception("progress listener failed on %s", event.kind)

    def emit_from_thread(self, run: LiveRun, event: ProgressEvent) -> None:
        """From a stage thread: hand the event to the loop (dropped once the run is over or the loop is gone)."""
        if run.finished or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._emit_if_live, run, event)
        except RuntimeError:  # the loop was closed under a stale thread
            pass

    def _emit_if_live(self, run: LiveRun, event: ProgressEvent) -> None:
        if run.finished:
            return
        if event.kind is EventKind.STEP:
            run.step, run.total = event.step or 0, event.total or 0
        self.emit(event)

    def subscribe(self, job_id: str) -> Subscription:
        """The job's events so far, then live ones. ``KeyError`` for a job without an event log."""
        log_ = self._find(job_id)
        if log_ is None:
            raise KeyError(job_id)

        def unsubscribe(sub: Subscription) -> None:
            if sub in log_.subscriptions:
                log_.subscriptions.remove(sub)

        sub = Subscription(job_id, list(log_.history), unsubscribe)
        if not (log_.history and log_.history[-1].final):
            log_.subscriptions.append(sub)
        return sub


async def throttle(events: AsyncIterable[ProgressEvent], min_interval: float, *,
                   clock: Callable[[], float] = time.monotonic,
                   last: float = -math.inf) -> AsyncIterator[ProgressEvent]:
    """Pass at most one event per ``min_interval`` seconds, always the newest; final events always pass and end it.

    A too-early event is held and replaced by any newer one; once the interval is over the held one passes (trailing
    edge: a status message never stays stale). The interval counts from when the consumer is done with an event;
    ``last``: the time of an edit made before the stream. ``min_interval <= 0`` passes all. The pending read is never
    cancelled by a timeout, so any async iterator works."""
    source = events.__aiter__()
    held: ProgressEvent | None = None
    pending: asyncio.Future[ProgressEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(source.__anext__())
            wait = None if held is None or min_interval <= 0 else max(0.0, last + min_interval - clock())
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:  # quiet for the rest of the interval: pass the held event
                event, held = held, None
            else:
                finished, pending = pending, None
                try:
                    event = finished.result()
                except StopAsyncIteration:
                    if held is not None:
                        yield held
                    return
            if event.final:  # type: ignore[union-attr]
                yield event
                return
            if min_interval > 0 and clock() - last < min_interval:
                held = event
                continue
            held = None
            yield event
            last = clock()
    finally:
        if pending is not None:
            pending.cancel()
