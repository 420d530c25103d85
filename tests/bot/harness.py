"""Test harness for the bot: the shared fake pipeline (``tests.fakes``), settings pointing at a FakeDiscord, a
running-bot context manager, image builders and a modal-submit dispatcher (the fake has no helper for interaction
type 5)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.client import ZvlBot, create_bot
from bot.discord_api import current_endpoints, point_discord_at
from bot.settings import BotSettings, load_bot_settings
from tests.fakediscord import FakeDiscord, InteractionRecord
from tests.fakediscord import interactions as build
from tests.fakes import FakePipeline


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
