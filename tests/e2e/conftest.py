"""End-to-end fixtures: one FakeDiscord and one real bot PROCESS (``python -m bot run`` on the tiny models) shared by
the e2e tests, plus a fresh guild and fresh users per test so tests cannot see each other's jobs.

The fake and the bot live for the ``tests/e2e`` folder only (package scope), not the whole session: the fake runs on
the session's event loop, which does not run while synchronous tests elsewhere do; a bot left connected through
minutes of those would miss its heartbeat ACKs, time out reconnecting and log discord.py's traceback.

* ``fake``: the fake Discord (session loop). ``bot``: the :class:`BotProcess`, started once (READY, the global
  command sync and one answered interaction awaited); after the last e2e test it gets SIGTERM and must exit 0
  without a traceback in its log.
* ``admin``: a user in ``ZVL_OWNER_IDS`` (bot admin: ``/admin pause`` etc.), a member of every test guild.
* ``space``: a new guild announced to the running bot, with helpers to make members and dispatch commands.
* Every failing e2e test gets the bot's log (what it wrote during the test) attached as a report section.

Tests are async and must run on the session loop: ``pytestmark = pytest.mark.asyncio(loop_scope="session")``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.botproc import LOG_FILES, BotProcess, png_bytes, tiny_settings
from tests.fakediscord import FakeDiscord, FakeGuild, FakeUser, InteractionRecord

_LOG_OFFSETS = pytest.StashKey[dict[Path, int]]()
MAX_ATTACHED = 40_000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or "e2e" not in item.keywords:
        return
    offsets = item.stash.get(_LOG_OFFSETS, {})
    for path in dict.fromkeys(LOG_FILES):
        try:
            with open(path, "rb") as fh:
                fh.seek(offsets.get(path, 0))
                text = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        if text.strip():
            if len(text) > MAX_ATTACHED:
                text = "[... earlier lines cut ...]\n" + text[-MAX_ATTACHED:]
            report.sections.append((f"bot log {path} ({report.when})", text))


@pytest.fixture(autouse=True)
def _remember_log_offsets(request: pytest.FixtureRequest) -> None:
    """Remember how long each bot log was when the test started (only what it wrote since is attached)."""
    offsets = {}
    for path in LOG_FILES:
        try:
            offsets[path] = path.stat().st_size
        except FileNotFoundError:
            offsets[path] = 0
    request.node.stash[_LOG_OFFSETS] = offsets


@pytest.fixture(scope="package")
def e2e_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@asynccontextmanager
async def fake_discord(home: str) -> AsyncIterator[FakeDiscord]:
    """A running FakeDiscord with one guild, ``home``. A fake serves one bot session at a time: each bot process
    that runs beside another needs a fake of its own."""
    async with FakeDiscord(heartbeat_interval_ms=1000) as fake:
        fake.add_guild(home)
        yield fake


def home_admin(fake: FakeDiscord, name: str) -> FakeUser:
    """A user who is a member of the fake's first guild (made the bot's owner by the fixtures)."""
    user = fake.add_user(name)
    fake.add_member(next(iter(fake.world.guilds)), user.id)
    return user


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with fake_discord("e2e home") as fake:
        yield fake


@pytest.fixture(scope="package")
def admin(fake: FakeDiscord) -> FakeUser:
    return home_admin(fake, "e2e-admin")


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def bot(fake: FakeDiscord, admin: FakeUser, tiny_models, e2e_tmp: Path) -> AsyncIterator[BotProcess]:
    settings = tiny_settings(tiny_models.zimage, tiny_models.qwen3vl, owner_ids=[admin.id])
    proc = BotProcess(fake, e2e_tmp / "bot", settings, name="e2e-bot")
    try:
        await proc.start()
        await fake.wait_synced(None, timeout=10)
        yield proc
    finally:
        rc = await proc.stop()
    log = proc.log_text()
    assert rc == 0, f"the bot exited with status {rc} after SIGTERM (log: {proc.log_path})"
    assert "services closed" in log.rsplit("===== ", 1)[-1], "the bot did not close its services on SIGTERM"
    assert "Traceback" not in log, f"the bot logged a traceback (log: {proc.log_path})"


@dataclass
class Space:
    """A fresh guild for one test, announced to the running bot, with its own members."""

    fake: FakeDiscord
    bot: BotProcess
    guild: FakeGuild
    admin: FakeUser
    users: dict[str, FakeUser] = field(default_factory=dict)

    @property
    def channel_id(self) -> int:
        return self.guild.first_text_channel().id

    def member(self, name: str, roles: list[int] | None = None) -> FakeUser:
        """A new user (unique name per test) who is a member of this guild."""
        user = self.fake.add_user(f"{name}-{self.guild.id % 100000}")
        self.fake.add_member(self.guild.id, user.id, roles=roles)
        self.users[name] = user
        return user

    def ref(self, data: bytes | None = None, name: str = "ref.png", ctype: str | None = "image/png") -> dict:
        return self.fake.add_attachment(png_bytes() if data is None else data, name, ctype)

    async def slash(self, name: str, options: dict | None = None, user: FakeUser | None = None,
                    **kw: Any) -> InteractionRecord:
        return await self.fake.dispatch_slash(name, options or {}, guild_id=self.guild.id,
                                              user_id=user.id if user else None, **kw)

    async def stylize(self, user: FakeUser, **options: Any) -> InteractionRecord:
        options.setdefault("image", self.ref())
        return await self.slash("stylize", options, user)

    async def admin_call(self, sub: str, options: dict | None = None, group: str | None = None,
                         timeout: float = 60) -> str:
        """Run ``/admin <sub>`` as the admin; returns the text of its answer (callback or follow-up)."""
        rec = await self.slash("admin", options, self.admin, group=group, subcommand=sub)
        await rec.wait_ack(5)
        await rec.wait_until(lambda r: bool(r.followups) or (r.callback is not None and r.callback.type == 4),
                             timeout=timeout)
        answer = rec.followups[-1] if rec.followups else rec.callback
        assert answer is not None
        return answer.content or ""

    async def pause(self) -> None:
        assert "Paused" in await self.admin_call("pause")

    async def resume(self) -> None:
        assert "Resumed" in await self.admin_call("resume")


@pytest_asyncio.fixture(loop_scope="session")
async def space(fake: FakeDiscord, bot: BotProcess, admin: FakeUser,
                request: pytest.FixtureRequest) -> AsyncIterator[Space]:
    guild = fake.add_guild(f"e2e {request.node.name}"[:90])
    fake.add_member(guild.id, admin.id)
    await fake.announce_guild(guild.id)
    s = Space(fake, bot, guild, admin)
    yield s
    # Leave nothing behind for the next test: the worker running, every job of this guild finished.
    if bot.running:
        try:
            await s.admin_call("resume", timeout=10)
        except Exception:  # noqa: BLE001 - best effort; the test's own failure is what matters
            pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and bot.jobs("guild_id = ? AND status IN ('queued', 'running')",
                                                       (guild.id,)):
            await asyncio.sleep(0.1)

