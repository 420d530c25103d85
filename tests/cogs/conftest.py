"""Fixtures for the bot tests: a FakeDiscord with one guild, settings pointing at it, a running bot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.discord_api import current_endpoints, point_discord_at
from tests.bot.harness import FakePipeline, make_settings, running_bot
from tests.fakediscord import FakeDiscord


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
