"""One GPU worker process of the shared queue (``python -m engine serve``): today's ``EngineWorker`` with its two
stage loops, fed from Redis.

Start-up: the worker starts paused, loads every model (``reload("all")``, in the stage threads), and only then
opens its gate, so a long load or compile never eats a lease. It then takes jobs in the global fair order, streams
their progress, heartbeats their leases, reaps lost runs, keeps its registry entry fresh and obeys the control
channel. SIGTERM/SIGINT or a ``drain`` command: stop taking jobs, let the running ones finish (up to the job
timeout), put back what is still running, leave the registry, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from engine.serving.protocols import PipelineLike, WorkerConfig
from engine.serving.redis.member import FleetMember
from engine.serving.redis.queue import RedisQueue, cancel_all
from engine.serving.redis.worker_side import EventSink, Leases, RedisJobQueue, RedisRecorder
from engine.serving.worker import EngineWorker

log = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The worker could not start serving (one line for the CLI)."""


def build(settings: Any, name: str, factory: Callable[[], PipelineLike], *, cache: Any = None,
          queue: RedisQueue | None = None) -> tuple[EngineWorker, FleetMember, EventSink, RedisRecorder]:
    """The worker and its fleet duties over ``settings.redis_url`` (nothing runs yet)."""
    queue = queue or RedisQueue.from_url(settings.redis_url, namespace=settings.redis_namespace,
                                         max_per_user=settings.max_jobs_per_user,
                                         max_total=settings.max_jobs_total)
    leases = Leases()
    sink = EventSink(queue, leases)
    recorder = RedisRecorder(queue, name, leases, sink, settings.redis_lease_s)
    worker = EngineWorker(config=WorkerConfig.from_settings(settings, preload=False), pipeline_factory=factory,
                          queue=RedisJobQueue(queue, name, leases), recorder=recorder, cache=cache, on_event=sink)
    member = FleetMember(queue, worker, name, leases, lease_s=settings.redis_lease_s,
                         max_attempts=settings.redis_max_attempts)
    return worker, member, sink, recorder


async def start_serving(worker: EngineWorker, member: FleetMember, sink: EventSink) -> list[asyncio.Task]:
    """Start paused, load every model, then open the gate and register; the fleet tasks to cancel at the end."""
    tasks = [asyncio.create_task(sink.run(), name="zvl-event-sink")]
    worker.pause()
    await worker.start()
    report = await worker.reload("all")  # warm-up before the first take: a long load never eats a lease
    if report["error"]:
        for task in tasks:
            task.cancel()
        await worker.stop(grace_s=0)
        raise ServeError(f"the models did not load: {report['error']}")
    tasks += member.tasks()
    worker.resume()
    # Registered only once open: an entry written while the start-up pause held would read "paused" until the next
    # beat, and whoever pauses the fleet would take that stale line for its own command having arrived.
    await member.register()
    return tasks


async def stop_serving(worker: EngineWorker, member: FleetMember, sink: EventSink, tasks: list[asyncio.Task],
                       grace_s: float) -> None:
    """Drain: running jobs finish for up to ``grace_s`` (then go back first in line), the registry entry goes."""
    try:
        await worker.stop(grace_s=grace_s)
        await sink.flush()
    finally:
        await cancel_all(tasks)
        await member.unregister()
        await member.queue.aclose()


async def open_worker_cache(settings: Any, name: str) -> Any:
    """The worker's embedding cache: a local one under ``cache_dir/workers/<name>`` (a root of its own per worker
    name, so two workers on one machine never share files; a restart under the same name keeps its entries), under
    the shared Redis tier when ``cache_redis_url`` is set (``engine.cache.shared.build_embedding_store``)."""
    from engine.cache.shared import build_embedding_store
    from engine.cache.store import EmbeddingCache, MemoryCacheIndex

    local = EmbeddingCache(settings.cache_dir / "workers" / name, MemoryCacheIndex(), settings.cache_max_bytes)
    store = build_embedding_store(settings, local)
    await store.recover(adopt_orphans=True)
    return store


async def serve(settings: Any, name: str, factory: Callable[[], PipelineLike], *, cache: Any = None,
                on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT or a drain command (see the module docstring). Raises :class:`ServeError`.
    ``cache``: the embedding store to use (default :func:`open_worker_cache`'s, closed at the end)."""
    own_cache = cache is None
    if own_cache:
        cache = await open_worker_cache(settings, name)
    try:
        await _serve(settings, name, factory, cache, on_ready)
    finally:
        if own_cache:
            await cache.aclose()


async def _serve(settings: Any, name: str, factory: Callable[[], PipelineLike], cache: Any,
                 on_ready: Callable[[], None] | None) -> None:
    worker, member, sink, _recorder = build(settings, name, factory, cache=cache)
    try:
        await member.queue.client.ping()
    except Exception as exc:
        await member.queue.aclose()
        raise ServeError(f"cannot reach the queue at {settings.redis_url}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        tasks = await start_serving(worker, member, sink)
    except BaseException:
        await member.queue.aclose()
        raise
    log.info("worker %s serving (models: %s)", name, (await worker.status()).loaded)
    if on_ready is not None:
        on_ready()
    waits = [asyncio.create_task(member.draining.wait()), asyncio.create_task(stop.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    log.info("worker %s draining", name)
    await stop_serving(worker, member, sink, tasks, settings.job_timeout_s)
    log.info("worker %s stopped", name)
