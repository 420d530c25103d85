"""``python -m engine make-tiny DIR``: tiny random Z-Image and Qwen3-VL folders in the real layout."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine.cli._common import quiet_libraries
from engine.cli._errors import EXIT_OK, CliError
from engine.cli._output import Progress

__all__ = ["cmd_make_tiny"]


def cmd_make_tiny(args: argparse.Namespace) -> int:
    """Write ``DIR/zimage`` and ``DIR/qwen3vl``; ``--json`` prints their paths."""
    quiet_libraries(args.debug)
    from engine.models.tiny import make_tiny  # imports torch and transformers: only for this command

    progress = Progress(not args.quiet, bars=not args.json)
    progress.line(f"writing tiny random models into {args.dir} ...")
    t0 = time.perf_counter()
    try:
        paths = make_tiny(Path(args.dir))
    except OSError as exc:
        raise CliError(f"cannot write tiny models to {args.dir}: {exc.strerror or exc}") from exc
    progress.line(f"done in {time.perf_counter() - t0:.1f} s: {paths['zimage']} and {paths['qwen3vl']}")
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    return EXIT_OK
