"""The worker's life around its jobs: the models it serves with, the gate in front of the queue, warm-up, reload,
the idle VL unloader and the drain at stop.

* :class:`Models` holds the pipeline (built lazily by the factory, in the thread of the stage that first needs it)
  and loads its components on demand; a failed load is kept as a model error for the status and retried by the
  next job.
* :class:`Gate` is what the encode loop passes before taking a job: closed while paused, reloading or stopping.
* :func:`warm_up` loads the models at start-up, each in its stage's thread; :func:`reload` closes the gate, waits
  until nothing runs, swaps the models and reopens it (queued jobs stay queued); :func:`unload_idle_vl` unloads
  Qwen3-VL after ``vl_idle_unload_s`` without use; :func:`drain` is the first half of the stop sequence (wait for
  the grace, then abort what still runs).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.models.loading import free_memory
from engine.serving.faults import ModelLoadError
from engine.serving.protocols import COMPONENTS, PipelineLike
from engine.serving.runs import JobRegistry, StageThreads

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.serving.queue import Job, JobQueue

log = logging.getLogger(__name__)


class Models:
    """The pipeline and its components' load state (thread-safe; loads run in the stage threads)."""

    def __init__(self, pipeline: PipelineLike | None, factory: Callable[[], PipelineLike] | None) -> None:
        if pipeline is None and factory is None:
            raise ValueError("EngineWorker needs a pipeline or a pipeline_factory")
        self._pipeline, self._factory = pipeline, factory
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}  #: component -> what went wrong at its last load
        self.identities: dict[tuple[int, str], str] = {}  #: (id(pipeline), folder) -> model identity
        self.last_vl_use = time.monotonic()
        self.vl_busy = False

    def pipe(self) -> PipelineLike:
        """The pipeline, built by the factory on first need."""
        with self._lock:
            if self._pipeline is None:
                assert self._factory is not None
                try:
                    self._pipeline = self._factory()
                except Exception as exc:
                    err = ModelLoadError("pipeline", exc)
                    self.errors["pipeline"] = err.detail
                    raise err from exc
                self.errors.pop("pipeline", None)
            return self._pipeline

    def load(self, pipe: PipelineLike, component: str) -> None:
        """Load ``component`` now, keeping a failure as a model error."""
        try:
            pipe.load(component)
        except Exception as exc:
            err = ModelLoadError(component, exc)
            self.errors[component] = err.detail
            raise err from exc
        for name in (COMPONENTS if component == "all" else (component,)):
            self.errors.pop(name, None)

    def ensure(self, pipe: PipelineLike, component: str) -> float:
        """Lazy load (in the thread of the stage that needs the component); returns the seconds it took."""
        if pipe.loaded_components().get(component):
            return 0.0
        t0 = time.monotonic()
        self.load(pipe, component)
        seconds = time.monotonic() - t0
        log.info("loaded %s in %.2fs", component, seconds)
        return seconds

    def loaded(self) -> dict[str, Any]:
        """``{component: device or True}`` of what is in memory now (nothing before the pipeline is built)."""
        if self._pipeline is None:
            return {}
        try:
            return dict(self._pipeline.loaded_components())
        except Exception as exc:  # pragma: no cover
            return {"error": str(exc)}

    def used_vl(self) -> None:
        """Qwen3-VL was just used (the idle unloader's clock)."""
        self.last_vl_use = time.monotonic()

    def unload_vl(self) -> None:  # VL thread
        """Unload Qwen3-VL and free its memory."""
        self.pipe().unload("vl")
        free_memory()

    def unload_vl_if_idle(self, idle_s: float) -> None:  # VL thread
        """Unload Qwen3-VL when it was not used for ``idle_s``."""
        if self._pipeline is None or time.monotonic() - self.last_vl_use < idle_s:
            return
        if self._pipeline.loaded_components().get("vl"):
            self._pipeline.unload("vl")
            free_memory()
            log.info("unloaded Qwen3-VL after %.0fs idle", idle_s)

    def swap(self, component: str) -> None:  # any stage thread, both idle
        """Unload and load ``component``; with a factory, ``all`` builds a new pipeline."""
        self.identities.clear()  # the folders may hold new weights now
        if self._factory is not None and component == "all":
            with self._lock:
                old, self._pipeline = self._pipeline, None
            if old is not None:
                old.unload("all")
                del old
            free_memory()
            pipe = self.pipe()
        else:
            pipe = self.pipe()
            pipe.unload(component)
            free_memory()
        self.load(pipe, component)
        if component in ("vl", "all"):
            self.used_vl()


