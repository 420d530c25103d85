"""Event-loop lag: how late a periodic timer fires. The bot's promise is a loop that never waits on torch work,
so the lag is shown in ``/admin status`` and a warning is logged when it spikes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from bot.background import BackgroundLoop

log = logging.getLogger(__name__)


class LoopLagMonitor(BackgroundLoop):
    """Sleeps ``interval`` seconds in a loop and records how much later than asked each wake-up came.

    Keeps the last ``window`` samples; :meth:`snapshot` gives p50/p99/max in milliseconds. A sample above
    ``warn_s`` is logged (at most once a minute), since it means something blocked the event loop.
    """

    name = "zvl-loop-lag"

    def __init__(self, interval: float = 0.1, window: int = 3000, warn_s: float = 0.25) -> None:
        super().__init__()
        self.interval, self.warn_s = interval, warn_s
        self.samples: deque[float] = deque(maxlen=window)
        self._last_warning = -float("inf")

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - t0 - self.interval)
            self.samples.append(lag)
            if lag > self.warn_s and time.monotonic() - self._last_warning > 60:
                self._last_warning = time.monotonic()
                log.warning("event loop lag %.0f ms: something blocked the loop", lag * 1000)

    def snapshot(self) -> dict[str, float | int]:
        """``{"samples", "p50_ms", "p99_ms", "max_ms"}`` over the window (zeros before the first sample)."""
        data = sorted(self.samples)
        if not data:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

        def pct(q: float) -> float:
            return round(data[min(len(data) - 1, int(q * len(data)))] * 1000, 1)

        return {"samples": len(data), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(data[-1] * 1000, 1)}
