"""A real ``redis-server`` (Debian's package) for tests, on a unix socket in a temporary folder.

No mock stands in for Redis: the queue's Lua scripts and Streams leases only mean something against the real server.
When ``redis-server`` is missing the tests that need it are skipped, saying why; under ``CI=true`` that is a failure
(``.ci/run`` and ``./zvl test`` install it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "require_redis_server"]

#: How long a starting server may take to answer PING before the test fails (a loaded 2-core CI machine).
START_TIMEOUT_S = 20.0


def require_redis_server() -> str:
    """The path of ``redis-server``; skips the test when it is missing (fails it under ``CI=true``)."""
    path = shutil.which("redis-server")
    if path:
        return path
    why = "redis-server is not installed (apt-get install -y redis-server); the Redis tests need the real server"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


class RedisServer:
    """One ``redis-server`` process: AOF on (``appendfsync always``, so a restart loses nothing), no TCP port."""

    def __init__(self, folder: Path, *, maxmemory_policy: str = "noeviction", maxmemory: str = "0") -> None:
        self.binary = require_redis_server()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "redis.sock"
        self.policy = maxmemory_policy
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--maxmemory", self.maxmemory, "--maxmemory-policy", self.policy, "--daemonize", "no",
                "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll PING until the server answers: readiness is a condition we check, not a delay we guess."""
        import redis

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1.0)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, FileNotFoundError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT_S} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: Redis flushes the AOF and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (with ``appendfsync always`` every acknowledged write is on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()
