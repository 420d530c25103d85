"""Progress events of the engine worker, and a rate limiter for the consumers that render them.

The worker emits, per job and in this order: ``queued`` (with the position), ``position`` whenever the position or
ETA changes, ``started``, then per reference ``vl_cached`` or ``vl_started``/``vl_finished``, then ``step`` for
every DiT step (``cell``/``cells`` say which cells of a sweep the step belongs to), ``cell_done`` after each cell,
and exactly one final event: ``done``, ``failed`` or ``cancelled``. Events raised in the stage threads reach the
event loop through ``loop.call_soon_threadsafe``; none is emitted after the final one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum


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


async def throttle(events: AsyncIterable[ProgressEvent], min_interval: float, *,
                   clock: Callable[[], float] = time.monotonic,
                   last: float = -math.inf) -> AsyncIterator[ProgressEvent]:
    """Pass at most one event per ``min_interval`` seconds, always the newest; final events always pass and end it.

    An event arriving too soon after the last one passed is held, and replaced by any newer event; when the interval
    is over and nothing newer came, the held event is passed (trailing edge), so a Discord status message never
    stays on a stale state. The interval counts from when the consumer is done with an event (a slow message edit
    delays the next one). ``last``: the clock time of an edit made before the stream started. ``min_interval <= 0``
    passes everything. The pending read of ``events`` is never cancelled by a timeout, so any async iterator works.
    """
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
            assert event is not None
            if event.final:
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
