"""The worker's two stages, each a loop on the event loop whose blocking torch work runs in the stage's thread.

1. :class:`EncodeStage` (the *VL thread*): takes the next job through the gate once the hand-off is vacant, then
   ``check_inputs`` of every cell; per distinct VL key either an embedding-cache hit (Qwen3-VL is not even loaded)
   or one extraction, preceded by the reference statistics it normalises against (from the cache, seeded into the
   pipeline, or computed and stored); style_delta's neutral extraction; the prompt embeddings (once per distinct
   prompt, each a cache hit or an encode) and CFG's negative. Then it hands the run to the DiT stage.
   A ``describe`` job (:data:`DESCRIBE_KIND`) ends here: Qwen3-VL writes its prompt suggestions, no DiT.
2. :class:`DitStage` (the *DiT thread*, the only one touching the DiT): blend, denoise, decode; sweep cells sharing
   size/steps/strength/guidance/shift go through ``generate_batch`` as one call, up to ``max_batch_pixels``.
   A finished sweep is then scored in the VL thread (:mod:`engine.serving.scores`) while this stage goes on with
   the next job; the job ends when its scores are in.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from engine.cache.keys import pipeline_text_key, pipeline_vl_key
from engine.serving.embeddings import EncodeCache
from engine.serving.eta import StageEstimator, dit_units
from engine.serving.events import EventBus, EventKind, ProgressEvent
from engine.serving.faults import fail_and_free, user_message
from engine.serving.lifecycle import Gate, Models
from engine.serving.protocols import BatchPipeline, PipelineLike, WorkerConfig
from engine.serving.queue import Job, JobQueue, JobStatus
from engine.serving.references import encoded_for, extractions, more_keys, more_neutrals
from engine.serving.runs import Aborted, Handoff, Run, Stage, StageThreads, spawn
from engine.serving.scores import score_results, wants_scores

if TYPE_CHECKING:  # pragma: no cover - typing only
    from concurrent.futures import ThreadPoolExecutor

    from engine.types import StylizeRequest, StylizeResult, VLResult

log = logging.getLogger(__name__)

#: The job kind the encode stage answers itself (``/describe``: text from Qwen3-VL, no image to denoise).
DESCRIBE_KIND = "describe"


class StageHost(Protocol):
    """What the stages need from the worker: beginning and ending a job."""

    async def begin(self, job: Job) -> Run | None: ...
    async def end(self, run: Run, status: JobStatus, *, results: list | None = None,
                  error: str | None = None) -> None: ...
    async def end_aborted(self, run: Run) -> None: ...
    def on_timeout(self, run: Run) -> None: ...


class _StageBase:
    def __init__(self, host: StageHost, bus: EventBus, models: Models, threads: StageThreads, handoff: Handoff,
                 estimator: StageEstimator, config: WorkerConfig, counters: dict[str, int]) -> None:
        self.host, self.bus, self.models, self.threads, self.handoff = host, bus, models, threads, handoff
        self.estimator, self.config, self.counters = estimator, config, counters

    async def _guarded(self, run: Run, work: Any, stage: str, executor: ThreadPoolExecutor | None) -> None:
        """Await ``work``; an abort or a failure ends the job (a bug in the worker itself fails it too)."""
        try:
            try:
                await work
            except Aborted:
                await self.host.end_aborted(run)
            except Exception as exc:
                await fail_and_free(exc, run.job.id, stage, lambda msg: self.host.end(run, JobStatus.FAILED, error=msg),
                                    lambda fn: self.threads.run_in(executor, fn))
        except Exception as exc:  # a bug in the worker itself: fail the job, keep serving
            log.exception("%s loop error on job=%s", stage, run.job.id)
            await self.host.end(run, JobStatus.FAILED, error=user_message(exc, run.job.id))


class EncodeStage(_StageBase):
    """Stage 1: check, extract (or fetch), encode the prompts; then hand over."""

    def __init__(self, *args: Any, gate: Gate, queue: JobQueue, cache: EncodeCache) -> None:
        super().__init__(*args)
        self.gate, self.queue, self.cache = gate, queue, cache

    async def loop(self) -> None:
        """Take jobs until stopped; closes the hand-off at the end so the DiT loop ends too."""
        try:
            while True:
                await self.handoff.wait_vacant()
                job = await self.gate.take_next(self.queue)
                if job is None:
                    return
                run = await self.host.begin(job)
                if run is None:
                    continue
                if job.kind == DESCRIBE_KIND:  # Qwen3-VL only: ends here, never reaches the DiT stage
                    await self._guarded(run, self._describe(run), "describe", self.threads.vl)
                    continue
                await self._guarded(run, self._encode(run), "encode", self.threads.vl)
                if not run.finished:
                    run.stage = Stage.HANDOFF
                    run.disarm()
                    self.handoff.put(run)
        finally:
            self.handoff.close()

    async def _describe(self, run: Run) -> None:
        """A ``describe`` job: prompt suggestions for its one request's reference, written by Qwen3-VL in the VL
        thread (bounded by the pipeline's ``max_new_tokens``/``max_time_s`` and by the job timeout, whose abort
        flag stops ``generate`` between tokens). Its one result is the pipeline's ``Description``."""
        self.bus.emit(ProgressEvent(run.job.id, EventKind.VL_STARTED, device=run.vl_device))
        description, load_s = await self._in_vl(run, self._describe_in_thread, run.job.requests[0].reference,
                                                run.abort.is_set)
        run.timings["load"] += load_s
        run.timings["describe"] = description.seconds
        if self.config.vl_auto_unload:
            await self._in_vl(run, self.models.unload_vl)
        run.check_abort()
        await self.host.end(run, JobStatus.DONE, results=[description])

    def _describe_in_thread(self, image: Any, should_abort: Any) -> tuple[Any, float]:  # VL thread
        pipe = self.models.pipe()
        load_s = self.models.ensure(pipe, "vl")
        try:
            return pipe.describe(image, should_abort=should_abort), load_s
        finally:
            self.models.used_vl()

    async def _in_vl(self, run: Run, fn: Any, *args: Any) -> Any:
        return await self.threads.call(run, self.threads.vl, fn, *args)

    async def _encode(self, run: Run) -> None:
        job = run.job
        run.vl_keys, run.vl_device, run.text_cache_keys, stats_keys = await self._in_vl(run, self._prepare,
                                                                                          job.requests)
        run.more = await self._in_vl(run, more_keys, self.models, job.requests)
        extracted = await self._extract_all(run, stats_keys)
        if any(str(r.blend_mode) == "style_delta" for r in job.requests):
            await self._ensure_stats(run, [i for i, k in enumerate(run.vl_keys) if k is not None], stats_keys)
            run.neutrals, load_s = await self._in_vl(run, self._neutrals, job.requests, run.vl_keys, run.more)
            run.timings["load"] += load_s
            extracted = extracted or bool(run.neutrals)
        if extracted and self.config.vl_auto_unload:
            await self._in_vl(run, self.models.unload_vl)
        await self._encode_texts(run)
        run.timings["encode_stage"] = time.monotonic() - run.started_at
        run.check_abort()

    def _prepare(self, requests: list[StylizeRequest]) -> tuple[list[str | None], str | None, dict[tuple, str],
                                                                 list[str | None]]:  # VL thread
        """check_inputs; per cell the VL key (``None``: no extraction needed) and the key of the reference
        statistics its extraction needs; the VL device; the embedding-cache key of each distinct prompt."""
        pipe = self.models.pipe()
        for request in requests:
            pipe.check_inputs(request)
        ids = self.models.identities
        keys = [pipeline_vl_key(pipe, r, ids) if pipe.needs_reference(r) else None for r in requests]
        stats_keys = [pipe.reference_stats_key(r) if k is not None and self.cache.enabled else None
                      for r, k in zip(requests, keys, strict=True)]
        device = pipe.vl_device if any(k is not None for k in keys) else None
        text_keys: dict[tuple, str] = {}
        if self.cache.enabled:
            try:
                for request in requests:
                    if request.text_identity() not in text_keys:
                        text_keys[request.text_identity()] = pipeline_text_key(pipe, request, ids)
            except Exception:  # an unreadable folder: encode without the cache rather than fail the job
                log.warning("could not compute text-embedding cache keys; encoding without the cache", exc_info=True)
                text_keys = {}
        return keys, None if device is None else str(device), text_keys, stats_keys

    async def _extract_all(self, run: Run, stats_keys: list[str | None]) -> bool:
        """One extraction (or cache hit) per distinct VL key (further and negative references too: each its own
        key); whether any extraction ran."""
        extracted = False
        for key, (i, request) in extractions(run.vl_keys, run.job.requests, run.more).items():
            vl = await self.cache.get_vl(key)
            if vl is not None:
                self.counters["vl_cache_hits"] += 1
                run.vls[key] = vl
                self.bus.emit(ProgressEvent(run.job.id, EventKind.VL_CACHED))
                continue
            await self._ensure_stats(run, [i], stats_keys)
            run.vls[key] = vl = await self._extract(run, request)
            extracted = True
            if vl is not None:
                await self.cache.put_vl(key, vl)
        return extracted

    async def _ensure_stats(self, run: Run, cells: list[int], stats_keys: list[str | None]) -> None:
        """Before the extractions of ``cells``: the reference statistics they need, from the cache (seeded into the
        pipeline) or computed in the VL thread (and stored)."""
        done: set[str] = set()
        for i in cells:
            key = stats_keys[i]
            if key is None or key in done:
                continue
            done.add(key)
            pipe = self.models.pipe()
            stats = await self.cache.get_refstats(key)
            if stats is not None:
                self.counters["refstats_cache_hits"] += 1
                await self._in_vl(run, pipe.seed_reference_stats, key, stats)
                continue
            stats = await self._in_vl(run, pipe.reference_stats_for, run.job.requests[i])
            self.counters["refstats_computed"] += 1
            await self.cache.put_refstats(key, stats)

    async def _extract(self, run: Run, request: StylizeRequest) -> VLResult | None:
        self.bus.emit(ProgressEvent(run.job.id, EventKind.VL_STARTED, device=run.vl_device))
        t0 = time.monotonic()
        self.models.vl_busy = True
        try:
            vl, load_s = await self._in_vl(run, self._extract_in_thread, request)
        finally:
            self.models.vl_busy = False
        run.timings["load"] += load_s
        seconds = time.monotonic() - t0 - load_s
        self.counters["vl_extractions"] += 1
        self.estimator.observe_vl(seconds)
        run.timings["vl"] += seconds
        self.bus.emit(ProgressEvent(run.job.id, EventKind.VL_FINISHED, seconds=round(seconds, 3),
                                     device=run.vl_device))
        return vl

    def _extract_in_thread(self, request: StylizeRequest) -> tuple[VLResult | None, float]:  # VL thread
        pipe = self.models.pipe()
        load_s = self.models.ensure(pipe, "vl")
        try:
            return pipe.encode_reference(request), load_s
        finally:
            self.models.used_vl()

    def _neutrals(self, requests: list[StylizeRequest], keys: list[str | None], more: dict[int, Any]
                  ) -> tuple[dict[int, Any], float]:
        """style_delta's neutral (mid-gray) extraction per cell, in the VL thread (the pipeline memoises it; the
        further and negative references' too)."""
        pipe = self.models.pipe()
        out: dict[int, Any] = {}
        load_s = 0.0
        for i, request in enumerate(requests):
            if keys[i] is not None and str(request.blend_mode) == "style_delta":
                load_s += self.models.ensure(pipe, "vl")
                out[i] = pipe.neutral_reference(request)
                self.models.used_vl()
        if more:
            load_s += self.models.ensure(pipe, "vl")
            more_neutrals(pipe, requests, more)
            self.models.used_vl()
        return out, load_s

    async def _encode_texts(self, run: Run) -> None:
        """The prompt embeddings: cache hits first, then the misses encoded in the VL thread, then stored."""
        requests = run.job.requests
        t0 = time.monotonic()
        cached: dict[tuple, Any] = {}
        for tkey, ckey in run.text_cache_keys.items():
            emb = await self.cache.get_text(ckey)
            if emb is not None:
                cached[tkey] = emb
        self.counters["text_cache_hits"] += len(cached)
        t1 = time.monotonic()
        run.texts, load_s = await self._in_vl(run, self._encode_texts_in_thread, requests, cached)
        run.timings["load"] += load_s
        encoded = {r.text_identity(): emb for r, emb in zip(requests, run.texts, strict=True)
                   if r.text_identity() not in cached}
        self.counters["text_encodes"] += len(encoded)
        if encoded:
            self.estimator.observe_text((time.monotonic() - t1 - load_s) / len(encoded))
        run.timings["text"] += time.monotonic() - t0 - load_s
        for tkey, emb in encoded.items():
            if tkey in run.text_cache_keys:
                await self.cache.put_text(run.text_cache_keys[tkey], emb)

    def _encode_texts_in_thread(self, requests: list[StylizeRequest], cached: dict[tuple, Any]
                                ) -> tuple[list[Any], float]:  # VL thread
        """One prompt embedding per request: from ``cached`` or encoded once per distinct prompt; CFG's negative
        too. The text encoder is loaded only when something needs it (a miss, or a negative not encoded yet)."""
        pipe = self.models.pipe()
        load_s = 0.0
        seen: dict[tuple, Any] = dict(cached)
        out = []
        for request in requests:
            key = request.text_identity()
            if key not in seen:
                load_s += self.models.ensure(pipe, "text")
                seen[key] = pipe.encode_prompt(request)
            out.append(seen[key])
            if request.guidance_scale > 0 and request.negative_reference is None:  # else: a VL negative
                if not pipe.has_negative(request):  # the pipeline memoises it: the encoder is needed once
                    load_s += self.models.ensure(pipe, "text")
                pipe.negative_embedding(request)  # made here, so the DiT thread never runs the text encoder
        return out, load_s


