"""Helpers of the worker tests: requests and jobs by label, a recording JobRecorder, a dict cache, and waits.

Ordering and overlap are proven with threading events (never with wall-clock thresholds).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image

from engine.config import EngineSettings
from engine.serving.queue import Job, JobOutcome
from engine.types import StylizeRequest, VLResult
from tests.fakes import WAIT, FakePipeline

USERS = {"A": 1, "B": 2, "C": 3}
_REF_CACHE: dict[int, Image.Image] = {}


class Recorder:
    """A JobRecorder that records the calls (``fail_queued``: ``on_queued`` raises)."""

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
    """An in-memory embedding store (counts VL reads in ``gets``)."""

    def __init__(self) -> None:
        self.data: dict[str, VLResult] = {}
        self.tensors: dict[str, tuple[dict, dict]] = {}
        self.gets = 0

    async def get_vl(self, key: str) -> VLResult | None:
        self.gets += 1
        return self.data.get(key)

    async def put_vl(self, key: str, vl: VLResult) -> None:
        self.data[key] = vl

    async def get(self, key: str) -> tuple[dict, dict] | None:
        return self.tensors.get(key)

    async def put(self, key: str, tensors: dict, meta: dict, *, kind: str = "tensor") -> None:
        self.tensors[key] = (dict(tensors), dict(meta))

    async def delete(self, key: str) -> bool:
        return self.tensors.pop(key, None) is not None


class BrokenCache:
    """A store whose every call fails."""

    async def get_vl(self, key: str) -> Any:
        raise OSError("disk gone")

    async def put_vl(self, key: str, vl: Any) -> None:
        raise OSError("disk gone")

    async def get(self, key: str) -> Any:
        raise OSError("disk gone")

    async def put(self, key: str, tensors: Any, meta: Any, *, kind: str = "tensor") -> None:
        raise OSError("disk gone")

    async def delete(self, key: str) -> bool:
        raise OSError("disk gone")


def ref(n: int = 0) -> Image.Image:
    """A distinct small reference per ``n``."""
    if n not in _REF_CACHE:
        _REF_CACHE[n] = Image.new("RGB", (16, 16), (n * 7 % 256, n * 13 % 256, 99))
    return _REF_CACHE[n]


def req(label: str, *, reference: Image.Image | None | int = 0, steps: int = 3, **kw: Any) -> StylizeRequest:
    """A 64² request whose prompt is ``label``."""
    if isinstance(reference, int):
        reference = ref(reference)
    return StylizeRequest(prompt=label, reference=reference, steps=steps, width=64, height=64, **kw)


def mkjob(label: str, owner: str | None = None, *, reference: Image.Image | None | int = 0, **kw: Any) -> Job:
    """A one-request job with id ``label``, owned by user ``label[0]`` (or ``owner``)."""
    return Job(owner_id=USERS[owner or label[0]], requests=[req(label, reference=reference, **kw)], id=label)


def settings(**kw: Any) -> EngineSettings:
    """Settings for a worker test (caps out of the way, no preload, no idle unload)."""
    base = {"max_jobs_per_user": 10, "max_jobs_total": 50, "job_timeout_s": 30.0, "vl_idle_unload_s": 0.0,
            "preload": False}
    base.update(kw)
    return EngineSettings(_env_file=None, **base)


async def wait_for(pred: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``pred`` until true (fails after ``WAIT``)."""
    deadline = time.monotonic() + WAIT
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_until(pred: Callable[[], Awaitable[bool]], what: str = "condition") -> None:
    """Poll the async ``pred`` until true (fails after ``WAIT``)."""
    deadline = time.monotonic() + WAIT
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_thread_event(event: threading.Event) -> None:
    """Until a stage thread sets ``event``."""
    assert await asyncio.to_thread(event.wait, WAIT)


def entered(pipe: FakePipeline, stage: str, label: str) -> threading.Event:
    """Set when ``stage`` of ``label`` starts."""
    return pipe.entered.setdefault((stage, label), threading.Event())


def blocker(pipe: FakePipeline, stage: str, label: str) -> threading.Event:
    """``stage`` of ``label`` waits for the returned event."""
    ev = threading.Event()
    pipe.block[(stage, label)] = ev
    return ev


def dit_order(pipe: FakePipeline) -> list[str]:
    """Labels in the order their DiT stage started."""
    return [label for what, label in pipe.log if what == "dit_start"]
