"""A worker process's duties to the fleet, beside its stage loops: lease heartbeats, the reaper tick, its entry in
the worker registry (for ``/admin status`` and the bot's ETA), and the control channel (cancel, pause, resume,
reload, drain)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from engine.serving.redis.queue import REDIS_DOWN, RedisQueue, raise_if_cancelled
from engine.serving.redis.worker_side import Leases

log = logging.getLogger(__name__)

LOST_CONTACT = "lost contact with the queue"
LEASE_LOST = "another GPU worker took over this job"


class FleetMember:
    """The duties of one worker process (``worker`` is its ``EngineWorker``), each an endless task."""

    def __init__(self, queue: RedisQueue, worker: Any, name: str, leases: Leases, *, lease_s: float,
                 max_attempts: int) -> None:
        self.queue, self.worker, self.name, self.leases = queue, worker, name, leases
        self.lease_s, self.max_attempts = lease_s, max_attempts
        self.beat_s = lease_s / 6
        self.draining = asyncio.Event()  #: set by a ``drain`` command: the process stops once its jobs are done
        self._background: set[asyncio.Task] = set()

    def tasks(self) -> list[asyncio.Task]:
        return [asyncio.create_task(coro, name=f"zvl-fleet-{coro.__name__}")
                for coro in (self.heartbeats(), self.reaper(), self.registry(), self.control())]

    # --- leases ---------------------------------------------------------------------------------------------------
    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.beat_s)  # the heartbeat period (a schedule, not a synchronisation)
            for job_id, lease in list(self.leases.items()):
                if not lease.lost:
                    await self._beat(job_id, lease)

    async def _beat(self, job_id: str, lease: Any) -> None:
        try:
            answer = await self.queue.heartbeat(self.name, lease.sid, job_id)
        except REDIS_DOWN as exc:
            raise_if_cancelled()
            if time.monotonic() - lease.confirmed_at > self.lease_s:
                log.warning("job=%s: no heartbeat confirmed for a lease (%s); abandoning it", job_id, exc)
                await self.abandon(job_id, LOST_CONTACT)
            return
        if answer == 0:
            log.warning("job=%s: lease lost (a paused or partitioned worker); abandoning the run", job_id)
            await self.abandon(job_id, LEASE_LOST)
            return
        lease.confirmed_at = time.monotonic()
        if answer == 2:  # the backstop of a lost cancel nudge
            job = await self.queue.job(job_id) or {}
            await self.worker.cancel(job_id, job.get("cancel_reason") or "cancelled")

    async def abandon(self, job_id: str, why: str) -> None:
        """Stop the run without an outcome: the lease is no longer ours (its recorder drops what it ends with)."""
        lease = self.leases.get(job_id)
        if lease is not None:
            lease.lost = True
        await self.worker.cancel(job_id, why)

    async def reaper(self) -> None:
        """Every process reaps: no leader, no extra daemon; the script is idempotent."""
        while True:
            await asyncio.sleep(self.beat_s)
            try:
                requeued, failed, cancelled = await self.queue.reap(self.lease_s, self.max_attempts)
            except REDIS_DOWN:
                raise_if_cancelled()
                continue
            if requeued or failed or cancelled:
                log.info("reaped lost runs: %d requeued, %d failed, %d cancelled", requeued, failed, cancelled)

    # --- the registry ---------------------------------------------------------------------------------------------
    async def entry(self) -> dict[str, str]:
        """What ``worker:<name>`` holds: device, models, jobs, estimates, when its stages free up, state."""
        status = await self.worker.status()
        etas = [await self.worker.position(r.job_id) for r in status.running]
        ends = sorted(e[1] for e in etas if e is not None)
        loaded = {k: str(v) for k, v in status.loaded.items() if v}
        return {"name": self.name, "device": loaded.get("dit", "") or ", ".join(sorted(set(loaded.values()))),
                "loaded": json.dumps(loaded), "beat": f"{time.time():.3f}",
                "jobs": json.dumps([{"id": r.job_id, "stage": r.stage, "step": r.step, "total": r.total}
                                    for r in status.running]),
                "estimates": json.dumps(status.estimates), "dit_free_in": f"{ends[-1] if ends else 0.0:.3f}",
                "vl_free_in": f"{ends[0] if len(ends) > 1 else 0.0:.3f}", "paused": str(int(status.paused)),
                "draining": str(int(self.draining.is_set() or status.stopping)),
                "model_error": status.model_error or ""}

    async def registry(self) -> None:
        while True:
            try:
                await self.register()
            except REDIS_DOWN:
                raise_if_cancelled()
            await asyncio.sleep(self.beat_s)

    async def register(self) -> None:
        key = self.queue.key("worker", self.name)
        entry = await self.entry()
        async with self.queue.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=entry)
            pipe.expire(key, max(3, int(self.beat_s * 3 + 1)))
            pipe.zadd(self.queue.key("workers"), {self.name: time.time()})
            await pipe.execute()

    async def unregister(self) -> None:
        try:
            await self.queue.client.delete(self.queue.key("worker", self.name))
            await self.queue.client.zrem(self.queue.key("workers"), self.name)
        except REDIS_DOWN:
            pass

    # --- control --------------------------------------------------------------------------------------------------
    async def control(self) -> None:
        """Follow ``ctl:<name>`` and ``ctl:all`` (re-subscribing after an outage)."""
        channels = [self.queue.key("ctl", self.name), self.queue.key("ctl", "all")]
        while True:
            try:
                async with self.queue.client.pubsub() as pubsub:
                    await pubsub.subscribe(*channels)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self.obey(json.loads(message["data"]))
            except REDIS_DOWN:
                raise_if_cancelled()
                await asyncio.sleep(1.0)  # reconnect pacing through an outage

    async def obey(self, command: dict[str, Any]) -> None:
        op = command.get("op")
        log.info("control: %s", command)
        if op == "cancel" and command.get("job") in self.leases:
            await self.worker.cancel(command["job"], command.get("reason") or "cancelled")
        elif op == "pause":
            self.worker.pause()
        elif op == "resume":
            self.worker.resume()
        elif op == "reload":
            task = asyncio.create_task(self.worker.reload(command.get("component") or "all"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif op == "drain":
            self.worker.pause()
            self.draining.set()
        else:
            log.warning("control: unknown command %r", command)
