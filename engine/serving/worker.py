"""EngineWorker: one GPU, two overlapped stages, a fair queue in front, progress events out.

Stages. A job goes through

1. the **encode stage** (the *VL thread*): ``check_inputs`` of every cell, then per distinct VL key (reference
   pixels + VL settings + model, :func:`pipeline_vl_key`) either an embedding-cache hit (the VL model is not even
   loaded) or one Qwen3-VL extraction on the device the ``auto`` policy picked (the CPU on a 24 GB card), then
   style_delta's neutral extraction, the Qwen3 prompt embeddings (once per distinct prompt, each an embedding-cache
   hit or an encode: on hits only the text encoder is not even loaded) and CFG's negative; and
2. the **DiT stage** (the *DiT thread*, the only thread that touches the DiT): blend, denoise, decode; sweep cells
   sharing size/steps/strength/guidance/shift go through ``generate_batch`` as one batched call.

The two stage loops are joined by a hand-off of capacity 1, and the encode loop takes its next job from the queue
only once the hand-off is empty again. So while job N denoises, job N+1 is being encoded (the GPU is not left idle
during a ~5.7 s CPU extraction), at most two jobs are taken from the queue at any time, and a job submitted by a new
user still gets the next free turn. Each stage's blocking torch work runs in its own single-thread executor, created
in :meth:`EngineWorker.start`; the event loop only ever awaits futures.

Threads and ``cpu_threads``: the VL thread's initializer calls ``torch.set_num_threads(cpu_threads)``. Measured with
torch 2.13 (CPU build): the call sets the calling thread's OpenMP team size *and* a process-wide default that every
thread first touching torch afterwards inherits (the DiT thread included, when it starts later); threads that already
ran torch work (the main thread) keep their own count. So treat it as process-global: with the DiT on a GPU it only
matters for CPU work; with everything on the CPU both stages share the cores anyway.

The embedding cache (``cache``, an :class:`engine.cache.store.EmbeddingCache`) holds three kinds of entries: VL
extractions (kind ``vl``, :func:`pipeline_vl_key`), prompt embeddings (kind ``text``, :func:`pipeline_text_key`) and
the reference statistics of per-dimension normalisation and outlier masking (kind ``refstats``, under
``TextEncoder.stats_key``). The statistics are asked for by the pipeline in the VL thread, through the
``stats_provider`` the worker sets on a pipeline that has none; the provider waits for the cache's coroutines on the
event loop (``run_coroutine_threadsafe``) and computes the statistics when the cache fails or misses.

Models load lazily, each in the thread of the stage that needs it; Qwen3-VL is unloaded after a job's extractions
with ``vl_auto_unload``, or after ``vl_idle_unload_s`` without use. :meth:`EngineWorker.reload` closes the gate,
waits for the running jobs, swaps the models and reopens it; queued jobs stay queued.

Failures never stop the worker: an exception in a stage fails that job with a message fit for the user (see
:func:`user_message`), frees memory in that stage's thread and moves on. Cancellation and the per-job timeout are
cooperative: the job is finished at once (cancelled, or failed with "timed out after N s"), its abort flag is set,
and the stage thread stops at the next DiT step (a running VL forward completes, its result is dropped). Because each
stage has one thread, the next job's work queues behind the stale work instead of running beside it. The timeout
clock runs during the two stages, not while a job waits in the hand-off for the previous job's DiT.

Persistence goes through :class:`JobRecorder` (the bot implements it over its SQLite ``jobs`` table); the engine does
not import the bot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from engine.serving.faults import OOM_MESSAGE, ModelLoadError, is_oom, user_message
from engine.cache.keys import default_vl_key, is_cache_key, pipeline_text_key, pipeline_vl_key
from engine.models.loading import free_memory
from engine.serving.events import EventKind, ProgressEvent
from engine.serving.queue import (
    FairQueue,
    Job,
    JobOutcome,
    JobQueue,
    JobStatus,
    QueueFull,
    StageEstimator,
    dit_units,
    schedule_two_stage,
    text_key,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.types import StylizeRequest, StylizeResult, VLResult

__all__ = [
    "EngineWorker", "JobRecorder", "NullRecorder", "VLCache", "StageEstimator", "ModelLoadError", "Subscription",
    "user_message", "default_vl_key", "pipeline_vl_key", "pipeline_text_key", "is_oom", "free_memory", "Job",
    "JobOutcome", "JobStatus", "QueueFull", "OOM_MESSAGE",
]

log = logging.getLogger(__name__)

COMPONENTS = ("vl", "text", "dit", "all")
#: How long the VL thread waits for one embedding-cache call on the event loop (reference statistics) before it
#: computes instead.
CACHE_BRIDGE_TIMEOUT_S = 30.0


# --- protocols ------------------------------------------------------------------------------------------------------
class PipelineLike(Protocol):
    """The part of ``engine.generation.pipeline.StylePipeline`` the worker uses."""

    def check_inputs(self, request: StylizeRequest) -> None: ...
    def encode_reference(self, request: StylizeRequest) -> VLResult | None: ...
    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor: ...
    def generate(self, request: StylizeRequest, vl: VLResult | None, text_emb: torch.Tensor | None = None, *,
                 progress: Callable[[int, int], None] | None = None,
                 should_abort: Callable[[], bool] | None = None) -> StylizeResult: ...
    def load(self, component: str) -> None: ...
    def unload(self, component: str) -> None: ...
    def loaded_components(self) -> dict[str, Any]: ...


class VLCache(Protocol):
    """The embedding cache as the worker sees it (``engine.cache.store.EmbeddingCache``). With ``get(key) -> (tensors,
    meta) | None`` and ``put(key, tensors, meta, *, kind)`` as well, it also serves prompt embeddings and reference
    statistics; a cache with only these two methods serves VL extractions only."""

    async def get_vl(self, key: str) -> VLResult | None: ...
    async def put_vl(self, key: str, vl: VLResult) -> None: ...


class JobRecorder(Protocol):
    """Persistence hooks, awaited on the event loop. Exceptions are logged and otherwise ignored, except in
    ``on_queued``, whose exception refuses the job (``submit`` re-raises it and the job is not queued)."""

    async def on_queued(self, job: Job) -> None:
        """Store the new job as ``queued`` (called by ``submit``, not by ``restore``)."""

    async def on_started(self, job: Job) -> None:
        """``queued -> running``."""

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        """``queued|running -> done|failed|cancelled``; ``outcome`` has the error, timings and results."""

    async def on_interrupted(self, job: Job) -> None:
        """``running -> queued``: :meth:`EngineWorker.stop` ran out of grace and aborted the job; it was put back
        at the front of the queue and is resumable after a restart."""


class NullRecorder:
    """A recorder that stores nothing."""

    async def on_queued(self, job: Job) -> None:
        pass

    async def on_started(self, job: Job) -> None:
        pass

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        pass

    async def on_interrupted(self, job: Job) -> None:
        pass


# --- internal ------------------------------------------------------------------------------------------------
class _Aborted(Exception):
    """Internal: the run's abort flag was set while a stage awaited it."""


def _batch_key(request: StylizeRequest) -> tuple:
    """Cells with equal keys may share one batched DiT call."""
    return (request.width, request.height, request.steps, request.strength, request.guidance_scale, request.shift)


