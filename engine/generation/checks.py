"""The one validation of a request: every bound and combination, with a ``ValueError`` naming the parameter.

:func:`check_request` is what ``StylePipeline.check_inputs`` runs; nothing after it re-validates (inner functions
assert shapes at most). The bounds themselves live in one table, :data:`engine.limits.LIMITS`.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from engine.conditioning.text import check_layer
from engine.conditioning.tokens import parse_layers
from engine.limits import LIMITS
from engine.media.images import check_reference_shape
from engine.multiref import check_references
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
)

__all__ = ["check_guidance", "check_request", "check_seeds", "check_shift", "check_size", "check_steps",
           "check_strength"]


def check_size(width: Any, height: Any) -> tuple[int, int]:
    """``width``/``height`` within their ``engine.limits`` bounds (multiples of 16, the DiT's patch grid)."""
    return LIMITS["width"].check(width), LIMITS["height"].check(height)


def check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, (int,)) and not isinstance(seeds, bool):
        seeds = [seeds]
    try:
        values = list(seeds)
    except TypeError:
        raise ValueError(f"seeds must be a list of integers; got {seeds!r}") from None
    if not values:
        raise ValueError("seeds must hold at least one seed (one image per seed); got none")
    return [LIMITS["seed"].check(s, "seeds") for s in values]


def check_steps(steps: Any) -> int:
    return LIMITS["steps"].check(steps)  # type: ignore[no-any-return]


def check_strength(strength: Any) -> float:
    return LIMITS["strength"].check(strength)  # type: ignore[no-any-return]


def check_guidance(guidance_scale: Any) -> float:
    """0 = no CFG, Turbo's setting."""
    return LIMITS["guidance_scale"].check(guidance_scale)  # type: ignore[no-any-return]


def check_shift(shift: Any) -> float:
    """Z-Image-Turbo uses 3.0."""
    return LIMITS["shift"].check(shift)  # type: ignore[no-any-return]


def check_request(request: Any, *, text_layers: int, vl_layers: int | None) -> None:
    """Raise ``ValueError`` naming the parameter for every problem in ``request``. ``text_layers``: the text
    encoder's layer count; ``vl_layers``: Qwen3-VL's, or ``None`` when there is no VL model."""
    if not isinstance(request, StylizeRequest):
        raise ValueError(f"request must be a StylizeRequest; got {type(request).__name__}")
    _check_texts(request)
    _check_conditioning(request, text_layers)
    _check_generation(request)
    _check_reference_needs(request, vl_layers)


def _check_texts(r: StylizeRequest) -> None:
    if not isinstance(r.prompt, str):
        raise ValueError(f"prompt must be a string; got {type(r.prompt).__name__}")
    if r.reference is not None:
        _check_image(r.reference, "reference")
    check_references(r, _check_image)
    if not r.prompt.strip() and r.reference is None:
        raise ValueError("prompt must not be empty when there is no reference image")
    if r.vl_text is not None and not isinstance(r.vl_text, str):
        raise ValueError(f"vl_text must be a string or None; got {type(r.vl_text).__name__}")


def _check_image(image: Any, name: str) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{name} must be a PIL image or None; got {type(image).__name__}")
    check_reference_shape(*image.size)  # before Qwen3-VL's processor refuses it, models loaded


def _check_conditioning(r: StylizeRequest, text_layers: int) -> None:
    LIMITS["alpha"].check(r.alpha)
    BlendMode.parse(r.blend_mode, "blend_mode")
    TokenMode.parse(r.tokens, "tokens")
    Normalization.parse(r.normalization, "normalization")
    OutlierMode.parse(r.outlier_mode, "outlier_mode")
    OutlierDirection.parse(r.outlier_direction, "outlier_direction")
    FitMode.parse(r.fit_mode, "fit_mode")
    StyleSchedule.parse(r.style_schedule, "style_schedule")
    AppendSelection.parse(r.append_selection, "append_selection")
    for name in ("target_std", "outlier_threshold", "append_tokens"):
        LIMITS[name].check(getattr(r, name))
    check_layer(r.text_layer, text_layers, "text_layer")
    if not isinstance(r.think, bool):
        raise ValueError(f"think must be true or false; got {r.think!r}")


def _check_generation(r: StylizeRequest) -> None:
    check_seeds(r.seeds)
    check_steps(r.steps)
    check_size(r.width, r.height)
    check_guidance(r.guidance_scale)
    check_shift(r.shift)
    if r.strength is not None:
        if r.reference is None:
            raise ValueError("strength needs a reference image (img2img starts from the reference); "
                             "got strength without a reference")
        check_strength(r.strength)


def _check_reference_needs(r: StylizeRequest, vl_layers: int | None) -> None:
    mode, alpha = BlendMode.parse(r.blend_mode, "blend_mode"), float(r.alpha)
    if mode in (BlendMode.STYLE_DELTA, BlendMode.APPEND) and r.reference is None:
        raise ValueError(f"blend_mode {mode.value} needs a reference image")
    if mode is BlendMode.APPEND and TokenMode.parse(r.tokens, "tokens") is TokenMode.TEXT \
            and r.reference is not None and alpha > 0:
        raise ValueError("tokens text keeps no image rows, which blend_mode append needs; use full, image or "
                         "image_no_markers")
    attending = r.vl_text if r.vl_text is not None else r.prompt
    if mode is BlendMode.APPEND and AppendSelection.parse(r.append_selection, "append_selection") is \
            AppendSelection.ATTENTION and not attending.strip():
        raise ValueError("append_selection attention ranks the image rows by the prompt's attention and needs a "
                         "prompt (or vl_text); use append_selection pool without one")
    if r.reference is not None and alpha > 0:
        if vl_layers is None:
            raise ValueError("reference images need a Qwen3-VL model, and vl_path is not set")
        parse_layers(r.hidden_layer, vl_layers, "hidden_layer")
    elif not isinstance(r.hidden_layer, (int, tuple, list)) or isinstance(r.hidden_layer, bool):
        raise ValueError(f"hidden_layer must be a negative layer index or a list of layer weights; got "
                         f"{r.hidden_layer!r}")