def plan_batches(requests: list[StylizeRequest], max_pixels: int, batching: bool) -> list[list[int]]:
    """Cells in order, grouped into batches (same :meth:`~engine.types.StylizeRequest.batch_key`, up to ``max_pixels`` output pixels)."""
    if not batching or len(requests) == 1:
        return [[i] for i in range(len(requests))]
    groups: list[list[int]] = []
    open_groups: dict[tuple, list[int]] = {}
    pixels = [r.width * r.height * len(r.seeds) for r in requests]
    for i, r in enumerate(requests):
        if str(r.blend_mode) == "style_delta":  # generate_batch takes no neutrals: alone, with its neutral
            groups.append([i])
            continue
        group = open_groups.get(r.batch_key())
        if group is not None and sum(pixels[j] for j in group) + pixels[i] <= max_pixels:
            group.append(i)
        else:
            group = open_groups[r.batch_key()] = [i]
            groups.append(group)
    return groups


class DitStage(_StageBase):
    """Stage 2: blend, denoise, decode, one batch of cells at a time."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.scoring: set = set()  #: the sweeps being scored in the VL thread (tasks kept alive here)

    async def loop(self) -> None:
        """Serve what the encode stage hands over until the hand-off is closed and empty."""
        while True:
            run = await self.handoff.get()
            if run is None:
                return
            if run.finished:
                continue
            run.stage = Stage.DIT
            run.dit_started_at = time.monotonic()
            run.arm(self.host.on_timeout)
            await self._guarded(run, self._denoise(run), "dit", self.threads.dit)

    async def _denoise(self, run: Run) -> None:
        job = run.job
        run.check_abort()
        results: list[Any] = [None] * len(job.requests)
        batching = isinstance(self.models.pipe(), BatchPipeline)
        for group in plan_batches(job.requests, self.config.max_batch_pixels, batching):
            t0 = time.monotonic()
            out, load_s = await self.threads.call(run, self.threads.dit, self._generate, run, group)
            run.timings["load"] += load_s
            seconds = time.monotonic() - t0 - load_s
            self.estimator.observe_dit(seconds, sum(dit_units(job.requests[i]) for i in group))
            run.timings["dit"] += seconds
            for i, result in zip(group, out, strict=True):
                results[i] = result
            run.cells_done += len(group)
            run.step = run.total = 0
            self.bus.emit(ProgressEvent(job.id, EventKind.CELL_DONE, cells_done=run.cells_done,
                                         cells=len(job.requests)))
        if wants_scores(job, self.config.score_sweeps):  # off the DiT's path: this loop takes the next job now
            spawn(self.scoring, self._guarded(run, self._score(run, results), "score", self.threads.vl))
            return
        await self.host.end(run, JobStatus.DONE, results=results)

    async def _score(self, run: Run, results: list[Any]) -> None:
        run.disarm()  # the images are made: the generation clock stops, a slow judge must not time the sweep out
        t0 = time.monotonic()
        load_s = await self.threads.call(run, self.threads.vl, score_results, self.models, run.job, results,
                                         self.config.vl_auto_unload)
        run.timings["load"] += load_s
        run.timings["score"] = time.monotonic() - t0 - load_s
        await self.host.end(run, JobStatus.DONE, results=results)

    def _generate(self, run: Run, group: list[int]) -> tuple[list[StylizeResult], float]:  # DiT thread
        pipe: PipelineLike = self.models.pipe()
        load_s = self.models.ensure(pipe, "dit")
        job = run.job

        def progress(step: int, total: int) -> None:
            self.bus.emit_from_thread(run, ProgressEvent(job.id, EventKind.STEP, step=step, total=total,
                                                          cell=group[0], cells=len(job.requests)))

        requests = [job.requests[i] for i in group]
        vls = [run.vls[run.vl_keys[i]] if run.vl_keys[i] is not None else None for i in group]
        texts = [run.texts[i] for i in group]
        vls = [encoded_for(run.more[i], run.vls, vl, run.texts[i], run.neutrals.get(i)) if i in run.more else vl
               for i, vl in zip(group, vls)]
        if len(group) > 1 and isinstance(pipe, BatchPipeline):
            return list(pipe.generate_batch(requests, vls, texts, progress=progress,
                                            should_abort=run.abort.is_set)), load_s
        extra = {"neutral": run.neutrals[group[0]]} if group[0] in run.neutrals else {}
        return [pipe.generate(requests[0], vls[0], texts[0], progress=progress, should_abort=run.abort.is_set,
                              **extra)], load_s