# --- per-job state ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Ticket:
    """A job known to this worker from submit/restore until it ends."""

    job: Job
    waiter: asyncio.Future
    persisted: asyncio.Future


@dataclass(eq=False)
class _Run:
    """A job taken from the queue (``stage``: ``vl`` -> ``handoff`` -> ``dit``)."""

    job: Job
    abort_fut: asyncio.Future
    started_at: float
    stage: str = "vl"
    abort: threading.Event = field(default_factory=threading.Event)
    abort_reason: str | None = None
    abort_message: str | None = None
    finished: bool = False
    timer: asyncio.TimerHandle | None = None
    budget_s: float = 0.0  #: timeout seconds left; the clock stops while the job waits for the DiT in the hand-off
    clock_from: float = 0.0
    vl_keys: list[str | None] = field(default_factory=list)
    text_cache_keys: dict[tuple, str] = field(default_factory=dict)  #: text_key -> embedding-cache key
    vls: dict[str, Any] = field(default_factory=dict)
    texts: list[Any] = field(default_factory=list)
    neutrals: dict[int, Any] = field(default_factory=dict)  #: style_delta's neutral extraction, per cell
    vl_device: str | None = None
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    step: int = 0
    total: int = 0
    cells_done: int = 0
    dit_started_at: float | None = None
    est: tuple[float, float] = (0.0, 0.0)


class _Handoff:
    """Capacity-1 hand-off from the encode loop (one producer) to the DiT loop (one consumer)."""

    def __init__(self) -> None:
        self.run: _Run | None = None
        self.closed = False
        self._vacant = asyncio.Event()
        self._vacant.set()
        self._filled = asyncio.Event()

    def put(self, run: _Run) -> None:
        assert self.run is None, "hand-off is full"
        self.run = run
        self._vacant.clear()
        self._filled.set()

    async def wait_vacant(self) -> None:
        await self._vacant.wait()

    def _take(self) -> _Run | None:
        run, self.run = self.run, None
        self._filled.clear()
        self._vacant.set()
        return run

    async def get(self) -> _Run | None:
        """The next run, or ``None`` once closed and empty."""
        while self.run is None:
            if self.closed:
                return None
            await self._filled.wait()
            self._filled.clear()
        return self._take()

    def discard(self, run: _Run) -> None:
        if self.run is run:
            self._take()

    def close(self) -> None:
        self.closed = True
        self._filled.set()


class Subscription:
    """``async for event in worker.subscribe(job_id)``: the job's events so far, then live ones, ending after the
    final event. ``close()`` stops early."""

    def __init__(self, worker: EngineWorker, job_id: str, history: list[ProgressEvent]) -> None:
        self._worker, self.job_id = worker, job_id
        self._queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
        self._ended = False
        for event in history:
            self._queue.put_nowait(event)

    def _push(self, event: ProgressEvent) -> None:
        self._queue.put_nowait(event)

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
        self._ended = True
        subs = self._worker._subs.get(self.job_id)
        if subs and self in subs:
            subs.remove(self)
            if not subs:
                del self._worker._subs[self.job_id]


