"""The event-loop lag monitor measures real stalls."""

from __future__ import annotations

import asyncio
import logging
import time

from bot.looplag import LoopLagMonitor


async def test_a_blocked_loop_shows_up_as_lag_and_a_warning(caplog):
    monitor = LoopLagMonitor(interval=0.01, warn_s=0.1)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        quiet = monitor.snapshot()
        with caplog.at_level(logging.WARNING, logger="bot.looplag"):
            time.sleep(0.2)  # block the event loop on purpose
            await asyncio.sleep(0.05)
        busy = monitor.snapshot()
    finally:
        await monitor.stop()
    assert quiet["samples"] >= 2 and quiet["max_ms"] < 100
    assert busy["max_ms"] >= 150
    assert "event loop lag" in caplog.text


def test_snapshot_before_any_sample_is_zero():
    assert LoopLagMonitor().snapshot() == {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
