"""Two real workers on two "machines" share one cache Redis (issue 17): what worker A extracted and encoded,
worker B uses without running Qwen3-VL or the text encoder.

Each worker has the real StylePipeline over its own copy of the tiny models, at a path of its own (machines mount
weights in different places), and its own local cache folder; only the allkeys-lru Redis is shared.
"""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from engine.cache.redis_tier import RedisTier
from engine.cache.shared import TieredCache
from engine.cache.store import EmbeddingCache, MemoryCacheIndex
from engine.generation.pipeline import StylePipeline
from engine.serving.events import EventKind
from engine.serving.protocols import WorkerConfig
from engine.serving.queue import Job, JobStatus
from engine.serving.worker import EngineWorker
from engine.types import StylizeRequest
from tests.engine.serving.support import Recorder, settings
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.timeout(180)]


def _machine(tiny_models, root, url: str) -> tuple[EngineWorker, TieredCache]:
    zimage, qwen3vl = root / "weights" / "zimage", root / "mnt" / "vl"
    shutil.copytree(tiny_models.zimage, zimage)
    shutil.copytree(tiny_models.qwen3vl, qwen3vl)
    pipe = StylePipeline.from_pretrained(zimage, qwen3vl, device="cpu")
    cache = TieredCache(EmbeddingCache(root / "cache", MemoryCacheIndex(), 8 << 20), RedisTier(url))
    worker = EngineWorker(pipe, config=WorkerConfig.from_settings(settings(cpu_threads=1)), cache=cache,
                          recorder=Recorder())
    return worker, cache


async def _run(worker: EngineWorker, request: StylizeRequest, job_id: str) -> list[EventKind]:
    await worker.start()
    try:
        await worker.submit(Job(owner_id=1, requests=[request], id=job_id))
        events = worker.subscribe(job_id)
        outcome = await worker.wait(job_id)
        assert outcome.status is JobStatus.DONE, outcome.error
        return [e.kind for e in [e async for e in events]]
    finally:
        await worker.stop()


async def test_a_reference_extracted_on_worker_a_is_a_hit_on_worker_b(tiny_models, tmp_path, tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("rc"), maxmemory_policy="allkeys-lru", maxmemory="64mb").start()
    try:
        a, cache_a = _machine(tiny_models, tmp_path / "a", server.url)
        b, cache_b = _machine(tiny_models, tmp_path / "b", server.url)
        reference = Image.new("RGB", (96, 64), (200, 40, 40))
        request = StylizeRequest(prompt="a cat", reference=reference, steps=2, width=64, height=64, alpha=0.5)
        kinds_a = await _run(a, request, "on-a")
        assert EventKind.VL_STARTED in kinds_a and a.counters["vl_extractions"] == 1
        assert a.counters["text_encodes"] == 1 and cache_a.shared.stats()["stored"] >= 2
        kinds_b = await _run(b, request.replace(reference=reference.copy()), "on-b")
        assert EventKind.VL_CACHED in kinds_b and EventKind.VL_STARTED not in kinds_b
        assert b.counters["vl_extractions"] == 0 and b.counters["vl_cache_hits"] == 1
        assert b.counters["text_encodes"] == 0 and b.counters["text_cache_hits"] == 1
        local_b = await cache_b.local.stats()
        assert cache_b.shared.stats()["hits"] >= 2 and local_b["entries"] >= 2  # B keeps them locally now
        await cache_a.aclose()
        await cache_b.aclose()
    finally:
        server.stop()
