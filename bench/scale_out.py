"""Scale-out over the shared Redis queue: throughput of N = 1..4 ``engine serve`` workers against one, and what the
queue adds per job against the in-process worker, with fixed-cost stand-in stages.

    python bench/scale_out.py [--quick] [--jobs M] [--json PATH]

The stages are the suite's fake pipeline with GIL-releasing sleeps as the *workload* (``vl_s`` per extraction,
``step_s`` per DiT step), so N workers on a 2-core machine can scale as N GPUs would: real parallel GPU work is
capped by the cores here, sleeping stand-in stages are not. Every worker is a real ``python -m engine serve``
process (started and warm before the clock runs); the bot side is a real ``RedisEngine`` in this process, which
submits M jobs from 6 users and waits for each outcome (results read back through Redis). "The queue adds" is
``(wall of 1 Redis worker - wall of the in-process EngineWorker) / M`` on the same jobs and stand-in.
Targets: throughput ratio >= 0.9 N, queue overhead <= 5 ms per job. The main figure is printed last.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import figure, finish, machine, parser, quick_requested  # noqa: E402

STEP_S = float(os.environ.get("ZVL_BENCH_STEP_S", "0.03"))
VL_S = float(os.environ.get("ZVL_BENCH_VL_S", "0.1"))
STEPS = 10


def stand_in():
    """The workers' pipeline (``engine serve --pipeline bench.scale_out:stand_in``): fixed-cost sleeping stages."""
    from tests.fakes import FakePipeline

    return FakePipeline(step_s=STEP_S, vl_s=VL_S)


def jobs(m: int, tag: str) -> list:
    from engine.serving.queue import Job
    from tests.engine.serving.support import req

    return [Job(owner_id=1 + i % 6, requests=[req(f"{tag}{i}", reference=i, steps=STEPS)], id=f"{tag}-{i}")
            for i in range(m)]


async def run_jobs(engine, batch: list) -> float:
    """Seconds from the first submit to the last outcome."""
    t0 = time.perf_counter()
    for job in batch:
        await engine.submit(job)
    outcomes = await asyncio.gather(*(engine.wait(j.id) for j in batch))
    assert all(o.status.value == "done" for o in outcomes), [o.error for o in outcomes if o.error]
    return time.perf_counter() - t0


async def in_process(m: int) -> float:
    from engine.serving.protocols import WorkerConfig
    from engine.serving.worker import EngineWorker

    worker = EngineWorker(stand_in(), config=WorkerConfig(max_jobs_per_user=m, max_jobs_total=m, preload=True,
                                                          vl_idle_unload_s=0))
    await worker.start()
    await worker.reload("all")
    try:
        return await run_jobs(worker, jobs(m, "local"))
    finally:
        await worker.stop()


async def over_redis(url: str, n: int, m: int, folder: Path) -> float:
    from engine.serving.redis.queue import RedisQueue, connect
    from engine.serving.redis.remote import RedisEngine
    from tests.engine.serving.redis.procs import WorkerProc

    env = {**os.environ, "ZVL_REDIS_NAMESPACE": f"bench{n}"}  # a fresh line per N
    procs = [WorkerProc(url, f"n{n}w{i}", folder, lease_s=30.0, pipeline="bench.scale_out:stand_in", env=env).start()
             for i in range(n)]
    engine = RedisEngine(RedisQueue(connect(url), namespace=f"bench{n}", max_per_user=m, max_total=m), lease_s=30.0)
    try:
        await asyncio.gather(*(p.ready() for p in procs))
        await engine.start()
        return await run_jobs(engine, jobs(m, f"n{n}"))
    finally:
        await engine.stop()
        for proc in procs:
            proc.stop()


async def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick = args.quick or quick_requested()
    m = args.reps or (8 if quick else 48)
    counts = (1, 2) if quick else (1, 2, 3, 4)
    from tests.redisserver import RedisServer

    folder = Path(tempfile.mkdtemp(prefix="zvl-scale-"))
    server = RedisServer(folder / "redis").start()
    try:
        local = await in_process(m)
        walls = {n: await over_redis(server.url, n, m, folder) for n in counts}
    finally:
        server.stop()
    per_job = max(VL_S, STEPS * STEP_S)
    ratios = {n: walls[1] / walls[n] for n in counts}
    overhead_ms = (walls[1] - local) / m * 1000
    for n in counts:
        print(f"N={n}: {m} jobs in {walls[n]:.2f} s, {m / walls[n]:.2f} jobs/s, ratio vs one {ratios[n]:.2f} "
              f"(target >= {0.9 * n:.1f})")
    print(f"in-process EngineWorker: {m} jobs in {local:.2f} s (stage cost per job {per_job:.2f} s); "
          f"the queue adds {overhead_ms:.1f} ms per job (target <= 5)")
    top = counts[-1]
    results = {"jobs": m, "step_s": STEP_S, "vl_s": VL_S, "steps": STEPS, "walls": walls, "in_process": local,
               "ratios": ratios, "overhead_ms_per_job": overhead_ms, "machine": machine()}
    finish(figure("scale_out", f"throughput ratio N={top} vs 1 (target >= {0.9 * top:.1f})", ratios[top], 2),
           results, args.json)


if __name__ == "__main__":
    asyncio.run(main())
