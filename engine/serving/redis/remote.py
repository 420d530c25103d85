"""RedisEngine: the bot's ``JobEngine`` over the shared queue; the bot runs no models, GPU workers
(``python -m engine serve``) run the jobs.

* ``submit`` stores the references by content, runs the enqueue script (fair order and both caps, atomically), then
  the recorder's ``on_queued`` (a refusal there cancels the job again). Redis down: :class:`QueueUnavailable`,
  whose words the bot's error ladder shows as they are.
* One reader task follows the streams ``ev:<id>`` of the jobs this process knows (``XREAD BLOCK``), replaying each
  from its start: ``subscribe`` gives history then live events, as in-process. Its transitions drive the recorder:
  ``started`` -> ``on_started``; a requeue -> ``on_interrupted``; the final event -> the results read from
  ``res:<id>:<sid>``, ``on_finished`` (the bot saves the images), then the results are dropped: each job's outcome is
  delivered once per process, and the bot's checked row transitions absorb a replay after a restart.
* ``restore`` reconciles the bot's rows with Redis: a job Redis knows is followed (its stream says what happened,
  final outcomes included); a job Redis lost is enqueued again (caps not applied).
* Positions and ETAs come from the global line and every live worker's measured speed (:mod:`.fleet`); ``position``
  events follow the queue's ``changed`` nudges. ``pause``/``resume``/``reload`` reach every worker on ``ctl:all``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.serving.events import EventKind, ProgressEvent, Subscription
from engine.serving.protocols import JobRecorder, LoggedRecorder, NullRecorder, RunningJob, WorkerStatus
from engine.serving.queue import Job, JobOutcome, JobStatus, QueueUnavailable
from engine.serving.redis import fleet, wire
from engine.serving.redis.queue import REDIS_DOWN, RedisQueue, cancel_all, raise_if_cancelled

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Followed:
    """A job this bot process follows: its events so far, live subscriptions, and the outcome once known."""

    job: Job
    persisted: asyncio.Future
    waiter: asyncio.Future
    last_id: str = "0-0"
    history: list[ProgressEvent] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    position: int | None = None
    running: bool = False

    @property
    def live(self) -> bool:
        return not self.waiter.done()


class RedisEngine:
    """See the module docstring."""

    def __init__(self, queue: RedisQueue, *, recorder: JobRecorder | None = None, lease_s: float = 30.0,
                 max_attempts: int = 2, block_ms: int = 500, keep_outcomes: int = 256) -> None:
        self.queue, self.lease_s, self.max_attempts, self.block_ms = queue, lease_s, max_attempts, block_ms
        self.keep_outcomes = keep_outcomes
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.recorder = recorder or NullRecorder()
        self._records = LoggedRecorder(self.recorder)
        self._jobs: dict[str, Followed] = {}
        self._paused = False
        self._tasks: list[asyncio.Task] = []
        self._followed = asyncio.Event()
        self.counters = dict.fromkeys(("done", "failed", "cancelled", "interrupted"), 0)

    @classmethod
    def from_settings(cls, settings: Any, recorder: JobRecorder | None = None) -> RedisEngine:
        queue = RedisQueue.from_url(settings.redis_url, namespace=settings.redis_namespace,
                                    max_per_user=settings.max_jobs_per_user, max_total=settings.max_jobs_total)
        return cls(queue, recorder=recorder, lease_s=settings.redis_lease_s, max_attempts=settings.redis_max_attempts)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._read_loop(), name="zvl-redis-events"),
                           asyncio.create_task(self._reap_loop(), name="zvl-redis-reaper"),
                           asyncio.create_task(self._position_loop(), name="zvl-redis-positions")]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop following (the jobs keep running on the workers; a restart's ``restore`` picks them up)."""
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        await self.queue.aclose()

    def pause(self) -> None:
        self._paused = True
        self._spawn(self._control({"op": "pause"}))

    def resume(self) -> None:
        self._paused = False
        self._spawn(self._control({"op": "resume"}))

    async def reload(self, component: str = "all") -> dict[str, Any]:
        t0 = time.monotonic()
        reached = await self._control({"op": "reload", "component": component})
        error = None if reached else "no GPU worker is listening"
        return {"component": component, "seconds": round(time.monotonic() - t0, 3), "error": error,
                "queued": await self._guard(self.queue.depth()), "workers": reached}

    async def _control(self, command: dict[str, Any]) -> int:
        try:
            return await self.queue.publish("ctl:all", command)
        except REDIS_DOWN:
            log.warning("control %s not sent: the queue is unreachable", command)
            return 0

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    @staticmethod
    async def _guard(call: Any) -> Any:
        """``await call``; an outage becomes :class:`QueueUnavailable` (one line for the user)."""
        try:
            return await call
        except REDIS_DOWN as exc:
            log.warning("the queue is unreachable: %s", exc)
            raise QueueUnavailable() from None

    # --- the job API ----------------------------------------------------------------------------------------------
    async def submit(self, job: Job) -> int:
        if job.id in self._jobs and self._jobs[job.id].live:
            raise ValueError(f"job {job.id} was already submitted")
        await self._guard(self.queue.put_references(await asyncio.to_thread(wire.references_of, job)))
        position = await self._guard(self.queue.enqueue(job.id, job.owner_id, wire.job_payload(job),
                                                        hint=wire.cost_hint(job), priority=job.priority))
        followed = self._follow(job, persisted=None)
        try:
            await self.recorder.on_queued(job)
        except BaseException:
            log.exception("job=%s: recording it as queued failed; the job is refused", job.id)
            followed.persisted.set_result(False)
            with contextlib.suppress(*REDIS_DOWN):
                await self.queue.cancel(job.id, "refused: it could not be recorded")
            self._jobs.pop(job.id, None)
            raise
        followed.persisted.set_result(True)
        followed.position = position
        return position

    async def restore(self, jobs: Iterable[Job]) -> list[int]:
        """Reconcile the bot's resumable rows with Redis (see the module docstring); each job's position. With
        Redis down the bot still starts: the reconciliation is retried until Redis answers."""
        jobs = list(jobs)
        fresh = [j for j in sorted(jobs, key=lambda j: j.created_at)
                 if not (j.id in self._jobs and self._jobs[j.id].live)]
        for job in fresh:  # followed at once (wait/subscribe answer), whatever Redis says
            self._follow(job, persisted=True)
        try:
            await self._reconcile(fresh)
            etas = await self._guard(self._etas())
        except QueueUnavailable:
            log.warning("restart: the queue is unreachable; %d job(s) will be reconciled when it returns", len(jobs))
            self._spawn(self._reconcile_later(fresh))
            return [0] * len(jobs)
        return [etas.get(job.id, (0, 0.0))[0] for job in jobs]

    async def _reconcile(self, jobs: list[Job]) -> None:
        for job in jobs:
            known = await self._guard(self.queue.job(job.id))
            if known is None:  # Redis lost it (or never had it): the bot's row is the truth
                await self._guard(self.queue.put_references(await asyncio.to_thread(wire.references_of, job)))
                await self._guard(self.queue.enqueue(job.id, job.owner_id, wire.job_payload(job),
                                                     hint=wire.cost_hint(job), priority=job.priority,
                                                     check_caps=False))

    async def _reconcile_later(self, jobs: list[Job]) -> None:
        while True:
            await asyncio.sleep(1.0)  # retry pacing through an outage
            try:
                await self._reconcile(jobs)
                return
            except QueueUnavailable:
                continue

    def _follow(self, job: Job, *, persisted: bool | None) -> Followed:
        loop = asyncio.get_running_loop()
        followed = Followed(job, loop.create_future(), loop.create_future())
        if persisted is not None:
            followed.persisted.set_result(persisted)
        self._jobs[job.id] = followed
        self._followed.set()
        return followed

    async def wait(self, job_id: str) -> JobOutcome:
        followed = self._jobs.get(job_id)
        if followed is None:
            raise KeyError(job_id)
        return await asyncio.shield(followed.waiter)

    async def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Queued: removed at once; running: its worker is told and ends it as cancelled. ``False``: over or
        unknown."""
        return await self._guard(self.queue.cancel(job_id, reason)) in ("cancelled", "running")

    async def position(self, job_id: str) -> tuple[int, float] | None:
        return (await self._guard(self._etas())).get(job_id)

    async def jobs_for(self, owner_id: int) -> list[tuple[Job, int, float]]:
        etas = await self._guard(self._etas())
        mine = [f.job for f in self._jobs.values() if f.live and f.job.owner_id == owner_id and f.job.id in etas]
        return sorted(((j, *etas[j.id]) for j in mine), key=lambda t: t[1])

    def subscribe(self, job_id: str) -> Subscription:
        followed = self._jobs.get(job_id)
        if followed is None:
            raise KeyError(job_id)
        sub = Subscription(job_id, list(followed.history), lambda s: s in followed.subscriptions
                           and followed.subscriptions.remove(s))
        if followed.live:
            followed.subscriptions.append(sub)
        return sub

    async def _etas(self) -> dict[str, tuple[int, float]]:
        running = [f.job.id for f in self._jobs.values() if f.live and f.running]
        return await fleet.etas(self.queue, running)

    async def status(self) -> WorkerStatus:
        try:
            workers, depth = await fleet.live_workers(self.queue), await self.queue.depth()
        except REDIS_DOWN:
            workers, depth = [], 0
        known = {job_id: f.job for job_id, f in self._jobs.items()}  # jobs of other bot processes: owner 0, kind ?
        running = [RunningJob(j["id"], getattr(known.get(j["id"]), "owner_id", 0), getattr(known.get(j["id"]), "kind",
                              "?"), j["stage"], j["step"], j["total"], 0, 0, 0.0) for w in workers for j in w.jobs]
        errors = "; ".join(f"{w.name}: {w.model_error}" for w in workers if w.model_error) or None
        loaded = {component: device for w in workers for component, device in w.loaded.items()}  # on the workers
        return WorkerStatus(bool(self._tasks), self._paused, False, False, running, depth, loaded, errors, {}, [],
                            dict(self.counters), workers=workers)

    # --- following the streams ------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            streams = {self.queue.key("ev", job_id): f.last_id for job_id, f in self._jobs.items() if f.live}
            if not streams:
                self._followed.clear()
                await self._followed.wait()
                continue
            try:
                got = await self.queue.client.xread(streams, count=100, block=self.block_ms)
            except REDIS_DOWN as exc:
                raise_if_cancelled()
                log.warning("following job events: %s (retrying)", exc)
                await asyncio.sleep(1.0)  # reconnect pacing through an outage
                continue
            for stream, entries in got or []:
                followed = self._jobs.get(stream.decode()[len(self.queue.key("ev")) + 1:])
                if followed is not None:
                    await self._dispatch_all(followed, entries)

    async def _dispatch_all(self, followed: Followed, entries: list[Any]) -> None:
        """Apply a job's new entries in order; an outage leaves the rest to be read again (the recorder's checked
        transitions absorb a repeat), a bad entry is logged and skipped."""
        for entry_id, fields in entries:
            try:
                if followed.live and await followed.persisted:
                    await self._dispatch(followed, fields)
            except REDIS_DOWN as exc:
                raise_if_cancelled()
                log.warning("job=%s: applying its events paused: %s", followed.job.id, exc)
                return
            except Exception:
                log.exception("job=%s: event %s could not be applied; skipped", followed.job.id, entry_id)
            followed.last_id = entry_id.decode()

    async def _dispatch(self, followed: Followed, fields: dict[bytes, bytes]) -> None:
        event = wire.event_of(followed.job.id, fields)
        if event.kind is EventKind.STARTED:
            followed.running, followed.position = True, 0
            await self._records.on_started(followed.job)
        elif event.kind is EventKind.QUEUED and fields.get(b"requeued"):
            followed.running, followed.position = False, event.position
            self.counters["interrupted"] += 1
            await self._records.on_interrupted(followed.job)
        if event.final:
            outcome = await outcome_of(self.queue, followed.job, event, fields.get(b"sid", b"").decode())
            await asyncio.shield(self._records.on_finished(followed.job, outcome))
            self.counters[outcome.status.value] += 1
        self._emit(followed, event)
        if event.final:
            followed.waiter.set_result(outcome)
            followed.subscriptions.clear()
            self._forget_old(followed.job.id)

    def _forget_old(self, job_id: str) -> None:
        """Keep the last ``keep_outcomes`` finished jobs answerable (``wait``/``subscribe``), as in-process."""
        self._finished[job_id] = None
        while len(self._finished) > self.keep_outcomes:
            old, _ = self._finished.popitem(last=False)
            self._jobs.pop(old, None)

    def _emit(self, followed: Followed, event: ProgressEvent) -> None:
        followed.history.append(event)
        for sub in list(followed.subscriptions):
            sub.push(event)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 6)  # the reaper's period
            try:
                await self.queue.reap(self.lease_s, self.max_attempts)
            except REDIS_DOWN:
                raise_if_cancelled()

    async def _position_loop(self) -> None:
        """Follow ``changed`` nudges (debounced; every 5 s without one, too: a nudge can be lost) and publish
        ``position`` events of followed queued jobs."""
        while True:
            try:
                async with self.queue.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.queue.key("changed"))
                    while True:
                        if await pubsub.get_message(timeout=5.0) is not None:  # else: heal a lost nudge
                            await asyncio.sleep(0.3)  # debounce: one update for a burst of nudges
                        while await pubsub.get_message(timeout=0.0) is not None:
                            pass  # the rest of the burst
                        await self._publish_positions()
            except REDIS_DOWN:
                raise_if_cancelled()
                await asyncio.sleep(1.0)  # reconnect pacing through an outage

    async def _publish_positions(self) -> None:
        # only jobs whose stream was read: their queued event comes first, as in-process
        waiting = [f for f in self._jobs.values() if f.live and not f.running and f.history]
        if not waiting:
            return
        etas = await self._etas()
        for followed in waiting:
            pos = etas.get(followed.job.id)
            if pos and pos[0] > 0 and pos[0] != followed.position:
                followed.position = pos[0]
                self._emit(followed, ProgressEvent(followed.job.id, EventKind.POSITION, position=pos[0],
                                                   eta_s=pos[1]))


async def outcome_of(queue: RedisQueue, job: Job, event: ProgressEvent, sid: str) -> JobOutcome:
    """A final event as the job's outcome: status, error, timings, and for a done job its results (read,
    then dropped from Redis: the recorder saves them)."""
    status = JobStatus(event.kind.value)
    info = await queue.job(job.id) or {}
    timings = wire.json_dict(info.get("timings"))
    if status is not JobStatus.DONE:
        return JobOutcome(job.id, status, error=event.message or None, timings=timings)
    blobs = await queue.results(job.id, sid)
    results = await asyncio.to_thread(wire.results_of, blobs)
    await queue.drop_results(job.id, sid)
    if not results:
        return JobOutcome(job.id, JobStatus.FAILED, error="its results expired from the queue", timings=timings)
    return JobOutcome(job.id, status, results=results, timings=timings)
