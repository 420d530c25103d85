"""The real bot as a child process (``python -m bot run``) against a :class:`FakeDiscord` in this process.

Shared by the end-to-end tests (``tests/e2e``) and ``bench/load_discord.py``. Nothing of discord.py is patched here:
the child reads its endpoints from ``ZVL_DISCORD_API_BASE`` / ``ZVL_DISCORD_GATEWAY_URL`` (``fake.env``) and talks to
the fake over real sockets. Its stdout and stderr go to one log file (``BotProcess.log_path``), which the e2e
``conftest`` attaches to every failing test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from tests.fakediscord import FakeDiscord, InteractionRecord

ROOT = Path(__file__).resolve().parents[2]

#: Every log file a BotProcess has written in this Python process (the conftest attaches them to failures).
LOG_FILES: list[Path] = []


class BotExited(RuntimeError):
    """The bot process ended while we were waiting for it."""


def child_env(fake: FakeDiscord, data_dir: Path, settings: Mapping[str, Any]) -> dict[str, str]:
    """The child's environment: ours without any ``ZVL_*``, plus one torch thread, offline HF, the fake's endpoints,
    a data folder and ``settings`` (``{"cooldown_s": 0}`` becomes ``ZVL_COOLDOWN_S=0``; lists become JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(fake.env)
    env["ZVL_DISCORD_TOKEN"] = "e2e-fake-token"
    env["ZVL_DATA_DIR"] = str(data_dir)
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, dict)):
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"ZVL_{key.upper()}"] = text
    return env


def tiny_settings(zimage: Path, qwen3vl: Path, **overrides: Any) -> dict[str, Any]:
    """Settings for a fast bot on the tiny random models: CPU, one thread, 64×64, 2 steps, no cooldown."""
    values: dict[str, Any] = {
        "zimage_path": zimage, "vl_path": qwen3vl, "device": "cpu", "vl_device": "cpu", "text_device": "cpu",
        "cpu_threads": 1, "width": 64, "height": 64, "steps": 2, "cooldown_s": 0, "log_level": "INFO",
        "vl_idle_unload_s": 0,
    }
    values.update(overrides)
    return values


class BotProcess:
    """``python -m bot run`` as a child process, talking to ``fake``.

    ``start()`` waits until the bot has identified on the gateway and answers an interaction; ``stop()`` sends
    SIGTERM and returns the exit status. The working directory is ``data_dir`` (no stray ``.env`` is read).
    """

    def __init__(self, fake: FakeDiscord, data_dir: Path, settings: Mapping[str, Any], *, name: str = "bot",
                 probe_guild_id: int | None = None) -> None:
        self.fake, self.data_dir, self.settings, self.name = fake, Path(data_dir), dict(settings), name
        self.probe_guild_id = probe_guild_id
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{name}.log"
        LOG_FILES.append(self.log_path)
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.start_seconds: list[float] = []

    @property
    def db_path(self) -> Path:
        return Path(self.settings.get("db_path") or self.data_dir / "zvl.sqlite3")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 180.0) -> None:
        """Start the process and wait until it is connected and answers interactions."""
        if self.running:
            raise RuntimeError("the bot is already running")
        t0 = time.monotonic()
        identified = len(self.fake.gateway.sessions)
        env = child_env(self.fake, self.data_dir, self.settings)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {self.name}: start #{self.starts + 1} =====\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", cwd=str(self.data_dir), env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        self.starts += 1
        await self._until(lambda: len(self.fake.gateway.sessions) > identified and self.fake.gateway.current
                          is not None and self.fake.gateway.current.connected, timeout, "the bot to identify")
        await self.probe(timeout=max(10.0, timeout - (time.monotonic() - t0)))
        self.start_seconds.append(time.monotonic() - t0)

    async def probe(self, timeout: float = 30.0) -> InteractionRecord:
        """``/blendmode info`` until one is answered within the 3 seconds (the bot is ready)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            rec = await self.fake.dispatch_slash("blendmode", {}, subcommand="info", guild_id=self.probe_guild_id)
            try:
                await rec.wait_ack(5)
                return rec
            except (AssertionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not answer an interaction within {timeout:.0f} s") from None

    async def _until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise BotExited(f"{self.name} exited with status {self.proc.returncode} (log: {self.log_path})")

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit status (SIGKILL after ``timeout``: then a ``TimeoutError``)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                raise TimeoutError(f"{self.name} did not exit within {timeout:.0f} s of SIGTERM") from None
        return proc.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()

    # --- reading the bot's database (read-only; it is the job's truth) -------------------------------------------
    def jobs(self, where: str = "1", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of the ``jobs`` table (``params``/``timings`` decoded), oldest first."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created_at", args).fetchall()
        finally:
            conn.close()
        out = []
        for row in rows:
            item = dict(row)
            for key in ("params", "timings", "result_paths"):
                item[key] = json.loads(item[key]) if item.get(key) else None
            out.append(item)
        return out


# --- small helpers shared by the tests and the load script ------------------------------------------------------------
def png_bytes(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def result_request(rec: InteractionRecord):
    """The accepted request that carried the result image (``zvl-*`` file), or ``None``."""
    return next((r for r in rec.accepted if any(f.filename.startswith("zvl-") for f in r.files)), None)


async def wait_result(rec: InteractionRecord, timeout: float = 60.0):
    """Wait for, and return, the accepted request that carried the result image."""
    await rec.wait_until(lambda r: result_request(r) is not None, timeout=timeout)
    return result_request(rec)


def result_file(rec: InteractionRecord):
    return next(f for f in rec.files if f.filename.startswith("zvl-"))


def job_id_of(rec: InteractionRecord) -> str | None:
    """The job id from the Cancel button of the status message, or from the result's footer."""
    for req in rec.accepted:
        for row in req.data.get("components") or []:
            for comp in row.get("components", []):
                cid = comp.get("custom_id", "")
                if cid.startswith("zvl:cancel:"):
                    return cid.rsplit(":", 1)[1]
        for embed in req.data.get("embeds") or []:
            footer = (embed.get("footer") or {}).get("text", "")
            if footer.startswith("job "):
                return footer.removeprefix("job ")
    return None


def ephemeral_texts(rec: InteractionRecord) -> list[str]:
    """Contents of the ephemeral messages the bot sent for ``rec`` (callback or follow-up)."""
    return [r.content for r in rec.accepted if r.ephemeral and r.content and r.kind in ("callback", "followup")]
