"""How long until each job is done: stage-cost estimates, the two-stage schedule, and position events.

The encode stage (Qwen3-VL + text encoder) and the DiT stage overlap (see ``engine.serving.worker``), so a queued
job's finish time follows the flow-shop recurrence of :func:`schedule_two_stage`, started from what the running
jobs have left (:func:`etas`). :class:`PositionPublisher` recomputes positions whenever the queue moves (coalesced)
and emits a ``position`` event for each queued job whose position changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from engine.serving.events import EventKind, ProgressEvent
from engine.serving.runs import JobRegistry, Run, Stage

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.serving.queue import Job, JobQueue
    from engine.types import StylizeRequest

log = logging.getLogger(__name__)


def dit_units(request: StylizeRequest) -> float:
    """DiT work of one request in "1024² image-steps" (CFG doubles the passes)."""
    passes = 2 if request.guidance_scale and request.guidance_scale > 0 else 1
    return request.steps * (request.width * request.height / 1024**2) * len(request.seeds) * passes


class StageEstimator:
    """EWMAs of recent stage timings, and each job's estimated stage costs (see :func:`schedule_two_stage`).

    Priors are the anchors measured at full size (Qwen3-VL on a 16-core CPU 5.7 s per 1024² reference; Z-Image
    1024² x 9 steps 1.6 s on an H200); the first observations replace them.
    """

    def __init__(self, alpha: float = 0.3, vl_s: float = 5.7, text_s: float = 0.05, dit_unit_s: float = 1.6 / 9):
        self.alpha = alpha
        self.vl_s, self.text_s, self.dit_unit_s = vl_s, text_s, dit_unit_s
        self.samples = {"vl": 0, "text": 0, "dit": 0}

    def _mix(self, name: str, old: float, new: float) -> float:
        first = self.samples[name] == 0
        self.samples[name] += 1
        return new if first else (1 - self.alpha) * old + self.alpha * new

    def observe_vl(self, seconds: float) -> None:
        """One extraction took ``seconds``."""
        self.vl_s = self._mix("vl", self.vl_s, seconds)

    def observe_text(self, seconds: float) -> None:
        """One prompt encode took ``seconds``."""
        self.text_s = self._mix("text", self.text_s, seconds)

    def observe_dit(self, seconds: float, units: float) -> None:
        """A DiT call of ``units`` (:func:`dit_units`) took ``seconds``."""
        if units > 0:
            self.dit_unit_s = self._mix("dit", self.dit_unit_s, seconds / units)

    def costs(self, job: Job) -> tuple[float, float]:
        """(encode-stage seconds assuming cache misses, DiT-stage seconds) for ``job``."""
        refs = {r.vl_identity() for r in job.requests if r.reference is not None and r.alpha > 0}
        texts = {r.text_identity() for r in job.requests}
        return (len(refs) * self.vl_s + len(texts) * self.text_s,
                sum(dit_units(r) for r in job.requests) * self.dit_unit_s)

    def as_dict(self) -> dict[str, Any]:
        """The current estimates, for the status."""
        return {"vl_s": round(self.vl_s, 4), "text_s": round(self.text_s, 4),
                "dit_s_per_1024px_step": round(self.dit_unit_s, 5), "samples": dict(self.samples)}


def schedule_two_stage(costs: list[tuple[float, float]], *, vl_free: float, dit_free: float) -> list[float]:
    """Finish times of queued jobs served in order by the two overlapped stages.

    ``costs`` are ``(encode_s, dit_s)`` per job in service order; ``vl_free`` is when the encode loop may take the
    next job (it takes one only when the hand-off is empty, i.e. when the DiT has taken the previous job) and
    ``dit_free`` when the DiT finishes what it has. The recurrence: a job's DiT starts at
    ``max(vl_free + encode_s, dit_free)``, ends ``dit_s`` later, and frees the encode loop as it starts.
    """
    out = []
    for encode_s, dit_s in costs:
        start = max(vl_free + encode_s, dit_free)
        dit_free = start + dit_s
        vl_free = start
        out.append(dit_free)
    return out


def _dit_left(run: Run, now: float) -> float:
    """Seconds the DiT stage of ``run`` still needs."""
    _encode, dit = run.est
    cells = max(1, len(run.job.requests))
    done = (run.cells_done + (run.step / run.total if run.total else 0.0)) / cells
    if done > 0:
        return dit * (1 - done)
    return max(dit - (now - (run.dit_started_at or now)), 0.0)


def etas(runs: Iterable[Run], queued: list[Job], estimator: StageEstimator) -> dict[str, tuple[int, float]]:
    """``job_id -> (position, eta_s)`` for running (position 0) and queued jobs."""
    now = time.monotonic()
    runs = list(runs)
    out: dict[str, tuple[int, float]] = {}
    dit_free = vl_ready = now
    dit_run = next((r for r in runs if r.stage is Stage.DIT), None)
    wait_run = next((r for r in runs if r.stage is not Stage.DIT), None)
    if dit_run is not None:
        dit_free = now + _dit_left(dit_run, now)
        out[dit_run.job.id] = (0, dit_free - now)
    if wait_run is not None:
        encode, dit = wait_run.est
        encode_end = now if wait_run.stage is Stage.HANDOFF else now + max(0.0, encode - (now - wait_run.started_at))
        vl_ready = max(encode_end, dit_free)
        dit_free = vl_ready + dit
        out[wait_run.job.id] = (0, dit_free - now)
    ends = schedule_two_stage([estimator.costs(j) for j in queued], vl_free=vl_ready, dit_free=dit_free)
    for i, (job, end) in enumerate(zip(queued, ends, strict=True), start=1):
        out[job.id] = (i, end - now)
    return out


class PositionPublisher:
    """Emits ``position`` events for queued jobs whose position moved; :meth:`changed` is coalesced."""

    def __init__(self, registry: JobRegistry, queue: JobQueue, estimator: StageEstimator,
                 emit: Callable[[ProgressEvent], None]) -> None:
        self.registry, self.queue, self.estimator, self.emit = registry, queue, estimator, emit
        self._task: asyncio.Task | None = None
        self._dirty = False

    async def etas(self) -> dict[str, tuple[int, float]]:
        """``job_id -> (position, eta_s)`` now."""
        return etas(self.registry.runs(), await self.queue.snapshot(), self.estimator)

    async def eta_of(self, job_id: str) -> float | None:
        """The job's ETA in seconds (rounded), or ``None``."""
        got = (await self.etas()).get(job_id)
        return None if got is None else round(got[1], 2)

    def changed(self) -> None:
        """The queue or the running jobs moved: publish positions soon."""
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._publish())

    def cancel(self) -> None:
        """Stop a pending publication (the worker stops)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _publish(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                positions = await self.etas()
            except Exception:
                log.exception("computing queue positions failed")
                return
            for job_id, (pos, eta) in positions.items():
                state = self.registry.get(job_id)
                if pos == 0 or (state is not None and (state.run is not None or not state.live)):
                    continue
                if state is not None and state.position != pos:
                    state.position = pos
                    self.emit(ProgressEvent(job_id, EventKind.POSITION, position=pos, eta_s=round(eta, 2)))
