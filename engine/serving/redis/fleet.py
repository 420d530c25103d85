"""What the bot knows of the fleet: the live workers' registry entries, and ETAs over every worker's measured speed.

Each worker publishes its ``StageEstimator`` figures and when its stages free up (``worker:<name>``, refreshed every
heartbeat). The ETA simulates the global line in service order: each job goes to the worker whose encode stage
frees first (that worker pulls it, since workers take a job when their hand-off is empty), and the two-stage
recurrence of ``engine.serving.eta.schedule_two_stage`` runs per worker with that worker's prices. Heterogeneous
GPUs are then handled naturally.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from engine.serving.eta import StageEstimator
from engine.serving.redis.queue import RedisQueue
from engine.serving.redis.wire import parse_hint


@dataclass
class WorkerInfo:
    """One live worker as ``/admin status`` shows it."""

    name: str
    device: str
    loaded: dict[str, str]
    jobs: list[dict[str, Any]]
    last_beat_s: float  #: seconds since its last heartbeat
    paused: bool
    draining: bool
    model_error: str | None
    estimates: dict[str, Any] = field(default_factory=dict)
    vl_free_in: float = 0.0
    dit_free_in: float = 0.0

    def prices(self) -> StageEstimator:
        """This worker's measured stage prices (the priors until it has measured)."""
        est = StageEstimator()
        e = self.estimates
        return StageEstimator(vl_s=float(e.get("vl_s", est.vl_s)), text_s=float(e.get("text_s", est.text_s)),
                              dit_unit_s=float(e.get("dit_s_per_1024px_step", est.dit_unit_s)))

    @classmethod
    def of(cls, raw: dict[bytes, bytes], now: float) -> WorkerInfo:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(h["name"], h.get("device", ""), json.loads(h.get("loaded") or "{}"),
                   json.loads(h.get("jobs") or "[]"), round(max(0.0, now - float(h.get("beat") or now)), 2),
                   h.get("paused") == "1", h.get("draining") == "1", h.get("model_error") or None,
                   json.loads(h.get("estimates") or "{}"), float(h.get("vl_free_in") or 0.0),
                   float(h.get("dit_free_in") or 0.0))


async def live_workers(queue: RedisQueue) -> list[WorkerInfo]:
    """The workers whose registry entry has not expired (names of expired ones are dropped from ``workers``)."""
    names = [n.decode() for n in await queue.client.zrange(queue.key("workers"), 0, -1)]
    async with queue.client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(queue.key("worker", name))
        entries = await pipe.execute()
    gone = [name for name, raw in zip(names, entries, strict=True) if not raw]
    if gone:
        await queue.client.zrem(queue.key("workers"), *gone)
    now = time.time()
    return [WorkerInfo.of(raw, now) for raw in entries if raw]


def queued_etas(hints: list[bytes | None], workers: list[WorkerInfo]) -> list[float]:
    """Seconds until each queued job (in service order, by its cost hint) is done, over every serving worker."""
    serving = [w for w in workers if not (w.paused or w.draining)] or [WorkerInfo("prior", "", {}, [], 0.0, False,
                                                                                   False, None)]
    prices = [w.prices() for w in serving]
    vl_free = [w.vl_free_in for w in serving]
    dit_free = [w.dit_free_in for w in serving]
    out = []
    for hint in hints:
        refs, texts, units = parse_hint(hint)
        k = min(range(len(serving)), key=lambda i: (vl_free[i], dit_free[i]))
        p = prices[k]
        encode_s, dit_s = refs * p.vl_s + texts * p.text_s, units * p.dit_unit_s
        start = max(vl_free[k] + encode_s, dit_free[k])
        dit_free[k], vl_free[k] = start + dit_s, start
        out.append(dit_free[k])
    return out


async def etas(queue: RedisQueue, running: list[str]) -> dict[str, tuple[int, float]]:
    """``job_id -> (position, eta_s)`` of every queued job, and of the ``running`` ones given (position 0)."""
    order = await queue.order()
    workers = await live_workers(queue)
    hints = [row[0] for row in await queue.jobs(order, "hint")] if order else []
    out = {job_id: (i, round(eta, 2))
           for i, (job_id, eta) in enumerate(zip(order, queued_etas(hints, workers), strict=True), start=1)}
    free_in = {w.name: w.dit_free_in for w in workers}
    for job_id, (worker,) in zip(running, await queue.jobs(running, "worker") if running else [], strict=True):
        out[job_id] = (0, round(free_in.get(worker.decode() if worker else "", 0.0), 2))
    return out
