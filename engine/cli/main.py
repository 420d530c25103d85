"""``python -m engine``: make tiny models, stylize one image, or run a parameter sweep with a labelled grid.

Exit codes: 0 success; 1 a runtime failure (a model failed to load, a cell failed, an output could not be written);
2 a usage problem found before any model loads (a bad flag or value, an unknown preset, an invalid setting, a missing
model folder, a reference that is missing, unreadable, not an image or refused as hostile); 130 interrupted
(Ctrl-C). Every error is one line on stderr starting with ``error:``; ``--debug`` adds the traceback.

Settings precedence: flags > ``ZVL_*`` environment / ``.env`` > the TOML profile (``--config FILE --profile NAME``)
> defaults (see :mod:`engine.config`). In ``sweep``, a value given as a flag also wins over the preset's own
setting (``--sweep alpha --layer -6`` runs the alpha preset at layer -6); settings from the environment or a profile
do not (the preset is the more specific choice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from engine.media.images import ReferenceImageError, load_reference_path, png_with_metadata
from engine.limits import LIMITS
from engine.config import SettingsError
from engine.sweep.plan import PRESETS, SweepCell, SweepPlan, parse_values, plan_sweep
from engine.types import (
    BlendMode,
    FitMode,
    Normalization,
    OutlierDirection,
    OutlierMode,
    StylizeRequest,
    TokenMode,
    alpha_to_style_weight,
    style_weight_to_alpha,
)

PROG = "python -m engine"

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Default seed of the command line (the seed repo's run_comparison default).
DEFAULT_SEED = 42


class CliError(Exception):
    """An error the CLI reports as one line and an exit code."""

    code = EXIT_RUNTIME

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CliError):
    code = EXIT_USAGE


class Interrupted(CliError):
    code = EXIT_INTERRUPTED


# --------------------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------------------

#: Values that start with '-' but are values, not flags: -6, -0.5, -6+-8, -8:-2:2, -6:0.7+-8:0.3
_NEGATIVE_VALUE = re.compile(r"^-\d[\d.:+\-]*$|^-\.\d+$")


class _Parser(argparse.ArgumentParser):
    """Errors become a :class:`UsageError` (one line) instead of usage text + exit; layer mixes like ``-6+-8``
    are values."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        if hasattr(self, "_negative_number_matcher"):
            self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str):  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models and settings")
    g.add_argument("--config", dest="config_file", metavar="FILE", help="TOML file with named profiles (ZVL_CONFIG)")
    g.add_argument("--profile", metavar="NAME", help="profile (table) of --config to use (default: default)")
    g.add_argument("--model-path", dest="zimage_path", metavar="DIR", help="Z-Image-Turbo diffusers folder")
    g.add_argument("--vl-model-path", dest="vl_path", metavar="DIR", help="Qwen3-VL-4B-Instruct folder")
    g.add_argument("--device", help="DiT device: auto | cpu | cuda[:n]")
    g.add_argument("--vl-device", help="Qwen3-VL device: auto | cpu | cuda[:n]")
    g.add_argument("--text-device", help="Qwen3 text-encoder device: auto | cpu | cuda[:n]")
    g.add_argument("--dtype", help="auto | bfloat16 | float32 | float16")
    g.add_argument("--vl-max-image-tokens", type=int, metavar="N", help="cap on a reference's image tokens")
    g.add_argument("--vl-auto-unload", action="store_true", default=None, help="unload Qwen3-VL after extraction")
    g.add_argument("--data-dir", metavar="DIR", help="data folder (tiny demo models live here)")
    g.add_argument("--demo", action="store_true", default=None,
                   help="tiny random models built into the data folder (images are NOISE)")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (errors are still printed)")
    o.add_argument("--json", action="store_true", help="print the result record as JSON on stdout")
    o.add_argument("--debug", action="store_true", help="show library warnings and tracebacks")


def _add_common_generation_args(g) -> None:
    g.add_argument("--target-std", type=float, help="std the global normalisation scales VL states to (61.0)")
    g.add_argument("--outlier-threshold", type=float, help="std-ratio threshold of outlier masking (10)")
    g.add_argument("--outlier-direction", choices=[m.value for m in OutlierDirection],
                   help="which outliers masking looks for (both)")
    g.add_argument("--fit-mode", help="captions over 1504 positions: " + ", ".join(m.value for m in FitMode))
    g.add_argument("--vl-text", help="text given to Qwen3-VL with the image (default: the prompt)")
    g.add_argument("--text-layer", type=int, help="Qwen3 text-encoder layer (-2, as ZImagePipeline)")
    g.add_argument("--seed", type=int, help=f"seed (default {DEFAULT_SEED})")
    g.add_argument("--width", type=int, help="output width, a multiple of 16 (1024)")
    g.add_argument("--height", type=int, help="output height, a multiple of 16 (1024)")
    g.add_argument("--guidance-scale", type=float, help="CFG scale (0: off, as Turbo expects)")
    g.add_argument("--shift", type=float, help="scheduler shift (3.0, always passed explicitly)")


