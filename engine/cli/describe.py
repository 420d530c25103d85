"""``python -m engine describe -i REF [--n 4] [--json]``: Qwen3-VL's prompt suggestions for a reference image.

Loads only Qwen3-VL (the full model with its LM head, from the local folder) and decodes greedily; one suggestion
per line on stdout (``--json``: the record, with token counts and seconds). On the tiny models the text is noise.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from engine.cli._common import load_reference, prepare_models, quiet_libraries, settings_from_args
from engine.cli._errors import EXIT_OK, CliError, UsageError, one_line
from engine.cli._output import Progress

__all__ = ["cmd_describe"]


def cmd_describe(args: argparse.Namespace) -> int:
    """Check the flags, load Qwen3-VL, print the suggestions."""
    from engine.conditioning.describe import ANGLES, MAX_NEW_TOKENS_LIMIT

    if not 1 <= args.n <= len(ANGLES):
        raise UsageError(f"--n must be from 1 to {len(ANGLES)}; got {args.n}")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise UsageError(f"--max-new-tokens must be from 1 to {MAX_NEW_TOKENS_LIMIT}; got {args.max_new_tokens}")
    if not args.max_time > 0:
        raise UsageError(f"--max-time must be above 0 seconds; got {args.max_time:g}")
    progress = Progress(not args.quiet, bars=False)
    settings = prepare_models(settings_from_args(args, {}))
    image = load_reference(args.image, settings)
    quiet_libraries(args.debug)
    extractor = _extractor(settings, progress)
    progress.line(f"describing {args.image} ({args.n} suggestions, up to {args.max_new_tokens} tokens each) ...")
    description = _describe(extractor, image, args)
    record: dict[str, Any] = {"image": args.image, **description.record()}
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    else:
        for i, text in enumerate(description.suggestions, 1):
            print(f"{i}. {text}", flush=True)
    progress.line(f"done in {description.seconds:.1f} s ({description.stopped})")
    return EXIT_OK


def _extractor(settings: Any, progress: Progress) -> Any:
    """Qwen3-VL from the settings' folder, device and dtype, loaded now (one line on failure)."""
    from engine.conditioning.vision import VLExtractor

    t0 = time.perf_counter()
    try:
        extractor = VLExtractor.from_pretrained(settings.vl_path, settings.vl_device, settings.dtype,
                                                max_image_tokens=settings.vl_max_image_tokens)
    except (KeyboardInterrupt, CliError):
        raise
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any load failure is one line
        raise CliError(f"cannot load Qwen3-VL: {one_line(exc)}") from exc
    progress.line(f"Qwen3-VL loaded from {settings.vl_path} on {extractor.device} in "
                  f"{time.perf_counter() - t0:.1f} s")
    return extractor


def _describe(extractor: Any, image: Any, args: argparse.Namespace) -> Any:
    from engine.conditioning.describe import describe_image

    try:
        return describe_image(extractor, image, n=args.n, max_new_tokens=args.max_new_tokens,
                              max_time_s=args.max_time)
    except (KeyboardInterrupt, CliError):
        raise
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise CliError(f"describe failed: {one_line(exc)}") from exc
