"""Midjourney-like style weight (0-1000) ↔ blend alpha (0-1): the one mapping, shared by the CLI, the bot and the
sweeps (re-exported by :mod:`engine.types`, where callers import it)."""

from __future__ import annotations

__all__ = ["alpha_to_style_weight", "style_weight_to_alpha"]


def style_weight_to_alpha(style_weight: float) -> float:
    """Midjourney-like style weight (0-1000, default 100) → blend alpha (0-1), piecewise linear: ``0 -> 0``,
    ``100 -> 0.3`` (the seed's "slight style"), ``1000 -> 1``; ``ValueError`` outside 0..1000."""
    sw = float(style_weight)
    if not 0.0 <= sw <= 1000.0:
        raise ValueError(f"style_weight must be between 0 and 1000; got {style_weight!r}")
    if sw <= 100.0:
        return round(0.003 * sw, 6)
    return round(0.3 + 0.7 * (sw - 100.0) / 900.0, 6)


def alpha_to_style_weight(alpha: float) -> float:
    """Inverse of :func:`style_weight_to_alpha` (for showing a stored alpha as a style weight)."""
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha!r}")
    if a <= 0.3:
        return round(a / 0.003, 3)
    return round(100.0 + (a - 0.3) * 900.0 / 0.7, 3)
