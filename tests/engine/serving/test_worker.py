"""EngineWorker with a fake pipeline whose stages block on events and record their order.

Ordering and overlap are proven with threading events (never with wall-clock thresholds); the only timing assertion
is the event-loop lag bound, with a wide margin.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest
import torch
from PIL import Image

import engine.serving.worker as worker_mod
from engine.serving.faults import CORRUPT_MESSAGE, OOM_MESSAGE
from engine.serving.events import EventKind, ProgressEvent, throttle
from engine.serving.queue import Job, JobOutcome, JobStatus, QueueFull
from engine.config import Settings
from engine.types import StylizeRequest, StylizeResult, VLResult
from engine.serving.worker import EngineWorker, StageEstimator

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # generous bound for "this event happens"; tests never wait it out when they pass


class Cancelled(Exception):
    """What the real generate raises when should_abort() turns true."""


class FakePipeline:
    """Stages that record ``(what, label)`` in ``log``; ``block[(stage, label)]`` is an Event the stage waits for;
    ``fail[(stage, label)]`` an exception it raises; ``entered[(stage, label)]`` is set when the stage starts."""

    def __init__(self, *, step_s: float = 0.0, vl_s: float = 0.0) -> None:
        self.log: list[tuple[str, str]] = []
        self.loaded = {"vl": False, "text": False, "dit": False}
        self.block: dict[tuple[str, str], threading.Event] = {}
        self.fail: dict[tuple[str, str], BaseException] = {}
        self.load_error: dict[str, BaseException] = {}
        self.entered: dict[tuple[str, str], threading.Event] = {}
        self.step_s, self.vl_s = step_s, vl_s
        self.aborted: list[str] = []
        self.threads: dict[str, set[str]] = {"vl": set(), "dit": set()}
        self._lock = threading.Lock()

    def _rec(self, what: str, label: str) -> None:
        with self._lock:
            self.log.append((what, label))

    def _stage(self, stage: str, label: str) -> None:
        self.entered.setdefault((stage, label), threading.Event()).set()
        if (stage, label) in self.block:
            assert self.block[(stage, label)].wait(WAIT), f"{stage}:{label} was never released"
        if (stage, label) in self.fail:
            raise self.fail[(stage, label)]

    def check_inputs(self, request: StylizeRequest) -> None:
        if request.prompt.startswith("bad"):
            raise ValueError("alpha must be between 0 and 1; got 1.7")

    def encode_reference(self, request: StylizeRequest) -> VLResult:
        label = request.prompt
        self.threads["vl"].add(threading.current_thread().name)
        assert self.loaded["vl"], "VL used before it was loaded"
        self._rec("vl_start", label)
        self._stage("vl", label)
        if self.vl_s:
            time.sleep(self.vl_s)
        request.reference.load()  # a truncated image raises here, as in the real processor
        self._rec("vl_end", label)
        return VLResult(torch.zeros(4, 8), ["image"] * 4, (0, 4), 1.0, 1.0, 1.0)

    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor:
        self._rec("text", request.prompt)
        return torch.zeros(3, 8)

    def generate(self, request, vl, text_emb=None, *, progress=None, should_abort=None) -> StylizeResult:
        label = request.prompt
        self.threads["dit"].add(threading.current_thread().name)
        assert self.loaded["dit"], "DiT used before it was loaded"
        assert text_emb is not None
        self._rec("dit_start", label)
        self._stage("dit", label)
        for step in range(1, request.steps + 1):
            if should_abort is not None and should_abort():
                self.aborted.append(label)
                self._rec("dit_abort", label)
                raise Cancelled(label)
            if self.step_s:
                time.sleep(self.step_s)
            if progress is not None:
                progress(step, request.steps)
        self._rec("dit_end", label)
        return StylizeResult([], list(request.seeds), {"prompt": label, "alpha": request.alpha},
                             vl=None if vl is None else vl.metadata())

    def load(self, component: str) -> None:
        if component in self.load_error:
            raise self.load_error[component]
        self._rec("load", component)
        for name in (self.loaded if component == "all" else [component]):
            self.loaded[name] = True

    def unload(self, component: str) -> None:
        self._rec("unload", component)
        for name in (self.loaded if component == "all" else [component]):
            self.loaded[name] = False

    def loaded_components(self) -> dict[str, bool]:
        return dict(self.loaded)


class BatchingFake(FakePipeline):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.batches: list[list[str]] = []

    def generate_batch(self, requests, vls, text_embs, *, progress=None, should_abort=None):
        self.batches.append([r.prompt for r in requests])
        return [self.generate(r, v, t, progress=progress, should_abort=should_abort)
                for r, v, t in zip(requests, vls, text_embs, strict=True)]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.outcomes: dict[str, JobOutcome] = {}
        self.fail_queued = False

    async def on_queued(self, job: Job) -> None:
        if self.fail_queued:
            raise OSError("database is locked")
        self.calls.append(("queued", job.id))

    async def on_started(self, job: Job) -> None:
        self.calls.append(("started", job.id))

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        self.calls.append((outcome.status.value, job.id))
        self.outcomes[job.id] = outcome

    async def on_interrupted(self, job: Job) -> None:
        self.calls.append(("interrupted", job.id))


class DictCache:
    def __init__(self) -> None:
        self.data: dict[str, VLResult] = {}
        self.gets = 0

    async def get_vl(self, key: str) -> VLResult | None:
        self.gets += 1
        return self.data.get(key)

    async def put_vl(self, key: str, vl: VLResult) -> None:
        self.data[key] = vl


USERS = {"A": 1, "B": 2, "C": 3}
_REF_CACHE: dict[int, Image.Image] = {}


def ref(n: int = 0) -> Image.Image:
    """A distinct small reference per ``n``."""
    if n not in _REF_CACHE:
        _REF_CACHE[n] = Image.new("RGB", (16, 16), (n * 7 % 256, n * 13 % 256, 99))
    return _REF_CACHE[n]


def req(label: str, *, reference: Image.Image | None | int = 0, steps: int = 3, **kw) -> StylizeRequest:
    if isinstance(reference, int):
        reference = ref(reference)
    return StylizeRequest(prompt=label, reference=reference, steps=steps, width=64, height=64, **kw)


def mkjob(label: str, owner: str | None = None, *, reference: Image.Image | None | int = 0, **kw) -> Job:
    return Job(owner_id=USERS[owner or label[0]], requests=[req(label, reference=reference, **kw)], id=label)


def settings(**kw) -> Settings:
    base = {"max_jobs_per_user": 10, "max_jobs_total": 50, "job_timeout_s": 30.0, "vl_idle_unload_s": 0.0,
            "preload": False}
    base.update(kw)
    return Settings(_env_file=None, **base)


async def wait_for(pred: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_thread_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT)


def entered(pipe: FakePipeline, stage: str, label: str) -> threading.Event:
    return pipe.entered.setdefault((stage, label), threading.Event())


def blocker(pipe: FakePipeline, stage: str, label: str) -> threading.Event:
    ev = threading.Event()
    pipe.block[(stage, label)] = ev
    return ev


@pytest.fixture
async def make_worker():
    workers: list[EngineWorker] = []

    async def make(pipe: FakePipeline | None = None, *, start: bool = True, **kw) -> EngineWorker:
        st = kw.pop("settings", None) or settings()
        w = EngineWorker(pipe or FakePipeline(), settings=st, **kw)
        workers.append(w)
        if start:
            await w.start()
        return w

    yield make
    for w in workers:
        for ev in list(getattr(w._pipeline, "block", {}).values()):
            ev.set()  # never leave a stage thread blocked
        await w.stop(grace_s=5.0)


def dit_order(pipe: FakePipeline) -> list[str]:
    return [label for what, label in pipe.log if what == "dit_start"]


# --- queue through the worker ------------------------------------------------------------------------------------
async def test_fair_order_for_three_users(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe)
    w.pause()
    labels = ["A1", "A2", "A3", "A4", "B1", "B2", "C1"]
    for label in labels:
        await w.submit(mkjob(label, reference=None))
    w.resume()
    for label in labels:
        assert (await w.wait(label)).status is JobStatus.DONE
    assert dit_order(pipe) == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]


async def test_caps_refuse_at_once_with_a_clear_reason(make_worker):
    w = await make_worker(settings=settings(max_jobs_per_user=2, max_jobs_total=3))
    w.pause()
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("A2"))
    with pytest.raises(QueueFull, match="the limit is 2") as err:
        await w.submit(mkjob("A3"))
    assert err.value.scope == "user"
    await w.submit(mkjob("B1"))
    with pytest.raises(QueueFull, match="queue is full") as err:
        await w.submit(mkjob("C1"))
    assert err.value.scope == "total"
    with pytest.raises(KeyError):
        await w.wait("A3")  # refused jobs leave no trace


async def test_recorder_failure_refuses_the_job(make_worker):
    rec = Recorder()
    rec.fail_queued = True
    w = await make_worker(recorder=rec)
    w.pause()
    with pytest.raises(OSError):
        await w.submit(mkjob("A1"))
    assert len(w.queue) == 0
    rec.fail_queued = False
    await w.submit(mkjob("A1"))  # the id is free again
    w.resume()
    assert (await w.wait("A1")).status is JobStatus.DONE


# --- cancel ------------------------------------------------------------------------------------------------------
async def test_cancel_queued_job(make_worker):
    rec = Recorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec)
    w.pause()
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("A2"))
    with pytest.raises(PermissionError, match="your own jobs"):
        await w.cancel("A2", by_user_id=USERS["B"])
    assert await w.cancel("A2", by_user_id=USERS["A"]) is True
    outcome = await w.wait("A2")
    assert outcome.status is JobStatus.CANCELLED and outcome.error == "cancelled by its owner"
    assert await w.position("A2") is None
    assert await w.cancel("A2", by_user_id=USERS["A"]) is False  # already over
    assert await w.cancel("nope", by_user_id=1) is False
    w.resume()
    assert (await w.wait("A1")).status is JobStatus.DONE
    assert "A2" not in dit_order(pipe)
    assert ("cancelled", "A2") in rec.calls and ("started", "A2") not in rec.calls


async def test_cancel_running_job_cooperatively_then_next_job_runs(make_worker):
    pipe = FakePipeline(step_s=0.01)
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1", steps=50))
    await w.submit(mkjob("B1"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    assert await w.cancel("A1", by_user_id=USERS["C"], is_admin=True) is True
    outcome = await w.wait("A1")  # finished at once, before the thread reached its next step
    assert outcome.status is JobStatus.CANCELLED and outcome.error == "cancelled by an admin"
    release.set()
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert pipe.aborted == ["A1"]  # should_abort stopped the thread at its next step
    log = pipe.log
    assert log.index(("dit_abort", "A1")) < log.index(("dit_start", "B1"))  # one DiT thread: no overlap of DiTs


async def test_cancel_job_waiting_in_the_handoff(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=int(label[0] == "B")))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    await wait_for(lambda: w._handoff.run is not None and w._handoff.run.job.id == "B1", "B1 in the hand-off")
    assert await w.cancel("B1", by_user_id=USERS["B"])
    assert (await w.wait("B1")).status is JobStatus.CANCELLED
    # the hand-off is free again, so C1's encode stage starts while A1 still denoises
    await wait_for(lambda: ("text", "C1") in pipe.log, "C1 encoded")
    release.set()
    assert (await w.wait("C1")).status is JobStatus.DONE
    assert dit_order(pipe) == ["A1", "C1"]


# --- position / ETA ----------------------------------------------------------------------------------------------
async def test_position_and_eta_follow_the_two_stage_overlap(make_worker):
    est = StageEstimator(vl_s=1.0, text_s=0.0, dit_unit_s=1.0 / (64 * 64 / 1024**2))  # 1 s VL, 1 s per step
    w = await make_worker(estimator=est)
    w.pause()
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=int(label[0] == "B") + 5, steps=2))  # d = 2 s, v = 1 s
    got = {label: await w.position(label) for label in ["A1", "B1", "C1"]}
    assert [got[k][0] for k in ["A1", "B1", "C1"]] == [1, 2, 3]
    # flow shop: A1 done at 1+2=3; B1 encodes 1..2, waits for the DiT until 3, done at 5; C1 done at 7
    for label, expected in [("A1", 3.0), ("B1", 5.0), ("C1", 7.0)]:
        assert got[label][1] == pytest.approx(expected, abs=0.2)
    assert await w.position("zz") is None
    assert [(j.id, p) for j, p, _eta in await w.jobs_for(USERS["B"])] == [("B1", 2)]


async def test_position_zero_while_running(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("A2"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    assert (await w.position("A1"))[0] == 0
    release.set()
    await w.wait("A2")


# --- overlap -----------------------------------------------------------------------------------------------------
async def test_vl_of_next_job_runs_while_dit_of_current_job_runs(make_worker):
    pipe = FakePipeline()
    release_dit1 = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1", reference=1))
    await w.submit(mkjob("B1", reference=2))
    # B1's VL stage starts and finishes while A1's DiT stage is still held inside the DiT thread
    await wait_thread_event(entered(pipe, "vl", "B1"))
    await wait_for(lambda: ("text", "B1") in pipe.log, "B1 encoded")
    assert ("dit_end", "A1") not in pipe.log
    release_dit1.set()
    for label in ["A1", "B1"]:
        assert (await w.wait(label)).status is JobStatus.DONE
    log = pipe.log
    assert log.index(("dit_start", "A1")) < log.index(("vl_start", "B1")) < log.index(("dit_end", "A1"))
    # one thread per stage, and they are different threads
    assert len(pipe.threads["vl"]) == len(pipe.threads["dit"]) == 1
    assert pipe.threads["vl"] != pipe.threads["dit"]


async def test_at_most_two_jobs_taken_from_the_queue(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    await wait_for(lambda: w._handoff.run is not None, "B1 handed off")
    assert [j.id for j in await w.queue.snapshot()] == ["C1"]  # C1 not taken early: fairness stays live
    assert len(w._runs) == 2
    release.set()
    await w.wait("C1")


# --- cache and sweeps --------------------------------------------------------------------------------------------
async def test_cache_hit_skips_the_vl_model(make_worker):
    pipe = FakePipeline()
    cache = DictCache()
    w = await make_worker(pipe, cache=cache)
    await w.submit(mkjob("A1", reference=3))
    await w.wait("A1")
    pipe.unload("vl")
    events: list[ProgressEvent] = []
    w.add_listener(events.append)
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


async def test_sweep_extracts_once_and_reports_cells(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe)
    cells = [req("S", reference=5, alpha=a, seeds=(s,)) for a in (0.2, 0.5) for s in (1, 2)]
    cells.append(req("S", reference=5, hidden_layer=-2))  # other VL settings: a second extraction
    job = Job(owner_id=1, requests=cells, id="SW", kind="sweep")
    sub = w.subscribe((await w.submit(job)) and "SW")
    outcome = await w.wait("SW")
    assert outcome.status is JobStatus.DONE and len(outcome.results) == 5
    assert [r.seeds for r in outcome.results] == [[1], [2], [1], [2], [0]]
    assert len([x for x in pipe.log if x[0] == "vl_start"]) == 2
    assert len([x for x in pipe.log if x[0] == "text"]) == 1  # one prompt, encoded once
    assert len(dit_order(pipe)) == 5  # no generate_batch on this pipeline: cells run one by one
    events = [e async for e in sub]
    assert [e.cells_done for e in events if e.kind is EventKind.CELL_DONE] == [1, 2, 3, 4, 5]
    assert {e.cell for e in events if e.kind is EventKind.STEP} == {0, 1, 2, 3, 4}


async def test_sweep_batches_cells_that_share_the_dit_settings(make_worker):
    pipe = BatchingFake()
    w = await make_worker(pipe, max_batch_pixels=3 * 64 * 64)
    cells = [req(f"c{i}", reference=5, alpha=0.1 * i) for i in range(4)]
    cells.append(req("big", reference=5, steps=5))  # other steps: its own call
    await w.submit(Job(owner_id=1, requests=cells, id="SW"))
    outcome = await w.wait("SW")
    assert outcome.status is JobStatus.DONE
    assert [r.params["prompt"] for r in outcome.results] == ["c0", "c1", "c2", "c3", "big"]
    assert pipe.batches == [["c0", "c1", "c2"]]  # c3 over the pixel budget, "big" alone: plain generate


# --- lifecycle ---------------------------------------------------------------------------------------------------
async def test_lazy_load_and_vl_auto_unload(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe, settings=settings(vl_auto_unload=True))
    assert pipe.log == []  # nothing loaded before the first job
    await w.submit(mkjob("A1"))
    await w.wait("A1")
    loads = [x for x in pipe.log if x[0] in ("load", "unload")]
    assert loads == [("load", "vl"), ("unload", "vl"), ("load", "text"), ("load", "dit")]
    assert pipe.loaded == {"vl": False, "text": True, "dit": True}


async def test_vl_idle_unload(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe, settings=settings(vl_idle_unload_s=0.05))
    await w.submit(mkjob("A1"))
    await w.wait("A1")
    await wait_for(lambda: not pipe.loaded["vl"], "VL unloaded after idle")
    assert pipe.loaded["dit"]


async def test_reload_waits_for_running_job_and_loses_no_queued_job(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1", "A2"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    reload = asyncio.create_task(w.reload("dit"))
    await wait_for(lambda: w._reloading, "reload started")
    assert not reload.done()  # waiting for the running job
    release.set()
    result = await reload
    assert result["error"] is None and result["component"] == "dit"
    for label in ["A1", "B1", "C1", "A2"]:
        assert (await w.wait(label)).status is JobStatus.DONE
    log = pipe.log
    swap = log.index(("unload", "dit"))
    assert log.index(("dit_end", "A1")) < swap < log.index(("load", "dit"), swap)
    assert log.index(("dit_end", "B1")) < swap  # B1 was already taken (encoded): it finished first
    assert log.index(("dit_start", "C1")) > swap and log.index(("vl_start", "C1")) > swap


async def test_reload_all_with_a_factory_builds_a_new_pipeline(make_worker):
    built: list[FakePipeline] = []

    def factory() -> FakePipeline:
        built.append(FakePipeline())
        return built[-1]

    w = EngineWorker(settings=settings(), pipeline_factory=factory)
    await w.start()
    try:
        await w.submit(mkjob("A1"))
        await w.wait("A1")
        assert len(built) == 1
        result = await w.reload("all")
        assert result["error"] is None and len(built) == 2
        assert ("unload", "all") in built[0].log and built[1].loaded == {"vl": True, "text": True, "dit": True}
        await w.submit(mkjob("A2"))
        await w.wait("A2")
        assert ("dit_end", "A2") in built[1].log and ("dit_end", "A2") not in built[0].log
    finally:
        await w.stop()


@pytest.mark.parametrize("auto_unload", [False, True])
async def test_preload_loads_the_models_at_start_not_on_the_first_job(make_worker, auto_unload):
    """With ``preload`` the stage threads load their models right after start(); with ``vl_auto_unload`` Qwen3-VL
    is left to load on demand."""
    pipe = FakePipeline()
    w = await make_worker(pipe, settings=settings(preload=True, vl_auto_unload=auto_unload))
    await wait_for(lambda: pipe.loaded["dit"] and pipe.loaded["text"], "the start-up loads")
    assert pipe.loaded["vl"] is (not auto_unload)
    assert w.counters["done"] == 0  # no job was needed for that


async def test_failed_preload_is_reported_and_the_next_job_retries(make_worker):
    pipe = FakePipeline()
    pipe.load_error["dit"] = FileNotFoundError("/models/zimage/transformer: no such folder")
    w = await make_worker(pipe, settings=settings(preload=True))
    await wait_for(lambda: pipe.loaded["text"], "the encoder loads")
    for _ in range(100):
        if (await w.status())["model_error"]:
            break
        await asyncio.sleep(0.02)
    assert "no such folder" in (await w.status())["model_error"]
    del pipe.load_error["dit"]
    await w.submit(mkjob("A1"))
    assert (await w.wait("A1")).status is JobStatus.DONE


async def test_failed_model_load_keeps_worker_alive(make_worker):
    pipe = FakePipeline()
    pipe.load_error["dit"] = FileNotFoundError("/models/zimage/transformer: no such folder")
    w = await make_worker(pipe)
    await w.submit(mkjob("A1"))
    outcome = await w.wait("A1")
    assert outcome.status is JobStatus.FAILED
    assert "Z-Image model could not be loaded" in outcome.error
    assert "/models" not in outcome.error  # the user sees no host paths; the admins see the cause
    status = await w.status()
    assert "no such folder" in status["model_error"]
    result = await w.reload("dit")
    assert result["error"] and "no such folder" in result["error"]
    del pipe.load_error["dit"]  # the admin fixes the folder
    await w.submit(mkjob("A2"))
    assert (await w.wait("A2")).status is JobStatus.DONE
    assert (await w.status())["model_error"] is None


async def test_pause_resume_and_status(make_worker):
    pipe = FakePipeline()
    w = await make_worker(pipe)
    w.pause()
    await w.submit(mkjob("A1"))
    await asyncio.sleep(0.05)
    status = await w.status()
    assert status["paused"] is True and status["queue_depth"] == 1 and status["running"] == []
    assert pipe.log == []
    release = blocker(pipe, "dit", "A1")
    w.resume()
    await wait_thread_event(entered(pipe, "dit", "A1"))
    status = await w.status()
    assert status["running"][0]["job_id"] == "A1" and status["running"][0]["stage"] == "dit"
    assert status["loaded"]["dit"] is True
    release.set()
    await w.wait("A1")
    status = await w.status()
    assert status["recent"][-1]["job_id"] == "A1" and status["counters"]["done"] == 1
    assert status["estimates"]["samples"]["dit"] == 1


# --- faults ------------------------------------------------------------------------------------------------------
async def test_injected_exception_fails_only_that_job(make_worker, caplog):
    pipe = FakePipeline()
    pipe.fail[("dit", "A1")] = RuntimeError("boom in the attention kernel")
    rec = Recorder()
    w = await make_worker(pipe, recorder=rec)
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("B1"))
    with caplog.at_level(logging.ERROR, logger="engine.serving.worker"):
        outcome = await w.wait("A1")
    assert outcome.status is JobStatus.FAILED
    assert outcome.error == "generation failed (job A1); the admins have the details"
    assert "boom" not in outcome.error
    assert any("job A1" in r.getMessage() and r.exc_info for r in caplog.records)
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert rec.outcomes["A1"].error == outcome.error


async def test_injected_oom_frees_memory_and_next_job_runs(make_worker, monkeypatch):
    freed: list[str] = []
    monkeypatch.setattr(worker_mod, "free_memory", lambda: freed.append(threading.current_thread().name))
    pipe = FakePipeline()
    pipe.fail[("dit", "A1")] = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    pipe.fail[("vl", "B1")] = RuntimeError("CUDA error: out of memory")
    w = await make_worker(pipe)
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    assert (await w.wait("A1")).error == OOM_MESSAGE
    assert (await w.wait("B1")).error == OOM_MESSAGE
    assert (await w.wait("C1")).status is JobStatus.DONE
    assert len(freed) == 2 and all(name.startswith("zvl-") for name in freed)  # freed in the stage threads


async def test_value_error_and_corrupt_reference_messages(make_worker, tmp_path):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buf.getvalue()[:-40])
    w = await make_worker()
    with Image.open(path) as truncated:  # lazily decoded: .load() raises OSError("image file is truncated ...")
        await w.submit(mkjob("bad1", "A"))
        await w.submit(Job(owner_id=2, requests=[req("B1", reference=truncated)], id="B1"))
        await w.submit(mkjob("C1"))
        assert (await w.wait("bad1")).error == "alpha must be between 0 and 1; got 1.7"
        assert (await w.wait("B1")).error == CORRUPT_MESSAGE
        assert (await w.wait("C1")).status is JobStatus.DONE


async def test_timeout_fails_job_and_stops_the_thread(make_worker):
    pipe = FakePipeline(step_s=0.01)
    w = await make_worker(pipe, settings=settings(job_timeout_s=0.3))
    await w.submit(mkjob("A1", steps=100_000))
    await w.submit(mkjob("B1"))
    outcome = await w.wait("A1")
    assert outcome.status is JobStatus.FAILED and outcome.error == "timed out after 0.3 s"
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert pipe.aborted == ["A1"]


async def test_slow_persistence_does_not_hold_the_next_job(make_worker):
    class SlowRecorder(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def on_finished(self, job, outcome):
            if job.id == "A1":
                await self.release.wait()  # e.g. the bot encoding a sweep's PNGs
            await super().on_finished(job, outcome)

    rec = SlowRecorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec)
    await w.submit(mkjob("A1"))
    await w.submit(mkjob("B1"))
    assert (await w.wait("B1")).status is JobStatus.DONE  # served while A1 is still being persisted
    assert "A1" not in rec.outcomes
    rec.release.set()
    assert (await w.wait("A1")).status is JobStatus.DONE  # waiters wake once the outcome is stored
    assert "A1" in rec.outcomes


# --- restart -----------------------------------------------------------------------------------------------------
async def test_restore_requeues_resumable_jobs_in_creation_order(make_worker):
    rec = Recorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec, start=False)
    now = time.time()
    jobs = [Job(owner_id=1, requests=[req("A2")], id="A2", created_at=now - 10),
            Job(owner_id=1, requests=[req("A1")], id="A1", created_at=now - 20),
            Job(owner_id=2, requests=[req("B1")], id="B1", created_at=now - 15)]
    positions = await w.restore(jobs)
    assert sorted(positions) == [1, 2, 3]
    await w.start()
    for job in jobs:
        assert (await w.wait(job.id)).status is JobStatus.DONE
    assert dit_order(pipe) == ["A1", "B1", "A2"]
    assert not [c for c in rec.calls if c[0] == "queued"]  # already stored as queued by the bot


async def test_stop_interrupts_after_grace_and_keeps_queued_jobs(make_worker):
    rec = Recorder()
    pipe = FakePipeline(step_s=0.005)
    w = await make_worker(pipe, recorder=rec)
    release = blocker(pipe, "dit", "A1")
    await w.submit(mkjob("A1", steps=20))
    await w.submit(mkjob("A2"))
    await w.submit(mkjob("B1"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    sub = w.subscribe("A1")
    await w.stop(grace_s=0.1)
    assert ("interrupted", "A1") in rec.calls and ("done", "A1") not in rec.calls
    requeued = [e for e in sub._queue._queue if e.kind is EventKind.QUEUED][-1]  # told it is queued again
    assert requeued.position == 1 and requeued.message == "the bot is restarting"
    assert {j.id for j in await w.queue.snapshot()} >= {"A1", "A2"}
    assert [j.id for j in await w.queue.snapshot()][0] == "A1"  # back at the front
    release.set()
    await w.start()  # same process: picks up where it stopped
    for label in ["A1", "A2", "B1"]:
        assert (await w.wait(label)).status is JobStatus.DONE


async def test_stop_while_paused_with_queued_jobs_returns_at_once(make_worker):
    w = await make_worker()
    w.pause()
    await w.submit(mkjob("A1"))
    await asyncio.wait_for(w.stop(grace_s=30.0), WAIT)  # nothing runs: no grace to wait out
    assert [j.id for j in await w.queue.snapshot()] == ["A1"]
    w.resume()
    await w.start()
    assert (await w.wait("A1")).status is JobStatus.DONE


async def test_stop_waits_for_running_job_within_grace(make_worker):
    rec = Recorder()
    pipe = FakePipeline()
    w = await make_worker(pipe, recorder=rec)
    release = blocker(pipe, "dit", "A1")
    await w.submit(mkjob("A1"))
    await wait_thread_event(entered(pipe, "dit", "A1"))
    asyncio.get_running_loop().call_later(0.05, release.set)
    await w.stop(grace_s=WAIT)
    assert rec.outcomes["A1"].status is JobStatus.DONE
    assert ("interrupted", "A1") not in rec.calls


# --- progress ----------------------------------------------------------------------------------------------------
async def test_progress_events_in_order(make_worker):
    pipe = FakePipeline()
    release = blocker(pipe, "dit", "A1")
    rec = Recorder()
    w = await make_worker(pipe, recorder=rec)
    await w.submit(mkjob("A1", reference=1))
    await w.submit(mkjob("A2", reference=1))
    await w.submit(mkjob("B1", reference=2, steps=4))
    sub = w.subscribe("B1")
    release.set()
    events = [e async for e in sub]
    kinds = [e.kind.value for e in events]
    assert kinds == ["queued", "position", "started", "vl_started", "vl_finished",
                     "step", "step", "step", "step", "cell_done", "done"]
    assert [e.position for e in events[:3]] == [2, 1, 0]  # B1 overtook A2 on arrival
    assert [e.step for e in events if e.kind is EventKind.STEP] == [1, 2, 3, 4]
    assert events[-1].final
    # the recorder saw the same life
    assert [c for c in rec.calls if c[1] == "B1"] == [("queued", "B1"), ("started", "B1"), ("done", "B1")]
    # a late subscriber gets the history, ending with the final event
    late = [e.kind for e in [e async for e in w.subscribe("B1")]]
    assert late[0] is EventKind.QUEUED and late[-1] is EventKind.DONE
    with pytest.raises(KeyError):
        w.subscribe("nope")


async def test_throttle_keeps_final_event():
    t = [0.0]

    async def events():
        for step in range(1, 11):
            t[0] += 0.1
            yield ProgressEvent("j", EventKind.STEP, step=step, total=10)
        t[0] += 0.01
        yield ProgressEvent("j", EventKind.DONE)
        yield ProgressEvent("j", EventKind.STEP, step=99)  # nothing after the final event

    got = [e async for e in throttle(events(), 0.35, clock=lambda: t[0])]
    assert [e.step for e in got[:-1]] == [1, 5, 9]
    assert got[-1].kind is EventKind.DONE


async def test_throttle_passes_the_newest_held_event_when_the_interval_is_over():
    """A status message must not stay on a stale state: the held newest event goes out after the interval."""
    release = asyncio.Event()

    async def events():
        yield ProgressEvent("j", EventKind.STEP, step=1, total=9)
        yield ProgressEvent("j", EventKind.STEP, step=2, total=9)  # too soon: held
        yield ProgressEvent("j", EventKind.STEP, step=3, total=9)  # supersedes step 2
        await release.wait()  # the stage is busy for a long time
        yield ProgressEvent("j", EventKind.DONE)

    got = []
    async for event in throttle(events(), 0.05):
        got.append(event.step if event.kind is EventKind.STEP else event.kind)
        if len(got) == 2:
            release.set()
    assert got == [1, 3, EventKind.DONE]


# --- the event loop stays responsive -----------------------------------------------------------------------------
async def test_event_loop_stays_responsive_during_blocking_stages(make_worker):
    class BusyFake(FakePipeline):
        def encode_reference(self, request):
            a = torch.randn(256, 256)
            t_end = time.monotonic() + 0.4
            while time.monotonic() < t_end:  # blocking torch work in the VL thread
                a = torch.tanh(a @ a)
            return super().encode_reference(request)

        def generate(self, request, vl, text_emb=None, **kw):
            time.sleep(0.4)  # blocking in the DiT thread
            return super().generate(request, vl, text_emb, **kw)

    w = await make_worker(BusyFake())
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker():
        interval = 0.01
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            lags.append(time.perf_counter() - t0 - interval)

    tick = asyncio.create_task(ticker())
    for label in ["A1", "B1", "C1"]:
        await w.submit(mkjob(label, reference=USERS[label[0]]))
    for label in ["A1", "B1", "C1"]:
        await w.wait(label)
    stop.set()
    await tick
    assert len(lags) > 20
    assert max(lags) < 0.2, f"max event-loop lag {max(lags):.3f}s"


# --- the real tiny models ----------------------------------------------------------------------------------------
async def test_real_tiny_pipeline_end_to_end(tiny_models, tmp_path):
    """One real run: StylePipeline on the tiny models, the real EmbeddingCache, a sweep batched on the DiT."""
    from engine.cache.store import EmbeddingCache, MemoryCacheIndex
    from engine.generation.pipeline import StylePipeline

    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu")
    cache = EmbeddingCache(tmp_path / "cache", MemoryCacheIndex(), 8 << 20)
    rec = Recorder()
    w = EngineWorker(pipe, settings=settings(cpu_threads=1), cache=cache, recorder=rec)
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
        assert set(status["loaded"]) == {"vl", "text", "dit"} and status["counters"]["done"] == 2
        assert rec.outcomes["sweep"].timings["dit"] > 0
    finally:
        await w.stop()


# --- text embeddings and reference statistics through the embedding cache ----------------------------------------
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
    assert {"text_cache_hits", "text_encodes", "refstats_cache_hits", "refstats_computed"} <= set(status["counters"])

    # another text_layer or think is another embedding: encoded (the encoder loads for it), then stored
    await w.submit(Job(owner_id=1, requests=[req("a fox", reference=None, think=True)], id="S3"))
    assert (await w.wait("S3")).status is JobStatus.DONE
    assert [x for x in pipe.log if x[0] == "text"][-1] == ("text", "a fox") and pipe.loaded["text"] is True
    assert w.counters["text_encodes"] == 3 and (await cache.stats())["entries"] == 3


async def test_text_cache_failure_falls_back_to_encoding(make_worker, tmp_path):
    class Broken:
        async def get_vl(self, key):
            raise OSError("disk gone")

        async def put_vl(self, key, vl):
            raise OSError("disk gone")

        async def get(self, key):
            raise OSError("disk gone")

        async def put(self, key, tensors, meta, *, kind="tensor"):
            raise OSError("disk gone")

    pipe = TextFake()
    w = await make_worker(pipe, cache=Broken())
    for n in (1, 2):
        await w.submit(mkjob(f"A{n}", reference=None))
        assert (await w.wait(f"A{n}")).status is JobStatus.DONE
    assert [x[1] for x in pipe.log if x[0] == "text"] == ["A1", "A2"]
    assert w.counters["text_cache_hits"] == 0


def _stats(key: str, value: float = 1.0):
    from engine.conditioning.text import ReferenceStats

    return ReferenceStats(mean=torch.full((8,), value), std=torch.full((8,), 2 * value), layer=-2, num_prompts=10,
                          num_tokens=40, key=key, global_mean=value, global_std=2 * value)


async def test_stats_provider_stores_and_serves_reference_statistics(make_worker, tmp_path):
    from engine.cache.records import cache_key, ref_stats_cache_record
    from engine.cache.store import MemoryCacheIndex

    key = cache_key(ref_stats_cache_record(model_identity="m", layer=-2, prompts=["a"], dtype="float32"))
    computed: list[str] = []

    def compute():
        computed.append(key)
        return _stats(key, 1.5)

    index = MemoryCacheIndex()
    w1 = await make_worker(FakePipeline(), cache=_real_cache(tmp_path / "c", index))
    got = await asyncio.to_thread(w1._stats_provider, key, compute)  # from a thread, as the VL thread calls it
    assert computed == [key] and w1.counters["refstats_computed"] == 1
    w2 = await make_worker(FakePipeline(), cache=_real_cache(tmp_path / "c", index))  # a restart over the same index
    again = await asyncio.to_thread(w2._stats_provider, key, compute)
    assert computed == [key] and w2.counters["refstats_cache_hits"] == 1
    assert torch.equal(again.mean, got.mean) and torch.equal(again.std, got.std) and again.key == key
    assert again.num_tokens == 40 and again.global_std == got.global_std
    # a key the cache refuses, or a cache that fails, means computing
    await asyncio.to_thread(w2._stats_provider, "refstats-not-hex", compute)
    assert len(computed) == 2

    class Broken:
        async def get(self, key):
            raise OSError("disk gone")

        async def put(self, key, tensors, meta, *, kind="tensor"):
            raise OSError("disk gone")

    w3 = await make_worker(FakePipeline(), cache=Broken())
    assert (await asyncio.to_thread(w3._stats_provider, key, compute)).key == key and len(computed) == 3


async def test_tiny_models_cache_text_embeddings_and_reference_stats_across_a_restart(tiny_models, tmp_path,
                                                                                     monkeypatch):
    """Real StylePipeline + EmbeddingCache: an identical request does not run the text encoder; after a restart (new
    worker, new pipeline, new index recovered from the same folder) a per_dim request reads the reference
    statistics from the cache and never loads the text encoder."""
    from engine.generation.pipeline import StylePipeline
    from engine.conditioning.text import TextEncoder

    stats_runs: list[int] = []
    original = TextEncoder.reference_stats

    def counting(self, layer=-2, *args, **kw):
        stats_runs.append(layer)
        return original(self, layer, *args, **kw)

    monkeypatch.setattr(TextEncoder, "reference_stats", counting)

    def build():
        pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
        calls: list[str] = []
        real = pipe.encode_prompt

        def encode_prompt(request):
            calls.append(request.prompt)
            return real(request)

        pipe.encode_prompt = encode_prompt  # the worker calls it through the instance
        return pipe, calls

    base = StylizeRequest(prompt="a fox", reference=Image.new("RGB", (48, 32), (30, 90, 200)), steps=1, width=64,
                          height=64, alpha=0.5, normalization="per_dim")
    pipe1, calls1 = build()
    w1 = EngineWorker(pipe1, settings=settings(cpu_threads=1), cache=_real_cache(tmp_path / "cache"))
    await w1.start()
    try:
        await w1.submit(Job(owner_id=1, requests=[base], id="one"))
        one = await w1.wait("one")
        assert one.status is JobStatus.DONE, one.error
        assert calls1 == ["a fox"] and stats_runs == [-2]
        assert pipe1.stats_provider is not None  # wired by the worker
        await w1.submit(Job(owner_id=1, requests=[base.replace(seeds=(3,))], id="two"))
        two = await w1.wait("two")
        assert two.status is JobStatus.DONE, two.error
        assert calls1 == ["a fox"]  # the second identical request did not run the text encoder
        assert w1.counters["text_cache_hits"] == 1 and w1.counters["refstats_computed"] == 1
        stats1 = pipe1.reference_stats(-2)
    finally:
        await w1.stop()

    cache2 = _real_cache(tmp_path / "cache")  # a new process: an empty index over the same folder
    assert (await cache2.recover(adopt_orphans=True))["adopted"] == 3  # the extraction, "a fox", the statistics
    pipe2, calls2 = build()
    w2 = EngineWorker(pipe2, settings=settings(cpu_threads=1), cache=cache2)
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
