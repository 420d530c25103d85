"""What the commands share: settings from flags, the base request, the reference, and model set-up with progress.

Settings precedence: flags > ``ZVL_*`` environment / ``.env`` > the TOML profile (``--config FILE --profile NAME``)
> defaults (see :mod:`engine.config`).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.cli._errors import CliError, UsageError, one_line
from engine.cli._output import Progress, notice
from engine.config import SettingsError, load_settings
from engine.limits import LIMITS
from engine.media.images import ReferenceImageError, load_reference_path
from engine.models.folders import check_model_folders
from engine.models.tiny import resolve_demo
from engine.types import OutlierDirection, StylizeRequest

__all__ = ["DEFAULT_SEED", "base_request", "check_alpha_flag", "check_inputs", "load_reference", "load_weights",
           "make_pipeline", "models_record", "needed_components", "prepare_models", "quiet_libraries",
           "reference_record", "settings_from_args"]

#: Default seed of the command line (the seed repo's run_comparison default).
DEFAULT_SEED = 42

#: The flags that are settings (folded into :func:`engine.config.load_settings` as overrides).
_SETTING_FLAGS = ("config_file", "profile", "zimage_path", "vl_path", "device", "vl_device", "text_device", "dtype",
                  "vl_max_image_tokens", "vl_auto_unload", "data_dir", "demo", "target_std", "outlier_threshold",
                  "fit_mode", "width", "height", "guidance_scale", "shift", "style_schedule", "append_selection")

_COMPONENT_NAMES = {"text": "Qwen3 text encoder", "dit": "Z-Image DiT + VAE", "vl": "Qwen3-VL"}


def settings_from_args(args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    """The settings, with the setting flags (and ``extra``) given on the command line on top."""
    overrides = {k: getattr(args, k, None) for k in _SETTING_FLAGS}
    overrides.update(extra)
    return load_settings(overrides)


def check_alpha_flag(value: float | None, flag: str) -> None:
    """Refuse an alpha outside 0..1 (or NaN) with the flag's name."""
    if value is not None and (math.isnan(value) or not 0.0 <= value <= 1.0):
        raise UsageError(f"{flag} must be between 0 and 1; got {value:g}")


def base_request(settings: Any, args: argparse.Namespace, prompt: str, reference: Any) -> StylizeRequest:
    """The request the settings describe (flags already folded into ``settings``), plus the non-setting flags."""
    direction = args.outlier_direction or OutlierDirection.BOTH.value
    text_layer = args.text_layer if args.text_layer is not None else -2
    if text_layer > -1:
        raise UsageError(f"--text-layer counts from the end and must be -1 or lower; got {text_layer}")
    seed = DEFAULT_SEED if args.seed is None else args.seed
    if seed not in LIMITS["seed"]:
        raise UsageError(f"--seed must be {LIMITS['seed'].describe()}; got {seed}")
    return StylizeRequest(
        prompt=prompt, reference=reference, alpha=settings.alpha, blend_mode=settings.blend_mode,
        hidden_layer=settings.hidden_layer, tokens=settings.tokens, normalization=settings.normalization,
        target_std=settings.target_std, outlier_mode=settings.outlier_mode,
        outlier_threshold=settings.outlier_threshold,
        outlier_direction=OutlierDirection.parse(direction, "outlier_direction"),
        append_tokens=settings.append_tokens, fit_mode=settings.fit_mode, vl_text=args.vl_text,
        text_layer=text_layer, seeds=(seed,), steps=settings.steps, width=settings.width, height=settings.height,
        guidance_scale=settings.guidance_scale, shift=settings.shift, style_schedule=settings.style_schedule,
        append_selection=settings.append_selection,
    )


#: Largest local reference file read. Discord's upload limit (the bot's ``max_upload_bytes``) does not apply to a
#: file on this machine; the decoded-pixel limit (``max_reference_pixels``) still guards against bombs.
LOCAL_REFERENCE_MAX_BYTES = 1 << 30


