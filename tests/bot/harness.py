"""Test harness for the bot: a fast fake pipeline, settings pointing at a FakeDiscord, a running-bot context manager,
image builders and a modal-submit dispatcher (the fake has no helper for interaction type 5)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from bot.client import ZvlBot, create_bot
from bot.discord_api import current_endpoints, point_discord_at
from engine.generation.zimage import Cancelled
from bot.settings import BotSettings, load_bot_settings
from engine.types import PositionKind, StylizeRequest, StylizeResult, VLResult
from tests.fakediscord import FakeDiscord, InteractionRecord
from tests.fakediscord import interactions as build


class FakePipeline:
    """``engine.serving.worker.PipelineLike`` without models: a solid colour per (seed, alpha, mode), or noise.

    ``gate``: when given, every step waits for it (a test holds a job running). ``fail``: raise this in generate.
    ``step_s``: seconds per denoising step (to watch progress).
    """

    def __init__(self, *, gate: threading.Event | None = None, noise: bool = False, fail: Exception | None = None,
                 max_layer: int = 8, step_s: float = 0.0) -> None:
        self.gate, self.noise, self.fail, self.max_layer, self.step_s = gate, noise, fail, max_layer, step_s
        self.loaded = {"vl": False, "text": False, "dit": False}
        self.requests: list[StylizeRequest] = []

    def check_inputs(self, request: StylizeRequest) -> None:
        layers = [request.hidden_layer] if isinstance(request.hidden_layer, int) else \
            [lw.layer for lw in request.hidden_layer]
        if any(-layer > self.max_layer for layer in layers):
            raise ValueError(f"hidden_layer {layers[0]} is beyond the VL model's {self.max_layer} layers")

    def encode_reference(self, request: StylizeRequest) -> VLResult | None:
        if request.reference is None:
            return None
        return VLResult(torch.zeros(4, 8), [PositionKind.IMAGE.value] * 4, (0, 4), 1.0, 1.0, 1.0)

    def encode_prompt(self, request: StylizeRequest) -> torch.Tensor:
        return torch.zeros(3, 8)

    def generate(self, request: StylizeRequest, vl: Any, text_emb: Any = None, *, progress=None,
                 should_abort=None) -> StylizeResult:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        for step in range(request.steps):
            while self.gate is not None and not self.gate.wait(0.02):
                if should_abort is not None and should_abort():
                    raise Cancelled("aborted")
            time.sleep(self.step_s)
            if progress is not None:
                progress(step + 1, request.steps)
        images = [self._image(request, seed) for seed in request.seeds]
        return StylizeResult(images, list(request.seeds), params=request.record(), timings={"total": 0.01})

    def _image(self, request: StylizeRequest, seed: int) -> Image.Image:
        size = (request.width, request.height)
        if self.noise:
            return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
        digest = hashlib.sha256(f"{seed}|{request.alpha}|{request.blend_mode}".encode()).digest()
        return Image.new("RGB", size, tuple(digest[:3]))

    def load(self, component: str) -> None:
        for name in (self.loaded if component == "all" else [component]):
            self.loaded[name] = True

    def unload(self, component: str) -> None:
        for name in (self.loaded if component == "all" else [component]):
            self.loaded[name] = False

    def loaded_components(self) -> dict[str, Any]:
        return dict(self.loaded)


def make_settings(tmp_path: Path, fake: FakeDiscord | None = None, **overrides: Any) -> BotSettings:
    """Settings for a test bot: data under ``tmp_path``, no cooldown, pointing at ``fake``."""
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "discord_token": "fake-token", "cooldown_s": 0}
    if fake is not None:
        values.update(discord_api_base=fake.api_base, discord_gateway_url=fake.gateway_url)
    values.update(overrides)
    return load_bot_settings(values, env_file=None)


@asynccontextmanager
async def running_bot(settings: BotSettings, pipeline: Any = None, **options: Any) -> AsyncIterator[ZvlBot]:
    """Start a real bot against the fake (models replaced by ``pipeline``), wait until ready, always close it."""
    pipe = pipeline if pipeline is not None else FakePipeline()
    options = {"pipeline_factory": lambda: pipe, "progress_interval": 0.05, "shutdown_grace_s": 2.0,
               "guild_ready_timeout": 0.05, **options}
    bot = create_bot(settings, **options)
    task = asyncio.create_task(bot.start("fake-token"))
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        assert ready in done, "bot did not become ready"
        yield bot
    finally:
        ready.cancel()
        await bot.close()
        await asyncio.wait_for(task, 20)


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 40, 40), mode: str = "RGB",
        fmt: str = "PNG", **save: Any) -> bytes:
    """An encoded image."""
    image = Image.new(mode, size, colour if mode in ("RGB", "RGBA") else 128)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


async def dispatch_modal_submit(fake: FakeDiscord, message_id: int | None, custom_id: str, values: dict[str, str], *,
                                user_id: int | None = None, permissions: int | None = None,
                                guild_id: int | None = None) -> InteractionRecord:
    """Submit a modal (interaction type 5) with text-input ``values`` by custom id."""
    payload, _guild = build.base_payload(fake.world, 5, guild_id=guild_id, channel_id=None, user_id=user_id,
                                         permissions=permissions, app_permissions=None, locale="en-US")
    if message_id is not None:
        payload["message"] = dict(fake.message(message_id))
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": cid, "value": value}]} for cid, value in values.items()]
    payload["data"] = {"custom_id": custom_id, "components": rows}
    return await fake._dispatch_interaction(payload)


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` (sync) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- fixtures (imported by tests/bot/conftest.py and tests/cogs/conftest.py) ---------------------------------
@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    before = current_endpoints()
    async with FakeDiscord(heartbeat_interval_ms=1000) as fake:
        fake.add_guild("Test Guild")
        try:
            yield fake
        finally:
            point_discord_at(before.api_base, before.gateway_url)


@pytest.fixture
def pipeline() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def settings(tmp_path: Path, fake: FakeDiscord):
    return make_settings(tmp_path, fake)


@pytest.fixture
async def bot(fake: FakeDiscord, settings, pipeline: FakePipeline):
    async with running_bot(settings, pipeline) as bot:
        yield bot
