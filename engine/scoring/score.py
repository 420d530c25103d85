"""Every score of an image, in one order, and the one rule for a sweep's best cell.

The names (the keys of every ``scores`` record, the columns of ``scores.csv``, the chart's panels) and what each
means are in :data:`SCORES`; the weight-free ones are computed in :mod:`engine.scoring.metrics`, the judged ones by
:class:`engine.scoring.judge.Judge`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engine.scoring.metrics import weight_free_scores

__all__ = ["BALANCE", "SCORES", "SCORE_NAMES", "ScoreInfo", "balance", "best_index", "score_image"]


@dataclass(frozen=True)
class ScoreInfo:
    """A score's name, its chart title, whether higher is better, and whether it needs the VL judge."""

    name: str
    title: str
    higher_is_better: bool
    judged: bool


SCORES: tuple[ScoreInfo, ...] = (
    ScoreInfo("prompt_adherence", "prompt adherence P(yes) ↑", True, True),
    ScoreInfo("style_similarity", "style similarity P(yes) ↑", True, True),
    ScoreInfo("color_distance", "colour distance to reference (Lab) ↓", False, False),
    ScoreInfo("texture_distance", "texture distance to reference ↓", False, False),
    ScoreInfo("clipped_share", "clipped pixels (share) ↓", False, False),
    ScoreInfo("noise_sigma", "noise sigma (8-bit levels) ↓", False, False),
)
SCORE_NAMES = tuple(s.name for s in SCORES)
#: The best cell of a sweep keeps the prompt *and* takes the style: the largest product of these two.
BALANCE = ("prompt_adherence", "style_similarity")


def score_image(image: Image.Image, reference: Image.Image | None, prompt: str | None = None,
                judge: Any = None) -> dict[str, float]:
    """The scores of ``image`` in :data:`SCORE_NAMES` order: the judged ones when a ``judge`` is given, the
    reference-relative ones when a ``reference`` is."""
    scores = judge.scores(image, reference, prompt) if judge is not None else {}
    scores.update(weight_free_scores(image, reference))
    return {name: _significant(scores[name]) for name in SCORE_NAMES if name in scores}


def _significant(value: float, digits: int = 6) -> float:
    """``value`` to ``digits`` significant digits (P(yes) of a weak judge can be 0.00253: decimals would lose it)."""
    return float(f"{float(value):.{digits}g}")


def balance(scores: dict[str, float] | None) -> float | None:
    """P(adherence) × P(style similarity), or ``None`` when either is missing or not finite."""
    if not scores:
        return None
    values = [scores.get(name) for name in BALANCE]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(values[0] * values[1])


def best_index(scores: Sequence[dict[str, float] | None], baseline: Sequence[bool] | None = None) -> int | None:
    """The index of the cell with the largest :func:`balance`, among the non-baseline cells when any has one
    (a sweep asks which *VL* setting is best; the pure-text baseline only counts when nothing else was scored);
    ``None`` when no cell has both judged scores. Ties go to the first cell."""
    baseline = list(baseline) if baseline is not None else [False] * len(scores)
    values = [balance(s) for s in scores]
    for allowed in (lambda i: not baseline[i], lambda i: True):
        candidates = [i for i, v in enumerate(values) if v is not None and allowed(i)]
        if candidates:
            return max(candidates, key=lambda i: (values[i], -i))
    return None
