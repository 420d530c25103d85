"""Per-job state: the registry of every job the worker knows, the record of a running job, and the stage threads.

* :class:`JobRegistry` holds ONE :class:`JobState` per job id, from ``submit``/``restore`` until the outcome is
  pruned (``keep_outcomes``): its waiter and persisted futures, its :class:`Run` while it runs, its last published
  position, its outcome, its event history and live subscriptions.
* :class:`Run` is a job taken from the queue: its stage (``vl`` -> ``handoff`` -> ``dit``), abort flag and reason,
  timeout clock, and what the encode stage produced for the DiT stage.
* :class:`StageThreads` owns the two single-thread executors and runs a call in one of them, returning early
  (:class:`Aborted`) when the run is aborted first; :class:`Handoff` joins the two stage loops (capacity 1).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from engine.serving.events import ProgressEvent, Subscription
from engine.serving.faults import drop_result

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.serving.queue import Job, JobOutcome

log = logging.getLogger(__name__)


class AbortReason(str, Enum):
    """Why a running job was aborted; each ends the job differently."""

    #: ``stop()`` ran out of grace: the job goes back to the front of the queue, stored as queued again.
    SHUTDOWN = "shutdown"
    #: ``job_timeout_s`` passed during its stages: failed.
    TIMEOUT = "timeout"
    #: ``cancel()``: cancelled.
    CANCEL = "cancel"


class Aborted(Exception):
    """The run's abort flag was set while a stage awaited it."""


class Stage(str, Enum):
    """Where a running job is."""

    ENCODE = "vl"
    HANDOFF = "handoff"
    DIT = "dit"

    def __str__(self) -> str:
        return self.value


@dataclass(eq=False)
class Run:
    """A job taken from the queue."""

    job: Job
    abort_fut: asyncio.Future
    started_at: float
    est: tuple[float, float] = (0.0, 0.0)  #: estimated (encode, DiT) seconds
    stage: Stage = Stage.ENCODE
    abort: threading.Event = field(default_factory=threading.Event)
    abort_reason: AbortReason | None = None
    abort_message: str | None = None
    finished: bool = False
    timer: asyncio.TimerHandle | None = None
    budget_s: float = 0.0  #: timeout seconds left; the clock stops while the job waits for the DiT in the hand-off
    clock_from: float = 0.0
    vl_keys: list[str | None] = field(default_factory=list)
    text_cache_keys: dict[tuple, str] = field(default_factory=dict)  #: text identity -> embedding-cache key
    vls: dict[str, Any] = field(default_factory=dict)
    texts: list[Any] = field(default_factory=list)
    neutrals: dict[int, Any] = field(default_factory=dict)  #: style_delta's neutral extraction, per cell
    more: dict[int, Any] = field(default_factory=dict)  #: further/negative references' keys (serving.references)
    vl_device: str | None = None
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    step: int = 0
    total: int = 0
    cells_done: int = 0
    dit_started_at: float | None = None

    @property
    def aborted(self) -> bool:
        """Whether an abort was requested (the stage awaiting it wakes)."""
        return self.abort_fut.done()

    def check_abort(self) -> None:
        """Raise :class:`Aborted` once an abort was requested."""
        if self.aborted:
            raise Aborted(self.abort_reason)

    def request_abort(self, reason: AbortReason, message: str) -> bool:
        """Set the abort flag (threads see it at the next step); ``False`` when already over or aborted."""
        if self.finished or self.aborted:
            return False
        self.abort_reason, self.abort_message = reason, message
        self.abort.set()
        self.abort_fut.set_result(reason)
        log.info("job=%s abort=%s: %s", self.job.id, reason.value, message)
        return True

    def arm(self, on_timeout: Callable[[Run], None]) -> None:
        """Run the timeout clock for what is left of the budget."""
        self.clock_from = time.monotonic()
        self.timer = asyncio.get_running_loop().call_later(max(self.budget_s, 0.0), on_timeout, self)

    def disarm(self) -> None:
        """Stop the timeout clock, keeping what is left of the budget."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.budget_s -= time.monotonic() - self.clock_from

    def release(self) -> None:
        """The job is over: stop the clock and drop its tensors."""
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        self.vls, self.texts, self.neutrals, self.more = {}, [], {}, {}


@dataclass(eq=False)
class JobState:
    """Everything the worker knows about one job id."""

    job: Job
    waiter: asyncio.Future  #: resolves to the outcome
    persisted: asyncio.Future  #: ``True`` once the recorder stored it as queued, ``False`` if it refused it
    run: Run | None = None
    position: int | None = None  #: the last position published in an event
    outcome: JobOutcome | None = None
    history: list[ProgressEvent] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)

    @property
    def live(self) -> bool:
        """Queued or running (no outcome yet)."""
        return self.outcome is None


class JobRegistry:
    """One :class:`JobState` per job id; finished ones are kept for the last ``keep`` outcomes."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._states: dict[str, JobState] = {}
        self._running: dict[str, Run] = {}  # in the order the runs began
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.no_runs = asyncio.Event()
        self.no_runs.set()

    def add(self, job: Job, *, persisted: bool | None = None) -> JobState:
        """Track ``job`` (replacing a finished state of the same id)."""
        loop = asyncio.get_running_loop()
        state = JobState(job, loop.create_future(), loop.create_future())
        if persisted is not None:
            state.persisted.set_result(persisted)
        self._finished.pop(job.id, None)
        self._states[job.id] = state
        return state

    def get(self, job_id: str) -> JobState | None:
        """The job's state, or ``None``."""
        return self._states.get(job_id)

    def forget(self, job_id: str) -> None:
        """Drop every trace of a job that was refused (caps, recorder)."""
        self._states.pop(job_id, None)

    def runs(self) -> list[Run]:
        """The running jobs, in the order they began."""
        return list(self._running.values())

    def start_run(self, run: Run) -> None:
        """``run`` is taken from the queue."""
        self._running[run.job.id] = run
        self.no_runs.clear()
        state = self._states.get(run.job.id)
        if state is not None:
            state.run, state.position = run, None

    def end_run(self, run: Run) -> None:
        """``run`` is over (whatever the outcome)."""
        if self._running.get(run.job.id) is run:
            del self._running[run.job.id]
        state = self._states.get(run.job.id)
        if state is not None and state.run is run:
            state.run = None
        if not self._running:
            self.no_runs.set()

    def finish(self, job_id: str, outcome: JobOutcome) -> None:
        """Record the outcome, wake the waiters, and prune the oldest finished states over ``keep``."""
        state = self._states.get(job_id)
        if state is None:
            return
        state.outcome, state.position = outcome, None
        state.subscriptions.clear()  # each subscription holds the final event already
        if not state.waiter.done():
            state.waiter.set_result(outcome)
        self._finished[job_id] = None
        while len(self._finished) > self.keep:
            old, _ = self._finished.popitem(last=False)
            self._states.pop(old, None)


