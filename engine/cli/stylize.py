"""``python -m engine stylize``: one image in the style of references (``-i REF`` and ``--style CODE`` for one an
earlier run stored, up to 4 with ``--weights``; ``--negative-image``/``--negative-style`` to move away from one);
every parameter is stored in the PNG, and each reference's style code is printed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli._common import (
    base_request,
    check_alpha_flag,
    check_inputs,
    load_weights,
    make_pipeline,
    models_record,
    needed_components,
    prepare_models,
    quiet_libraries,
    reference_record,
    settings_from_args,
)
from engine.cli._errors import EXIT_OK, CliError, UsageError, one_line
from engine.cli._output import Progress, jsonable, notice, print_json, result_record
from engine.files import atomic_write_bytes
from engine.media.images import png_with_metadata
from engine.cli.refs import CliReferences, gather_references, local_styles
from engine.sweep.axes import parse_values
from engine.types import (
    AppendSelection,
    BlendMode,
    FitMode,
    Normalization,
    OutlierMode,
    StyleSchedule,
    StylizeRequest,
    TokenMode,
    alpha_to_style_weight,
    style_weight_to_alpha,
)

__all__ = ["cmd_stylize"]


def cmd_stylize(args: argparse.Namespace) -> int:
    """Check every flag, load the models, generate, write the PNG(s) with their record."""
    progress = Progress(not args.quiet, bars=not args.json)
    out, settings, request, refs = _checked_request(args)
    settings = prepare_models(settings)
    _make_folder(out.parent)
    quiet_libraries(args.debug)
    pipe = make_pipeline(settings)
    check_inputs(pipe, request)  # before any weights load
    load_s = load_weights(pipe, settings, progress, needed_components([request]))
    progress.line(f"generating {request.width}x{request.height}, {request.steps} steps, alpha={request.alpha:g} "
                  f"(style weight {alpha_to_style_weight(request.alpha):.4g}), mode={request.blend_mode} ...")
    result = _generate(pipe, request, progress)
    first = reference_record(refs.paths[0], refs.images[0]) if refs.paths else None
    record = result_record(result, reference=first, models=models_record(settings, pipe),
                           model_load_seconds=round(load_s, 3), style_weight=args.style_weight, **refs.records())
    record["style_codes"] = [_remember_style(settings, image) for image in refs.images]
    record["style_code"] = record["style_codes"][0] if refs.images else None
    record["outputs"] = _write_images(out, result.images, record)
    codes = [code for code in record["style_codes"] if code]
    if codes:
        progress.line(f"style code{'s' * (len(codes) > 1)} {', '.join(codes)} (reuse with --style {codes[0]})")
    total = (result.timings or {}).get("total")
    progress.line(f"wrote {', '.join(record['outputs'])}" + (f" ({total:.1f} s)" if total else ""))
    if args.json:
        print_json(record)
    return EXIT_OK


def _checked_request(args: argparse.Namespace) -> tuple[Path, Any, StylizeRequest, CliReferences]:
    """The output path, the settings, the request and its references, every flag checked (usage errors before any
    model loads)."""
    alpha = _alpha(args)
    layer_int, layer_mix = _parse_layer_flag(args.layer)
    _check_choices(args)
    out = Path(args.output).expanduser()
    if out.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file (parameters are stored in its metadata); got {out}")
    settings = settings_from_args(args, dict(
        alpha=alpha, blend_mode=args.blend_mode, hidden_layer=layer_int, tokens=args.tokens,
        normalization=args.normalization, outlier_mode=args.outlier_mode, append_tokens=args.append_tokens,
        steps=args.steps))
    strength = _strength(args.strength)
    refs = gather_references(args, settings)
    request = refs.apply(base_request(settings, args, args.prompt, None)).replace(strength=strength,
                                                                                  think=bool(args.think))
    if layer_mix is not None:
        request = request.replace(hidden_layer=layer_mix)
    return out, settings, request, refs


def _remember_style(settings: Any, image: Any) -> str | None:
    """The reference's style code, stored for ``--style`` (a store that cannot be written costs only the code)."""
    try:
        return local_styles(settings).remember(image)
    except (OSError, ValueError) as exc:
        notice(f"warning: the style code could not be stored: {one_line(exc)}")
        return None


def _alpha(args: argparse.Namespace) -> float | None:
    """``--alpha``, or ``--style-weight`` converted to an alpha (they exclude each other)."""
    check_alpha_flag(args.alpha, "--alpha")
    if args.style_weight is None:
        return args.alpha
    try:
        return style_weight_to_alpha(args.style_weight)
    except ValueError as exc:
        raise UsageError(f"--style-weight: {exc}") from None


def _parse_layer_flag(value: str | None) -> tuple[int | None, Any]:
    """``(int for settings, mix for the request)``; a mix is not a setting."""
    if value is None:
        return None, None
    try:
        layer = parse_values("layers", [value])[0]
    except ValueError as exc:
        raise UsageError(f"--layer: {exc}") from None
    return (layer, None) if isinstance(layer, int) else (None, layer)


def _check_choices(args: argparse.Namespace) -> None:
    """The enum flags, named in their errors."""
    for flag, cls, value in (("--mode", BlendMode, args.blend_mode), ("--tokens", TokenMode, args.tokens),
                             ("--normalization", Normalization, args.normalization),
                             ("--outlier-mode", OutlierMode, args.outlier_mode),
                             ("--fit-mode", FitMode, args.fit_mode),
                             ("--style-schedule", StyleSchedule, args.style_schedule),
                             ("--append-selection", AppendSelection, args.append_selection)):
        if value is not None:
            try:
                cls.parse(value, flag)
            except ValueError as exc:
                raise UsageError(str(exc)) from None


def _strength(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_values("strengths", [value])[0]
    except ValueError as exc:
        raise UsageError(f"--strength: {exc}".replace("strengths: ", "")) from None


def _make_folder(folder: Path) -> None:
    if not folder.exists():
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise CliError(f"cannot create {folder}: {exc.strerror or exc}") from None


def _generate(pipe: Any, request: StylizeRequest, progress: Progress) -> Any:
    try:
        with progress.steps("stylize") as on_step:
            return pipe(request, progress=on_step)
    except (KeyboardInterrupt, CliError):
        raise
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise CliError(f"generation failed: {one_line(exc)}") from exc


def _write_images(out: Path, images: list, record: dict[str, Any]) -> list[str]:
    """``OUT.png``, then ``OUT_1.png`` ... for further images; each PNG holds the record with its own index."""
    outputs = []
    for i, image in enumerate(images):
        path = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        record_i = dict(record, output=str(path), image_index=i)
        try:
            atomic_write_bytes(path, png_with_metadata(image, jsonable(record_i)))
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
        outputs.append(str(path))
    return outputs

