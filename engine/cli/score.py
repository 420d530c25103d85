"""``python -m engine score --reference R [--prompt P] IMAGE... [--json]``: the scores of images against a reference.

Weight-free scores (colour and texture distance to the reference, clipped share, noise) need no model. The judged
scores (prompt adherence, needing ``--prompt``, and style similarity) need Qwen3-VL: they are computed when a
Qwen3-VL folder is configured (``--vl-model-path`` / ``ZVL_VL_PATH``) or with ``--demo`` (the tiny random model:
its judgements are noise), and skipped with ``--no-judge``. Every file is read and checked before any model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli._common import LOCAL_REFERENCE_MAX_BYTES, load_reference, quiet_libraries, settings_from_args
from engine.cli._errors import EXIT_OK, CliError, UsageError, one_line
from engine.cli._output import Progress, notice, print_json
from engine.media.images import ReferenceImageError, load_reference_path
from engine.models.tiny import resolve_demo

__all__ = ["cmd_score"]


def cmd_score(args: argparse.Namespace) -> int:
    """Load and check every image, set up the judge when there is a VL model, then score the images in order."""
    progress = Progress(not args.quiet, bars=False)
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt must not be empty")
    settings = settings_from_args(args, {})
    reference = load_reference(args.reference, settings)
    images = [(path, _load_image(path, settings)) for path in args.images]
    judge = None if args.no_judge else _judge(settings, args, progress)
    from engine.scoring.score import score_image  # scipy / scikit-image: only once the inputs are good

    rows = []
    for path, image in images:
        try:
            scores = score_image(image, reference, args.prompt, judge)
        except Exception as exc:  # noqa: BLE001 - one line, whatever failed
            raise CliError(f"cannot score {path}: {one_line(exc)}") from exc
        rows.append({"image": path, "scores": scores})
        if not args.json:
            print(f"{path}: " + "  ".join(f"{k}={v:.4g}" for k, v in scores.items()), flush=True)
    if args.json:
        print_json(rows)
    return EXIT_OK


def _load_image(path: str, settings: Any) -> Any:
    """One image to score, sanitised as a reference is; a missing file or a non-image is a usage error."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"image {p} does not exist")
    if p.is_dir():
        raise UsageError(f"image {p} is a directory, not a file")
    try:
        return load_reference_path(p, max_bytes=LOCAL_REFERENCE_MAX_BYTES, max_pixels=settings.max_reference_pixels)
    except ReferenceImageError as exc:  # the loader's words are about references; this one is scored
        raise UsageError(str(exc).replace("the reference", "the image")) from None


def _judge(settings: Any, args: argparse.Namespace, progress: Progress) -> Any:
    """The Qwen3-VL judge, or ``None`` (with a line saying so) when no VL model is configured."""
    quiet_libraries(args.debug)
    if settings.demo:
        settings = resolve_demo(settings, notify=notice)
    if settings.vl_path is None:
        progress.line("no Qwen3-VL folder (--vl-model-path / ZVL_VL_PATH, or --demo): judged scores skipped")
        return None
    from engine.models.loading import check_vl_folder

    try:
        check_vl_folder(Path(settings.vl_path))
    except ValueError as exc:
        raise UsageError(f"vl_path (ZVL_VL_PATH): {one_line(exc)}") from None
    progress.line(f"loading Qwen3-VL from {settings.vl_path} for the judged scores")
    try:
        from engine.conditioning.vision import VLExtractor
        from engine.scoring.judge import Judge

        extractor = VLExtractor.from_pretrained(settings.vl_path, settings.vl_device, settings.dtype,
                                                max_image_tokens=settings.vl_max_image_tokens)
        return Judge.from_extractor(extractor)
    except (KeyboardInterrupt, CliError):
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is one line
        raise CliError(f"cannot load Qwen3-VL: {one_line(exc)}") from exc
