"""``describe`` jobs through the worker: answered by the encode stage (Qwen3-VL only, never the DiT), in the same
fair queue as generation, bounded by the job timeout."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from engine.conditioning.describe import Description
from engine.serving.protocols import WorkerConfig
from engine.serving.queue import Job, JobStatus
from engine.serving.stages import DESCRIBE_KIND
from engine.serving.worker import EngineWorker
from engine.types import StylizeRequest
from tests.engine.serving.support import Recorder, settings
from tests.fakes import FakePipeline

pytestmark = [pytest.mark.timeout(120)]

REFERENCE = Image.new("RGB", (64, 48), (200, 40, 40))


def _describe_job(owner: int, job_id: str) -> Job:
    return Job(owner_id=owner, requests=[StylizeRequest(prompt="", reference=REFERENCE)], kind=DESCRIBE_KIND,
               id=job_id)


class DescribingFake(FakePipeline):
    """A fake whose ``describe`` records its turn, and (``hold``) waits for the abort flag like a long generate."""

    def __init__(self, *, hold: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.hold, self.described = hold, threading.Event()

    def describe(self, image, *, should_abort=None) -> Description:
        self._rec("describe", f"{image.size[0]}x{image.size[1]}")
        self.described.set()
        if self.hold:
            stopped = threading.Event()
            while not should_abort():  # what generate's stopping criterion does between tokens
                stopped.wait(0.005)
            return Description(["cut short"], [1], 0.0, "aborted")
        return Description([f"idea {i}" for i in range(1, 5)], [3, 3, 3, 3], 0.01, "finished")


async def test_a_describe_job_is_answered_without_the_dit(tiny_models):
    """The real tiny StylePipeline: four suggestions; Qwen3-VL was loaded, the DiT and text encoder never were."""
    from engine.generation.pipeline import StylePipeline

    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu")
    rec = Recorder()
    worker = EngineWorker(pipe, config=WorkerConfig.from_settings(settings(cpu_threads=1)), recorder=rec)
    await worker.start()
    try:
        await worker.submit(_describe_job(1, "d1"))
        outcome = await worker.wait("d1")
    finally:
        await worker.stop(grace_s=5.0)
    assert outcome.status is JobStatus.DONE, outcome.error
    description = outcome.results[0]
    assert isinstance(description, Description) and len(description.suggestions) == 4
    assert "describe" in outcome.timings and "dit" not in outcome.timings
    assert set(pipe.loaded_components()) == {"vl"}
    assert rec.calls == [("queued", "d1"), ("started", "d1"), ("done", "d1")]


async def test_describe_waits_its_turn_in_the_fair_queue(make_worker):
    """User A's two stylize jobs and user B's describe: B is served after A's first job (round-robin), not last
    and not first."""
    gate = threading.Event()
    pipe = DescribingFake(gate=gate)
    worker = await make_worker(pipe)
    ref = REFERENCE
    await worker.submit(Job(owner_id=1, requests=[StylizeRequest(prompt="a1", reference=ref)], id="a1"))
    await worker.submit(Job(owner_id=1, requests=[StylizeRequest(prompt="a2", reference=ref)], id="a2"))
    await worker.submit(_describe_job(2, "b1"))
    gate.set()
    for job_id in ("a1", "b1", "a2"):
        assert (await worker.wait(job_id)).status is JobStatus.DONE
    order = [label for what, label in pipe.log if what in ("vl_start", "describe")]  # the encode stage's turns
    assert order == ["a1", "64x48", "a2"], order


async def test_the_job_timeout_stops_a_describe(make_worker):
    pipe = DescribingFake(hold=True)
    worker = await make_worker(pipe, settings=settings(job_timeout_s=0.2))
    await worker.submit(_describe_job(1, "slow"))
    outcome = await worker.wait("slow")
    assert pipe.described.is_set() and outcome.status is JobStatus.FAILED and "timed out" in (outcome.error or "")


def test_the_bot_names_the_kind_as_the_worker_does():
    from bot.store import JobKind

    assert JobKind.DESCRIBE.value == DESCRIBE_KIND
