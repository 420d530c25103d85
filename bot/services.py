"""The one typed handle cogs use: ``bot.services`` (settings, store, worker, cache, references, notifier, jobs).

Built in ``ZvlBot.setup_hook`` and owned by the bot, not by a cog, so reloading a cog never drops a model or a
queue. Start-up order: database (migrations) -> embedding cache recovery -> worker (not yet running) -> restart
recovery -> worker start. Shutdown: new jobs are refused and those being started reach the queue; the worker
stops taking jobs and drains for ``grace_s`` (jobs still running then are put back as queued and persisted);
deliveries of finished jobs get a few seconds; the database closes.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.checks import Cooldowns
from bot.jobs import JobService, Notifier, SqliteRecorder, render_result
from bot.looplag import LoopLagMonitor
from bot.references import ReferenceStore
from bot.retention import Retention
from bot.store import Store
from bot.styles import StyleBook
from engine.cache.shared import TieredCache, build_embedding_store
from engine.cache.store import EmbeddingCache
from engine.serving.protocols import JobEngine, WorkerConfig
from engine.serving.worker import EngineWorker

if TYPE_CHECKING:  # pragma: no cover
    import discord

    from bot.settings import BotSettings
    from engine.serving.protocols import PipelineLike

log = logging.getLogger(__name__)

PipelineFactory = Callable[[], "PipelineLike"]


def default_pipeline_factory(settings: BotSettings) -> PipelineFactory:
    """Build ``engine.generation.pipeline.StylePipeline`` from the settings, lazily (in the worker's thread, on first need)."""

    def build() -> PipelineLike:
        from engine.generation.pipeline import StylePipeline

        # vl_auto_unload is the worker's job (once per job, after all its extractions); the extractor's own
        # unload-after-each-extraction would reload Qwen3-VL between the cells of a sweep.
        return StylePipeline.from_settings(settings.model_copy(update={"vl_auto_unload": False}))

    return build


def build_engine(settings: BotSettings, cache: EmbeddingCache | TieredCache, recorder: SqliteRecorder,
                 pipeline_factory: PipelineFactory | None) -> JobEngine:
    """The in-process worker (models in this process), or with ``redis_url`` the client of the shared queue whose
    GPU workers run elsewhere (``python -m engine serve``; this process then loads no models)."""
    if settings.redis_url:
        from engine.serving.redis.remote import RedisEngine  # imports redis: only with a shared queue

        return RedisEngine.from_settings(settings, recorder=recorder)
    return EngineWorker(config=WorkerConfig.from_settings(settings), cache=cache, recorder=recorder,
                        pipeline_factory=pipeline_factory or default_pipeline_factory(settings))


@dataclass
class Services:
    """Everything the cogs and buttons reach; see the module docstring for the lifecycle."""

    settings: BotSettings
    store: Store
    cache: EmbeddingCache | TieredCache  #: under the shared Redis tier when ZVL_CACHE_REDIS_URL is set
    worker: JobEngine  #: the in-process EngineWorker or the shared queue's RedisEngine (build_engine)
    references: ReferenceStore
    notifier: Notifier
    jobs: JobService
    cooldowns: Cooldowns
    started_at: float
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    retention: Retention | None = None

    @property
    def styles(self) -> StyleBook:
        """Style codes (``/style``; the job service gives and resolves them)."""
        return self.jobs.styles

    def __post_init__(self) -> None:
        if self.retention is None:
            self.retention = Retention([self.settings.data_dir / "results", self.settings.data_dir / "references"],
                                       self.settings.retention_days)

    @classmethod
    async def open(cls, bot: discord.Client, settings: BotSettings, pipeline_factory: PipelineFactory | None = None,
                   *, progress_interval: float = 2.0) -> Services:
        """Open the database (applying migrations) and build every service; nothing runs yet (see :meth:`start`)."""
        store = await Store.open(settings.db_path)
        try:
            cache = build_embedding_store(settings, EmbeddingCache(settings.cache_dir, store.cache_index,
                                                                   settings.cache_max_bytes))
            await cache.recover()
            worker = build_engine(settings, cache, SqliteRecorder(settings, store), pipeline_factory)
            notifier = Notifier(bot, worker, render_result, interval=progress_interval)
            references = ReferenceStore.from_settings(settings)
            cooldowns = Cooldowns(settings.cooldown_s)
            styles = StyleBook(store.styles, references, settings.retention_days)
            jobs = JobService(settings, store, worker, references, notifier, cooldowns, styles)
        except BaseException:
            await store.close()
            raise
        return cls(settings, store, cache, worker, references, notifier, jobs, cooldowns, time.monotonic())

    async def start(self) -> None:
        """Resume the jobs a restart interrupted, then start the worker."""
        self.loop_lag.start()
        self.retention.start()
        await self.jobs.recover()
        await self.worker.start()

    async def close(self, grace_s: float = 20.0) -> None:
        """Drain the worker (then persist what is left as queued), finish deliveries, close the database."""
        try:
            await self.jobs.close(timeout=min(10.0, grace_s))
            await self.worker.stop(grace_s=grace_s)
            await self.notifier.close(grace_s=5.0)
        finally:
            await self.loop_lag.stop()
            await self.retention.stop()
            await self.cache.aclose()
            await self.store.close()
        log.info("services closed")

    async def status(self) -> dict[str, Any]:
        """What ``/admin status`` shows: worker state, models, devices and memory, cache, uptime."""
        worker = await self.worker.status()
        return {"worker": worker, "cache": await self.cache.stats(), "devices": await asyncio.to_thread(devices),
                "uptime_s": time.monotonic() - self.started_at, "loop_lag": self.loop_lag.snapshot()}


def devices() -> dict[str, Any]:
    """Accelerators and memory: CUDA devices with allocated/reserved/total bytes, and this process's peak RSS."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out: dict[str, Any] = {"process_peak_rss": rss, "cuda": []}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return out
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out["cuda"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                "allocated": torch.cuda.memory_allocated(i), "reserved": torch.cuda.memory_reserved(i),
                                "total": torch.cuda.get_device_properties(i).total_memory})
    return out


def services_of(interaction: discord.Interaction) -> Services:
    """The services handle of the bot that received ``interaction`` (what every cog reaches everything through)."""
    return interaction.client.services  # type: ignore[attr-defined,no-any-return]
