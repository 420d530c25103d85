"""The one table of parameter bounds: what a slash command, a stored default or preset, a sweep value list, the
settings and the pipeline's own checks accept for each numeric parameter (and the prompt's length).

A leaf module (no project imports, no torch) so that every layer can read it: ``cogs._options`` declares the
ranges to Discord *and* checks what Discord sends (a client can send values Discord's UI would refuse),
``bot.store.defaults`` validates defaults and presets with it, ``engine.sweep.plan`` its value lists,
``engine.config`` its ``Field`` bounds, ``engine.generation.pipeline`` / ``engine.generation.zimage`` a request. One place to
change a limit; a value accepted at the door is then accepted all the way to the DiT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Bound", "LIMITS"]


def _number_text(value: float) -> str:
    """``100`` for whole numbers (also huge ones, where ``:g`` would print ``4.29497e+09``), ``0.05`` otherwise."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Bound:
    """The accepted range of one parameter.

    ``kind`` is ``int``, ``float`` or ``str``; for ``str`` the bounds are on the length. ``lo_open`` refuses ``lo``
    itself (``shift`` must be greater than 0: a zero shift divides by zero in the scheduler).
    """

    name: str
    kind: type
    lo: float
    hi: float
    multiple_of: int = 1
    lo_open: bool = False
    description: str = ""

    def describe(self) -> str:
        """The range in words: ``between 1 and 100``, ``greater than 0 and at most 20``, ``1 to 1500 characters``."""
        lo, hi = _number_text(self.lo), _number_text(self.hi)
        if self.kind is str:
            return f"{lo} to {hi} characters"
        text = f"greater than {lo} and at most {hi}" if self.lo_open else f"between {lo} and {hi}"
        return text + (f", a multiple of {self.multiple_of}" if self.multiple_of > 1 else "")

    def check(self, value: Any, name: str | None = None) -> Any:
        """``value`` normalised (a ``float`` for float bounds) when it is within the bound; otherwise a
        ``ValueError`` naming the parameter (``name``, default :attr:`name`) and the range."""
        name = name or self.name
        if self.kind is str:
            return self._check_text(value, name)
        whole = "a whole number" if self.kind is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind is int
                                                                             and not isinstance(value, int)):
            raise ValueError(f"{name} must be {whole} {self.describe()}; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number {self.describe()}; got {value!r}")
        too_low = value <= self.lo if self.lo_open else value < self.lo
        if too_low or value > self.hi:
            raise ValueError(f"{name} must be {self.describe()}; got {value!r}")
        if self.multiple_of > 1 and value % self.multiple_of:
            raise ValueError(f"{name} must be a multiple of {self.multiple_of}; got {value!r}")
        return float(value) if self.kind is float else value

    def _check_text(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text of {self.describe()}; got {type(value).__name__}")
        if not self.lo <= len(value) <= self.hi:
            raise ValueError(f"{name} must be {self.describe()} long; got {len(value)} characters")
        return value

    def __contains__(self, value: Any) -> bool:
        try:
            self.check(value)
        except ValueError:
            return False
        return True


def _table(*bounds: Bound) -> dict[str, Bound]:
    return {bound.name: bound for bound in bounds}


#: Every bounded parameter, by its user-facing name (``layer`` is the request's ``hidden_layer``).
LIMITS: dict[str, Bound] = _table(
    Bound("style_weight", float, 0, 1000, description="Midjourney-like --sw scale; 100 is the default look"),
    Bound("alpha", float, 0.0, 1.0, description="blend strength of the reference"),
    Bound("layer", int, -64, -1, description="Qwen3-VL hidden layer counted from the end (deeper than the model "
                                             "is refused by the pipeline, which knows the model's depth)"),
    Bound("layer_weight", float, 0, 1000, description="weight of one layer in a layer mix"),
    # 32 bits: what a Discord integer option and the PNG metadata round-trip without surprises.
    Bound("seed", int, 0, 2**32 - 1, description="random seed of one image"),
    Bound("steps", int, 1, 100, description="denoising steps"),
    # 0.05 is the floor /stylize has always offered; the engine shares it so that no request the bot accepts meets
    # a different rule later (and none the engine accepts is refused by a button that replays it).
    Bound("strength", float, 0.05, 1.0, description="img2img start noise level: the reference keeps 1 - strength of the start image"),
    Bound("prompt", str, 1, 1500, description="what to draw"),
    # The DiT's positions would allow 8192 px; the limit is about memory and time.
    Bound("width", int, 16, 2048, multiple_of=16, description="output width in pixels"),
    Bound("height", int, 16, 2048, multiple_of=16, description="output height in pixels"),
    Bound("guidance_scale", float, 0.0, 20.0, description="CFG scale (0 = off, as Turbo expects)"),
    Bound("shift", float, 0.0, 20.0, lo_open=True, description="flow-matching scheduler shift"),
    Bound("target_std", float, 0.0, 10000.0, lo_open=True, description="std the global normalisation scales to"),
    Bound("outlier_threshold", float, 1.0, 10000.0, lo_open=True, description="std ratio that marks an outlier"),
    Bound("append_tokens", int, 1, 1024, description="reference rows blend mode append adds at alpha 1 (round(alpha*K) at alpha)"),
)
