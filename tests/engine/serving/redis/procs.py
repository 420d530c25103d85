"""Real ``python -m engine serve`` worker processes for the fault tests, and condition waits with deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.serving.redis.queue import RedisQueue

ROOT = Path(__file__).resolve().parents[4]
STAND_IN = "tests.engine.serving.redis.standin:fixed_cost"
#: A generous bound for "this happens" on a loaded 2-core machine; passing tests never wait it out.
DEADLINE_S = 60.0


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def running_on(queue: RedisQueue, job_id: str, *, stepped: bool = True) -> str | None:
    """The worker running the job (once a step event of this attempt is in), else ``None``."""
    job = await queue.job(job_id) or {}
    if job.get("status") != "running":
        return None
    if stepped:
        entries = await queue.client.xrange(queue.key("ev", job_id))
        last = [f.get(b"kind") for _id, f in entries]
        if b"step" not in last[len(last) - last[::-1].index(b"started"):]:
            return None
    return job["worker"]


class WorkerProc:
    """One worker process over the stand-in pipeline; its output goes to ``<folder>/<name>.log``."""

    def __init__(self, url: str, name: str, folder: Path, *, lease_s: float = 1.5, step_s: float = 0.05,
                 pipeline: str | None = STAND_IN, env: dict[str, str] | None = None) -> None:
        """``pipeline=None``: the real pipeline on the models ``env`` names (``ZVL_ZIMAGE_PATH``, ...)."""
        self.url, self.name, self.pipeline = url, name, pipeline
        self.log_path = folder / f"{name}.log"
        self.env = {**(env or os.environ), "ZVL_REDIS_LEASE_S": str(lease_s), "ZVL_STANDIN_STEP_S": str(step_s),
                    "ZVL_JOB_TIMEOUT_S": "60", "ZVL_VL_IDLE_UNLOAD_S": "0", "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": str(ROOT)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        with open(self.log_path, "ab") as out:
            stand_in = ["--pipeline", self.pipeline] if self.pipeline else []
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "serve", "--redis-url", self.url, "--name", self.name, *stand_in],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def ready(self) -> None:
        """Until it has loaded and registered (it prints ``serving as NAME``)."""
        async def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return f"serving as {self.name}" in self.log()
        await until(check, f"worker {self.name} to serve")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
