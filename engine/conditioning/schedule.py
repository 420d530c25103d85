"""Timestep-scheduled alpha: the reference's share at each denoising step (``style_schedule``). Pure, no torch.

With ``n`` steps run (img2img runs all ``steps`` too: its ``strength`` is the start noise level, not a step count),
step ``k = 0 .. n-1`` and the request's ``alpha = a``::

    constant    α(k) = a                                  (the one-caption path, bit-identical to no schedule)
    early       α(k) = a if k < n/2 else 0                (the high-noise steps that lay out the composition)
    late        α(k) = 0 if k < n/2 else a                (the low-noise steps that draw texture and detail)
    ramp        α(k) = a · k / (n - 1)                    (0 at the first step, a at the last; a when n = 1)
    ramp_down   α(k) = a · (1 - k / (n - 1))              (a at the first step, 0 at the last; a when n = 1)

``early`` and ``late`` split the steps at the same point, so they add up to ``constant`` (at odd ``n`` the middle
step is early's). Why these: the seed's open direction "timestep-scheduled alpha": high-noise steps fix the layout,
which the reference tends to overwrite (the guide's trade-off), low-noise steps fix surface detail, where style
lives; a schedule tests which steps need the reference. How a caption follows α(k) is
:mod:`engine.generation.stepped`.
"""

from __future__ import annotations

from engine.types import StyleSchedule

__all__ = ["step_alpha", "step_alphas"]


def step_alpha(schedule: StyleSchedule | str, alpha: float, step: int, steps: int) -> float:
    """α at ``step`` (0-based) of ``steps``, by the module docstring's formulas; ``ValueError`` naming the argument."""
    which = StyleSchedule.parse(schedule, "style_schedule")
    a, k, n = float(alpha), int(step), int(steps)
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"step must be between 0 and steps - 1 ({n - 1}); got {step!r}")
    if which is StyleSchedule.CONSTANT:
        return a
    if which in (StyleSchedule.EARLY, StyleSchedule.LATE):
        first_half = k < n / 2
        return a if first_half == (which is StyleSchedule.EARLY) else 0.0
    if n == 1:
        return a
    share = k / (n - 1)
    return a * (share if which is StyleSchedule.RAMP else 1.0 - share)


def step_alphas(schedule: StyleSchedule | str, alpha: float, steps: int) -> list[float]:
    """α for every step ``0 .. steps - 1`` (what a result records as ``style_alphas``)."""
    return [step_alpha(schedule, alpha, k, steps) for k in range(int(steps))]
