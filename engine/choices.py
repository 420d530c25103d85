"""The engine's choice enums: every parameter that takes one of a few named values (blend mode, token mode,
normalisation, ...). A leaf module; :mod:`engine.types` re-exports every name, where callers import them."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = ["Choice", "TokenMode", "Normalization", "OutlierMode", "OutlierDirection", "BlendMode", "FitMode", "StyleSchedule", "AppendSelection", "PositionKind"]


class Choice(str, Enum):
    """A string enum whose ``parse`` names the parameter and the allowed values on a bad value."""

    @classmethod
    def parse(cls, value: Any, name: str) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None

    def __str__(self) -> str:  # f"{mode}" prints "pool", not "BlendMode.POOL"
        return self.value


class TokenMode(Choice):
    """Which positions of the Qwen3-VL sequence are kept (one enum: the seed's three booleans could conflict)."""

    FULL = "full"  #: every position: chat markers, image tokens, prompt text
    TEXT = "text"  #: everything except the vision span (chat prefix, prompt text, suffix)
    IMAGE = "image"  #: the vision span with its <|vision_start|>/<|vision_end|> markers
    IMAGE_NO_MARKERS = "image_no_markers"  #: the image tokens alone


class Normalization(Choice):
    """How VL hidden states are rescaled towards the statistics of the Qwen3 text encoder."""

    #: (default) each row to unit RMS at extraction; at the blend, each VL row the DiT reads is scaled to the median
    #: RMS of the prompt's content rows, so alpha is the VL share of every row whatever the prompt length, image
    #: budget and token mode (the DiT RMS-normalises caption rows: only directions and relative scales matter)
    ROW_RMS = "row_rms"
    GLOBAL = "global"  #: the seed's: one multiplicative factor so the overall std equals ``target_std``
    PER_DIM = "per_dim"  #: z-score each dimension, clip at 3 sigma, map onto reference per-dimension mean/std
    HYBRID = "hybrid"  #: the average of ``global`` and ``per_dim``
    NONE = "none"  #: raw hidden states (same as ``scale_to_text=False``)


class OutlierMode(Choice):
    """What happens to dimensions whose std ratio to the reference leaves the ``[1/t, t]`` band."""

    NONE = "none"
    ZERO = "zero"  #: set the column to 0
    MEAN = "mean"  #: set the column to the reference's content mean (what a text row holds there)
    CLAMP = "clamp"  #: bound each value to the reference band (mean +/- t * ref_std)
    SCALE = "scale"  #: rescale the whole column so its std sits on the band's edge


class OutlierDirection(Choice):
    BOTH = "both"
    HIGH = "high"  #: over-dispersed only (std ratio > t): what the seed's code checked
    LOW = "low"  #: under-dispersed only (std ratio < 1/t): what the seed's documented outliers were


class BlendMode(Choice):
    """How the VL sequence is mixed into the text embedding. See ``engine.conditioning.blend`` for each formula."""
    LINEAR = "linear"
    INTERPOLATE = "interpolate"
    ADAIN = "adain"
    ADAIN_PER_DIM = "adain_per_dim"
    STYLE_DELTA = "style_delta"
    POOL = "pool"
    APPEND = "append"
    REPLACE = "replace"


class FitMode(Choice):
    """How a caption longer than the DiT's limit (1504 positions) is brought under it."""
    TRUNCATE = "truncate"
    INTERPOLATE = "interpolate"
    POOL = "pool"
    ATTENTION_POOL = "attention_pool"


class StyleSchedule(Choice):
    """The reference's share over the denoising steps (formulas: ``engine.conditioning.schedule``)."""
    CONSTANT = "constant"  #: alpha at every step (the one-caption path)
    EARLY = "early"  #: alpha on the first half of the steps (composition), none after
    LATE = "late"  #: none on the first half, alpha after (texture and detail)
    RAMP, RAMP_DOWN = "ramp", "ramp_down"  #: linear from 0 to alpha / from alpha to 0 over the steps


class AppendSelection(Choice):
    """Which image rows ``append`` adds: 2-D area ``pool`` s, or the rows the prompt's tokens give most
    ``attention`` at the chosen layer (``engine.conditioning.attention``)."""
    POOL = "pool"
    ATTENTION = "attention"


class PositionKind(Choice):
    TEXT = "text"
    IMAGE = "image"
    MARKER = "marker"
