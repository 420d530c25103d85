"""``python -m engine serve --redis-url URL [--name NAME] [--demo]``: one GPU worker of the shared queue.

It loads its models, then serves jobs from Redis until SIGTERM/SIGINT or a drain command (see
``engine.serving.redis.serve``). ``--pipeline MODULE:CALLABLE`` swaps the pipeline for a stand-in built by that
callable (benchmarks and tests: fixed-cost stages without models).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from engine.cli._common import prepare_models, quiet_libraries, settings_from_args
from engine.cli._errors import EXIT_OK, CliError, UsageError, one_line

__all__ = ["cmd_drain", "cmd_serve", "default_name"]


def default_name() -> str:
    """``<host>-<pid>``: unique per process, readable in ``/admin status``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _stand_in(spec: str) -> Callable[[], Any]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise UsageError(f"--pipeline must be MODULE:CALLABLE; got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--pipeline {spec}: {exc}") from None


def _model_factory(settings: Any) -> Callable[[], Any]:
    def build() -> Any:
        from engine.generation.pipeline import StylePipeline  # imports torch: in the worker's thread

        # vl_auto_unload is the worker's job (once per job, after all its extractions)
        return StylePipeline.from_settings(settings.model_copy(update={"vl_auto_unload": False}))

    return build


def _queue_settings(args: argparse.Namespace, command: str) -> Any:
    """The settings with ``--redis-url`` on top; a usage error when no queue is named."""
    settings = settings_from_args(args, {"redis_url": args.redis_url} if args.redis_url else {})
    if not settings.redis_url:
        raise UsageError(f"{command} needs the queue's Redis: --redis-url URL (or ZVL_REDIS_URL)")
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until stopped; exit 0 after a clean drain."""
    settings = _queue_settings(args, "serve")
    quiet_libraries(args.debug)
    logging.basicConfig(level=logging.DEBUG if args.debug else settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.pipeline:
        factory = _stand_in(args.pipeline)
    else:
        settings = prepare_models(settings)
        factory = _model_factory(settings)
    from engine.serving.redis.serve import ServeError, serve  # imports redis: only for this command

    name = args.name or default_name()
    try:
        asyncio.run(serve(settings, name, factory, on_ready=lambda: print(f"serving as {name}", flush=True)))
    except ServeError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def cmd_drain(args: argparse.Namespace) -> int:
    """Ask the worker named ``args.worker`` to drain: it takes no new job, finishes what it holds (its jobs go back
    first in line if they outlast the job timeout), leaves the registry and exits 0. Returns at once."""
    settings = _queue_settings(args, "drain")
    from engine.serving.redis.queue import RedisQueue  # imports redis: only for this command

    async def send() -> int:
        queue = RedisQueue.from_url(settings.redis_url, namespace=settings.redis_namespace)
        try:
            return await queue.publish(f"ctl:{args.worker}", {"op": "drain"})
        finally:
            await queue.aclose()

    try:
        reached = asyncio.run(send())
    except Exception as exc:  # noqa: BLE001 - redis-py's connection errors: one line, no traceback
        raise CliError(f"cannot reach the queue at {settings.redis_url}: {one_line(exc)}") from None
    if not reached:
        raise CliError(f"no worker named {args.worker!r} is listening on this queue (see /admin status)")
    print(f"{args.worker}: draining (it finishes its jobs, then exits)")
    return EXIT_OK
