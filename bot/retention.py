"""Retention: result images and stored references older than ``retention_days`` are deleted, so the data folder
does not grow without bound. A button pressed on a result whose reference is gone gets a clear "start a new one"
message (``ReferenceStore.load``); the job rows themselves stay (they are small, and ``/queue`` history reads them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from bot.background import BackgroundLoop

log = logging.getLogger(__name__)

#: How often the periodic clean-up runs.
INTERVAL_S = 6 * 3600.0


def remove_old_files(roots: Iterable[Path], max_age_s: float, now: float | None = None) -> int:
    """Delete files under ``roots`` last modified more than ``max_age_s`` ago, then the folders left empty.

    Returns how many files were removed. Missing roots are fine; a file that cannot be removed is logged and kept.
    A stored reference is touched whenever a new request reuses it (``ReferenceStore``), so its age is its last use.
    """
    cutoff = (time.time() if now is None else now) - max_age_s
    removed = 0
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their folders
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            except OSError as exc:
                log.warning("retention: could not remove %s: %s", path, exc)
    return removed


class Retention(BackgroundLoop):
    """Runs :func:`remove_old_files` over ``roots`` at start-up and every :data:`INTERVAL_S` (off when days is 0)."""

    name = "zvl-retention"

    def __init__(self, roots: list[Path], days: float, interval_s: float = INTERVAL_S) -> None:
        super().__init__()
        self.roots, self.max_age_s, self.interval_s = roots, days * 86400.0, interval_s

    @property
    def enabled(self) -> bool:
        return self.max_age_s > 0

    async def _run(self) -> None:
        while True:
            removed = await asyncio.to_thread(remove_old_files, self.roots, self.max_age_s)
            if removed:
                log.info("retention: removed %d files older than %.0f days", removed, self.max_age_s / 86400)
            await asyncio.sleep(self.interval_s)
