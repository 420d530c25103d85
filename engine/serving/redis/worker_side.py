"""What a GPU worker process plugs into today's ``EngineWorker`` to serve the shared queue.

* :class:`Leases` — the jobs this process holds, each by its ``run`` entry id (the fencing token).
* :class:`RedisJobQueue` — the worker's ``JobQueue``: ``get`` takes the next job in the global fair order (leased),
  ``put(front=True)`` of a held job is the fenced requeue of a shutdown; ``done`` is nothing (the fenced finish in
  the recorder frees the caps).
* :class:`RedisRecorder` — the worker's ``JobRecorder``: results written under ``res:<id>:<sid>``, then the fenced
  finish; the outcome of a lost lease is dropped (its new holder, or the reaper, decides).
* :class:`EventSink` — the worker's event listener: stage and step events to ``ev:<id>`` in order (steps at most
  every ``min_step_s``); queued/started/final events are written by the scripts, atomically with the status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from engine.serving.events import EventKind, ProgressEvent
from engine.serving.queue import Job, JobOutcome
from engine.serving.redis import wire
from engine.serving.redis.queue import REDIS_DOWN, RedisQueue, Taken, raise_if_cancelled

log = logging.getLogger(__name__)

#: The events a worker writes itself (the rest are the scripts').
FORWARDED = frozenset({EventKind.VL_STARTED, EventKind.VL_CACHED, EventKind.VL_FINISHED, EventKind.STEP,
                       EventKind.CELL_DONE})
REQUEUE_MESSAGE = "its GPU worker is shutting down; it is first in line again"


@dataclass
class Lease:
    sid: str
    attempts: int
    confirmed_at: float  #: monotonic time of the last heartbeat Redis confirmed
    lost: bool = False


class Leases(dict[str, Lease]):
    """``job_id -> Lease`` of the jobs this process holds."""

    def live(self, job_id: str) -> Lease | None:
        lease = self.get(job_id)
        return None if lease is None or lease.lost else lease


class RedisJobQueue:
    """The worker's ``engine.serving.queue.JobQueue`` over the shared queue (see the module docstring)."""

    def __init__(self, queue: RedisQueue, consumer: str, leases: Leases, *, idle_wait_s: float = 1.0) -> None:
        self.queue, self.consumer, self.leases, self.idle_wait_s = queue, consumer, leases, idle_wait_s

    async def get(self) -> Job:
        while True:
            job = await self._take_safely()
            if job is not None:
                return job
            await self.queue.wait_for_work(self.idle_wait_s)

    async def _take_safely(self) -> Job | None:
        """One take and decode, safe to cancel (the gate closed): a job taken meanwhile goes back first in line."""
        task = asyncio.ensure_future(self._take())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            late = (await asyncio.gather(task, return_exceptions=True))[0]
            if isinstance(late, Job):
                await self.put(late, front=True)
            raise

    async def _take(self) -> Job | None:
        taken = await self.queue.take(self.consumer)
        if taken is None:
            return None
        self.leases[taken.job_id] = Lease(taken.sid, taken.attempts, time.monotonic())
        return await self._decode(taken)

    async def _decode(self, taken: Taken) -> Job | None:
        """The job of a payload, or ``None`` (failed at once) when it cannot be read or its reference expired."""
        try:
            shas = wire.payload_refs(taken.payload)
            references = await self.queue.references(shas)
            return wire.job_of(taken.payload, references)
        except REDIS_DOWN:
            raise
        except KeyError:
            error = "its reference image expired from the queue; please run it again"
        except Exception:
            log.exception("job=%s: unreadable payload", taken.job_id)
            error = "the job could not be read by the GPU worker"
        self.leases.pop(taken.job_id, None)
        await self.queue.finish(self.consumer, taken.sid, taken.job_id, "failed", error)
        return None

    async def put(self, job: Job, *, front: bool = False, check_caps: bool = True) -> int:
        lease = self.leases.pop(job.id, None)
        if lease is None or lease.lost:
            raise RuntimeError(f"job {job.id} is not held by this worker; only the bot enqueues new jobs")
        return await self.queue.requeue(self.consumer, lease.sid, job.id, REQUEUE_MESSAGE) or 0

    async def done(self, job_id: str) -> None:
        """Nothing: the recorder's fenced finish frees the caps."""

    async def cancel(self, job_id: str) -> Job | None:
        return None  # a worker holds no queued jobs

    async def position(self, job_id: str) -> int | None:
        return None

    async def jobs_for(self, owner_id: int) -> list[Job]:
        return []

    async def snapshot(self) -> list[Job]:
        return []  # the line is global; the bot computes positions and ETAs


