"""SIGTERM while Discord is down: the bot exits promptly, not when discord.py's reconnect back-off ends.

The test has its own fake Discord and bot process (the shared ``fake`` must stay up for the other tests). The fake
is stopped mid-run, as an outage: the gateway closes with 1001 and new connections are refused, so discord.py
sleeps in its exponential reconnect back-off (up to ~300 s per attempt).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time

import pytest

from tests.e2e.botproc import BotProcess, child_env, tiny_settings
from tests.fakediscord import FakeDiscord

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]

#: SIGTERM only once discord.py has announced a back-off at least this long (its delays are random), so without
#: the fix the exit would take longer than EXIT_WITHIN: the test cannot pass by luck.
BACKOFF_AT_LEAST_S = 12.0
EXIT_WITHIN_S = 10.0
_BACKOFF = re.compile(r"Attempting a reconnect in (\d+(?:\.\d+)?)s")


async def _wait_for_long_backoff(bot: BotProcess, since: int, at_least: float, timeout: float) -> float:
    """Poll the bot's log until discord.py announces a reconnect back-off of ``at_least`` seconds; return it."""
    deadline = time.monotonic() + timeout
    while True:
        delays = [float(d) for d in _BACKOFF.findall(bot.log_text()[since:])]
        if delays and delays[-1] >= at_least:
            return delays[-1]
        assert bot.running, f"the bot exited during the outage (log: {bot.log_path})"
        assert time.monotonic() < deadline, f"no reconnect back-off of {at_least} s within {timeout} s: {delays}"
        await asyncio.sleep(0.05)  # the polling interval; the condition above is what is waited for


async def test_sigterm_during_a_discord_outage_exits_promptly(tiny_models, tmp_path) -> None:
    fake = await FakeDiscord(heartbeat_interval_ms=1000).start()
    bot = BotProcess(fake, tmp_path / "bot", tiny_settings(tiny_models.zimage, tiny_models.qwen3vl),
                     name="outage-bot")
    try:
        fake.add_guild("outage home")
        await bot.start()
        since = len(bot.log_text())
        await fake.stop()  # the outage: the gateway goes away and every reconnect is refused
        backoff = await _wait_for_long_backoff(bot, since, BACKOFF_AT_LEAST_S, timeout=240)
        stopped_at = len(bot.log_text())
        t0 = time.monotonic()
        rc = await bot.stop(timeout=EXIT_WITHIN_S)
        took = time.monotonic() - t0
    finally:
        bot.kill()
        await fake.stop()
    print(f"SIGTERM in a {backoff:.1f} s reconnect back-off: exited with status {rc} in {took:.2f} s")
    log = bot.log_text()[stopped_at:]
    assert rc == 0, f"exit status {rc} (log: {bot.log_path})"
    assert "SIGTERM received" in log and "services closed" in log, log
    assert "Traceback" not in log, log


class _SilentDiscord:
    """An endpoint that accepts connections and never answers: a login request hangs as in a network partition."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> _SilentDiscord:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _hold(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connected.set()

    @property
    def env(self) -> dict[str, str]:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return {"ZVL_DISCORD_API_BASE": f"http://127.0.0.1:{port}/api/v10",
                "ZVL_DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{port}/gateway"}


async def test_sigterm_while_logging_in_exits_cleanly(tiny_models, tmp_path) -> None:
    """SIGTERM while discord.py's login request is still in flight: exit 0 without a traceback (the stop closes
    the HTTP session under the request, which must not surface as a crash)."""
    async with _SilentDiscord() as silent:
        data_dir = tmp_path / "bot"
        data_dir.mkdir()
        env = child_env(silent, data_dir, tiny_settings(tiny_models.zimage, tiny_models.qwen3vl))  # type: ignore[arg-type]
        log_path = data_dir / "login.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", cwd=str(data_dir), env=env,
                                                        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            await asyncio.wait_for(silent.connected.wait(), 120)  # the login request has reached "Discord"
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), EXIT_WITHIN_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = log_path.read_text(errors="replace")
    assert rc == 0, log
    assert "SIGTERM received" in log and "Traceback" not in log, log
