"""ZVL_CACHE_REDIS_URL in the bot: its in-process worker's cache is the two-tier one, and a second bot with another
data folder (another machine) serves a reference the first one extracted from the shared Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cache.shared import TieredCache
from tests.bot.harness import FakePipeline, make_settings, png, running_bot
from tests.fakediscord import FakeDiscord
from tests.redisserver import RedisServer

pytestmark = pytest.mark.timeout(90)


async def _stylize_once(fake: FakeDiscord, settings, pipeline: FakePipeline, admin_id: int) -> tuple[dict, str]:
    """One /stylize through a bot, then its ``/admin cache stats`` "Shared tier" line."""
    async with running_bot(settings, pipeline) as bot:
        assert isinstance(bot.services.cache, TieredCache)
        ref = fake.add_attachment(png(), "ref.png", "image/png", width=64, height=48)
        rec = await fake.dispatch_slash("stylize", {"image": ref, "prompt": "a fox", "size": "1:1 small"})
        await rec.wait_until(lambda r: any(f.filename.endswith(".png") for f in r.files), timeout=30)
        shown = await fake.dispatch_slash("admin", {}, group="cache", subcommand="stats", user_id=admin_id)
        ack = await shown.wait_ack(5)
        fields = {f["name"]: f["value"] for f in ack.data["embeds"][0]["fields"]}
        return (await bot.services.status())["cache"], fields["Shared tier (Redis)"]


async def test_a_second_bot_reads_what_the_first_extracted(fake: FakeDiscord, tmp_path: Path, tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("rc"), maxmemory_policy="allkeys-lru", maxmemory="64mb").start()
    try:
        admin = fake.add_user("admin")
        fake.add_member(next(iter(fake.world.guilds.values())).id, admin.id)
        first, second = FakePipeline(), FakePipeline()
        runs = []
        for folder, pipeline in (("a", first), ("b", second)):
            settings = make_settings(tmp_path / folder, fake, cache_redis_url=server.url, owner_ids=[admin.id])
            runs.append(await _stylize_once(fake, settings, pipeline, admin.id))
        (stats_a, _line_a), (stats_b, line_b) = runs
        assert any(what == "vl_start" for what, _ in first.log)
        assert not any(what == "vl_start" for what, _ in second.log)  # the second bot's extraction came from Redis
        assert stats_a["shared"]["stored"] >= 1 and stats_b["shared"]["hits"] >= 1 and stats_b["entries"] >= 1
        assert line_b.startswith(f"{stats_b['shared']['hits']} hits / ") and "unavailable" not in line_b
    finally:
        server.stop()