class StageThreads:
    """The encode (VL) and DiT stages' single-thread executors."""

    def __init__(self) -> None:
        self.vl: ThreadPoolExecutor | None = None
        self.dit: ThreadPoolExecutor | None = None

    def start(self, cpu_threads: int | None) -> None:
        """Create both threads; the VL thread's initializer calls ``torch.set_num_threads(cpu_threads)``.

        Measured with torch 2.13 (CPU build): the call sets the calling thread's OpenMP team size *and* a
        process-wide default that every thread first touching torch afterwards inherits (the DiT thread included,
        when it starts later); threads that already ran torch work (the main thread) keep their own count. So treat
        it as process-global: with the DiT on a GPU it only matters for CPU work; with everything on the CPU both
        stages share the cores anyway.
        """
        def init_vl_thread() -> None:
            if cpu_threads:
                torch.set_num_threads(int(cpu_threads))

        self.vl = ThreadPoolExecutor(1, thread_name_prefix="zvl-vl", initializer=init_vl_thread)
        self.dit = ThreadPoolExecutor(1, thread_name_prefix="zvl-dit")

    def shutdown(self) -> None:
        """Drop both threads (queued work is cancelled; a running call finishes on its own)."""
        for executor in (self.vl, self.dit):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        self.vl = self.dit = None

    @staticmethod
    async def run_in(executor: ThreadPoolExecutor | None, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in ``executor`` (not started: a one-off thread of the loop's default executor)."""
        if executor is None:
            return await asyncio.to_thread(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    @staticmethod
    async def call(run: Run, executor: ThreadPoolExecutor | None, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in the stage thread; raise :class:`Aborted` as soon as the run is aborted (the stale work
        finishes in the thread and its result is dropped)."""
        run.check_abort()
        assert executor is not None, "the worker is not started"
        fut = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        await asyncio.wait({fut, run.abort_fut}, return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        fut.add_done_callback(drop_result)
        raise Aborted(run.abort_reason)


class Handoff:
    """Capacity-1 hand-off from the encode loop (one producer) to the DiT loop (one consumer)."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.closed = False
        self._vacant = asyncio.Event()
        self._vacant.set()
        self._filled = asyncio.Event()

    def put(self, run: Run) -> None:
        """Hand ``run`` over (the hand-off must be vacant)."""
        assert self.run is None, "hand-off is full"
        self.run = run
        self._vacant.clear()
        self._filled.set()

    async def wait_vacant(self) -> None:
        """Until the DiT loop took what was handed over."""
        await self._vacant.wait()

    def _take(self) -> Run | None:
        run, self.run = self.run, None
        self._filled.clear()
        self._vacant.set()
        return run

    async def get(self) -> Run | None:
        """The next run, or ``None`` once closed and empty."""
        while self.run is None:
            if self.closed:
                return None
            await self._filled.wait()
            self._filled.clear()
        return self._take()

    def discard(self, run: Run) -> None:
        """Remove ``run`` if it is the one waiting."""
        if self.run is run:
            self._take()

    def close(self) -> None:
        """No more runs: the DiT loop ends once it is empty."""
        self.closed = True
        self._filled.set()


def spawn(tasks: set[asyncio.Task], coro: Any) -> None:
    """Run ``coro`` beside the caller, keeping a reference in ``tasks`` until it ends; its failure is logged."""
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(_forget_task(tasks))


def _forget_task(tasks: set[asyncio.Task]) -> Callable[[asyncio.Task], None]:
    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
    return done
