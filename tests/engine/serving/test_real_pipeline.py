"""The worker over the real StylePipeline on the tiny models, with the real EmbeddingCache."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.generation.pipeline import StylePipeline
from engine.serving.events import EventKind
from engine.serving.protocols import WorkerConfig
from engine.serving.queue import Job, JobStatus
from engine.serving.worker import EngineWorker
from engine.types import StylizeRequest
from tests.engine.serving.support import Recorder, settings

pytestmark = [pytest.mark.timeout(60)]


def _real_cache(root, index=None):
    from engine.cache.store import EmbeddingCache, MemoryCacheIndex

    return EmbeddingCache(root, index if index is not None else MemoryCacheIndex(), 1 << 20)


async def test_real_tiny_pipeline_end_to_end(tiny_models, tmp_path):
    """One real run: StylePipeline on the tiny models, the real EmbeddingCache, a sweep batched on the DiT."""
    from engine.cache.store import EmbeddingCache, MemoryCacheIndex
    from engine.generation.pipeline import StylePipeline

    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu")
    cache = EmbeddingCache(tmp_path / "cache", MemoryCacheIndex(), 8 << 20)
    rec = Recorder()
    w = EngineWorker(pipe, config=WorkerConfig.from_settings(settings(cpu_threads=1)), cache=cache, recorder=rec)
    await w.start()
    try:
        reference = Image.new("RGB", (96, 64), (200, 40, 40))
        base = StylizeRequest(prompt="a cat", reference=reference, steps=2, width=64, height=64, alpha=0.5)
        await w.submit(Job(owner_id=1, requests=[base], id="one"))
        sweep = [base.replace(alpha=a, seeds=(s,)) for a in (0.2, 0.8) for s in (1, 2)]
        sweep.append(base.replace(blend_mode="style_delta"))
        await w.submit(Job(owner_id=2, requests=sweep, id="sweep", kind="sweep"))
        await w.submit(Job(owner_id=3, requests=[base.replace(alpha=1.7)], id="bad"))
        sub = w.subscribe("sweep")
        one = await w.wait("one")
        assert one.status is JobStatus.DONE, one.error
        assert one.results[0].images[0].size == (64, 64) and one.results[0].vl is not None
        swept = await w.wait("sweep")
        assert swept.status is JobStatus.DONE, swept.error
        assert [r.seeds for r in swept.results] == [[1], [2], [1], [2], [0]]
        assert all(r.images[0].size == (64, 64) for r in swept.results)
        kinds = [e.kind for e in [e async for e in sub]]
        assert EventKind.VL_CACHED in kinds and EventKind.VL_STARTED not in kinds  # the first job's extraction
        assert kinds.count(EventKind.CELL_DONE) == 2  # 4 cells in one batched DiT call + style_delta alone
        bad = await w.wait("bad")
        assert bad.status is JobStatus.FAILED and bad.error.startswith("alpha must be") and "1.7" in bad.error
        stats = await cache.stats()
        assert stats["hits"] == 2 and stats["entries"] == 2  # the extraction and "a cat"'s prompt embedding
        assert w.counters["text_cache_hits"] == 1 and w.counters["text_encodes"] == 1
        status = await w.status()
        assert set(status.loaded) == {"vl", "text", "dit"} and status.counters["done"] == 2
        assert rec.outcomes["sweep"].timings["dit"] > 0
    finally:
        await w.stop()


def _count_reference_stats(monkeypatch) -> list[int]:
    """The layers ``TextEncoder.reference_stats`` computes statistics for, from now on."""
    from engine.conditioning.text import TextEncoder

    stats_runs: list[int] = []
    original = TextEncoder.reference_stats

    def counting(self, layer=-2, *args, **kw):
        stats_runs.append(layer)
        return original(self, layer, *args, **kw)

    monkeypatch.setattr(TextEncoder, "reference_stats", counting)
    return stats_runs


def _build(tiny_models) -> tuple[StylePipeline, list[str]]:
    """A real pipeline whose prompt encodes are recorded."""
    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    calls: list[str] = []
    real = pipe.encode_prompt

    def encode_prompt(request):
        calls.append(request.prompt)
        return real(request)

    pipe.encode_prompt = encode_prompt  # the worker calls it through the instance
    return pipe, calls


async def _first_process(tiny_models, cache, base: StylizeRequest, stats_runs: list[int]):
    """Two identical requests: the second runs no text encoder. Returns the statistics used."""
    pipe1, calls1 = _build(tiny_models)
    w1 = EngineWorker(pipe1, config=WorkerConfig.from_settings(settings(cpu_threads=1)), cache=cache)
    await w1.start()
    try:
        await w1.submit(Job(owner_id=1, requests=[base], id="one"))
        one = await w1.wait("one")
        assert one.status is JobStatus.DONE, one.error
        assert calls1 == ["a fox"] and stats_runs == [-2]
        await w1.submit(Job(owner_id=1, requests=[base.replace(seeds=(3,))], id="two"))
        two = await w1.wait("two")
        assert two.status is JobStatus.DONE, two.error
        assert calls1 == ["a fox"]  # the second identical request did not run the text encoder
        assert w1.counters["text_cache_hits"] == 1 and w1.counters["refstats_computed"] == 1
        return pipe1.reference_stats(-2)
    finally:
        await w1.stop()


async def test_tiny_models_cache_text_embeddings_and_reference_stats_across_a_restart(tiny_models, tmp_path,
                                                                                     monkeypatch):
    """Real StylePipeline + EmbeddingCache: an identical request does not run the text encoder; after a restart (new
    worker, new pipeline, new index recovered from the same folder) a per_dim request reads the reference
    statistics from the cache and never loads the text encoder."""
    stats_runs = _count_reference_stats(monkeypatch)
    base = StylizeRequest(prompt="a fox", reference=Image.new("RGB", (48, 32), (30, 90, 200)), steps=1, width=64,
                          height=64, alpha=0.5, normalization="per_dim")
    stats1 = await _first_process(tiny_models, _real_cache(tmp_path / "cache"), base, stats_runs)
    cache2 = _real_cache(tmp_path / "cache")  # a new process: an empty index over the same folder
    assert (await cache2.recover(adopt_orphans=True))["adopted"] == 3  # the extraction, "a fox", the statistics
    pipe2, calls2 = _build(tiny_models)
    w2 = EngineWorker(pipe2, config=WorkerConfig.from_settings(settings(cpu_threads=1)), cache=cache2)
    await w2.start()
    try:
        other = base.replace(reference=Image.new("RGB", (48, 32), (200, 60, 10)))  # a new extraction needs the stats
        await w2.submit(Job(owner_id=1, requests=[other], id="three"))
        three = await w2.wait("three")
        assert three.status is JobStatus.DONE, three.error
        assert stats_runs == [-2]  # not recomputed after the restart
        assert w2.counters["refstats_cache_hits"] == 1 and w2.counters["refstats_computed"] == 0
        assert w2.counters["vl_extractions"] == 1 and calls2 == []  # the prompt embedding came from the cache too
        assert "text" not in pipe2.loaded_components()  # so the text encoder was never loaded
        stats2 = pipe2.reference_stats(-2)
        assert stats2.key == stats1.key and torch.equal(stats2.std, stats1.std)
        assert three.results[0].vl["settings"]["reference_stats"] == stats1.key
    finally:
        await w2.stop()
