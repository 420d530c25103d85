"""The encode stage and the embedding cache: VL hits skip Qwen3-VL, prompt embeddings and reference statistics
come from the cache or are computed and stored, and a failing cache only means computing."""

from __future__ import annotations

import pytest
import torch

from engine.serving.events import EventKind, ProgressEvent
from engine.serving.queue import Job, JobStatus
from engine.types import StylizeRequest, StylizeResult
from tests.engine.serving.support import BrokenCache, DictCache, mkjob, req
from tests.fakes import FakePipeline

pytestmark = pytest.mark.timeout(60)


# --- cache and sweeps --------------------------------------------------------------------------------------------
async def test_cache_hit_skips_the_vl_model(make_worker):
    pipe = FakePipeline()
    cache = DictCache()
    events: list[ProgressEvent] = []
    w = await make_worker(pipe, cache=cache, on_event=events.append)
    await w.submit(mkjob("A1", reference=3))
    await w.wait("A1")
    pipe.unload("vl")
    job = Job(owner_id=1, requests=[req("A1", reference=3, alpha=0.9, seeds=(7,))], id="A2")  # same VL settings
    await w.submit(job)
    outcome = await w.wait("A2")
    assert outcome.status is JobStatus.DONE
    assert [x for x in pipe.log if x[0] == "vl_start"] == [("vl_start", "A1")]
    assert pipe.loaded["vl"] is False  # the VL model was not even loaded for the hit
    kinds = [e.kind for e in events if e.job_id == "A2"]
    assert EventKind.VL_CACHED in kinds and EventKind.VL_STARTED not in kinds
    assert w.counters["vl_cache_hits"] == 1
    assert outcome.results[0].vl is not None


async def test_cache_hit_with_the_real_embedding_cache(make_worker, tmp_path):
    cache_mod = pytest.importorskip("engine.cache.store")
    cache = cache_mod.EmbeddingCache(tmp_path / "cache", cache_mod.MemoryCacheIndex(), 1 << 20)
    pipe = FakePipeline()
    w = await make_worker(pipe, cache=cache)
    await w.submit(mkjob("A1", reference=4))
    await w.wait("A1")
    await w.submit(Job(owner_id=1, requests=[req("A1", reference=4, alpha=0.1)], id="A2"))
    assert (await w.wait("A2")).status is JobStatus.DONE
    assert [x for x in pipe.log if x[0] == "vl_start"] == [("vl_start", "A1")]
    assert (await cache.stats())["hits"] == 2  # the extraction and the prompt embedding
    assert w.counters["vl_cache_hits"] == 1 and w.counters["text_cache_hits"] == 1


