"""From slash-command options to a :class:`~engine.types.StylizeRequest`, and the words the bot uses for parameters.

Options resolve key by key through ``bot.store.resolve_params``: what the command gave, then the user's
``/defaults``, then the server preset named in the command, then the operator's settings (:func:`settings_defaults`).
The resolved dict (user-facing names: ``style_weight``, ``layer``, ``seed`` ...) is stored on the job, so a button
pressed after a restart rebuilds the same request (``StylizeRequest.from_record``).

Pure: no Discord, no I/O. Cogs import their choices and texts from here rather than from the engine.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from bot.store.defaults import PRESET_KEYS, USER_DEFAULT_KEYS, global_defaults, resolve_params
from engine.sweep.presets import PRESETS as SWEEP_PRESETS
from engine.sweep.axes import parse_values
from engine.types import (
    AppendSelection,
    BlendMode,
    FitMode,
    Normalization,
    OutlierDirection,
    OutlierMode,
    StyleSchedule,
    StylizeRequest,
    TokenMode,
    alpha_to_style_weight,
    parse_hidden_layer,
)

#: Output sizes offered by ``size``: about one megapixel, both sides multiples of 16 (plus a fast small square).
SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "16:9": (1360, 768),
    "9:16": (768, 1360),
    "1:1 small": (512, 512),
}

#: What each blend mode does, in plain words (one line for option labels, a few sentences for ``/blendmode info``).
#: Kept in step with the docstrings of ``engine.conditioning.blend``.
BLEND_MODES: dict[BlendMode, tuple[str, str]] = {
    BlendMode.POOL: (
        "default: averages the whole reference into the prompt",
        "Averages the whole reference, band by band, and mixes it into the prompt. Every part of the image counts; "
        "fine detail is averaged away, colours and overall look are kept. The default and the best all-rounder. "
        "Style weight sets the reference's share of every prompt token, the same for short and long prompts.",
    ),
    BlendMode.APPEND: (
        "adds the reference as extra tokens after the prompt",
        "Leaves your prompt untouched and adds summary tokens of the reference after it, like Midjourney's --sref: "
        "each token averages one rectangle of the image. Style weight sets how many are added (none near 0, up to "
        "64 at 1000), so the prompt's content is never overwritten and a low weight changes little.",
    ),
    BlendMode.LINEAR: (
        "mixes position by position (reads only a top-left strip)",
        "Mixes reference and prompt position by position. Only the first few positions of the reference are read "
        "(a strip of its top-left corner, about 1% of the image), so it transfers little. Kept as a baseline.",
    ),
    BlendMode.INTERPOLATE: (
        "stretches the reference to the prompt's length (samples a few spots)",
        "Stretches the reference sequence to the prompt's length by sampling it at a few evenly spaced spots, then "
        "mixes. Reads about two positions per prompt token, so much of the image is skipped.",
    ),
    BlendMode.ADAIN: (
        "re-styles each prompt token with reference statistics",
        "Keeps the direction of each prompt token and only borrows a shift and a scale from the averaged "
        "reference. The image model normalises every token, so at most one number per token reaches it: content "
        "is kept and almost no style transfers. Kept for comparison; not in /blendmode compare's default set.",
    ),
    BlendMode.ADAIN_PER_DIM: (
        "re-styles each feature with whole-image statistics: colour transfer",
        "Gives every feature of the prompt the reference's average and spread over the whole image. Colours "
        "transfer well; at high weights the subject can get distorted. The seed's img2img favourite.",
    ),
    BlendMode.STYLE_DELTA: (
        "adds reference minus a grey image (keep the weight low)",
        "Adds what makes the reference different from a plain grey image (only where the image acts: the rest of "
        "the difference is exactly zero). Strong: it can wipe out the prompt's content at style weight 200 or "
        "more, so keep it low.",
    ),
    BlendMode.REPLACE: (
        "uses the reference's whole sequence as the prompt (reconstructs the scene)",
        "Replaces the prompt with the reference's own sequence as the model reads it, the seed's 'alpha 1': at "
        "style weight 1000 the caption is the reference (it tends to redraw the reference's scene); lower weights "
        "shorten it and mix it back towards your prompt.",
    ),
}

#: How each mode combines several references (``image2``… / several codes), for ``/blendmode info``; kept in step
#: with ``engine.conditioning.multi``.
SEVERAL_REFERENCES: dict[BlendMode, str] = {
    BlendMode.POOL: "the weighted average of what each reference alone would mix in.",
    BlendMode.APPEND: "the same number of extra tokens in all, shared out by weight: each reference adds its own.",
    BlendMode.LINEAR: "the weighted average of each reference's mix.",
    BlendMode.INTERPOLATE: "the weighted average of each reference's mix.",
    BlendMode.ADAIN: "the weighted average of each reference's restyle (their statistics averaged).",
    BlendMode.ADAIN_PER_DIM: "the weighted average of each reference's restyle (their statistics averaged).",
    BlendMode.STYLE_DELTA: "the weighted sum of each reference's difference from grey.",
    BlendMode.REPLACE: "the weighted average of each reference's sequence, at the heaviest one's length.",
}


#: The style schedules and append selections in plain words (option labels), in step with
#: ``engine.conditioning.schedule`` and ``engine.conditioning.attention``.
STYLE_SCHEDULES: dict[StyleSchedule, str] = {
    StyleSchedule.CONSTANT: "default: the same style weight at every step",
    StyleSchedule.EARLY: "style on the first half of the steps only (layout and colours)",
    StyleSchedule.LATE: "style on the second half of the steps only (texture and detail)",
    StyleSchedule.RAMP: "style grows from none at the first step to full at the last",
    StyleSchedule.RAMP_DOWN: "style fades from full at the first step to none at the last",
}
APPEND_SELECTIONS: dict[AppendSelection, str] = {
    AppendSelection.POOL: "default: summaries of the whole reference",
    AppendSelection.ATTENTION: "the parts of the reference your prompt looks at most",
}


@dataclass(frozen=True)
class GenerationOptions:
    """What a command gave; ``None`` means "not given" (the user's defaults, then the preset, then the settings)."""

    prompt: str = ""
    style_weight: float | None = None
    blend_mode: str | None = None
    layer: int | None = None
    tokens: str | None = None
    seed: int | None = None
    steps: int | None = None
    size: str | None = None
    strength: float | None = None
    preset: str | None = None
    private: bool | None = None
    style: str | None = None  #: style codes (``ab12cd34``, ``ab12cd34::2 ef56ab78``), with or without attachments
    weights: str | None = None  #: relative weights of the references in order (``2,1``; ``bot.refset``)
    negative_style: str | None = None  #: the style code of a negative reference (CFG's negative)
    style_schedule: str | None = None
    append_selection: str | None = None

    def request_layer(self) -> dict[str, Any]:
        """The options as a ``resolve_params`` layer (parameter names of ``bot.store.defaults.PARAM_SPECS``)."""
        out: dict[str, Any] = {
            "style_weight": self.style_weight, "blend_mode": self.blend_mode, "layer": self.layer,
            "tokens": self.tokens, "seed": self.seed, "steps": self.steps, "private": self.private,
            "style_schedule": self.style_schedule, "append_selection": self.append_selection,
        }  # fmt: skip
        if self.size is not None:
            out["width"], out["height"] = size_of(self.size)
        return {k: v for k, v in out.items() if v is not None}


def size_of(name: str) -> tuple[int, int]:
    """``(width, height)`` of a size choice; ``ValueError`` naming ``size`` otherwise."""
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {name!r}") from None


def size_name(width: int, height: int) -> str:
    """``"3:2 (1248×832)"`` for a known size, ``"1000×800"`` otherwise."""
    for name, wh in SIZES.items():
        if wh == (width, height):
            return f"{name} ({width}×{height})"
    return f"{width}×{height}"


#: The settings ``/defaults reset`` offers (``size`` stands for width and height, ``style_weight`` for alpha too).
RESETTABLE = sorted(USER_DEFAULT_KEYS - {"alpha", "width", "height"} | {"size"})
RESET_KEYS = {"size": ["width", "height"], "style_weight": ["style_weight", "alpha"]}


def effective_settings(user: dict[str, Any], settings: Any) -> dict[str, Any]:
    """What a command without options would use for this user: their defaults over the operator's settings."""
    return resolve_params({}, user, None, settings_defaults(settings))


def settings_defaults(settings: Any) -> dict[str, Any]:
    """The bottom layer of resolution: the built-in defaults overridden by the operator's settings."""
    out = global_defaults()
    out.update(
        style_weight=alpha_to_style_weight(settings.alpha), alpha=settings.alpha,
        blend_mode=str(settings.blend_mode), layer=settings.hidden_layer, tokens=str(settings.tokens),
        normalization=str(settings.normalization), target_std=settings.target_std,
        outlier_mode=str(settings.outlier_mode), outlier_threshold=settings.outlier_threshold,
        append_tokens=settings.append_tokens, fit_mode=str(settings.fit_mode), steps=settings.steps,
        width=settings.width, height=settings.height, guidance_scale=settings.guidance_scale, shift=settings.shift,
        style_schedule=str(settings.style_schedule), append_selection=str(settings.append_selection),
    )  # fmt: skip
    return out


def fix_seed(resolved: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resolved`` whose ``seed`` is a number (``"random"`` draws one; seeds stay below 2**32)."""
    out = dict(resolved)
    if not isinstance(out.get("seed"), int):
        out["seed"] = secrets.randbelow(2**32)
    return out


def build_request(resolved: dict[str, Any], *, prompt: str, reference: Any, strength: float | None) -> StylizeRequest:
    """The request for resolved parameters (``seed`` must be a number: see :func:`fix_seed`)."""
    return StylizeRequest(
        prompt=prompt,
        reference=reference,
        alpha=float(resolved["alpha"]),
        blend_mode=BlendMode.parse(resolved["blend_mode"], "blend_mode"),
        hidden_layer=parse_hidden_layer(resolved["layer"]),
        tokens=TokenMode.parse(resolved["tokens"], "tokens"),
        normalization=Normalization.parse(resolved["normalization"], "normalization"),
        target_std=float(resolved["target_std"]),
        outlier_mode=OutlierMode.parse(resolved["outlier_mode"], "outlier_mode"),
        outlier_threshold=float(resolved["outlier_threshold"]),
        outlier_direction=OutlierDirection.parse(resolved.get("outlier_direction", "both"), "outlier_direction"),
        append_tokens=int(resolved["append_tokens"]),
        fit_mode=FitMode.parse(resolved["fit_mode"], "fit_mode"),
        seeds=(int(resolved["seed"]),),
        steps=int(resolved["steps"]),
        width=int(resolved["width"]),
        height=int(resolved["height"]),
        strength=strength,
        guidance_scale=float(resolved["guidance_scale"]),
        shift=float(resolved["shift"]),
        # .get: a job stored before these settings existed replays as it ran
        style_schedule=StyleSchedule.parse(resolved.get("style_schedule", "constant"), "style_schedule"),
        append_selection=AppendSelection.parse(resolved.get("append_selection", "pool"), "append_selection"),
    )


def defaults_from(resolved: dict[str, Any]) -> dict[str, Any]:
    """What "save as my defaults" stores from a job: its settings, not its seed or privacy."""
    keys = USER_DEFAULT_KEYS - {"seed", "private", "alpha"}
    return {k: resolved[k] for k in sorted(keys) if resolved.get(k) is not None}


def preset_from(resolved: dict[str, Any]) -> dict[str, Any]:
    """What "save as server preset" stores from a job: every preset setting except the seed."""
    keys = PRESET_KEYS - {"seed", "alpha"}
    return {k: resolved[k] for k in sorted(keys) if resolved.get(k) is not None}


def check_axis_values(key: str, text: str) -> str:
    """Validate a sweep value list (``"0.2,0.4,0.6"``, ranges ``0.2:0.8:0.2``, layer mixes ``-6+-8``); returns the
    text unchanged. ``ValueError`` naming the axis otherwise."""
    parse_values(key, text)
    return text


def sweep_presets() -> dict[str, str]:
    """Sweep preset names and one-line descriptions, in the engine's documented order."""
    return {name: preset.description for name, preset in SWEEP_PRESETS.items()}


def describe_layer(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " + ".join(f"{int(layer)}×{float(weight):g}" for layer, weight in value)
    return str(value)
