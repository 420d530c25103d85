"""The Redis half of the shared embedding cache (issue 17): entry bytes under ``zvl:cache:<key>``, best effort.

**Values** are the bytes the local cache writes to its files (:func:`engine.cache.files.serialize` under
:func:`~engine.cache.files.entry_header`: checksummed safetensors that name their key, kind and metadata) behind a
short prefix, :data:`MAGIC` and the bytes' sha256 (64 hex characters). A read is verified as a local file is
(:func:`~engine.cache.files.decode`): a value with another checksum, another key in its header, or no entry at all
is refused, deleted and counted, never handed on.

**Best effort.** The Redis is meant to be a separate instance with ``maxmemory`` and ``maxmemory-policy
allkeys-lru``: any entry may vanish at any moment, which is a miss. Every entry has a TTL (:data:`DEFAULT_TTL_S`,
renewed by each read) and a size bound (:data:`DEFAULT_MAX_ENTRY_BYTES`). Nothing here raises: a Redis that is down
or slower than ``timeout_s`` makes the tier step aside for ``retry_after_s`` (every call is then a miss without I/O,
so a job waits at most one timeout), with one warning per outage and one line when it is back. A Redis that never
evicts (``noeviction``, the queue's policy) is only read from: filling it would starve what else it holds.

``redis.asyncio`` is imported when a tier is built, so nothing imports redis without ``ZVL_CACHE_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from engine.cache import files
from engine.cache.records import check_key

__all__ = ["DEFAULT_MAX_ENTRY_BYTES", "DEFAULT_TTL_S", "MAGIC", "NAMESPACE", "RedisTier"]

log = logging.getLogger(__name__)

#: Key prefix of every entry (the rest is the 64-hex cache key).
NAMESPACE = "zvl:cache:"
#: First bytes of every value: the format, so that a later format is refused rather than misread.
MAGIC = b"zvl-cache/1\n"
#: Seconds an entry lives after its last write or read (a bound on entries no one asks for any more).
DEFAULT_TTL_S = 7 * 24 * 3600
#: Larger entries stay local (a 1024² reference's VL entry is about 1.4 MB).
DEFAULT_MAX_ENTRY_BYTES = 32 << 20
#: A command slower than this counts as the Redis being unavailable.
DEFAULT_TIMEOUT_S = 2.0
#: How long the tier steps aside after a failure before it tries the Redis again.
DEFAULT_RETRY_AFTER_S = 30.0

_CHECKSUM_LEN = 64
T = TypeVar("T")


class RedisTier:
    """Entry bytes in one Redis, shared by every worker. Counters (``hits``, ``misses``, ``refused``, ``stored``,
    ``too_large``, ``failures``) are per process; see :meth:`stats`."""

    def __init__(self, url: str, *, namespace: str = NAMESPACE, ttl_s: int = DEFAULT_TTL_S,
                 max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retry_after_s: float = DEFAULT_RETRY_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # one try per command: a cache that retries makes a job wait for a Redis it could do without
        self._redis = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                   retry=Retry(NoBackoff(), 0))
        self._refusal = redis.exceptions.ResponseError  # this command refused (OOM, read-only replica): not an outage
        self.namespace, self.ttl_s, self.max_entry_bytes = namespace, int(ttl_s), int(max_entry_bytes)
        self.timeout_s, self.retry_after_s, self._clock = float(timeout_s), float(retry_after_s), clock
        self._down_until = 0.0
        self._in_outage = False
        self._writable: bool | None = None  # unknown until the eviction policy was read
        self.hits = self.misses = self.refused = self.stored = self.too_large = self.failures = 0

    @property
    def available(self) -> bool:
        """Whether the tier is trying the Redis now (``False`` while it steps aside after a failure)."""
        return self._clock() >= self._down_until

    async def fetch(self, key: str) -> files.DecodedEntry | None:
        """The verified entry of ``key``, or ``None`` (absent, evicted, refused, or the Redis unavailable)."""
        check_key(key)
        value = await self._call(lambda: self._redis.getex(self.namespace + key, ex=self.ttl_s))
        if value is None:
            self.misses += 1
            return None
        try:
            entry = await asyncio.to_thread(self._decode, key, value)  # sha256 and parse: off the event loop
        except files.UnusableFile as exc:
            await self.refuse(key, str(exc))
            return None
        self.hits += 1
        return entry

    async def store(self, key: str, data: bytes, checksum: str) -> None:
        """Write the entry bytes ``data`` (sha256 ``checksum``) under ``key`` with the TTL; skipped when larger than
        ``max_entry_bytes``, when the Redis never evicts, or while it is unavailable."""
        check_key(key)
        if len(data) > self.max_entry_bytes:
            self.too_large += 1
            return
        if not self.available or not await self._may_write():
            return
        value = MAGIC + checksum.encode("ascii") + data
        if await self._call(lambda: self._redis.set(self.namespace + key, value, ex=self.ttl_s)) is not None:
            self.stored += 1

    async def refuse(self, key: str, reason: str) -> None:
        """Count, log and delete an entry that is not what its key says (another worker reads it no more)."""
        self.refused += 1
        log.warning("shared cache entry %s refused: %s", key[:12], reason)
        await self.drop(key)

    async def drop(self, key: str) -> bool:
        """Delete ``key``'s entry; ``True`` when one went."""
        return bool(await self._call(lambda: self._redis.delete(self.namespace + key)))

    def stats(self) -> dict[str, Any]:
        """This process's counters, and whether the tier is available."""
        return {"available": self.available, "hits": self.hits, "misses": self.misses, "refused": self.refused,
                "stored": self.stored, "too_large": self.too_large, "failures": self.failures}

    async def aclose(self) -> None:
        """Close the connections."""
        try:
            await self._redis.aclose()
        except Exception:  # closing a connection to a dead server: nothing left to release
            log.debug("closing the shared cache's Redis client failed", exc_info=True)

    # --- internals

    def _decode(self, key: str, value: bytes) -> files.DecodedEntry:
        head = len(MAGIC) + _CHECKSUM_LEN
        if len(value) > head + self.max_entry_bytes or not value.startswith(MAGIC):
            raise files.UnusableFile(f"not a value of this format ({len(value)} bytes)")
        entry = files.decode(value[head:], value[len(MAGIC) : head].decode("ascii", "replace"))
        if entry.key != key:
            raise files.UnusableFile(f"the entry names another key ({entry.key[:12]})")
        return entry

    async def _may_write(self) -> bool:
        """``False`` for a Redis whose ``maxmemory-policy`` is ``noeviction`` (read once; unknown counts as yes)."""
        if self._writable is None:
            found = await self._call(lambda: self._redis.config_get("maxmemory-policy"), quiet_refusal=True)
            if found is None and not self.available:
                return False  # unreachable: ask again when it is back
            policy = {_text(k): _text(v) for k, v in (found or {}).items()}.get("maxmemory-policy", "")
            self._writable = policy != "noeviction"
            if not self._writable:
                log.warning("the shared cache's Redis has maxmemory-policy noeviction; it is only read from. Use a "
                            "Redis of its own with maxmemory and maxmemory-policy allkeys-lru (never the queue's)")
        return self._writable

    async def _call(self, command: Callable[[], Awaitable[T]], *, quiet_refusal: bool = False) -> T | None:
        """Run one command within the timeout; ``None`` when it fails (see the module docstring)."""
        if not self.available:
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await command()
        except self._refusal as exc:
            if not quiet_refusal:
                log.info("the shared cache's Redis refused a command: %s", exc)
            return None
        except Exception as exc:  # down, slow, reset, unreachable: every one of them is "not now"
            self._step_aside(exc)
            return None
        if self._in_outage:
            self._in_outage = False
            log.info("the shared embedding cache is reachable again")
        return result

    def _step_aside(self, exc: BaseException) -> None:
        self.failures += 1
        self._down_until = self._clock() + self.retry_after_s
        if not self._in_outage:
            self._in_outage = True
            log.warning("the shared embedding cache is unavailable (%s: %s); local cache only, retrying every %.0f s",
                        type(exc).__name__, exc, self.retry_after_s)


def _text(value: object) -> str:
    """A reply field as text (redis-py gives CONFIG GET as str or bytes, by version and protocol)."""
    return value.decode() if isinstance(value, bytes) else str(value)
