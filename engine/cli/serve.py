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
from engine.cli._errors import EXIT_OK, CliError, UsageError

__all__ = ["cmd_serve", "default_name"]


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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until stopped; exit 0 after a clean drain."""
    extra = {"redis_url": args.redis_url} if args.redis_url else {}
    settings = settings_from_args(args, extra)
    if not settings.redis_url:
        raise UsageError("serve needs the queue's Redis: --redis-url URL (or ZVL_REDIS_URL)")
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