def load_reference(path: str, settings: Any) -> Any:
    """The sanitised reference from a file; a refusal is a usage error (with a hint when it is too large)."""
    try:
        return load_reference_path(path, max_bytes=LOCAL_REFERENCE_MAX_BYTES,
                                   max_pixels=settings.max_reference_pixels)
    except ReferenceImageError as exc:
        hint = ""
        if "too large" in str(exc):
            hint = " (raise ZVL_MAX_REFERENCE_PIXELS to allow it)"
        raise UsageError(f"{exc}{hint}") from None


def reference_record(path: str, image: Any) -> dict[str, Any]:
    """Where the reference came from: resolved path, SHA-256 of the file, pixel size."""
    p = Path(path).expanduser()
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        digest = None
    return {"path": str(p.resolve()), "sha256": digest, "size": list(image.size)}


def prepare_models(settings: Any) -> Any:
    """Resolve ``--demo`` and check the model folders (cheap checks first); returns the settings to use."""
    if settings.demo:
        settings = resolve_demo(settings, notify=notice)
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


def quiet_libraries(debug: bool) -> None:
    """Silence library warnings, logs and progress bars (not with ``--debug``)."""
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


def make_pipeline(settings: Any) -> Any:
    """The pipeline object (cheap: weights load in :func:`load_weights`)."""
    try:
        from engine.generation.pipeline import StylePipeline  # imports torch: only once a command gets this far

        return StylePipeline.from_settings(settings)
    except (KeyboardInterrupt, CliError):
        raise
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any failure is one line
        raise CliError(f"cannot set up the models: {one_line(exc)}") from exc


def load_weights(pipe: Any, settings: Any, progress: Progress, components: Sequence[str]) -> float:
    """Load the weights now (they would load lazily on first use), one component at a time, with progress."""
    progress.line(f"loading models: Z-Image from {settings.zimage_path}, Qwen3-VL from {settings.vl_path}")
    t0 = time.perf_counter()
    load = getattr(pipe, "load", None)
    todo = list(components) if load is not None else []
    with progress.bar("loading models", total=len(todo), unit="model") as bar:
        for comp in todo:
            bar.set_postfix_str(_COMPONENT_NAMES.get(comp, comp))
            try:
                load(comp)
            except (KeyboardInterrupt, CliError):
                raise
            except Exception as exc:  # noqa: BLE001 - any load failure is one line
                raise CliError(f"cannot load the {_COMPONENT_NAMES.get(comp, comp)}: {one_line(exc)}") from exc
            bar.update(1)
    seconds = time.perf_counter() - t0
    where = getattr(pipe, "loaded_components", lambda: {})()
    on = ", ".join(f"{_COMPONENT_NAMES.get(k, k)} on {v}" for k, v in where.items())
    progress.line(f"models loaded in {seconds:.1f} s" + (f" ({on})" if on else ""))
    return seconds


def needed_components(requests: Sequence[StylizeRequest]) -> list[str]:
    """The components the requests use: text and DiT always, Qwen3-VL when one blends a reference."""
    needs_vl = any((r.reference is not None or r.negative_reference is not None) and r.alpha > 0 for r in requests)
    return ["text", "dit"] + (["vl"] if needs_vl else [])


def models_record(settings: Any, pipe: Any = None) -> dict[str, Any]:
    """Which models ran, and where (the ``models`` entry of every record)."""
    rec = {"zimage_path": str(settings.zimage_path), "vl_path": str(settings.vl_path), "demo": bool(settings.demo),
           "device": settings.device, "vl_device": settings.vl_device, "text_device": settings.text_device,
           "dtype": settings.dtype}
    loaded = getattr(pipe, "loaded_components", None)
    if loaded is not None:
        rec["loaded_on"] = loaded()
    return rec


def check_inputs(pipe: Any, request: StylizeRequest, what: str = "") -> None:
    """The pipeline's own checks, before any weights load; a refusal is a usage error prefixed with ``what``."""
    check = getattr(pipe, "check_inputs", None)
    if check is None:
        return
    try:
        check(request)
    except ValueError as exc:
        raise UsageError(f"{what}{one_line(exc)}") from None