# --- the worker -------------------------------------------------------------------------------------------------
class EngineWorker:
    """Serves a :class:`JobQueue` with one pipeline on one GPU. See the module docstring for the design.

    ``pipeline`` is a built pipeline, or pass ``pipeline_factory`` (called in the DiT thread on first need, and again
    by ``reload("all")``). ``settings`` needs ``max_jobs_per_user``, ``max_jobs_total``, ``job_timeout_s``,
    ``vl_auto_unload``, ``vl_idle_unload_s`` and ``cpu_threads`` (``engine.config.Settings`` has them).
    ``max_batch_pixels``: sweep cells sharing size/steps/strength/guidance/shift are batched into one DiT call up to
    this many output pixels per call (only when the pipeline has ``generate_batch``; at 1024² batching gains
    nothing on an H200, at 512² a batch of 4 is ~11% faster than 4 calls).
    """

    def __init__(
        self,
        pipeline: PipelineLike | None = None,
        *,
        settings: Any,
        pipeline_factory: Callable[[], PipelineLike] | None = None,
        queue: JobQueue | None = None,
        recorder: JobRecorder | None = None,
        cache: VLCache | None = None,
        vl_key: Callable[[StylizeRequest], str | None] | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        estimator: StageEstimator | None = None,
        max_batch_pixels: int = 1024 * 1024,
        keep_outcomes: int = 256,
    ) -> None:
        if pipeline is None and pipeline_factory is None:
            raise ValueError("EngineWorker needs a pipeline or a pipeline_factory")
        self.settings = settings
        self._pipeline = pipeline
        self._factory = pipeline_factory
        self._pipe_lock = threading.Lock()
        self.queue: JobQueue = queue if queue is not None else FairQueue.from_settings(settings)
        self.recorder: JobRecorder = recorder if recorder is not None else NullRecorder()
        self.cache = cache
        self._vl_key = vl_key
        self._identities: dict[tuple[int, str], str] = {}  # (id(pipeline), vl / "text:" folder) -> model identity
        self._negatives_done: set[tuple[int, int, bool]] = set()  # (id(pipeline), text_layer, think) encoded once
        self._listeners: list[Callable[[ProgressEvent], None]] = [on_event] if on_event else []
        self.estimator = estimator or StageEstimator()
        self.max_batch_pixels = max_batch_pixels
        self._keep = keep_outcomes
        self.timeout_s = float(getattr(settings, "job_timeout_s", 600.0))
        self.vl_auto_unload = bool(getattr(settings, "vl_auto_unload", False))
        self.preload = bool(getattr(settings, "preload", False))
        self.vl_idle_unload_s = float(getattr(settings, "vl_idle_unload_s", 0.0) or 0.0)
        self.cpu_threads = getattr(settings, "cpu_threads", None)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._vl_exec: ThreadPoolExecutor | None = None
        self._dit_exec: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task] = []
        self._handoff = _Handoff()
        self._tickets: dict[str, _Ticket] = {}
        self._runs: dict[str, _Run] = {}
        self._outcomes: OrderedDict[str, JobOutcome] = OrderedDict()
        self._history: dict[str, list[ProgressEvent]] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._last_pos: dict[str, int] = {}
        self._pos_task: asyncio.Task | None = None
        self._pos_dirty = False
        self._paused = self._reloading = self._stopping = False
        self._gate_open = asyncio.Event()
        self._gate_closed = asyncio.Event()
        self._parked = asyncio.Event()  # the encode loop is waiting at the closed gate
        self._stop_event = asyncio.Event()
        self._idle = asyncio.Event()  # no job is running
        self._idle.set()
        self._reload_lock = asyncio.Lock()
        self._stop_lock = asyncio.Lock()
        self._bg: set[asyncio.Task] = set()
        self._model_errors: dict[str, str] = {}
        self._last_vl_use = time.monotonic()
        self._vl_busy = False
        self._recent: list[dict[str, Any]] = []
        self.counters = {"done": 0, "failed": 0, "cancelled": 0, "interrupted": 0, "vl_extractions": 0,
                         "vl_cache_hits": 0,
                         "text_encodes": 0,  # distinct prompts run through the text encoder
                         "text_cache_hits": 0,  # distinct prompts served by the embedding cache
                         "refstats_computed": 0,  # reference statistics computed (cache miss or failure)
                         "refstats_cache_hits": 0}  # reference statistics served by the embedding cache
        self._update_gate()

    # --- lifecycle -------------------------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """Create the two stage threads and loops; jobs already queued (submitted or restored) start running."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._vl_exec = ThreadPoolExecutor(1, thread_name_prefix="zvl-vl", initializer=self._init_vl_thread)
        self._dit_exec = ThreadPoolExecutor(1, thread_name_prefix="zvl-dit")
        self._handoff = _Handoff()
        self._stopping = False
        self._stop_event.clear()
        self._update_gate()
        self._tasks = [asyncio.create_task(self._vl_loop(), name="zvl-encode-loop"),
                       asyncio.create_task(self._dit_loop(), name="zvl-dit-loop")]
        if self.vl_idle_unload_s > 0:
            self._tasks.append(asyncio.create_task(self._idle_unloader(), name="zvl-vl-idle-unload"))
        if self.preload:
            self._spawn(self._warm_up())
        log.info("engine worker started (timeout %ss, vl_auto_unload=%s, vl_idle_unload_s=%s, cpu_threads=%s)",
                 self.timeout_s, self.vl_auto_unload, self.vl_idle_unload_s, self.cpu_threads)

    async def _warm_up(self) -> None:
        """Load the models at start-up, each in the thread of its stage, so no user's first request waits for them
        (nor for the compile / FP8 warm-up, which runs when the DiT is built). Jobs that arrive meanwhile queue
        behind the loads in the same threads. Qwen3-VL is left to load on demand when ``vl_auto_unload`` is set.
        A failed load is reported in :meth:`status` and retried by the next job."""
        t0 = time.monotonic()
        encoders = ["text"] + ([] if self.vl_auto_unload else ["vl"])

        def load(components: list[str]) -> None:
            pipe = self._pipe()
            for component in components:
                if component == "vl" and getattr(pipe, "vl_path", True) is None:
                    continue
                self._ensure(pipe, component)

        results = await asyncio.gather(self._in_thread(self._dit_exec, load, ["dit"]),
                                       self._in_thread(self._vl_exec, load, encoders), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for exc in failed:
            log.error("warm-up: %s", getattr(exc, "detail", exc))
        if not failed:
            log.info("models loaded at start-up in %.1fs: %s", time.monotonic() - t0, self.loaded_components())

    def _init_vl_thread(self) -> None:
        if self.cpu_threads:
            torch.set_num_threads(int(self.cpu_threads))

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop taking jobs; let the running jobs finish for up to ``grace_s``; then abort them (they go back to
        the front of the queue and to the recorder's ``on_interrupted``). Queued jobs stay queued (in this object,
        and persisted by the recorder) for the next :meth:`start` or :meth:`restore`."""
        async with self._stop_lock:
            await self._stop(grace_s)

    async def _stop(self, grace_s: float) -> None:
        if not self._tasks:
            return
        self._stopping = True
        self._stop_event.set()
        self._update_gate()
        loops = self._tasks[:2]
        _done, pending = await asyncio.wait(loops, timeout=max(grace_s, 0.0))
        if pending:
            log.warning("stop: %d running job(s) did not finish within %.1fs; interrupting them", len(self._runs),
                        grace_s)
            for run in list(self._runs.values()):
                self._abort(run, "shutdown", "the bot is restarting")
            _done, pending = await asyncio.wait(loops, timeout=10.0)
            for task in pending:
                task.cancel()
        if self._bg:
            await asyncio.wait(list(self._bg), timeout=10.0)
        for task in self._tasks[2:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for run in list(self._runs.values()):  # left by a loop that had to be cancelled: back to the queue
            await self._interrupt(run)
        for ex in (self._vl_exec, self._dit_exec):
            if ex is not None:
                ex.shutdown(wait=False, cancel_futures=True)
        self._vl_exec = self._dit_exec = None
        if self._pos_task is not None:
            self._pos_task.cancel()
            self._pos_task = None
        log.info("engine worker stopped (%d job(s) left queued)", len(await self.queue.snapshot()))

    def pause(self) -> None:
        """Stop taking new jobs (running jobs finish; submissions are still accepted)."""
        self._paused = True
        self._update_gate()

    def resume(self) -> None:
        self._paused = False
        self._update_gate()

    @property
    def paused(self) -> bool:
        return self._paused

    def _update_gate(self) -> None:
        if self._paused or self._reloading or self._stopping:
            self._gate_open.clear()
            self._gate_closed.set()
        else:
            self._gate_closed.clear()
            self._gate_open.set()

    # --- public job API ---------------------------------------------------------------------------------------------
    async def submit(self, job: Job) -> int:
        """Queue ``job``; returns its 1-based position. Raises :class:`QueueFull` (user-safe ``str``) over a cap."""
        if job.id in self._tickets or job.id in self._outcomes:
            raise ValueError(f"job {job.id} was already submitted")
        ticket = self._new_ticket(job)
        try:
            position = await self.queue.put(job)
        except BaseException:
            self._forget(job.id)
            raise
        try:
            await self.recorder.on_queued(job)
        except BaseException:
            log.exception("job %s: recording it as queued failed; the job is refused", job.id)
            await self.queue.cancel(job.id)  # if the encode loop took it meanwhile, it drops it (persisted=False)
            ticket.persisted.set_result(False)
            self._forget(job.id)
            raise
        ticket.persisted.set_result(True)
        self._emit(ProgressEvent(job.id, EventKind.QUEUED, position=position, eta_s=await self._eta_of(job.id)))
        self._last_pos[job.id] = position
        self._positions_changed()
        return position

    async def restore(self, jobs: Iterable[Job]) -> list[int]:
        """Re-enqueue jobs the bot found resumable after a restart: enqueued oldest first (``created_at``), caps not
        applied, the recorder's ``on_queued`` not called (they are stored as queued already). Jobs this worker
        already knows are skipped. Returns each job's position, in the order given (0 for a skipped job)."""
        jobs = list(jobs)
        for job in sorted(jobs, key=lambda j: j.created_at):
            if job.id in self._tickets or job.id in self._runs:
                continue
            ticket = self._new_ticket(job)
            ticket.persisted.set_result(True)
            await self.queue.put(job, check_caps=False)
        etas = await self._etas()
        out = []
        for job in jobs:
            pos, eta = etas.get(job.id, (0, 0.0))
            if pos and job.id not in self._last_pos:
                self._emit(ProgressEvent(job.id, EventKind.QUEUED, position=pos, eta_s=round(eta, 2)))
                self._last_pos[job.id] = pos
            out.append(pos)
        self._positions_changed()
        return out

    def _forget(self, job_id: str) -> None:
        """Drop every trace of a job that was refused (caps, recorder)."""
        self._tickets.pop(job_id, None)
        self._history.pop(job_id, None)
        self._last_pos.pop(job_id, None)

    def _new_ticket(self, job: Job) -> _Ticket:
        loop = asyncio.get_running_loop()
        ticket = _Ticket(job, loop.create_future(), loop.create_future())
        self._tickets[job.id] = ticket
        self._history[job.id] = []
        return ticket

    async def wait(self, job_id: str) -> JobOutcome:
        """The job's outcome, once it has one. Raises ``KeyError`` for an unknown job."""
        if job_id in self._outcomes:
            return self._outcomes[job_id]
        ticket = self._tickets.get(job_id)
        if ticket is None:
            raise KeyError(job_id)
        return await asyncio.shield(ticket.waiter)

    async def cancel(self, job_id: str, by_user_id: int, is_admin: bool = False) -> bool:
        """Cancel a queued job (removed at once) or a running one (finished as cancelled at once; its thread stops
        at the next step). Returns ``False`` when the job is unknown or already over. Raises ``PermissionError``
        (user-safe) when ``by_user_id`` is neither the owner nor an admin."""
        run = self._runs.get(job_id)
        ticket = self._tickets.get(job_id)
        job = run.job if run else ticket.job if ticket else next(
            (j for j in await self.queue.snapshot() if j.id == job_id), None)
        if job is None:
            return False
        if job.owner_id != by_user_id and not is_admin:
            raise PermissionError("you can only cancel your own jobs")
        by = "its owner" if job.owner_id == by_user_id else "an admin"
        message = f"cancelled by {by}"
        if run is None:
            removed = await self.queue.cancel(job_id)
            if removed is not None:
                outcome = JobOutcome(job_id, JobStatus.CANCELLED, error=message,
                                     timings={"queue": round(max(0.0, time.time() - job.created_at), 3)})
                await self._conclude(job, outcome, started=False)
                self._positions_changed()
                return True
            run = self._runs.get(job_id)  # taken while we looked
            if run is None:
                return False
        if run.finished:
            return False
        self._abort(run, "cancel", message)
        return True

    async def position(self, job_id: str) -> tuple[int, float] | None:
        """``(position, eta_s)``: position 0 = running, 1 = next; ``eta_s`` estimates seconds until the job is
        done. ``None`` when the job is not queued or running."""
        etas = await self._etas()
        return etas.get(job_id)

    async def jobs_for(self, owner_id: int) -> list[tuple[Job, int, float]]:
        """The owner's running and queued jobs as ``(job, position, eta_s)``."""
        etas = await self._etas()
        jobs = [r.job for r in self._runs.values() if r.job.owner_id == owner_id]
        jobs += await self.queue.jobs_for(owner_id)
        return [(j, *etas[j.id]) for j in jobs if j.id in etas]

    def subscribe(self, job_id: str) -> Subscription:
        """Events of ``job_id``: those emitted so far, then live ones, ending after the final event.
        Raises ``KeyError`` for a job this worker does not know."""
        if job_id not in self._history:
            raise KeyError(job_id)
        sub = Subscription(self, job_id, list(self._history[job_id]))
        if not (self._history[job_id] and self._history[job_id][-1].final):
            self._subs.setdefault(job_id, []).append(sub)
        return sub

    def add_listener(self, callback: Callable[[ProgressEvent], None]) -> None:
        """Call ``callback(event)`` on the event loop for every event of every job (must not block)."""
        self._listeners.append(callback)

    # --- models -----------------------------------------------------------------------------------------------
    async def reload(self, component: str = "all") -> dict[str, Any]:
        """Wait for the running jobs, unload and load ``component`` (``vl``, ``text``, ``dit`` or ``all``; with a
        ``pipeline_factory``, ``all`` builds a new pipeline), then resume. Queued jobs stay queued. Returns
        ``{"component", "seconds", "error", "queued"}``; a failed load is reported there and in :meth:`status`,
        and the worker keeps serving (jobs then fail with the cause until a load succeeds)."""
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)}; got {component!r}")
        async with self._reload_lock:
            self._reloading = True
            self._update_gate()
            try:
                await self._wait_idle()
                t0 = time.monotonic()
                error = None
                try:
                    await self._in_thread(self._dit_exec, self._do_reload, component)
                except Exception as exc:  # reload answers an admin: the cause (detail) is what they need
                    error = getattr(exc, "detail", None) or str(exc)
                    log.error("reload(%s) failed: %s", component, exc, exc_info=exc)
                return {"component": component, "seconds": round(time.monotonic() - t0, 3), "error": error,
                        "queued": len(await self.queue.snapshot())}
            finally:
                self._reloading = False
                self._update_gate()

    async def _in_thread(self, executor: ThreadPoolExecutor | None, fn: Callable, *args: Any) -> Any:
        if executor is None:  # not started: a one-off thread from the loop's default executor
            return await asyncio.to_thread(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _wait_idle(self) -> None:
        """With the gate closed: wait until the encode loop is parked, no job runs, and both threads are idle."""
        if not self._tasks:
            return
        while not (self._parked.is_set() and not self._runs):
            if self._runs:
                await self._idle.wait()
            else:
                await self._parked.wait()
        await self._in_thread(self._vl_exec, lambda: None)
        await self._in_thread(self._dit_exec, lambda: None)

    def _do_reload(self, component: str) -> None:  # any stage thread, both idle
        self._identities.clear()  # the folders may hold new weights now
        self._negatives_done.clear()
        if self._factory is not None and component == "all":
            with self._pipe_lock:
                old, self._pipeline = self._pipeline, None
            if old is not None:
                old.unload("all")
                del old
            free_memory()
            pipe = self._pipe()
        else:
            pipe = self._pipe()
            pipe.unload(component)
            free_memory()
        self._load(pipe, component)
        if component in ("vl", "all"):
            self._last_vl_use = time.monotonic()

    def _pipe(self) -> PipelineLike:
        with self._pipe_lock:
            if self._pipeline is None:
                assert self._factory is not None
                try:
                    self._pipeline = self._factory()
                except Exception as exc:
                    err = ModelLoadError("pipeline", exc)
                    self._model_errors["pipeline"] = err.detail
                    raise err from exc
                self._model_errors.pop("pipeline", None)
            pipe = self._pipeline
            if getattr(pipe, "stats_provider", False) is None and self._tensor_cache() is not None:
                pipe.stats_provider = self._stats_provider  # type: ignore[attr-defined]
            return pipe

    def _load(self, pipe: PipelineLike, component: str) -> None:
        try:
            pipe.load(component)
        except Exception as exc:
            err = ModelLoadError(component, exc)
            self._model_errors[component] = err.detail
            raise err from exc
        for name in (("vl", "text", "dit", "all") if component == "all" else (component,)):
            self._model_errors.pop(name, None)

    def _ensure(self, pipe: PipelineLike, component: str) -> float:
        """Lazy load (in the thread of the stage that needs the component); returns the seconds it took."""
        try:
            loaded = pipe.loaded_components().get(component)
        except Exception:  # pragma: no cover - a pipeline without the query just loads
            loaded = False
        if loaded:
            return 0.0
        t0 = time.monotonic()
        self._load(pipe, component)
        seconds = time.monotonic() - t0
        log.info("loaded %s in %.2fs", component, seconds)
        return seconds

    def loaded_components(self) -> dict[str, Any]:
        if self._pipeline is None:
            return {}
        try:
            return dict(self._pipeline.loaded_components())
        except Exception as exc:  # pragma: no cover
            return {"error": str(exc)}

    async def _idle_unloader(self) -> None:
        interval = min(max(self.vl_idle_unload_s / 4, 0.02), 30.0)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._vl_busy or not self.loaded_components().get("vl"):
                    continue
                if time.monotonic() - self._last_vl_use >= self.vl_idle_unload_s:
                    await self._in_thread(self._vl_exec, self._unload_vl_if_idle)
            except Exception:
                log.exception("idle VL unload failed")

    def _unload_vl_if_idle(self) -> None:  # VL thread
        if self._pipeline is None or time.monotonic() - self._last_vl_use < self.vl_idle_unload_s:
            return
        if self._pipeline.loaded_components().get("vl"):
            self._pipeline.unload("vl")
            free_memory()
            log.info("unloaded Qwen3-VL after %.0fs idle", self.vl_idle_unload_s)

    # --- status -----------------------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """What an admin sees: paused, running jobs, queue depth, loaded models, recent timings, model errors."""
        now = time.monotonic()
        snapshot = await self.queue.snapshot()
        running = [{"job_id": r.job.id, "owner_id": r.job.owner_id, "kind": r.job.kind, "stage": r.stage,
                    "step": r.step, "total": r.total, "cells_done": r.cells_done, "cells": len(r.job.requests),
                    "elapsed_s": round(now - r.started_at, 3)} for r in self._runs.values()]
        return {
            "started": self.started, "paused": self._paused, "reloading": self._reloading,
            "stopping": self._stopping and self.started, "running": running, "queue_depth": len(snapshot),
            "loaded": self.loaded_components(), "model_error": "; ".join(self._model_errors.values()) or None,
            "estimates": self.estimator.as_dict(), "recent": list(self._recent), "counters": dict(self.counters),
        }

    # --- ETA ----------------------------------------------------------------------------------------------------
    async def _etas(self) -> dict[str, tuple[int, float]]:
        """``job_id -> (position, eta_s)`` for running and queued jobs (flow-shop recurrence of the two stages)."""
        now = time.monotonic()
        est = self.estimator
        out: dict[str, tuple[int, float]] = {}
        dit_free = now
        vl_ready = now
        dit_run = next((r for r in self._runs.values() if r.stage == "dit"), None)
        wait_run = next((r for r in self._runs.values() if r.stage in ("vl", "handoff")), None)
        if dit_run is not None:
            _v, d = dit_run.est
            done_frac = (dit_run.cells_done + (dit_run.step / dit_run.total if dit_run.total else 0.0)) / max(
                1, len(dit_run.job.requests))
            elapsed = now - (dit_run.dit_started_at or now)
            dit_free = now + (d * (1 - done_frac) if done_frac > 0 else max(d - elapsed, 0.0))
            out[dit_run.job.id] = (0, dit_free - now)
        if wait_run is not None:
            v, d = wait_run.est
            v_end = now if wait_run.stage == "handoff" else now + max(0.0, v - (now - wait_run.started_at))
            start = max(v_end, dit_free)
            dit_free = start + d
            vl_ready = start
            out[wait_run.job.id] = (0, dit_free - now)
        queued = await self.queue.snapshot()
        ends = schedule_two_stage([est.costs(j) for j in queued], vl_free=vl_ready, dit_free=dit_free)
        for i, (job, end) in enumerate(zip(queued, ends, strict=True), start=1):
            out[job.id] = (i, end - now)
        return out

    async def _eta_of(self, job_id: str) -> float | None:
        got = (await self._etas()).get(job_id)
        return None if got is None else round(got[1], 2)

    def _positions_changed(self) -> None:
        """Coalesced: recompute positions and emit ``position`` events for queued jobs whose position moved."""
        self._pos_dirty = True
        if self._pos_task is None or self._pos_task.done():
            self._pos_task = asyncio.get_running_loop().create_task(self._publish_positions())

    async def _publish_positions(self) -> None:
        while self._pos_dirty:
            self._pos_dirty = False
            try:
                etas = await self._etas()
            except Exception:
                log.exception("computing queue positions failed")
                return
            for job_id, (pos, eta) in etas.items():
                if pos == 0 or job_id in self._runs or job_id in self._outcomes:
                    continue
                if self._last_pos.get(job_id) != pos:
                    self._last_pos[job_id] = pos
                    self._emit(ProgressEvent(job_id, EventKind.POSITION, position=pos, eta_s=round(eta, 2)))

    # --- events ---------------------------------------------------------------------------------------------------
    def _emit(self, event: ProgressEvent) -> None:
        """On the loop thread only (threads use :meth:`_emit_threadsafe`)."""
        history = self._history.get(event.job_id)
        if history is not None:
            if history and history[-1].final:
                return  # nothing after the final event
            history.append(event)
        for sub in list(self._subs.get(event.job_id, ())):
            sub._push(event)
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("progress listener failed on %s", event.kind)

    def _emit_threadsafe(self, run: _Run, event: ProgressEvent) -> None:
        """From a stage thread: hand the event to the loop (dropped once the job is over or the loop is gone)."""
        if run.finished or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._emit_if_live, run, event)
        except RuntimeError:  # the loop was closed under a stale thread
            pass

    def _emit_if_live(self, run: _Run, event: ProgressEvent) -> None:
        if run.finished:
            return
        if event.kind is EventKind.STEP:
            run.step, run.total = event.step or 0, event.total or 0
        self._emit(event)

    # --- the encode stage -----------------------------------------------------------------------------------------
    async def _vl_loop(self) -> None:
        try:
            while True:
                await self._handoff.wait_vacant()
                job = await self._take_next()
                if job is None:
                    return
                run: _Run | None = None
                try:
                    run = await self._begin(job)
                    if run is None:
                        continue
                    await self._encode_stage(run)
                    if not run.finished:
                        run.stage = "handoff"
                        self._disarm_timer(run)
                        self._handoff.put(run)
                except Exception as exc:  # a bug in the worker itself: fail the job, keep serving
                    log.exception("encode loop error on job %s", job.id)
                    if run is not None and not run.finished:
                        await self._finish(run, JobStatus.FAILED, error=user_message(exc, job.id))
        finally:
            self._handoff.close()

    async def _take_next(self) -> Job | None:
        while True:
            if self._stopping:
                return None
            if not self._gate_open.is_set():
                self._parked.set()
                waits = [asyncio.ensure_future(self._gate_open.wait()), asyncio.ensure_future(self._stop_event.wait())]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                continue
            self._parked.clear()
            get = asyncio.ensure_future(self.queue.get())
            closed = asyncio.ensure_future(self._gate_closed.wait())
            try:
                await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
            if not get.done():
                get.cancel()
            try:
                job = await get
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                continue
            except Exception:
                log.exception("queue.get failed; retrying in 1s")
                await asyncio.sleep(1.0)
                continue
            if self._stopping:  # taken in the race with stop(): put it back first in line
                await self.queue.put(job, front=True, check_caps=False)
                return None
            return job

    async def _begin(self, job: Job) -> _Run | None:
        loop = asyncio.get_running_loop()
        run = _Run(job, loop.create_future(), time.monotonic())
        run.est = self.estimator.costs(job)
        self._runs[job.id] = run
        self._idle.clear()
        ticket = self._tickets.get(job.id)
        if ticket is None:  # put on the queue by someone else (a shared queue): track it from here
            ticket = self._new_ticket(job)
            ticket.persisted.set_result(True)
        if not await ticket.persisted:
            self._runs.pop(job.id, None)
            await self.queue.done(job.id)
            self._set_idle_if_done()
            return None
        run.budget_s = self.timeout_s
        self._arm_timer(run)
        self._last_pos.pop(job.id, None)
        self._emit(ProgressEvent(job.id, EventKind.STARTED, position=0, cells=len(job.requests)))
        self._positions_changed()
        await self._record("on_started", job)
        return run

    async def _encode_stage(self, run: _Run) -> None:
        try:
            await self._encode(run)
        except _Aborted:
            await self._finish_aborted(run)
        except Exception as exc:
            await self._fail(run, exc, "encode", self._vl_exec)

    async def _encode(self, run: _Run) -> None:
        job = run.job
        run.vl_keys, run.vl_device, run.text_cache_keys = await self._call(run, self._vl_exec, self._prepare,
                                                                            job.requests)
        extracted = False
        for key in dict.fromkeys(k for k in run.vl_keys if k is not None):
            request = job.requests[run.vl_keys.index(key)]
            vl = await self._cache_get(key)
            if vl is not None:
                self.counters["vl_cache_hits"] += 1
                run.vls[key] = vl
                self._emit(ProgressEvent(job.id, EventKind.VL_CACHED))
                continue
            self._emit(ProgressEvent(job.id, EventKind.VL_STARTED, device=run.vl_device))
            t0 = time.monotonic()
            self._vl_busy = True
            try:
                vl, load_s = await self._call(run, self._vl_exec, self._extract, request)
            finally:
                self._vl_busy = False
            run.timings["load"] += load_s
            seconds = time.monotonic() - t0 - load_s
            extracted = True
            self.counters["vl_extractions"] += 1
            self.estimator.observe_vl(seconds)
            run.timings["vl"] += seconds
            run.vls[key] = vl
            self._emit(ProgressEvent(job.id, EventKind.VL_FINISHED, seconds=round(seconds, 3), device=run.vl_device))
            if vl is not None:
                await self._cache_put(key, vl)
        if any(str(r.blend_mode) == "style_delta" for r in job.requests):
            run.neutrals, load_s = await self._call(run, self._vl_exec, self._neutrals, job.requests, run.vl_keys)
            run.timings["load"] += load_s
            extracted = extracted or bool(run.neutrals)
        if extracted and self.vl_auto_unload:
            await self._call(run, self._vl_exec, self._unload_vl)
        t0 = time.monotonic()
        cached: dict[tuple, Any] = {}
        for tkey, ckey in run.text_cache_keys.items():
            emb = await self._text_cache_get(ckey)
            if emb is not None:
                cached[tkey] = emb
        self.counters["text_cache_hits"] += len(cached)
        t1 = time.monotonic()
        run.texts, load_s = await self._call(run, self._vl_exec, self._encode_texts, job.requests, cached)
        run.timings["load"] += load_s
        encoded = {text_key(r): emb for r, emb in zip(job.requests, run.texts, strict=True)
                   if text_key(r) not in cached}
        self.counters["text_encodes"] += len(encoded)
        if encoded:
            self.estimator.observe_text((time.monotonic() - t1 - load_s) / len(encoded))
        run.timings["text"] += time.monotonic() - t0 - load_s
        for tkey, emb in encoded.items():
            if tkey in run.text_cache_keys:
                await self._text_cache_put(run.text_cache_keys[tkey], emb)
        run.timings["encode_stage"] = time.monotonic() - run.started_at
        self._check_abort(run)

    def _prepare(self, requests: list[StylizeRequest]
                 ) -> tuple[list[str | None], str | None, dict[tuple, str]]:  # VL thread
        """check_inputs; the VL key of each cell that needs an extraction (``None``: no reference or α = 0), the VL
        device, and the embedding-cache key of each distinct prompt (``{text_key: key}``; empty without a cache
        that stores tensors)."""
        pipe = self._pipe()
        for request in requests:
            pipe.check_inputs(request)
        needs = getattr(pipe, "needs_reference", None) or (lambda r: r.reference is not None)
        keys = [(self._vl_key(r) if self._vl_key is not None else pipeline_vl_key(pipe, r, self._identities))
                if needs(r) else None for r in requests]
        device = getattr(pipe, "vl_device", None) if any(k is not None for k in keys) else None
        text_keys: dict[tuple, str] = {}
        if self._tensor_cache() is not None:
            try:
                for request in requests:
                    if text_key(request) not in text_keys:
                        text_keys[text_key(request)] = pipeline_text_key(pipe, request, self._identities)
            except Exception:  # an unreadable folder: encode without the cache rather than fail the job
                log.warning("could not compute text-embedding cache keys; encoding without the cache", exc_info=True)
                text_keys = {}
        return keys, None if device is None else str(device), text_keys

    def _neutrals(self, requests: list[StylizeRequest], keys: list[str | None]) -> tuple[dict[int, Any], float]:
        """style_delta's neutral (mid-gray) extraction per cell, in the VL thread (the pipeline memoises it)."""
        pipe = self._pipe()
        out: dict[int, Any] = {}
        load_s = 0.0
        for i, request in enumerate(requests):
            if keys[i] is not None and str(request.blend_mode) == "style_delta" and hasattr(pipe, "neutral_reference"):
                load_s += self._ensure(pipe, "vl")
                out[i] = pipe.neutral_reference(request)
                self._last_vl_use = time.monotonic()
        return out, load_s

    def _extract(self, request: StylizeRequest) -> tuple[VLResult | None, float]:  # VL thread
        pipe = self._pipe()
        load_s = self._ensure(pipe, "vl")
        try:
            return pipe.encode_reference(request), load_s
        finally:
            self._last_vl_use = time.monotonic()

    def _unload_vl(self) -> None:  # VL thread
        pipe = self._pipe()
        pipe.unload("vl")
        free_memory()

    def _encode_texts(self, requests: list[StylizeRequest], cached: dict[tuple, Any] | None = None
                      ) -> tuple[list[Any], float]:  # VL thread
        """One prompt embedding per request: from ``cached`` (``{text_key: tensor}``, the cache's hits) or encoded
        once per distinct prompt. The text encoder is loaded only when something needs it (a miss, or a CFG
        negative this pipeline has not encoded yet)."""
        pipe = self._pipe()
        load_s = 0.0
        seen: dict[tuple, Any] = dict(cached or {})
        out = []
        for request in requests:
            key = text_key(request)
            if key not in seen:
                load_s += self._ensure(pipe, "text")
                seen[key] = pipe.encode_prompt(request)
            out.append(seen[key])
            if request.guidance_scale > 0 and hasattr(pipe, "negative_embedding"):
                neg = (id(pipe), int(request.text_layer), bool(request.think))
                if neg not in self._negatives_done:  # the pipeline memoises it: the encoder is needed once
                    load_s += self._ensure(pipe, "text")
                pipe.negative_embedding(request)  # CFG's negative, memoised by the pipeline: not in the DiT thread
                self._negatives_done.add(neg)
        return out, load_s

    # --- the embedding cache ------------------------------------------------------------------------------------
    def _tensor_cache(self) -> Any:
        """The cache when it stores plain tensors too (``get``/``put``: text embeddings, reference statistics)."""
        cache = self.cache
        if cache is None or not callable(getattr(cache, "get", None)) or not callable(getattr(cache, "put", None)):
            return None
        return cache

    async def _text_cache_get(self, key: str) -> torch.Tensor | None:
        cache = self._tensor_cache()
        if cache is None:
            return None
        try:
            found = await cache.get(key)
        except Exception:
            log.warning("embedding cache read failed for text %s; encoding instead", key[:12], exc_info=True)
            return None
        if found is None:
            return None
        tensors, meta = found
        emb = tensors.get("embedding")
        if emb is not None and emb.ndim == 2 and list(emb.shape) == list(meta.get("shape", ())):
            return emb
        log.warning("embedding cache entry %s is not a text embedding; encoding instead", key[:12])
        try:
            await cache.delete(key)
        except Exception:  # pragma: no cover - the cache logs its own failures
            pass
        return None

    async def _text_cache_put(self, key: str, emb: Any) -> None:
        cache = self._tensor_cache()
        if cache is None or not isinstance(emb, torch.Tensor):
            return
        try:
            await cache.put(key, {"embedding": emb}, {"shape": list(emb.shape)}, kind="text")
        except Exception:
            log.warning("embedding cache write failed for text %s", key[:12], exc_info=True)

    def _stats_provider(self, key: str, compute: Callable[[], Any]) -> Any:  # VL thread (any but the loop's)
        """``StylePipeline.stats_provider``: the reference statistics stored under ``key`` in the embedding cache
        (kind ``refstats``), or ``compute()`` and store them. Waits for the cache on the event loop; a cache that
        fails, times out or holds no usable entry means computing them."""
        from engine.conditioning.text import ReferenceStats

        cache, loop = self._tensor_cache(), self._loop
        usable = cache is not None and loop is not None and not loop.is_closed() and is_cache_key(key)
        if usable:
            try:
                usable = asyncio.get_running_loop() is not loop  # on the loop itself waiting would deadlock
            except RuntimeError:
                pass
        if usable:
            found = self._bridge(cache.get(key), f"read of reference statistics {key[:12]}")
            if found is not None:
                tensors, meta = found
                try:
                    stats = ReferenceStats.from_parts(tensors, meta)
                    if stats.key != key or stats.mean.ndim != 1 or stats.mean.shape != stats.std.shape:
                        raise ValueError("not the statistics of this key")
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("embedding cache entry %s is not usable reference statistics (%s); computing them",
                                key[:12], exc)
                else:
                    self.counters["refstats_cache_hits"] += 1
                    return stats
        stats = compute()
        self.counters["refstats_computed"] += 1
        if usable:
            self._bridge(cache.put(key, stats.tensors(), stats.metadata(), kind="refstats"),
                         f"write of reference statistics {key[:12]}")
        return stats

    def _bridge(self, coro: Any, what: str) -> Any:
        """Run a cache coroutine on the worker's event loop from a stage thread and wait for it (``None`` on any
        failure, which is logged)."""
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        except Exception:
            coro.close()
            log.warning("embedding cache %s failed: the event loop is gone", what)
            return None
        try:
            return fut.result(CACHE_BRIDGE_TIMEOUT_S)
        except Exception as exc:
            fut.cancel()
            log.warning("embedding cache %s failed (%s: %s)", what, type(exc).__name__, exc)
            return None

    async def _cache_get(self, key: str) -> VLResult | None:
        if self.cache is None:
            return None
        try:
            return await self.cache.get_vl(key)
        except Exception:
            log.warning("embedding cache read failed for %s; extracting instead", key[:12], exc_info=True)
            return None

    async def _cache_put(self, key: str, vl: VLResult) -> None:
        if self.cache is None:
            return
        try:
            await self.cache.put_vl(key, vl)
        except Exception:
            log.warning("embedding cache write failed for %s", key[:12], exc_info=True)

    # --- the DiT stage ----------------------------------------------------------------------------------------------
    async def _dit_loop(self) -> None:
        while True:
            run = await self._handoff.get()
            if run is None:
                return
            if run.finished:
                continue
            run.stage = "dit"
            run.dit_started_at = time.monotonic()
            self._arm_timer(run)
            try:
                try:
                    await self._dit_stage(run)
                except _Aborted:
                    await self._finish_aborted(run)
                except Exception as exc:
                    await self._fail(run, exc, "dit", self._dit_exec)
            except Exception as exc:  # a bug in the worker itself: fail the job, keep serving
                log.exception("DiT loop error on job %s", run.job.id)
                if not run.finished:
                    await self._finish(run, JobStatus.FAILED, error=user_message(exc, run.job.id))

    def _plan(self, requests: list[StylizeRequest]) -> list[list[int]]:
        """Cells in order, grouped into batches (same :func:`_batch_key`, up to ``max_batch_pixels``)."""
        if not hasattr(self._pipeline, "generate_batch") or len(requests) == 1:
            return [[i] for i in range(len(requests))]
        groups: list[list[int]] = []
        open_groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if str(r.blend_mode) == "style_delta":  # generate_batch takes no neutrals: alone, with its neutral
                groups.append([i])
                continue
            key = _batch_key(r)
            pixels = r.width * r.height * len(r.seeds)
            group = open_groups.get(key)
            if group is not None and sum(requests[j].width * requests[j].height * len(requests[j].seeds)
                                         for j in group) + pixels <= self.max_batch_pixels:
                group.append(i)
            else:
                group = open_groups[key] = [i]
                groups.append(group)
        return groups

    async def _dit_stage(self, run: _Run) -> None:
        job = run.job
        self._check_abort(run)
        results: list[Any] = [None] * len(job.requests)
        for group in self._plan(job.requests):
            t0 = time.monotonic()
            out, load_s = await self._call(run, self._dit_exec, self._generate, run, group)
            run.timings["load"] += load_s
            seconds = time.monotonic() - t0 - load_s
            self.estimator.observe_dit(seconds, sum(dit_units(job.requests[i]) for i in group))
            run.timings["dit"] += seconds
            for i, result in zip(group, out, strict=True):
                results[i] = result
            run.cells_done += len(group)
            run.step = run.total = 0
            self._emit(ProgressEvent(job.id, EventKind.CELL_DONE, cells_done=run.cells_done, cells=len(job.requests)))
        await self._finish(run, JobStatus.DONE, results=results)

    def _generate(self, run: _Run, group: list[int]) -> tuple[list[StylizeResult], float]:  # DiT thread
        pipe = self._pipe()
        load_s = self._ensure(pipe, "dit")
        job = run.job
        cells = len(job.requests)

        def progress(step: int, total: int) -> None:
            self._emit_threadsafe(run, ProgressEvent(job.id, EventKind.STEP, step=step, total=total, cell=group[0],
                                                     cells=cells))

        requests = [job.requests[i] for i in group]
        vls = [run.vls[run.vl_keys[i]] if run.vl_keys[i] is not None else None for i in group]
        texts = [run.texts[i] for i in group]
        if len(group) > 1:
            return list(pipe.generate_batch(requests, vls, texts, progress=progress,  # type: ignore[attr-defined]
                                            should_abort=run.abort.is_set)), load_s
        extra = {"neutral": run.neutrals[group[0]]} if group[0] in run.neutrals else {}
        return [pipe.generate(requests[0], vls[0], texts[0], progress=progress, should_abort=run.abort.is_set,
                              **extra)], load_s

    # --- shared stage machinery -------------------------------------------------------------------------------------
    def _arm_timer(self, run: _Run) -> None:
        """Run the job's timeout clock (``job_timeout_s`` over the encode and DiT stages, not the hand-off wait)."""
        run.clock_from = time.monotonic()
        run.timer = asyncio.get_running_loop().call_later(
            max(run.budget_s, 0.0), self._abort, run, "timeout", f"timed out after {self.timeout_s:g} s")

    def _disarm_timer(self, run: _Run) -> None:
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
            run.budget_s -= time.monotonic() - run.clock_from

    def _check_abort(self, run: _Run) -> None:
        if run.abort_fut.done():
            raise _Aborted(run.abort_reason)

    async def _call(self, run: _Run, executor: ThreadPoolExecutor | None, fn: Callable, *args: Any) -> Any:
        """Run ``fn`` in the stage thread; return early (raising :class:`_Aborted`) if the run is aborted first."""
        self._check_abort(run)
        assert executor is not None
        fut = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        await asyncio.wait({fut, run.abort_fut}, return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        fut.add_done_callback(_drop_result)
        raise _Aborted(run.abort_reason)

    def _abort(self, run: _Run, reason: str, message: str) -> None:
        """Set the run's abort flag (threads see it at the next step) and wake the stage awaiting it."""
        if run.finished or run.abort_fut.done():
            return
        run.abort_reason, run.abort_message = reason, message
        run.abort.set()
        run.abort_fut.set_result(reason)
        log.info("job %s: abort (%s): %s", run.job.id, reason, message)
        if run.stage == "handoff":  # no stage is awaiting it: finish it here
            self._handoff.discard(run)
            self._spawn(self._finish_aborted(run))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _finish_aborted(self, run: _Run) -> None:
        if run.abort_reason == "shutdown":
            await self._interrupt(run)
        elif run.abort_reason == "timeout":
            await self._finish(run, JobStatus.FAILED, error=run.abort_message)
        else:
            await self._finish(run, JobStatus.CANCELLED, error=run.abort_message)

    async def _fail(self, run: _Run, exc: Exception, stage: str, executor: ThreadPoolExecutor | None) -> None:
        message = user_message(exc, run.job.id)
        if message.startswith("generation failed"):
            log.error("job %s failed in the %s stage", run.job.id, stage, exc_info=exc)
        else:
            log.warning("job %s failed in the %s stage: %s: %s", run.job.id, stage, type(exc).__name__, exc)
        run.vls, run.texts = {}, []
        _clear_frames(exc)  # tracebacks pin the failed work's tensors (activations of an OOM) until cleared
        del exc
        await self._finish(run, JobStatus.FAILED, error=message)
        try:  # free memory in the stage's own thread (after the failed work), off the event loop
            await self._in_thread(executor, free_memory)
        except RuntimeError:  # the executor was shut down (stop() in progress)
            free_memory()

    def _release(self, run: _Run) -> None:
        run.finished = True
        if run.timer is not None:
            run.timer.cancel()
        self._runs.pop(run.job.id, None)
        self._handoff.discard(run)
        run.vls, run.texts, run.neutrals = {}, [], {}
        self._set_idle_if_done()

    def _set_idle_if_done(self) -> None:
        if not self._runs:
            self._idle.set()

    async def _finish(self, run: _Run, status: JobStatus, *, results: list | None = None,
                      error: str | None = None) -> None:
        if run.finished:
            return
        self._release(run)
        timings = {k: round(v, 4) for k, v in run.timings.items()}
        timings["queue"] = round(max(0.0, time.time() - run.job.created_at - (time.monotonic() - run.started_at)), 3)
        timings["total"] = round(time.monotonic() - run.started_at, 4)
        outcome = JobOutcome(run.job.id, status, results=list(results or []), error=error, timings=timings)
        self._recent.append({"job_id": run.job.id, "status": status.value, "cells": len(run.job.requests),
                             **timings})
        del self._recent[:-20]
        # persisting (the bot saves the images) and publishing run beside the next job: the stage loop that
        # finished this job goes straight on, so the GPU does not wait for PNG encoding or the database
        self._spawn(self._conclude(run.job, outcome, started=True))
        self._positions_changed()

    async def _conclude(self, job: Job, outcome: JobOutcome, *, started: bool) -> None:
        """Persist the final state (shielded from cancellation), then publish it: when a waiter wakes or the final
        event arrives, the recorder has already stored the outcome."""
        self.counters[outcome.status.value] = self.counters.get(outcome.status.value, 0) + 1
        try:
            await asyncio.shield(self._persist_final(job, outcome))
        finally:
            kind = {JobStatus.DONE: EventKind.DONE, JobStatus.FAILED: EventKind.FAILED,
                    JobStatus.CANCELLED: EventKind.CANCELLED}[outcome.status]
            self._emit(ProgressEvent(job.id, kind, message=outcome.error, cells=len(job.requests),
                                     cells_done=len([r for r in outcome.results if r is not None]) or None))
            self._subs.pop(job.id, None)  # each subscription holds the final event already
            self._outcomes[job.id] = outcome
            while len(self._outcomes) > self._keep:
                old, _ = self._outcomes.popitem(last=False)
                self._history.pop(old, None)
            self._last_pos.pop(job.id, None)
            ticket = self._tickets.pop(job.id, None)
            if ticket is not None and not ticket.waiter.done():
                ticket.waiter.set_result(outcome)

    async def _persist_final(self, job: Job, outcome: JobOutcome) -> None:
        try:
            await self.queue.done(job.id)
        except Exception:
            log.exception("job %s: queue.done failed", job.id)
        await self._record("on_finished", job, outcome)

    async def _interrupt(self, run: _Run) -> None:
        """Shutdown ran out of grace: the job goes back to the front of the queue, stored as queued again."""
        if run.finished:
            return
        self._release(run)
        self.counters["interrupted"] += 1
        job = run.job
        try:
            position = await asyncio.shield(self.queue.put(job, front=True, check_caps=False))
        except Exception:
            log.exception("job %s: putting the interrupted job back failed", job.id)
        else:
            self._emit(ProgressEvent(job.id, EventKind.QUEUED, position=position, message=run.abort_message))
            self._last_pos[job.id] = position
        await asyncio.shield(self._record("on_interrupted", job))

    async def _record(self, hook: str, *args: Any) -> None:
        try:
            await getattr(self.recorder, hook)(*args)
        except Exception:
            log.exception("recorder.%s failed for job %s", hook, args[0].id if args else "?")


def _clear_frames(exc: BaseException | None) -> None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _drop_result(fut: asyncio.Future) -> None:
    """Retrieve a dropped thread future's exception so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None:
            log.debug("work of an aborted job ended with %s: %s", type(exc).__name__, exc)