class EventSink:
    """The worker's ``on_event`` listener: forwards stage/step events in order through one writer task."""

    def __init__(self, queue: RedisQueue, leases: Leases, *, min_step_s: float = 0.25) -> None:
        self.queue, self.leases, self.min_step_s = queue, leases, min_step_s
        self._pending: asyncio.Queue[Any] = asyncio.Queue()
        self._last_step: dict[str, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind not in FORWARDED or self.leases.live(event.job_id) is None:
            return
        if event.kind is EventKind.STEP:
            now = time.monotonic()
            last_step = event.step is not None and event.step == event.total
            if not last_step and now - self._last_step.get(event.job_id, 0.0) < self.min_step_s:
                return
            self._last_step[event.job_id] = now
        self._pending.put_nowait((event.job_id, wire.event_fields(event)))

    def forget(self, job_id: str) -> None:
        """The job is over here: drop its step clock."""
        self._last_step.pop(job_id, None)

    async def flush(self) -> None:
        """Until every event emitted so far is written (or dropped for an outage)."""
        done = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(done)
        await done

    async def run(self) -> None:
        """Forever: write pending events, batched per job."""
        while True:
            items = [await self._pending.get()]
            while not self._pending.empty():
                items.append(self._pending.get_nowait())
            batch: dict[str, list[dict[str, str]]] = {}
            for item in items:
                if isinstance(item, asyncio.Future):
                    await self._write(batch)
                    batch = {}
                    if not item.done():
                        item.set_result(None)
                else:
                    batch.setdefault(item[0], []).append(item[1])
            await self._write(batch)

    async def _write(self, batch: dict[str, list[dict[str, str]]]) -> None:
        for job_id, events in batch.items():
            try:
                await self.queue.add_events(job_id, events)
            except REDIS_DOWN as exc:  # progress is best effort; the final event is the script's
                raise_if_cancelled()
                log.warning("job=%s: %d progress event(s) dropped (%s)", job_id, len(events), exc)


class RedisRecorder:
    """The worker's ``JobRecorder``: results, then the fenced finish (retried through an outage for a lease)."""

    def __init__(self, queue: RedisQueue, consumer: str, leases: Leases, sink: EventSink, lease_s: float) -> None:
        self.queue, self.consumer, self.leases, self.sink, self.lease_s = queue, consumer, leases, sink, lease_s
        self.refused = 0  #: finishes fenced off (a zombie's late outcome)

    async def on_queued(self, job: Job) -> None:
        """Not called on a worker (the bot enqueues)."""

    async def on_started(self, job: Job) -> None:
        """Nothing: the take script recorded it."""

    async def on_interrupted(self, job: Job) -> None:
        """Nothing: ``RedisJobQueue.put`` requeued it."""

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        lease = self.leases.pop(job.id, None)
        if lease is None or lease.lost:
            log.warning("job=%s: its lease was lost; this outcome (%s) is dropped", job.id, outcome.status)
            return
        await self.sink.flush()
        self.sink.forget(job.id)
        blobs = await asyncio.to_thread(wire.result_blobs, outcome.results) if outcome.results else None
        deadline = time.monotonic() + self.lease_s
        while True:
            try:
                if blobs is not None:
                    await self.queue.put_results(job.id, lease.sid, blobs)
                accepted = await self.queue.finish(self.consumer, lease.sid, job.id, outcome.status.value,
                                                   outcome.error, outcome.timings)
                break
            except REDIS_DOWN as exc:
                raise_if_cancelled()
                if time.monotonic() > deadline:  # the reaper will run it again elsewhere
                    log.error("job=%s: Redis unreachable for a lease (%s); its outcome is dropped", job.id, exc)
                    return
                await asyncio.sleep(0.5)  # retry pacing through an outage
        if not accepted:
            self.refused += 1
            log.warning("job=%s: finish refused (fenced: another worker holds it now)", job.id)
