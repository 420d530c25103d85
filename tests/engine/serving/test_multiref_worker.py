"""The worker with several references and a negative: one cache entry per reference, shared with one-reference jobs."""

from __future__ import annotations

import pytest
from PIL import Image

from engine.cache.store import EmbeddingCache, MemoryCacheIndex
from engine.generation.pipeline import StylePipeline
from engine.multiref import with_negative, with_references
from engine.serving.events import EventKind
from engine.serving.protocols import WorkerConfig
from engine.serving.queue import Job, JobStatus
from engine.serving.worker import EngineWorker
from engine.types import StylizeRequest
from tests.engine.serving.support import Recorder, settings
from tests.imagecheck import assert_same_image

pytestmark = [pytest.mark.timeout(90)]

RED, BLUE = Image.new("RGB", (96, 64), (200, 40, 40)), Image.new("RGB", (64, 96), (30, 60, 220))
GREEN = Image.new("RGB", (64, 64), (40, 200, 60))


async def _run(w: EngineWorker, job_id: str, request: StylizeRequest) -> tuple[object, list[EventKind]]:
    await w.submit(Job(owner_id=1, requests=[request], id=job_id))
    sub = w.subscribe(job_id)
    outcome = await w.wait(job_id)
    assert outcome.status is JobStatus.DONE, outcome.error
    return outcome, [e.kind for e in [e async for e in sub]]


async def test_each_reference_has_its_own_cache_entry(tiny_models, tmp_path):
    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    cache = EmbeddingCache(tmp_path / "cache", MemoryCacheIndex(), 8 << 20)
    w = EngineWorker(pipe, config=WorkerConfig.from_settings(settings(cpu_threads=1)), cache=cache,
                     recorder=Recorder())
    await w.start()
    try:
        base = StylizeRequest(prompt="a cat", steps=2, width=32, height=32, alpha=0.5, seeds=(5,))
        two = with_references(base, [RED, BLUE], (2, 1))
        outcome, _kinds = await _run(w, "two", two)
        assert w.counters["vl_extractions"] == 2  # one per reference, each its own entry
        result = outcome.results[0]
        assert [r["weight"] for r in result.params["reference_set"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
        assert_same_image(result.images[0], pipe(two).images[0])  # the worker's path is the pipeline's

        # BLUE alone: the entry the two-reference job stored is the one-reference entry
        _outcome, kinds = await _run(w, "blue", base.replace(reference=BLUE))
        assert EventKind.VL_CACHED in kinds and EventKind.VL_STARTED not in kinds
        assert w.counters["vl_extractions"] == 2

        # a negative: RED and BLUE are cached, GREEN (the negative) is extracted once
        negative = with_negative(base.replace(reference=RED), GREEN)
        outcome, kinds = await _run(w, "negative", negative)
        assert w.counters["vl_extractions"] == 3 and kinds.count(EventKind.VL_STARTED) == 1
        params = outcome.results[0].params
        assert params["guidance_scale"] == 2.0 and params["negative"]["size"] == [64, 64]
        assert_same_image(outcome.results[0].images[0], pipe(negative).images[0])
    finally:
        await w.stop()