def build_parser() -> argparse.ArgumentParser:
    modes = ", ".join(m.value for m in BlendMode)
    parser = _Parser(prog=PROG, description="zvl-bot engine: zero-shot style-reference generation with Z-Image.",
                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    tiny = sub.add_parser("make-tiny", help="write tiny random Z-Image and Qwen3-VL folders (for tests and --demo)",
                          description="Write DIR/zimage and DIR/qwen3vl: tiny random models in the real layout.")
    tiny.add_argument("dir", metavar="DIR")
    tiny.add_argument("-q", "--quiet", action="store_true")
    tiny.add_argument("--json", action="store_true")
    tiny.add_argument("--debug", action="store_true")

    st = sub.add_parser("stylize", help="generate one image in the style of a reference",
                        description="Generate one image; every parameter is stored in the PNG (zvl chunk).",
                        epilog=EPILOG)
    st.add_argument("-i", "--image", required=True, metavar="REF", help="reference image")
    st.add_argument("-p", "--prompt", required=True, help="text prompt")
    st.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    g = st.add_argument_group("generation")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--alpha", "--vl-alpha", dest="alpha", type=float, help="reference strength 0..1 (0.3)")
    a.add_argument("--style-weight", type=float, help="Midjourney-like style weight 0..1000 (100 = alpha 0.3)")
    g.add_argument("--mode", dest="blend_mode", help=f"blend mode: {modes} (pool)")
    g.add_argument("--layer", "--vl-hidden-layer", dest="layer", metavar="LAYER",
                   help="Qwen3-VL hidden layer from the end (-6), or a mix like -6+-8 or -6:0.7+-8:0.3")
    g.add_argument("--tokens", help="VL positions kept: " + ", ".join(m.value for m in TokenMode) + " (full)")
    g.add_argument("--normalization", help=", ".join(m.value for m in Normalization) + " (global)")
    g.add_argument("--outlier-mode", help=", ".join(m.value for m in OutlierMode) + " (none)")
    g.add_argument("--append-tokens", type=int, help="pooled image tokens added by mode append (64)")
    g.add_argument("--steps", type=int, help="denoising steps (9)")
    g.add_argument("--strength", type=float, help="img2img from the reference with this strength (0, 1]")
    g.add_argument("--think", action="store_true", default=None, help="add an empty <think> block to the prompt")
    _add_common_generation_args(g)
    _add_model_args(st)

    sw = sub.add_parser("sweep", help="run a parameter sweep: one PNG per cell, metadata.json, comparison_grid.png",
                        description=SWEEP_DESCRIPTION, epilog=EPILOG)
    sw.add_argument("-i", "--image", required=True, metavar="REF", help="reference image")
    sw.add_argument("-p", "--prompt", required=True, action="append", dest="prompts", metavar="PROMPT",
                    help="text prompt; repeat for several (one subfolder each)")
    sw.add_argument("-o", "--output-dir", metavar="DIR", help="output folder (default ./sweep_<preset>_<time>)")
    sw.add_argument("-s", "--sweep", metavar="PRESET", help="preset: " + ", ".join(PRESETS))
    sw.add_argument("--max-cells", type=int, default=64, help="refuse sweeps with more cells (64)")
    sw.add_argument("--cell-size", type=int, default=256, help="grid thumbnail size in pixels (256)")
    sw.add_argument("--overwrite", action="store_true",
                    help="reuse a folder that holds an earlier sweep (its cell PNGs, metadata.json and grid are "
                         "deleted first)")
    g = sw.add_argument_group("axes (one value fixes the setting, several sweep it; they replace the preset's)")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--alphas", "--alpha", "--vl-alpha", dest="alphas", nargs="+", metavar="A",
                   help="alphas, e.g. 0.1 0.3 0.5 or a range 0.1:0.9:0.2")
    a.add_argument("--style-weights", "--style-weight", dest="style_weights", nargs="+", type=float, metavar="SW",
                   help="style weights 0..1000 (converted to alphas)")
    g.add_argument("--layers", "--layer", "--vl-hidden-layer", dest="layers", nargs="+", metavar="L",
                   help="VL layers, e.g. -2 -6 -8 or mixes -6+-8")
    g.add_argument("--modes", "--mode", "--blend-modes", dest="modes", nargs="+", metavar="M", help=modes)
    g.add_argument("--tokens", "--token-modes", dest="tokens", nargs="+", metavar="T",
                   help=", ".join(m.value for m in TokenMode))
    g.add_argument("--normalizations", "--normalization", "--normalization-modes", dest="normalizations",
                   nargs="+", metavar="N", help=", ".join(m.value for m in Normalization))
    g.add_argument("--outliers", "--outlier-mode", "--outlier-masking", dest="outliers", nargs="+", metavar="O",
                   help=", ".join(m.value for m in OutlierMode))
    g.add_argument("--append-tokens", dest="append_tokens", nargs="+", metavar="K", help="append-mode token counts")
    g.add_argument("--strengths", "--strength", dest="strengths", nargs="+", metavar="S",
                   help="img2img strengths (none = txt2img)")
    g.add_argument("--steps", dest="steps", nargs="+", metavar="N", help="denoising steps")
    g.add_argument("--thinks", "--think", "--think-modes", dest="thinks", nargs="*", metavar="BOOL",
                   help="think block off/on: false true (bare --think = on)")
    g.add_argument("--seeds", dest="seeds", nargs="+", metavar="SEED", help="several seeds as an axis")
    _add_common_generation_args(g)
    _add_model_args(sw)
    return parser


