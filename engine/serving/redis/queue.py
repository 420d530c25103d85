"""RedisQueue: the async client of the queue's scripts and keys, shared by the bot and the workers.

Keys (all under ``zvl:{<ns>}:``, one hash tag): ``wait`` (ZSET, service order), ``own:<owner>`` (that owner's
waiting members), ``fin`` (owner finish tags), ``meta`` (virtual time per class, seq, total active), ``active``
(owner -> active jobs, the per-user cap), ``job:<id>`` (HASH), ``run`` (STREAM, group ``gpu``: its pending entries
are the leases, the entry id is the fencing token), ``ev:<id>`` (the job's events), ``ref:<sha>`` (reference PNGs),
``res:<id>:<sid>`` (result PNGs), ``worker:<name>`` (heartbeat), ``workers`` (ZSET name -> last beat), ``wake``
(LIST, one token per enqueue), channels ``ctl:<worker>`` / ``ctl:all`` (nudges: cancel, pause, resume, reload,
drain). Wall-clock time is passed in, never read by a script.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.serving.queue import QueueFull
from engine.serving.redis.scripts import register

#: What a Redis outage raises (callers turn it into ``QueueUnavailable`` or retry).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
#: Kept this long after a job ends: its hash, events, results and references (a bot down for a day still finds them).
KEEP_S = 86400
#: What the poison guard says (``%d``: attempts).
LOST_MESSAGE = "the GPU worker was lost %d times on this job; it was not retried again"
#: Class offset of a priority in the scores (see ``lua/common.lua``); priorities stay within +-PRIORITY_LIMIT.
PRIORITY_LIMIT = 4096


@dataclass(frozen=True)
class Taken:
    """A job a worker took: its lease is the ``run`` entry ``sid``."""

    job_id: str
    sid: str
    payload: bytes
    attempts: int


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py turned into a connection or timeout error (it can, when the cancel
    lands inside a command): a loop that retries through outages must still stop when it is cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until every one has ended (cancelling again any that swallowed it)."""
    pending = [t for t in tasks if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        _done, still = await asyncio.wait(pending, timeout=1.0)
        pending = list(still)


def connect(url: str) -> aioredis.Redis:
    """A client that gives up quickly when Redis is down (callers report it; nobody waits on a retry loop)."""
    return aioredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=10.0, health_check_interval=15,
                             retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQueue:
    """The fair queue, caps, leases and job records in one Redis (see the module docstring for the keys)."""

    def __init__(self, client: aioredis.Redis, *, namespace: str = "q", max_per_user: int = 3,
                 max_total: int = 50) -> None:
        if max_per_user < 1 or max_total < 1:
            raise ValueError(f"queue caps must be >= 1; got max_per_user={max_per_user}, max_total={max_total}")
        self.client = client
        self.prefix = f"zvl:{{{namespace}}}:"
        self.max_per_user, self.max_total = max_per_user, max_total
        self._scripts = register(client)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisQueue:
        return cls(connect(url), **kw)

    def key(self, *parts: str) -> str:
        """A key of this queue (``key("job", id)`` -> ``zvl:{q}:job:<id>``)."""
        return self.prefix + ":".join(parts)

    async def _run(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](keys=[self.key("wait")], args=[self.prefix, *args])

    # --- the line ------------------------------------------------------------------------------------------------
    async def enqueue(self, job_id: str, owner: int, payload: bytes, *, hint: str = "", priority: int = 0,
                      front: bool = False, check_caps: bool = True) -> int:
        """Queue a job; returns its position. Raises :class:`QueueFull` over a cap (the same words as the
        in-process queue) and ``ValueError`` for a job id Redis already has."""
        if abs(priority) >= PRIORITY_LIMIT:
            raise ValueError(f"priority must be within +-{PRIORITY_LIMIT}; got {priority}")
        got = await self._run("enqueue", job_id, owner, priority, int(front), int(check_caps), self.max_per_user,
                              self.max_total, payload, hint, time.time())
        what = _text(got[0])
        if what == "full":
            if _text(got[1]) == "user":
                raise QueueFull.user(int(got[2]), self.max_per_user)
            raise QueueFull.total(self.max_total)
        if what == "dup":
            raise ValueError(f"job {job_id} is already known to the queue ({_text(got[1])})")
        return int(got[1])

    async def put_references(self, references: dict[str, bytes]) -> None:
        """Store reference PNGs by content (once; kept a day)."""
        if references:
            async with self.client.pipeline(transaction=False) as pipe:
                for sha, data in references.items():
                    pipe.set(self.key("ref", sha), data, nx=True, ex=KEEP_S)
                    pipe.expire(self.key("ref", sha), KEEP_S)
                await pipe.execute()

    async def references(self, shas: list[str]) -> dict[str, bytes]:
        """``{sha: png}`` of the references still stored."""
        if not shas:
            return {}
        values = await self.client.mget([self.key("ref", sha) for sha in shas])
        return {sha: v for sha, v in zip(shas, values, strict=True) if v is not None}

    async def take(self, consumer: str) -> Taken | None:
        """The next job in fair order, now leased to ``consumer``; ``None`` when the line is empty."""
        got = await self._run("take", consumer, time.time())
        if not got:
            return None
        return Taken(_text(got[0]), _text(got[1]), got[2], int(got[3]))

    async def cancel(self, job_id: str, reason: str = "cancelled") -> str:
        """``cancelled`` (was queued: removed), ``running`` (its worker is told, and stops) or ``gone``."""
        return _text(await self._run("cancel", job_id, reason, time.time()))

    async def order(self) -> list[str]:
        """The queued job ids in service order."""
        return [_text(m)[17:] for m in await self.client.zrange(self.key("wait"), 0, -1)]

    async def queued_for(self, owner: int) -> list[str]:
        """The owner's queued job ids in service order."""
        return [_text(m)[17:] for m in await self.client.zrange(self.key("own", str(owner)), 0, -1)]

    async def depth(self) -> int:
        return int(await self.client.zcard(self.key("wait")))

    async def position(self, job_id: str) -> int | None:
        """1-based position of a queued job, 0 for a running one, ``None`` otherwise."""
        status, member = await self.client.hmget(self.key("job", job_id), ["status", "member"])
        if status == b"running":
            return 0
        if status != b"queued" or member is None:
            return None
        rank = await self.client.zrank(self.key("wait"), member)
        return None if rank is None else rank + 1

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's hash (text fields decoded; ``payload`` and ``hint`` left as bytes), or ``None``."""
        raw = await self.client.hgetall(self.key("job", job_id))
        if not raw:
            return None
        return {_text(k): (v if k in (b"payload", b"hint") else _text(v)) for k, v in raw.items()}

    async def jobs(self, job_ids: list[str], *fields: str) -> list[list[Any]]:
        """``HMGET fields`` of several jobs in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.key("job", job_id), list(fields))
            return await pipe.execute()

    async def wait_for_work(self, timeout_s: float = 1.0) -> None:
        """Until a job may be there (one wake token per enqueue/requeue) or ``timeout_s``."""
        await self.client.blpop([self.key("wake")], timeout=timeout_s)

    # --- leases ---------------------------------------------------------------------------------------------------
    async def heartbeat(self, consumer: str, sid: str, job_id: str) -> int:
        """0: the lease is not ours any more (abandon the run); 1: renewed; 2: renewed, and a cancel was asked."""
        return int(await self._run("heartbeat", consumer, sid, job_id))

    async def put_results(self, job_id: str, sid: str, blobs: dict[str, bytes]) -> None:
        """Write a run's results (before its fenced finish; a zombie writes under its own sid, never the winner's)."""
        key = self.key("res", job_id, sid)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=blobs)
            pipe.expire(key, KEEP_S)
            await pipe.execute()

    async def finish(self, consumer: str, sid: str, job_id: str, status: str, error: str | None = None,
                     timings: dict[str, float] | None = None) -> bool:
        """End the run with a final status; ``False`` when the lease was lost (the outcome is refused)."""
        return bool(await self._run("finish", consumer, sid, job_id, status, error or "",
                                    json.dumps(timings or {}), time.time()))

    async def requeue(self, consumer: str, sid: str, job_id: str, message: str) -> int | None:
        """Put a held job back first in its owner's line; its position, or ``None`` when the lease was lost."""
        pos = int(await self._run("requeue", consumer, sid, job_id, message, time.time()))
        return None if pos < 0 else pos

    async def reap(self, lease_s: float, max_attempts: int) -> tuple[int, int, int]:
        """Requeue, fail (poison guard) or cancel the runs whose lease ran out: ``(requeued, failed, cancelled)``."""
        got = await self._run("reap", int(lease_s * 1000), max_attempts, time.time(), LOST_MESSAGE)
        return int(got[0]), int(got[1]), int(got[2])

    # --- results and events ---------------------------------------------------------------------------------------
    async def results(self, job_id: str, sid: str) -> dict[bytes, bytes]:
        return await self.client.hgetall(self.key("res", job_id, sid))

    async def drop_results(self, job_id: str, sid: str) -> None:
        await self.client.delete(self.key("res", job_id, sid))

    async def add_events(self, job_id: str, events: list[dict[str, str]]) -> None:
        """Append a worker's progress events to the job's stream (bounded)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for fields in events:
                pipe.xadd(self.key("ev", job_id), fields, maxlen=500, approximate=True)
            await pipe.execute()

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        """A nudge on ``ctl:<worker>`` / ``ctl:all`` (losing one costs latency, never correctness)."""
        return int(await self.client.publish(self.key(channel), json.dumps(message)))

    async def aclose(self) -> None:
        await self.client.aclose()
