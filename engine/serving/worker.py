"""EngineWorker: one GPU, two overlapped stages, a fair queue in front, progress events out.

A job goes through the **encode stage** (the VL thread: checks, Qwen3-VL extraction or an embedding-cache hit, the
prompt embeddings) and the **DiT stage** (the DiT thread: blend, denoise, decode); see ``engine.serving.stages``.
The two stage loops are joined by a hand-off of capacity 1, and the encode loop takes its next job from the queue
only once the hand-off is empty again. So while job N denoises, job N+1 is being encoded (the GPU is not left idle
during a ~5.7 s CPU extraction), at most two jobs are taken from the queue at any time, and a job submitted by a new
user still gets the next free turn. Each stage's blocking torch work runs in its own single-thread executor, created
in :meth:`EngineWorker.start`; the event loop only ever awaits futures.

``cpu_threads`` is process-global in effect (see ``engine.serving.runs.StageThreads.start``).

Models load lazily, each in the thread of the stage that needs it; Qwen3-VL is unloaded after a job's extractions
with ``vl_auto_unload``, or after ``vl_idle_unload_s`` without use. :meth:`EngineWorker.reload` closes the gate,
waits for the running jobs, swaps the models and reopens it; queued jobs stay queued (``engine.serving.lifecycle``).

Failures never stop the worker: an exception in a stage fails that job with a message fit for the user
(``engine.serving.faults``), frees memory in that stage's thread and moves on. Cancellation and the per-job timeout
are cooperative: the job is ended at once (cancelled, or failed with "timed out after N s"), its abort flag is set,
and the stage thread stops at the next DiT step (a running VL forward completes, its result is dropped). The timeout
clock runs during the two stages, not while a job waits in the hand-off for the previous job's DiT. Every job ends
through :meth:`EngineWorker.end`.

Persistence goes through the ``JobRecorder`` given to the constructor (the bot's over its SQLite ``jobs`` table);
the engine does not import the bot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from engine.serving import lifecycle
from engine.serving.embeddings import EncodeCache
from engine.serving.eta import PositionPublisher, StageEstimator
from engine.serving.events import EventBus, EventKind, ProgressEvent, Subscription
from engine.serving.lifecycle import Gate, Models
from engine.serving.protocols import (
    EmbeddingStore,
    JobRecorder,
    LoggedRecorder,
    NullRecorder,
    PipelineLike,
    RunningJob,
    WorkerConfig,
    WorkerStatus,
)
from engine.serving.queue import FairQueue, Job, JobOutcome, JobQueue, JobStatus
from engine.serving.runs import AbortReason, Handoff, JobRegistry, Run, Stage, StageThreads, spawn
from engine.serving.stages import DitStage, EncodeStage

__all__ = ["EngineWorker", "WorkerStatus", "RunningJob"]

log = logging.getLogger(__name__)

_FINAL_EVENT = {JobStatus.DONE: EventKind.DONE, JobStatus.FAILED: EventKind.FAILED,
                JobStatus.CANCELLED: EventKind.CANCELLED}
#: How an aborted run ends: a shutdown puts it back in the queue (resumable), a timeout fails it.
_ABORTED_STATUS = {AbortReason.SHUTDOWN: JobStatus.QUEUED, AbortReason.TIMEOUT: JobStatus.FAILED,
                   AbortReason.CANCEL: JobStatus.CANCELLED}


class EngineWorker:
    """Serves a :class:`JobQueue` with one pipeline (or a ``pipeline_factory``, called in a stage thread on first
    need and again by ``reload("all")``) on one GPU. See the module docstring for the design."""

    def __init__(self, pipeline: PipelineLike | None = None, *, config: WorkerConfig,
                 pipeline_factory: Callable[[], PipelineLike] | None = None, queue: JobQueue | None = None,
                 recorder: JobRecorder | None = None, cache: EmbeddingStore | None = None,
                 on_event: Callable[[ProgressEvent], None] | None = None,
                 estimator: StageEstimator | None = None) -> None:
        self.config = config
        self.queue: JobQueue = queue or FairQueue(config.max_jobs_per_user, config.max_jobs_total)
        self.recorder: JobRecorder = recorder or NullRecorder()
        self._records = LoggedRecorder(self.recorder)
        self.estimator = estimator or StageEstimator()
        self._models = Models(pipeline, pipeline_factory)
        self._registry = JobRegistry(config.keep_outcomes)
        self._bus = EventBus(self._registry.get, [on_event] if on_event else [])
        self._positions = PositionPublisher(self._registry, self.queue, self.estimator, self.emit)
        self._gate, self._threads, self._handoff = Gate(), StageThreads(), Handoff()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._reload_lock, self._stop_lock = asyncio.Lock(), asyncio.Lock()
        self._recent: list[dict[str, Any]] = []
        self.counters = dict.fromkeys(("done", "failed", "cancelled", "interrupted", "vl_extractions",
                                       "vl_cache_hits", "text_encodes", "text_cache_hits", "refstats_computed",
                                       "refstats_cache_hits"), 0)
        self._cache = EncodeCache(cache)

    # --- lifecycle -------------------------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether the stage loops run."""
        return bool(self._tasks)

    @property
    def paused(self) -> bool:
        """Whether new jobs wait in the queue (:meth:`pause`)."""
        return self._gate.paused

    async def start(self) -> None:
        """Create the two stage threads and loops; jobs already queued (submitted or restored) start running."""
        if self._tasks:
            return
        cfg = self.config
        self._bus.bind(asyncio.get_running_loop())
        self._threads.start(cfg.cpu_threads)
        self._handoff = Handoff()
        self._gate.stopping = False
        self._gate.stopped.clear()
        self._gate.update()
        stage_args = (self, self._bus, self._models, self._threads, self._handoff, self.estimator, cfg,
                      self.counters)
        encode = EncodeStage(*stage_args, gate=self._gate, queue=self.queue, cache=self._cache)
        self._tasks = [asyncio.create_task(encode.loop(), name="zvl-encode-loop"),
                       asyncio.create_task(DitStage(*stage_args).loop(), name="zvl-dit-loop")]
        if cfg.vl_idle_unload_s > 0:
            self._tasks.append(asyncio.create_task(
                lifecycle.unload_idle_vl(self._models, self._threads, cfg.vl_idle_unload_s), name="zvl-vl-idle"))
        if cfg.preload:
            spawn(self._background, lifecycle.warm_up(self._models, self._threads, with_vl=not cfg.vl_auto_unload))
        log.info("engine worker started (%s)", cfg)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking jobs; let the running jobs finish for up to ``grace_s``; then abort them (they go back to
        the front of the queue and to the recorder's ``on_interrupted``). Queued jobs stay queued (in this object,
        and persisted by the recorder) for the next :meth:`start` or :meth:`restore`."""
        async with self._stop_lock:
            if not self._tasks:
                return
            self._gate.stopping = True
            self._gate.stopped.set()
            self._gate.update()
            await lifecycle.drain(self._tasks[:2], grace_s, lambda: sum(
                self._abort(run, AbortReason.SHUTDOWN, "the bot is restarting") for run in self._registry.runs()))
            if self._background:
                await asyncio.wait(list(self._background), timeout=10.0)
            for task in self._tasks[2:]:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            for run in self._registry.runs():  # left by a loop that had to be cancelled: back to the queue
                await self.end(run, JobStatus.QUEUED)
            self._threads.shutdown()
            self._positions.cancel()
            log.info("engine worker stopped (%d job(s) left queued)", len(await self.queue.snapshot()))

    def pause(self) -> None:
        """Stop taking new jobs (running jobs finish; submissions are still accepted)."""
        self._gate.paused = True
        self._gate.update()

    def resume(self) -> None:
        """Take jobs again."""
        self._gate.paused = False
        self._gate.update()

    async def reload(self, component: str = "all") -> dict[str, Any]:
        """Wait for the running jobs, unload and load ``component`` (``vl``, ``text``, ``dit`` or ``all``; with a
        ``pipeline_factory``, ``all`` builds a new pipeline), then resume. Queued jobs stay queued. Returns
        ``{"component", "seconds", "error", "queued"}``; a failed load is reported there and in :meth:`status`."""
        async with self._reload_lock:
            return await lifecycle.reload(component, self._models, self._gate, self._registry, self._threads,
                                          self.queue, started=self.started)

    # --- the job API --------------------------------------------------------------------------------------------
    async def submit(self, job: Job) -> int:
        """Queue ``job``; returns its 1-based position. Raises :class:`QueueFull` (user-safe ``str``) over a cap."""
        if self._registry.get(job.id) is not None:
            raise ValueError(f"job {job.id} was already submitted")
        state = self._registry.add(job)
        try:
            position = await self.queue.put(job)
        except BaseException:
            self._registry.forget(job.id)
            raise
        try:
            await self.recorder.on_queued(job)
        except BaseException:
            log.exception("job=%s: recording it as queued failed; the job is refused", job.id)
            await self.queue.cancel(job.id)  # if the encode loop took it meanwhile, it drops it (persisted=False)
            state.persisted.set_result(False)
            self._registry.forget(job.id)
            raise
        state.persisted.set_result(True)
        self.emit(ProgressEvent(job.id, EventKind.QUEUED, position=position,
                                eta_s=await self._positions.eta_of(job.id)))
        state.position = position
        self._positions.changed()
        return position

    async def restore(self, jobs: Iterable[Job]) -> list[int]:
        """Re-enqueue jobs the bot found resumable after a restart: enqueued oldest first (``created_at``), caps not
        applied, the recorder's ``on_queued`` not called (they are stored as queued already). Jobs this worker
        already knows are skipped. Returns each job's position, in the order given (0 for a skipped job)."""
        jobs = list(jobs)
        for job in sorted(jobs, key=lambda j: j.created_at):
            known = self._registry.get(job.id)
            if known is not None and known.live:
                continue
            self._registry.add(job, persisted=True)
            await self.queue.put(job, check_caps=False)
        etas = await self._positions.etas()
        out = []
        for job in jobs:
            pos, eta = etas.get(job.id, (0, 0.0))
            state = self._registry.get(job.id)
            if pos and state is not None and state.position is None:
                self.emit(ProgressEvent(job.id, EventKind.QUEUED, position=pos, eta_s=round(eta, 2)))
                state.position = pos
            out.append(pos)
        self._positions.changed()
        return out

    async def wait(self, job_id: str) -> JobOutcome:
        """The job's outcome, once it has one. Raises ``KeyError`` for an unknown job."""
        state = self._registry.get(job_id)
        if state is None:
            raise KeyError(job_id)
        return state.outcome or await asyncio.shield(state.waiter)

    async def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued job (removed at once) or a running one (ended as cancelled at once; its thread stops at
        the next step); ``reason`` is the outcome's error. ``False`` when the job is unknown or already over. Who
        may cancel is the caller's decision."""
        state = self._registry.get(job_id)
        if state is not None and state.run is None and state.live:
            removed = await self.queue.cancel(job_id)
            if removed is not None:
                outcome = JobOutcome(job_id, JobStatus.CANCELLED, error=reason,
                                     timings={"queue": round(max(0.0, time.time() - removed.created_at), 3)})
                await self._conclude(removed, outcome)
                self._positions.changed()
                return True
        state = self._registry.get(job_id)  # it may have been taken while we looked
        run = state.run if state is not None else None
        return run is not None and self._abort(run, AbortReason.CANCEL, reason)

    async def position(self, job_id: str) -> tuple[int, float] | None:
        """``(position, eta_s)``: position 0 = running, 1 = next; ``eta_s`` estimates seconds until the job is
        done. ``None`` when the job is not queued or running."""
        return (await self._positions.etas()).get(job_id)

    async def jobs_for(self, owner_id: int) -> list[tuple[Job, int, float]]:
        """The owner's running and queued jobs as ``(job, position, eta_s)``."""
        etas = await self._positions.etas()
        jobs = [r.job for r in self._registry.runs() if r.job.owner_id == owner_id]
        jobs += await self.queue.jobs_for(owner_id)
        return [(j, *etas[j.id]) for j in jobs if j.id in etas]

    def subscribe(self, job_id: str) -> Subscription:
        """Events of ``job_id``: those emitted so far, then live ones, ending after the final event.
        Raises ``KeyError`` for a job this worker does not know."""
        return self._bus.subscribe(job_id)

    async def status(self) -> WorkerStatus:
        """What an admin sees: state, running jobs, queue depth, loaded models, recent timings, model errors."""
        now = time.monotonic()
        running = [RunningJob(r.job.id, r.job.owner_id, r.job.kind, str(r.stage), r.step, r.total, r.cells_done,
                              len(r.job.requests), round(now - r.started_at, 3)) for r in self._registry.runs()]
        gate = self._gate
        return WorkerStatus(self.started, gate.paused, gate.reloading, gate.stopping and self.started, running,
                            len(await self.queue.snapshot()), self._models.loaded(),
                            "; ".join(self._models.errors.values()) or None, self.estimator.as_dict(),
                            list(self._recent), dict(self.counters))

    # --- the stages' host (engine.serving.stages.StageHost) -------------------------------------------------------
    def emit(self, event: ProgressEvent) -> None:
        """Publish one event (on the loop thread)."""
        self._bus.emit(event)

    def on_timeout(self, run: Run) -> None:
        """The run's timeout clock ran out."""
        self._abort(run, AbortReason.TIMEOUT, f"timed out after {self.config.job_timeout_s:g} s")

    async def begin(self, job: Job) -> Run | None:
        """A job taken from the queue starts (``None``: the recorder refused it; it is dropped)."""
        run = Run(job, asyncio.get_running_loop().create_future(), time.monotonic(), self.estimator.costs(job))
        state = self._registry.get(job.id)
        if state is None or not state.live:  # put on the queue by someone else (a shared queue): track it here
            state = self._registry.add(job, persisted=True)
        self._registry.start_run(run)
        if not await state.persisted:
            self._registry.end_run(run)
            await self.queue.done(job.id)
            return None
        run.budget_s = self.config.job_timeout_s
        run.arm(self.on_timeout)
        self.emit(ProgressEvent(job.id, EventKind.STARTED, position=0, cells=len(job.requests)))
        self._positions.changed()
        await self._records.on_started(job)
        return run

    async def end_aborted(self, run: Run) -> None:
        """End an aborted run as its reason says."""
        await self.end(run, _ABORTED_STATUS[run.abort_reason or AbortReason.CANCEL], error=run.abort_message)

    # --- ending a job -------------------------------------------------------------------------------------------
    def _abort(self, run: Run, reason: AbortReason, message: str) -> bool:
        if not run.request_abort(reason, message):
            return False
        if run.stage is Stage.HANDOFF:  # no stage is awaiting it: end it here
            self._handoff.discard(run)
            spawn(self._background, self.end_aborted(run))
        return True

    async def end(self, run: Run, status: JobStatus, *, results: list | None = None,
                  error: str | None = None) -> None:
        """The one way a run ends: ``QUEUED`` puts it back first in line (a shutdown ran out of grace); a final
        status is persisted and published beside the next job."""
        if run.finished:
            return
        run.release()
        self._registry.end_run(run)
        self._handoff.discard(run)
        if status is JobStatus.QUEUED:
            await self._requeue(run)
            return
        timings = {k: round(v, 4) for k, v in run.timings.items()}
        timings["queue"] = round(max(0.0, time.time() - run.job.created_at - (time.monotonic() - run.started_at)), 3)
        timings["total"] = round(time.monotonic() - run.started_at, 4)
        outcome = JobOutcome(run.job.id, status, results=list(results or []), error=error, timings=timings)
        self._recent = [*self._recent[-19:], {"job_id": run.job.id, "status": status.value,
                                              "cells": len(run.job.requests), **timings}]
        # persisting (the bot saves the images) and publishing run beside the next job: the stage loop that
        # ended this job goes straight on, so the GPU does not wait for PNG encoding or the database
        spawn(self._background, self._conclude(run.job, outcome))
        self._positions.changed()

    async def _conclude(self, job: Job, outcome: JobOutcome) -> None:
        """Persist the final state (shielded from cancellation), then publish it: when a waiter wakes or the final
        event arrives, the recorder has already stored the outcome."""
        self.counters[outcome.status.value] += 1
        try:
            await asyncio.shield(self._persist(job, outcome))
        finally:
            self.emit(ProgressEvent(job.id, _FINAL_EVENT[outcome.status], message=outcome.error,
                                    cells=len(job.requests),
                                    cells_done=len([r for r in outcome.results if r is not None]) or None))
            self._registry.finish(job.id, outcome)

    async def _persist(self, job: Job, outcome: JobOutcome) -> None:
        try:
            await self.queue.done(job.id)
        except Exception:
            log.exception("job=%s: queue.done failed", job.id)
        await self._records.on_finished(job, outcome)

    async def _requeue(self, run: Run) -> None:
        self.counters["interrupted"] += 1
        job = run.job
        try:
            position = await asyncio.shield(self.queue.put(job, front=True, check_caps=False))
        except Exception:
            log.exception("job=%s: putting the interrupted job back failed", job.id)
        else:
            self.emit(ProgressEvent(job.id, EventKind.QUEUED, position=position, message=run.abort_message))
            state = self._registry.get(job.id)
            if state is not None:
                state.position = position
        await asyncio.shield(self._records.on_interrupted(job))
