"""Event-loop lag while the EngineWorker is busy on the real tiny models (CPU).

    python bench/loop_lag.py [--quick] [--seconds S]

A ticker sleeps 5 ms at a time on the event loop and records how late it wakes up, while the worker serves a
stream of jobs (distinct references, so every job runs the VL model, plus sweeps batched on the DiT). Both stage
threads run torch with one thread each (``cpu_threads=1``). For contrast, one line shows the lag when a stage runs
on the loop thread itself, which is what the worker exists to avoid. ``--quick`` (or ``BENCH_QUICK=1``) finishes in
a few seconds. The main figure (p50/p99 lag) is printed last; the target is p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine.serving.queue import Job  # noqa: E402
from engine.types import StylizeRequest  # noqa: E402
from _common import WorkerSettings  # noqa: E402
from engine.serving.protocols import WorkerConfig  # noqa: E402
from engine.serving.worker import EngineWorker  # noqa: E402

TICK = 0.005




def noise(seed: int, px: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - t0 - TICK)


async def run(pipe, seconds: float, ref_px: int, size: int, steps: int) -> tuple[list[float], int, dict]:
    worker = EngineWorker(pipe, config=WorkerConfig.from_settings(WorkerSettings(), preload=False))
    await worker.start()
    lags: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))
    deadline = time.perf_counter() + seconds
    done = 0
    i = 0
    try:
        pending: list[str] = []
        while time.perf_counter() < deadline or pending:
            while time.perf_counter() < deadline and len(pending) < 3:  # keep the queue fed
                base = StylizeRequest(prompt=f"a fox {i}", reference=noise(i, ref_px), width=size, height=size,
                                      steps=steps)
                cells = [base] if i % 3 else [base.replace(alpha=a) for a in (0.2, 0.5, 0.8)]  # every 3rd: a sweep
                job = Job(owner_id=i % 4, requests=cells, id=f"j{i}")
                await worker.submit(job)
                pending.append(job.id)
                i += 1
            outcome = await worker.wait(pending.pop(0))
            if outcome.error:
                raise SystemExit(f"job failed: {outcome.error}")
            done += 1
    finally:
        stop.set()
        await tick
        status = await worker.status()
        await worker.stop()
    return lags, done, status.estimates


async def on_loop_contrast(pipe, request: StylizeRequest) -> float:
    """Max lag when one DiT stage runs on the loop thread (the anti-pattern)."""
    lags: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(lags, stop))
    await asyncio.sleep(0.05)
    vl, text = pipe.encode_reference(request), pipe.encode_prompt(request)
    pipe.generate(request, vl, text)  # blocking, on purpose
    await asyncio.sleep(0.05)
    stop.set()
    await tick
    return max(lags)


def main(argv: list[str] | None = None) -> int:
    from engine.generation.pipeline import StylePipeline
    from engine.models.tiny import ensure_tiny

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 30.0)
    ref_px, size, steps = (256, 64, 4) if args.quick else (1024, 128, 9)

    torch.set_num_threads(1)
    paths = ensure_tiny(Path(os.environ.get("ZVL_BENCH_TINY", Path(tempfile.gettempdir()) / "zvl-bench-tiny")))
    pipe = StylePipeline.from_pretrained(paths["zimage"], paths["qwen3vl"], device="cpu", vl_max_image_tokens=4096)
    pipe.load("all")
    probe = StylizeRequest(prompt="warm-up", reference=noise(10**6, ref_px), width=size, height=size, steps=steps)
    contrast = asyncio.run(on_loop_contrast(pipe, probe))
    print(f"contrast: one stage run on the event loop thread -> max lag {contrast * 1000:.0f} ms")
    lags, done, est = asyncio.run(run(pipe, seconds, ref_px, size, steps))
    print(f"tiny models, CPU, 1 torch thread per stage; reference {ref_px}x{ref_px}, DiT {size}x{size} x {steps} "
          f"steps; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    dit_ms = est["dit_s_per_1024px_step"] * steps * size * size / 1024**2 * 1000
    print(f"{done} jobs in {seconds:.0f} s (every 3rd a 3-cell sweep); stage estimates: "
          f"VL {est['vl_s'] * 1000:.0f} ms, DiT {dit_ms:.0f} ms per cell")
    print(f"{len(lags)} ticks of {TICK * 1000:.0f} ms: mean {statistics.mean(lags) * 1000:.1f} ms, "
          f"max {max(lags) * 1000:.1f} ms")
    print(f"event-loop lag while the worker is busy: p50 {pct(lags, 50) * 1000:.1f} ms, "
          f"p99 {pct(lags, 99) * 1000:.1f} ms (target p99 <= 50 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
