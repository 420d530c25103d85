"""The ``make_worker`` fixture: workers over fake pipelines, always stopped (and never left blocked)."""

from __future__ import annotations

import pytest

from engine.serving.protocols import WorkerConfig
from engine.serving.worker import EngineWorker
from tests.engine.serving.support import settings
from tests.fakes import FakePipeline

CONFIG_FIELDS = ("max_batch_pixels", "keep_outcomes", "score_sweeps")


@pytest.fixture
async def make_worker():
    """``await make_worker(pipe, start=True, settings=..., max_batch_pixels=..., **EngineWorker kwargs)``."""
    made: list[tuple[EngineWorker, FakePipeline]] = []

    async def make(pipe: FakePipeline | None = None, *, start: bool = True, **kw) -> EngineWorker:
        pipe = pipe or FakePipeline()
        overrides = {name: kw.pop(name) for name in CONFIG_FIELDS if name in kw}
        config = WorkerConfig.from_settings(kw.pop("settings", None) or settings(), **overrides)
        w = EngineWorker(pipe, config=config, **kw)
        made.append((w, pipe))
        if start:
            await w.start()
        return w

    yield make
    for w, pipe in made:
        for ev in list(pipe.block.values()):
            ev.set()  # never leave a stage thread blocked
        await w.stop(grace_s=5.0)