SWEEP_DESCRIPTION = """\
Run a sweep: the cross product of the preset's axes (or of the lists you give), plus a pure-text baseline
(alpha 0) per combination of the settings that matter without VL. Writes one PNG per cell (parameters inside),
metadata.json (rewritten atomically after every cell; "complete": true only when every cell succeeded) and
comparison_grid.png.

presets:
""" + "\n".join(f"  {p.name:<18} {p.description}" for p in PRESETS.values())

EPILOG = """\
exit codes: 0 ok; 1 runtime failure (model load, a failed cell, writing output); 2 usage (bad flag or value,
unknown preset, invalid setting, missing model folder, refused reference); 130 interrupted.
settings: flags > ZVL_* environment/.env > --config/--profile TOML > defaults.
"""

# --------------------------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------------------------


class Progress:
    """Single-line progress on stderr: rewritten in place on a terminal, one line per message otherwise
    (steps are only shown on a terminal). ``enabled=False`` prints nothing."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0
        self._last = 0.0

    def transient(self, text: str) -> None:
        """A line that the next one replaces (terminal only)."""
        if not (self.enabled and self.tty):
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        self._write_transient(text)

    def _write_transient(self, text: str) -> None:
        cols = 120
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns - 1
        except (OSError, ValueError, AttributeError):
            pass
        text = text[:cols] if cols > 10 else text
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def line(self, text: str) -> None:
        """A line that stays."""
        if not self.enabled:
            return
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def step_callback(self, prefix: str) -> Callable[..., None]:
        def cb(step: int, total: int, *_args: Any) -> None:
            width = 20
            filled = int(width * step / max(total, 1))
            self.transient(f"{prefix} [{'#' * filled}{'.' * (width - filled)}] step {step}/{total}")

        return cb


def _notice(text: str) -> None:
    """Loud notices (demo mode) go to stderr even with --quiet."""
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# settings, requests
# --------------------------------------------------------------------------------------------------------------

_SETTING_FLAGS = ("config_file", "profile", "zimage_path", "vl_path", "device", "vl_device", "text_device", "dtype",
                  "vl_max_image_tokens", "vl_auto_unload", "data_dir", "demo", "target_std", "outlier_threshold",
                  "fit_mode", "width", "height", "guidance_scale", "shift")


def _settings_from_args(args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    from engine.config import load_settings

    overrides = {k: getattr(args, k, None) for k in _SETTING_FLAGS}
    overrides.update(extra)
    return load_settings(overrides)


def _check_alpha_flag(value: float | None, flag: str) -> None:
    if value is not None and (math.isnan(value) or not 0.0 <= value <= 1.0):
        raise UsageError(f"{flag} must be between 0 and 1; got {value:g}")


def _base_request(settings: Any, args: argparse.Namespace, prompt: str, reference: Any) -> StylizeRequest:
    """The request the settings describe (flags already folded into ``settings``), plus the non-setting flags."""
    direction = args.outlier_direction or OutlierDirection.BOTH.value
    text_layer = args.text_layer if args.text_layer is not None else -2
    if text_layer > -1:
        raise UsageError(f"--text-layer counts from the end and must be -1 or lower; got {text_layer}")
    seed = DEFAULT_SEED if args.seed is None else args.seed
    if seed not in LIMITS["seed"]:
        raise UsageError(f"--seed must be {LIMITS['seed'].describe()}; got {seed}")
    return StylizeRequest(
        prompt=prompt,
        reference=reference,
        alpha=settings.alpha,
        blend_mode=settings.blend_mode,
        hidden_layer=settings.hidden_layer,
        tokens=settings.tokens,
        normalization=settings.normalization,
        target_std=settings.target_std,
        outlier_mode=settings.outlier_mode,
        outlier_threshold=settings.outlier_threshold,
        outlier_direction=OutlierDirection.parse(direction, "outlier_direction"),
        append_tokens=settings.append_tokens,
        fit_mode=settings.fit_mode,
        vl_text=args.vl_text,
        text_layer=text_layer,
        seeds=(seed,),
        steps=settings.steps,
        width=settings.width,
        height=settings.height,
        guidance_scale=settings.guidance_scale,
        shift=settings.shift,
    )


def _load_reference(path: str, settings: Any) -> Any:
    try:
        return load_reference_path(path, max_bytes=settings.max_upload_bytes,
                                   max_pixels=settings.max_reference_pixels)
    except ReferenceImageError as exc:
        hint = ""
        if "too large" in str(exc):
            hint = " (raise ZVL_MAX_UPLOAD_BYTES / ZVL_MAX_REFERENCE_PIXELS to allow it)"
        raise UsageError(f"{exc}{hint}") from None


def _reference_record(path: str, image: Any) -> dict[str, Any]:
    p = Path(path).expanduser()
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        digest = None
    return {"path": str(p.resolve()), "sha256": digest, "size": list(image.size)}


def _prepare_models(settings: Any, progress: Progress) -> Any:
    from engine.config import check_model_folders, resolve_demo

    if settings.demo:
        settings = resolve_demo(settings, notify=_notice)
    # the cheap checks first: check_model_folders imports torch and transformers (seconds)
    for name, env, path, what in (("zimage_path", "ZVL_ZIMAGE_PATH", settings.zimage_path, "Z-Image"),
                                  ("vl_path", "ZVL_VL_PATH", settings.vl_path, "Qwen3-VL")):
        if path is not None and not Path(path).is_dir():
            raise SettingsError(f"{name} ({env}): {what} folder {path} does not exist")
    check_model_folders(settings)  # SettingsError -> usage (2)
    if settings.vl_path is None:
        raise UsageError("vl_path (ZVL_VL_PATH) is not set: point --vl-model-path at a Qwen3-VL folder "
                         "(or use --demo)")
    return settings


def _quiet_libraries(debug: bool) -> None:
    if debug:
        return
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    try:  # progress bars of transformers itself (e.g. "Writing model shards"): the CLI draws its own
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def _make_pipeline(settings: Any) -> Any:
    """The pipeline object (cheap: weights load in :func:`_load_weights`)."""
    try:
        from engine.generation.pipeline import StylePipeline

        return StylePipeline.from_settings(settings)
    except (KeyboardInterrupt, CliError):
        raise
    except ValueError as exc:
        raise UsageError(_one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any failure is one line
        raise CliError(f"cannot set up the models: {_one_line(exc)}") from exc


_COMPONENT_NAMES = {"text": "Qwen3 text encoder", "dit": "Z-Image DiT + VAE", "vl": "Qwen3-VL"}


def _load_weights(pipe: Any, settings: Any, progress: Progress, components: Sequence[str]) -> float:
    """Load the weights now (they would load lazily on first use), one component at a time, with progress."""
    progress.line(f"loading models: Z-Image from {settings.zimage_path}, Qwen3-VL from {settings.vl_path}")
    t0 = time.perf_counter()
    load = getattr(pipe, "load", None)
    for i, comp in enumerate(components if load is not None else ()):
        progress.transient(f"loading models [{i + 1}/{len(components)}] {_COMPONENT_NAMES.get(comp, comp)} ...")
        try:
            load(comp)
        except (KeyboardInterrupt, CliError):
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure is one line
            raise CliError(f"cannot load the {_COMPONENT_NAMES.get(comp, comp)}: {_one_line(exc)}") from exc
    seconds = time.perf_counter() - t0
    where = getattr(pipe, "loaded_components", lambda: {})()
    on = ", ".join(f"{_COMPONENT_NAMES.get(k, k)} on {v}" for k, v in where.items())
    progress.line(f"models loaded in {seconds:.1f} s" + (f" ({on})" if on else ""))
    return seconds


def _needed_components(requests: Sequence[StylizeRequest]) -> list[str]:
    needs_vl = any(r.reference is not None and r.alpha > 0 for r in requests)
    return ["text", "dit"] + (["vl"] if needs_vl else [])


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    name = type(exc).__name__
    if isinstance(exc, (ValueError, SettingsError, CliError)) and msg:
        return msg
    return f"{name}: {msg}" if msg else name


def _jsonable(value: Any) -> Any:
    """Make a record JSON-safe: tensors to shapes, enums to values, NaN/inf to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"tensor_shape": list(value.shape)}
    if isinstance(value, Path):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, record: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(record), indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _models_record(settings: Any, pipe: Any = None) -> dict[str, Any]:
    rec = {"zimage_path": str(settings.zimage_path), "vl_path": str(settings.vl_path), "demo": bool(settings.demo),
           "device": settings.device, "vl_device": settings.vl_device, "text_device": settings.text_device,
           "dtype": settings.dtype}
    loaded = getattr(pipe, "loaded_components", None)
    if loaded is not None:
        rec["loaded_on"] = loaded()
    return rec


