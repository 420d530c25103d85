"""Progress events of the engine worker, and a rate limiter for the consumers that render them.

The worker emits, per job and in this order: ``queued`` (with the position), ``position`` whenever the position or
ETA changes, ``started``, then per reference ``vl_cached`` or ``vl_started``/``vl_finished``, then ``step`` for
every DiT step (``cell``/``cells`` say which cells of a sweep the step belongs to), ``cell_done`` after each cell,
and exactly one final event: ``done``, ``failed`` or ``cancelled``. Events raised in the stage threads reach the
event loop through ``loop.call_soon_threadsafe``; none is emitted after the final one.
"""

from __future__ import annotations

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
                   clock: Callable[[], float] = time.monotonic) -> AsyncIterator[ProgressEvent]:
    """Pass at most one event per ``min_interval`` seconds; final events always pass, and end the stream.

    Events arriving too soon after the last one passed are dropped (newer events supersede them: a Discord message
    edit shows the latest state anyway). ``min_interval <= 0`` passes everything.
    """
    last: float | None = None
    async for event in events:
        now = clock()
        if event.final or last is None or min_interval <= 0 or now - last >= min_interval:
            last = now
            yield event
        if event.final:
            return