# --- text embeddings and reference statistics ----------------------------------------------------------------
class TextFake(FakePipeline):
    """A fake whose prompt embedding depends on the prompt, with a memoised CFG negative, recording the embedding
    each generate call got."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.negatives: dict[tuple[int, bool], torch.Tensor] = {}
        self.negative_encodes = 0
        self.got: list[torch.Tensor] = []

    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor:
        assert self.loaded["text"], "text encoder used before it was loaded"
        self._rec("text", request.prompt)
        torch.manual_seed(len(request.prompt) * 31 + request.text_layer + 7 * request.think)
        return torch.randn(len(request.prompt), 8)

    def has_negative(self, request: StylizeRequest) -> bool:
        return (request.text_layer, request.think) in self.negatives

    def negative_embedding(self, request: StylizeRequest) -> torch.Tensor:
        key = (request.text_layer, request.think)
        if key not in self.negatives:
            assert self.loaded["text"], "negative encoded before the text encoder was loaded"
            self.negative_encodes += 1
            self.negatives[key] = torch.zeros(2, 8)
        return self.negatives[key]

    def generate(self, request, vl, text_emb=None, **kw) -> StylizeResult:
        self.got.append(text_emb)
        return super().generate(request, vl, text_emb, **kw)


def _real_cache(root, index=None):
    from engine.cache.store import EmbeddingCache, MemoryCacheIndex

    return EmbeddingCache(root, index if index is not None else MemoryCacheIndex(), 1 << 20)


async def test_text_cache_hits_leave_the_text_encoder_unloaded(make_worker, tmp_path):
    pipe = TextFake()
    cache = _real_cache(tmp_path / "cache")
    w = await make_worker(pipe, cache=cache)
    cells = [req("a fox", reference=None, guidance_scale=2.0), req("a cat", reference=None, seeds=(5,)),
             req("a fox", reference=None, seeds=(9,))]
    await w.submit(Job(owner_id=1, requests=cells, id="S1", kind="sweep"))
    assert (await w.wait("S1")).status is JobStatus.DONE
    assert [x for x in pipe.log if x[0] == "text"] == [("text", "a fox"), ("text", "a cat")]
    first = list(pipe.got)
    assert w.counters["text_encodes"] == 2 and w.counters["text_cache_hits"] == 0
    pipe.unload("text")
    loads = [x for x in pipe.log if x == ("load", "text")]

    pipe.got.clear()
    await w.submit(Job(owner_id=1, requests=cells, id="S2", kind="sweep"))
    assert (await w.wait("S2")).status is JobStatus.DONE
    assert [x for x in pipe.log if x[0] == "text"] == [("text", "a fox"), ("text", "a cat")]  # no new encode
    assert [x for x in pipe.log if x == ("load", "text")] == loads and pipe.loaded["text"] is False
    assert pipe.negative_encodes == 1  # CFG's negative: still the pipeline's memo, no load for it either
    assert all(torch.equal(a, b) for a, b in zip(first, pipe.got, strict=True))  # the same embeddings
    assert w.counters["text_cache_hits"] == 2 and w.counters["text_encodes"] == 2
    status = await w.status()
    assert {"text_cache_hits", "text_encodes", "refstats_cache_hits", "refstats_computed"} <= set(status.counters)

    # another text_layer or think is another embedding: encoded (the encoder loads for it), then stored
    await w.submit(Job(owner_id=1, requests=[req("a fox", reference=None, think=True)], id="S3"))
    assert (await w.wait("S3")).status is JobStatus.DONE
    assert [x for x in pipe.log if x[0] == "text"][-1] == ("text", "a fox") and pipe.loaded["text"] is True
    assert w.counters["text_encodes"] == 3 and (await cache.stats())["entries"] == 3


async def test_text_cache_failure_falls_back_to_encoding(make_worker, tmp_path):
    pipe = TextFake()
    w = await make_worker(pipe, cache=BrokenCache())
    for n in (1, 2):
        await w.submit(mkjob(f"A{n}", reference=None))
        assert (await w.wait(f"A{n}")).status is JobStatus.DONE
    assert [x[1] for x in pipe.log if x[0] == "text"] == ["A1", "A2"]
    assert w.counters["text_cache_hits"] == 0


async def test_reference_statistics_are_fetched_before_an_extraction_and_stored(make_worker, tmp_path):
    """The encode stage asks the pipeline which statistics an extraction needs, serves them from the cache (seeding
    the pipeline) or has the pipeline compute them and stores them; a key the cache refuses, or a failing cache,
    means computing."""
    from engine.cache.records import cache_key, ref_stats_cache_record
    from engine.cache.store import MemoryCacheIndex

    key = cache_key(ref_stats_cache_record(model_identity="m", layer=-2, prompts=["a"], dtype="float32"))
    index = MemoryCacheIndex()
    pipe1 = FakePipeline(stats_key=key)
    w1 = await make_worker(pipe1, cache=_real_cache(tmp_path / "c", index))
    await w1.submit(mkjob("A1", reference=1))
    assert (await w1.wait("A1")).status is JobStatus.DONE
    assert pipe1.stats_computed == [key] and w1.counters["refstats_computed"] == 1
    pipe2 = FakePipeline(stats_key=key)
    w2 = await make_worker(pipe2, cache=_real_cache(tmp_path / "c", index))  # a restart over the same index
    await w2.submit(mkjob("A1", reference=2))
    assert (await w2.wait("A1")).status is JobStatus.DONE
    assert pipe2.stats_computed == [] and w2.counters["refstats_cache_hits"] == 1
    got, again = pipe1.seeded[key], pipe2.seeded[key]
    assert torch.equal(again.mean, got.mean) and torch.equal(again.std, got.std) and again.key == key
    assert again.num_tokens == 40 and again.global_std == got.global_std
    # a key the cache refuses, or a cache that fails, means computing
    pipe3 = FakePipeline(stats_key="refstats-not-hex")
    w3 = await make_worker(pipe3, cache=_real_cache(tmp_path / "c", index))
    await w3.submit(mkjob("A1", reference=3))
    assert (await w3.wait("A1")).status is JobStatus.DONE and pipe3.stats_computed == ["refstats-not-hex"]
    pipe4 = FakePipeline(stats_key=key)
    w4 = await make_worker(pipe4, cache=BrokenCache())
    await w4.submit(mkjob("A1", reference=4))
    assert (await w4.wait("A1")).status is JobStatus.DONE and pipe4.stats_computed == [key]