def _check_inputs(pipe: Any, request: StylizeRequest, what: str = "") -> None:
    check = getattr(pipe, "check_inputs", None)
    if check is None:
        return
    try:
        check(request)
    except ValueError as exc:
        raise UsageError(f"{what}{_one_line(exc)}") from None


# --------------------------------------------------------------------------------------------------------------
# make-tiny
# --------------------------------------------------------------------------------------------------------------


def cmd_make_tiny(args: argparse.Namespace) -> int:
    _quiet_libraries(args.debug)
    from engine.models.tiny import make_tiny

    progress = Progress(not args.quiet)
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


# --------------------------------------------------------------------------------------------------------------
# stylize
# --------------------------------------------------------------------------------------------------------------


def _parse_layer_flag(value: str | None) -> tuple[int | None, Any]:
    """``(int for settings, mix for the request)``; a mix is not a setting."""
    if value is None:
        return None, None
    try:
        layer = parse_values("layers", [value])[0]
    except ValueError as exc:
        raise UsageError(f"--layer: {exc}") from None
    return (layer, None) if isinstance(layer, int) else (None, layer)


def cmd_stylize(args: argparse.Namespace) -> int:
    progress = Progress(not args.quiet)
    _check_alpha_flag(args.alpha, "--alpha")
    alpha = args.alpha
    if args.style_weight is not None:
        try:
            alpha = style_weight_to_alpha(args.style_weight)
        except ValueError as exc:
            raise UsageError(f"--style-weight: {exc}") from None
    layer_int, layer_mix = _parse_layer_flag(args.layer)
    for flag, cls, value in (("--mode", BlendMode, args.blend_mode), ("--tokens", TokenMode, args.tokens),
                             ("--normalization", Normalization, args.normalization),
                             ("--outlier-mode", OutlierMode, args.outlier_mode),
                             ("--fit-mode", FitMode, args.fit_mode)):
        if value is not None:
            try:
                cls.parse(value, flag)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    if args.tokens is not None:
        args.tokens = {"text_only": "text", "image_only": "image"}.get(args.tokens.strip().lower(), args.tokens)
    out = Path(args.output).expanduser()
    if out.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file (parameters are stored in its metadata); got {out}")
    extra = dict(alpha=alpha, blend_mode=args.blend_mode, hidden_layer=layer_int, tokens=args.tokens,
                 normalization=args.normalization, outlier_mode=args.outlier_mode, append_tokens=args.append_tokens,
                 steps=args.steps)
    settings = _settings_from_args(args, extra)
    strength = None
    if args.strength is not None:
        try:
            strength = parse_values("strengths", [args.strength])[0]
        except ValueError as exc:
            raise UsageError(f"--strength: {exc}".replace("strengths: ", "")) from None
    reference = _load_reference(args.image, settings)
    request = _base_request(settings, args, args.prompt, reference).replace(strength=strength,
                                                                            think=bool(args.think))
    if layer_mix is not None:
        request = request.replace(hidden_layer=layer_mix)
    settings = _prepare_models(settings, progress)
    if not out.parent.exists():
        try:
            out.parent.mkdir(parents=True)
        except OSError as exc:
            raise CliError(f"cannot create {out.parent}: {exc.strerror or exc}") from None

    _quiet_libraries(args.debug)
    pipe = _make_pipeline(settings)
    _check_inputs(pipe, request)  # before any weights load
    load_s = _load_weights(pipe, settings, progress, _needed_components([request]))
    progress.line(f"generating {request.width}x{request.height}, {request.steps} steps, alpha={request.alpha:g} "
                  f"(style weight {alpha_to_style_weight(request.alpha):.4g}), mode={request.blend_mode} ...")
    try:
        result = pipe(request, progress=progress.step_callback("stylize"))
    except (KeyboardInterrupt, CliError):
        raise
    except ValueError as exc:
        raise UsageError(_one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise CliError(f"generation failed: {_one_line(exc)}") from exc
    record = result_record(result, reference=_reference_record(args.image, reference),
                           models=_models_record(settings, pipe), model_load_seconds=round(load_s, 3),
                           style_weight=args.style_weight)
    outputs = []
    for i, image in enumerate(result.images):
        path = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        record_i = dict(record, output=str(path), image_index=i)
        try:
            atomic_write_bytes(path, png_with_metadata(image, _jsonable(record_i)))
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
        outputs.append(str(path))
    record["outputs"] = outputs
    total = (result.timings or {}).get("total")
    progress.line(f"wrote {', '.join(outputs)}" + (f" ({total:.1f} s)" if total else ""))
    if args.json:
        print(json.dumps(_jsonable(record), indent=2, ensure_ascii=False))
    return EXIT_OK


def result_record(result: Any, **extra: Any) -> dict[str, Any]:
    """The JSON record of a :class:`~engine.types.StylizeResult` (what the PNG's ``zvl`` chunk and ``--json`` hold)."""
    rec = {
        "format": "zvl-result/1",
        "created_at": _now(),
        "params": dict(result.params),
        "seeds": list(result.seeds),
        "timings": dict(result.timings or {}),
        "vl": _vl_summary(result.vl),
        "stats": dict(result.stats or {}),
    }
    rec.update(extra)
    return _jsonable(rec)


# --------------------------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._+\-]+")
_CELL_FILE = re.compile(r"^\d{2,}_[A-Za-z0-9._+\-]*\.png$")


def cell_filename(index: int, label: str) -> str:
    """``03_alpha0.5_layer-8.png``: index first (unique, sorted like the grid), then the label made file-safe."""
    s = label.replace(" | ", "_").replace(": ", "_").replace("=", "").replace("%", "pct").replace(":", "-")
    s = _SAFE.sub("_", s).strip("._-")
    s = re.sub(r"_+", "_", s)[:100]
    return f"{index:02d}_{s or 'cell'}.png"


def prompt_dirname(index: int, prompt: str) -> str:
    slug = _SAFE.sub("_", prompt.lower()).strip("._-")[:40].strip("._-")
    return f"p{index + 1:02d}_{slug or 'prompt'}"


def _vl_summary(vl: Any) -> dict[str, Any] | None:
    """The extraction's metadata with its per-position ``kinds`` list (1000+ entries) replaced by counts."""
    if vl is None:
        return None
    meta = vl.metadata() if hasattr(vl, "metadata") else dict(vl)
    kinds = meta.pop("kinds", None)
    if kinds is not None:
        counts: dict[str, int] = {}
        for k in kinds:
            counts[str(k)] = counts.get(str(k), 0) + 1
        meta["position_kinds"] = counts
    return meta


def _fixed_summary(plan: SweepPlan) -> str:
    cells = [c for c in plan.cells if not c.baseline] or plan.cells
    r0 = cells[0].request

    def same(get):
        return all(get(c.request) == get(r0) for c in cells)

    parts = [f"sweep {plan.preset or 'custom'}"]
    checks = [
        ("alpha", lambda r: r.alpha, lambda r: f"alpha {r.alpha:g}"),
        ("mode", lambda r: r.blend_mode, lambda r: f"mode {r.blend_mode}"),
        ("layer", lambda r: r.hidden_layer, lambda r: "layer " + (str(r.hidden_layer) if isinstance(r.hidden_layer, int)
                                                               else "+".join(str(lw.layer) for lw in r.hidden_layer))),
        ("tokens", lambda r: r.tokens, lambda r: f"tokens {r.tokens}"),
        ("normalization", lambda r: r.normalization, lambda r: f"norm {r.normalization}"),
        ("outlier", lambda r: r.outlier_mode, lambda r: f"outlier {r.outlier_mode}"),
        ("strength", lambda r: r.strength, lambda r: "txt2img" if r.strength is None else f"img2img {r.strength:g}"),
        ("steps", lambda r: r.steps, lambda r: f"{r.steps} steps"),
        ("think", lambda r: r.think, lambda r: "think on" if r.think else ""),
        ("seed", lambda r: r.seeds, lambda r: f"seed {r.seeds[0]}"),
    ]
    for axis, get, fmt in checks:
        if axis not in plan.axes and same(get):
            text = fmt(r0)
            if text:
                parts.append(text)
    parts += [f"{r0.width}x{r0.height}", f"shift {r0.shift:g}", f"cfg {r0.guidance_scale:g}"]
    return " \u00b7 ".join(parts)


@dataclass
class SweepRun:
    """State of one prompt's sweep in its folder (what metadata.json holds)."""

    folder: Path
    plan: SweepPlan
    prompt: str
    header: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    thumbs: list[Any] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    status: str = "running"
    started: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        for i, cell in enumerate(self.plan.cells):
            self.cells.append({"index": i, "label": cell.label, "file": None, "status": "pending",
                               "baseline": cell.baseline, "axes": cell.axes, "params": cell.request.record(),
                               "error": None})
            self.thumbs.append(None)
            self.errors.append("not run")

    @property
    def ok(self) -> int:
        return sum(c["status"] == "ok" for c in self.cells)

    @property
    def failed(self) -> int:
        return sum(c["status"] == "failed" for c in self.cells)

    @property
    def complete(self) -> bool:
        return self.status == "complete" and self.ok == len(self.cells)

    def record(self) -> dict[str, Any]:
        return {
            "format": "zvl-sweep/1",
            "complete": self.complete,
            "status": self.status,
            "started_at": self.started,
            "updated_at": _now(),
            "prompt": self.prompt,
            **self.header,
            "cells_total": len(self.cells),
            "cells_ok": self.ok,
            "cells_failed": self.failed,
            "cells_pending": sum(c["status"] == "pending" for c in self.cells),
            "cells": self.cells,
        }

    def save(self) -> None:
        atomic_write_json(self.folder / "metadata.json", self.record())


def run_sweep(pipe: Any, plan: SweepPlan, folder: Path, *, prompt: str, reference: Any, header: dict[str, Any],
              progress: Progress, vl_cache: dict, text_cache: dict, cell_size: int = 256,
              counter: tuple[int, int] = (0, 0)) -> SweepRun:
    """Run every cell of ``plan`` into ``folder``; returns the run (its ``status`` says how it ended).

    ``pipe`` needs ``encode_reference``, ``encode_prompt`` and ``generate`` (the :class:`StylePipeline` API).
    Extractions are reused through ``vl_cache`` (keyed by ``StylizeRequest.vl_identity``), prompt embeddings through
    ``text_cache`` (``StylizeRequest.text_identity``). metadata.json is rewritten atomically before the first cell and after every cell. A failing
    cell is recorded and the sweep goes on; Ctrl-C stops it with ``status: interrupted``. The grid is written at the
    end in every case (marked INCOMPLETE, with the missing cells drawn as such, unless every cell succeeded).
    """
    folder.mkdir(parents=True, exist_ok=True)
    run = SweepRun(folder=folder, plan=plan, prompt=prompt, header=header)
    run.header = dict(header, vl_extractions=0, text_encodings=0, grid=None)
    run.save()
    done_before, grand_total = counter
    grand_total = grand_total or len(plan.cells)
    try:
        for i, cell in enumerate(plan.cells):
            n = done_before + i + 1
            prefix = f"[{n}/{grand_total}] {cell.label}"
            progress.transient(prefix)
            entry = run.cells[i]
            t0 = time.perf_counter()
            try:
                image, result, reused = _run_cell(pipe, cell, vl_cache, text_cache, run,
                                                  progress.step_callback(prefix))
            except KeyboardInterrupt:
                entry["status"] = "pending"
                entry["error"] = "interrupted"
                raise
            except Exception as exc:  # noqa: BLE001 - a failed cell is recorded; the sweep goes on
                entry.update(status="failed", error=_one_line(exc), seconds=round(time.perf_counter() - t0, 3))
                run.errors[i] = f"failed: {_one_line(exc)}"
                run.save()
                progress.line(f"{prefix}: FAILED: {_one_line(exc)}")
                continue
            name = cell_filename(i, cell.label)
            rec = result_record(result, label=cell.label, axes=cell.axes, baseline=cell.baseline,
                                sweep=plan.preset, reference=header.get("reference"))
            atomic_write_bytes(folder / name, png_with_metadata(image, rec))
            entry.update(status="ok", file=name, error=None, seconds=round(time.perf_counter() - t0, 3),
                         params=rec["params"], timings=rec["timings"], stats=rec["stats"],
                         vl=rec["vl"], vl_reused=reused,
                         masked_dimensions=(result.vl or {}).get("masked_dimensions", []))
            from PIL import ImageOps

            run.thumbs[i] = ImageOps.contain(image.convert("RGB"), (cell_size, cell_size))
            run.errors[i] = None
            run.save()
            progress.line(f"{prefix}: ok ({entry['seconds']:.1f} s){' [VL reused]' if reused else ''}")
    except KeyboardInterrupt:
        run.status = "interrupted"
        _finish(run, reference, cell_size)
        raise
    run.status = "complete" if run.failed == 0 else "failed"
    _finish(run, reference, cell_size)
    return run


def _run_cell(pipe: Any, cell: SweepCell, vl_cache: dict, text_cache: dict, run: SweepRun,
              step_cb: Callable) -> tuple[Any, Any, bool]:
    request = cell.request
    vl = None
    reused = False
    if request.reference is not None and request.alpha > 0:
        key = request.vl_identity()
        if key in vl_cache:
            vl, reused = vl_cache[key], True
        else:
            vl = pipe.encode_reference(request)
            vl_cache[key] = vl
            run.header["vl_extractions"] += 1
    tkey = request.text_identity()
    if tkey not in text_cache:
        text_cache[tkey] = pipe.encode_prompt(request)
        run.header["text_encodings"] += 1
    result = pipe.generate(request, vl, text_cache[tkey], progress=step_cb)
    if not result.images:
        raise RuntimeError("the pipeline returned no image")
    return result.images[0], result, reused


def _finish(run: SweepRun, reference: Any, cell_size: int) -> None:
    """Write the grid (marked INCOMPLETE when it is) and the final metadata."""
    from engine.media.grid import make_sweep_grid

    title = f"Prompt: {run.prompt}"
    if not run.complete:
        title = f"INCOMPLETE ({run.status}: {run.ok} of {len(run.cells)} cells) - {title}"
    try:
        grid = make_sweep_grid(run.plan, run.thumbs, reference=reference, errors=run.errors, title=title,
                               subtitle=_fixed_summary(run.plan), cell_size=cell_size)
        buf = __import__("io").BytesIO()
        grid.save(buf, format="PNG", optimize=False)
        atomic_write_bytes(run.folder / "comparison_grid.png", buf.getvalue())
        run.header["grid"] = "comparison_grid.png"
        run.header["grid_size"] = list(grid.size)
    except Exception as exc:  # noqa: BLE001 - a grid failure must not hide the cells' results
        run.header["grid"] = None
        run.header["grid_error"] = _one_line(exc)
    run.header["finished_at"] = _now()
    run.save()


def cmd_sweep(args: argparse.Namespace) -> int:
    progress = Progress(not args.quiet)
    if args.cell_size < 32 or args.cell_size > 1024:
        raise UsageError(f"--cell-size must be between 32 and 1024; got {args.cell_size}")
    if args.max_cells < 1:
        raise UsageError(f"--max-cells must be at least 1; got {args.max_cells}")
    prompts = [p for p in args.prompts]
    if any(not p.strip() for p in prompts):
        raise UsageError("--prompt must not be empty")
    overrides: dict[str, Any] = {
        "alphas": args.alphas, "layers": args.layers, "modes": args.modes, "tokens": args.tokens,
        "normalizations": args.normalizations, "outliers": args.outliers, "append_tokens": args.append_tokens,
        "strengths": args.strengths, "steps": args.steps, "seeds": args.seeds,
        "thinks": (args.thinks or ["true"]) if args.thinks is not None else None,
    }
    if args.style_weights is not None:
        try:
            overrides["alphas"] = [style_weight_to_alpha(sw) for sw in args.style_weights]
        except ValueError as exc:
            raise UsageError(f"--style-weights: {exc}") from None
    settings = _settings_from_args(args, {})
    reference = _load_reference(args.image, settings)
    plans: list[tuple[str, SweepPlan]] = []
    for prompt in prompts:
        base = _base_request(settings, args, prompt, reference)
        try:
            plans.append((prompt, plan_sweep(base, args.sweep, overrides, max_cells=args.max_cells)))
        except ValueError as exc:
            raise UsageError(_one_line(exc)) from None
    preset = plans[0][1].preset or "custom"
    root = Path(args.output_dir or f"sweep_{preset}_{datetime.now().strftime('%Y%m%d_%H%M%S')}").expanduser()
    folders = [root] if len(plans) == 1 else [root / prompt_dirname(i, p) for i, (p, _) in enumerate(plans)]
    for folder in folders:
        if (folder / "metadata.json").exists() and not args.overwrite:
            raise UsageError(f"{folder} already holds a sweep (metadata.json); choose another --output-dir or "
                             "pass --overwrite")
    if root.exists() and not root.is_dir():
        raise UsageError(f"--output-dir {root} exists and is not a folder")
    settings = _prepare_models(settings, progress)
    total_cells = sum(len(plan.cells) for _, plan in plans)
    _quiet_libraries(args.debug)
    pipe = _make_pipeline(settings)
    for prompt, plan in plans:  # every cell is checked before any folder is made or any weights load
        for cell in plan.cells:
            _check_inputs(pipe, cell.request, f"cell '{cell.label}': ")
    progress.line(f"sweep {preset}: {len(plans)} prompt(s), {total_cells} cells "
                  f"({sum(len(plan.baselines) for _, plan in plans)} baseline) -> {root}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            # --overwrite: never leave an earlier sweep's record, grid or cells next to the new ones
            stale = [folder / "metadata.json", folder / "comparison_grid.png", root / "prompts_summary.json"]
            stale += [f for f in folder.glob("*.png") if _CELL_FILE.match(f.name)]
            for path in stale:
                if path.is_file():
                    path.unlink()
    except OSError as exc:
        raise CliError(f"cannot create {root}: {exc.strerror or exc}") from None
    load_s = _load_weights(pipe, settings, progress,
                           _needed_components([c.request for _, plan in plans for c in plan.cells]))

    ref_record = _reference_record(args.image, reference)
    vl_cache: dict = {}
    text_cache: dict = {}
    runs: list[SweepRun] = []
    summary_path = root / "prompts_summary.json"
    done = 0

    def write_summary(status: str) -> None:
        if len(plans) == 1:
            return
        entries = []
        for i, (prompt, plan) in enumerate(plans):
            run = runs[i] if i < len(runs) else None
            entries.append({"index": i, "prompt": prompt, "dir": folders[i].name,
                            "status": run.status if run else "pending", "complete": bool(run and run.complete),
                            "cells_total": len(plan.cells), "cells_ok": run.ok if run else 0,
                            "cells_failed": run.failed if run else 0})
        atomic_write_json(summary_path, {"format": "zvl-sweep-prompts/1", "status": status,
                                         "complete": status == "complete" and all(e["complete"] for e in entries),
                                         "preset": plans[0][1].preset, "reference": ref_record,
                                         "updated_at": _now(), "prompts": entries})

    try:
        write_summary("running")
        for (prompt, plan), folder in zip(plans, folders):
            header = {"preset": plan.preset, "preset_note": plan.note, "axes": plan.axes,
                      "overrides": {k: v for k, v in overrides.items() if v is not None},
                      "plan": plan.record(), "reference": ref_record, "models": _models_record(settings, pipe),
                      "model_load_seconds": round(load_s, 3), "command": [PROG, *sys.argv[1:]]}
            try:
                run = run_sweep(pipe, plan, folder, prompt=prompt, reference=reference, header=header,
                                progress=progress, vl_cache=vl_cache, text_cache=text_cache,
                                cell_size=args.cell_size, counter=(done, total_cells))
            except OSError as exc:
                raise CliError(f"cannot write into {folder}: {exc.strerror or exc}") from None
            runs.append(run)
            done += len(plan.cells)
            progress.line(f"{folder}: {run.ok}/{len(plan.cells)} cells ok, {run.header.get('vl_extractions', 0)} VL "
                          f"extraction(s); grid {run.header.get('grid') or 'not written'}")
    except KeyboardInterrupt:
        write_summary("interrupted")
        raise Interrupted(f"interrupted: the sweep in {root} is incomplete; finished cells are kept and "
                          "metadata.json says complete: false") from None
    failed = sum(r.failed for r in runs)
    write_summary("complete" if failed == 0 else "failed")
    if args.json:
        out = runs[0].record() if len(runs) == 1 else {"prompts": [r.record() for r in runs]}
        print(json.dumps(_jsonable(out), indent=2, ensure_ascii=False))
    if failed:
        where = "metadata.json" if len(runs) == 1 else "the metadata.json files"
        raise CliError(f"{failed} of {total_cells} cells failed; the sweep in {root} is incomplete (see {where})")
    progress.line(f"done: {root}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------

COMMANDS = {"make-tiny": cmd_make_tiny, "stylize": cmd_stylize, "sweep": cmd_sweep}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code. Never lets a traceback out (unless ``--debug``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return COMMANDS[args.command](args)
    except Interrupted as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        if debug and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        _error(str(exc))
        return exc.code
    except SettingsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if debug:
            traceback.print_exc()
        _error(f"unexpected {_one_line(exc)} (run with --debug for the traceback)")
        return EXIT_RUNTIME


def _error(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"error: {text}", file=sys.stderr, flush=True)
