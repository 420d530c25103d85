"""What the worker needs from its collaborators, as small protocols, and its typed configuration.

The worker knows the pipeline (``engine.generation.pipeline.StylePipeline``), the embedding cache
(``engine.cache.store.EmbeddingCache``) and the bot's persistence only through these protocols, so the serving
package imports neither the generation package nor the bot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from engine.conditioning.text import ReferenceStats
    from engine.serving.events import Subscription
    from engine.serving.queue import Job, JobOutcome
    from engine.types import StylizeRequest, StylizeResult, VLResult

log = logging.getLogger(__name__)

#: What ``load``/``unload``/``reload`` accept.
COMPONENTS = ("vl", "text", "dit", "all")

Progress = Callable[[int, int], None]
ShouldAbort = Callable[[], bool]


class PipelineLike(Protocol):
    """The part of ``engine.generation.pipeline.StylePipeline`` the worker uses (all of it in a stage thread)."""

    vl_device: Any  #: where Qwen3-VL runs; ``None`` when the pipeline has no Qwen3-VL model

    def check_inputs(self, request: StylizeRequest) -> None: ...
    def needs_reference(self, request: StylizeRequest) -> bool: ...
    def reference_stats_key(self, request: StylizeRequest) -> str | None: ...
    def reference_stats_for(self, request: StylizeRequest) -> ReferenceStats: ...
    def seed_reference_stats(self, key: str, stats: ReferenceStats) -> None: ...
    def encode_reference(self, request: StylizeRequest) -> VLResult | None: ...
    def neutral_reference(self, request: StylizeRequest) -> VLResult: ...
    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor: ...
    def negative_embedding(self, request: StylizeRequest) -> torch.Tensor: ...
    def has_negative(self, request: StylizeRequest) -> bool: ...
    def describe(self, image: Any, *, should_abort: ShouldAbort | None = None) -> Any: ...
    def generate(self, request: StylizeRequest, vl: VLResult | None, text_emb: torch.Tensor | None = None, *,
                 progress: Progress | None = None, should_abort: ShouldAbort | None = None,
                 neutral: VLResult | None = None) -> StylizeResult: ...
    def load(self, component: str) -> None: ...
    def unload(self, component: str) -> None: ...
    def loaded_components(self) -> dict[str, Any]: ...


@runtime_checkable
class BatchPipeline(Protocol):
    """A pipeline that can run several sweep cells in one DiT call (``StylePipeline`` can; a fake may not)."""

    def generate_batch(self, requests: list[StylizeRequest], vls: list[VLResult | None],
                       text_embs: list[torch.Tensor], *, progress: Progress | None = None,
                       should_abort: ShouldAbort | None = None) -> list[StylizeResult]: ...


class EmbeddingStore(Protocol):
    """The embedding cache as the worker uses it: VL extractions through ``get_vl``/``put_vl``; prompt embeddings
    (kind ``text``) and reference statistics (kind ``refstats``) as plain tensors through ``get``/``put``."""

    async def get_vl(self, key: str) -> VLResult | None: ...
    async def put_vl(self, key: str, vl: VLResult) -> None: ...
    async def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None: ...
    async def put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *,
                  kind: str = "tensor") -> None: ...
    async def delete(self, key: str) -> bool: ...


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
        """``running -> queued``: the worker's stop ran out of grace and aborted the job; it was put back at the
        front of the queue and is resumable after a restart."""


class NullRecorder:
    """A recorder that stores nothing."""

    async def on_queued(self, job: Job) -> None:
        """Store nothing."""

    async def on_started(self, job: Job) -> None:
        """Store nothing."""

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        """Store nothing."""

    async def on_interrupted(self, job: Job) -> None:
        """Store nothing."""


class LoggedRecorder:
    """A recorder's ``on_started``/``on_finished``/``on_interrupted`` with failures logged, never raised (a
    database hiccup must not stop the worker)."""

    def __init__(self, recorder: JobRecorder) -> None:
        self.recorder = recorder

    async def on_started(self, job: Job) -> None:
        """``recorder.on_started``, failures logged."""
        await self._guard("on_started", job, self.recorder.on_started(job))

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        """``recorder.on_finished``, failures logged."""
        await self._guard("on_finished", job, self.recorder.on_finished(job, outcome))

    async def on_interrupted(self, job: Job) -> None:
        """``recorder.on_interrupted``, failures logged."""
        await self._guard("on_interrupted", job, self.recorder.on_interrupted(job))

    @staticmethod
    async def _guard(hook: str, job: Job, call: Any) -> None:
        try:
            await call
        except Exception:
            log.exception("recorder.%s failed for job=%s", hook, job.id)


class JobEngine(Protocol):
    """What the bot needs of the engine, and all it may use: the one narrow boundary between them.

    ``engine.serving.worker.EngineWorker`` (in-process queue and models) implements it; a second implementation
    (a client of a shared queue served by workers elsewhere) can replace it without touching the cogs.
    """

    @property
    def paused(self) -> bool: ...

    async def start(self) -> None: ...
    async def stop(self, grace_s: float = 30.0) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    async def reload(self, component: str = "all") -> dict[str, Any]: ...
    async def submit(self, job: Job) -> int: ...
    async def restore(self, jobs: Any) -> list[int]: ...
    async def wait(self, job_id: str) -> JobOutcome: ...
    async def cancel(self, job_id: str, reason: str = "cancelled") -> bool: ...
    async def position(self, job_id: str) -> tuple[int, float] | None: ...
    async def jobs_for(self, owner_id: int) -> list[tuple[Job, int, float]]: ...
    def subscribe(self, job_id: str) -> Subscription: ...
    async def status(self) -> WorkerStatus: ...


@dataclass(frozen=True)
class WorkerConfig:
    """The settings the worker reads (defaults: ``engine.config.Settings``'s).

    ``max_batch_pixels``: sweep cells sharing size/steps/strength/guidance/shift are batched into one DiT call up to
    this many output pixels per call (at 1024² batching gains nothing on an H200, at 512² a batch of 4 is ~11%
    faster than 4 calls; 0 runs every cell alone). ``keep_outcomes``: finished jobs whose outcome and events stay
    answerable by ``wait``/``subscribe``. ``score_sweeps``: score every cell of a multi-cell job after the DiT stage
    (in the VL thread; :mod:`engine.serving.scores`).
    """

    max_jobs_per_user: int = 3
    max_jobs_total: int = 50
    job_timeout_s: float = 600.0
    vl_auto_unload: bool = False
    vl_idle_unload_s: float = 600.0
    preload: bool = True
    cpu_threads: int | None = None
    max_batch_pixels: int = 1024 * 1024
    keep_outcomes: int = 256
    score_sweeps: bool = True

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> WorkerConfig:
        """The worker's fields of an ``engine.config.Settings`` (or any object with those attributes that are not
        given in ``overrides``)."""
        names = ("max_jobs_per_user", "max_jobs_total", "job_timeout_s", "vl_auto_unload", "vl_idle_unload_s",
                 "preload", "cpu_threads")
        values = {name: getattr(settings, name) for name in names if name not in overrides}
        return cls(**values, **overrides)


@dataclass(frozen=True)
class RunningJob:
    """One running job in :class:`WorkerStatus`."""

    job_id: str
    owner_id: int
    kind: str
    stage: str  #: ``vl`` (encode), ``handoff`` (waiting for the DiT) or ``dit``
    step: int
    total: int
    cells_done: int
    cells: int
    elapsed_s: float


@dataclass(frozen=True)
class WorkerStatus:
    """What an admin sees (``EngineWorker.status()``)."""

    started: bool
    paused: bool
    reloading: bool
    stopping: bool
    running: list[RunningJob]
    queue_depth: int
    loaded: dict[str, Any]  #: component -> device, for the models in memory
    model_error: str | None  #: why the last load of a model failed, until one succeeds
    estimates: dict[str, Any]
    recent: list[dict[str, Any]]  #: the last 20 jobs' status and timings
    counters: dict[str, int] = field(default_factory=dict)
    workers: list[Any] = field(default_factory=list)  #: the GPU worker processes (shared queue only)