class Gate:
    """Open unless paused, reloading or stopping; the encode loop waits at it before taking a job."""

    def __init__(self) -> None:
        self.paused = self.reloading = self.stopping = False
        self._open = asyncio.Event()
        self._closed = asyncio.Event()
        self.parked = asyncio.Event()  #: the encode loop is waiting at the closed gate
        self.stopped = asyncio.Event()  #: set by stop: the encode loop takes no more jobs
        self.update()

    def update(self) -> None:
        """Open or close the gate after a flag changed."""
        if self.paused or self.reloading or self.stopping:
            self._open.clear()
            self._closed.set()
        else:
            self._closed.clear()
            self._open.set()

    async def _wait_open(self) -> None:
        self.parked.set()
        waits = [asyncio.ensure_future(self._open.wait()), asyncio.ensure_future(self.stopped.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def take_next(self, queue: JobQueue) -> Job | None:
        """The next job through the gate, or ``None`` once stopping (a job taken in the race goes back first)."""
        while not self.stopping:
            if not self._open.is_set():
                await self._wait_open()
                continue
            self.parked.clear()
            job = await self._get_unless_closed(queue)
            if job is None:
                continue
            if self.stopping:  # taken in the race with stop(): put it back first in line
                await queue.put(job, front=True, check_caps=False)
                return None
            return job
        return None

    async def _get_unless_closed(self, queue: JobQueue) -> Job | None:
        get = asyncio.ensure_future(queue.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not get.done():
            get.cancel()
        try:
            return await get
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return None
        except Exception:
            log.exception("queue.get failed; retrying in 1s")
            await asyncio.sleep(1.0)
            return None


async def warm_up(models: Models, threads: StageThreads, *, with_vl: bool) -> None:
    """Load the models at start-up, each in the thread of its stage, so no user's first request waits for them
    (nor for the compile / FP8 warm-up, which runs when the DiT is built). Jobs that arrive meanwhile queue behind
    the loads in the same threads. A failed load is reported in the status and retried by the next job."""
    t0 = time.monotonic()

    def load(components: list[str]) -> None:
        pipe = models.pipe()
        for component in components:
            if component == "vl" and pipe.vl_device is None:  # no Qwen3-VL configured
                continue
            models.ensure(pipe, component)

    encoders = ["text", "vl"] if with_vl else ["text"]
    results = await asyncio.gather(threads.run_in(threads.dit, load, ["dit"]),
                                   threads.run_in(threads.vl, load, encoders), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed:
        log.error("warm-up: %s", exc.detail if isinstance(exc, ModelLoadError) else exc)
    if not failed:
        log.info("models loaded at start-up in %.1fs: %s", time.monotonic() - t0, models.loaded())


async def unload_idle_vl(models: Models, threads: StageThreads, idle_s: float) -> None:
    """Forever: unload Qwen3-VL (in the VL thread) once it was idle for ``idle_s``."""
    interval = min(max(idle_s / 4, 0.02), 30.0)
    while True:
        await asyncio.sleep(interval)
        try:
            if models.vl_busy or not models.loaded().get("vl"):
                continue
            if time.monotonic() - models.last_vl_use >= idle_s:
                await threads.run_in(threads.vl, models.unload_vl_if_idle, idle_s)
        except Exception:
            log.exception("idle VL unload failed")


async def wait_idle(gate: Gate, registry: JobRegistry, threads: StageThreads, started: bool) -> None:
    """With the gate closed: wait until the encode loop is parked, no job runs, and both threads are idle."""
    if not started:
        return
    while not (gate.parked.is_set() and not registry.runs()):
        if registry.runs():
            await registry.no_runs.wait()
        else:
            await gate.parked.wait()
    await threads.run_in(threads.vl, lambda: None)
    await threads.run_in(threads.dit, lambda: None)


async def reload(component: str, models: Models, gate: Gate, registry: JobRegistry, threads: StageThreads,
                 queue: JobQueue, *, started: bool) -> dict[str, Any]:
    """Close the gate, wait until idle, swap ``component`` in the DiT thread, reopen (see ``EngineWorker.reload``)."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {', '.join(COMPONENTS)}; got {component!r}")
    gate.reloading = True
    gate.update()
    try:
        await wait_idle(gate, registry, threads, started)
        t0 = time.monotonic()
        error = None
        try:
            await threads.run_in(threads.dit, models.swap, component)
        except Exception as exc:  # reload answers an admin: the cause (detail) is what they need
            error = exc.detail if isinstance(exc, ModelLoadError) else str(exc)
            log.error("reload(%s) failed: %s", component, exc, exc_info=exc)
        return {"component": component, "seconds": round(time.monotonic() - t0, 3), "error": error,
                "queued": len(await queue.snapshot())}
    finally:
        gate.reloading = False
        gate.update()


async def drain(loops: list[asyncio.Task], grace_s: float, abort_running: Callable[[], int]) -> None:
    """Wait up to ``grace_s`` for the stage loops to end; then abort what runs, and cancel a loop still stuck
    after 10 s more."""
    _done, pending = await asyncio.wait(loops, timeout=max(grace_s, 0.0))
    if not pending:
        return
    count = abort_running()
    log.warning("stop: %d running job(s) did not finish within %.1fs; interrupting them", count, grace_s)
    _done, pending = await asyncio.wait(loops, timeout=10.0)
    for task in pending:
        task.cancel()
