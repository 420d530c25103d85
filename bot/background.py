"""A loop the services run beside the bot (the loop-lag monitor, the retention clean-up)."""

from __future__ import annotations

import asyncio


class BackgroundLoop:
    """``start()`` runs :meth:`_run` as a task (once, and only when :attr:`enabled`); ``stop()`` cancels and awaits it."""

    name = "zvl-background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return True

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError
