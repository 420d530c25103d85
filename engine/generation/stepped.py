"""A caption that changes over the denoising steps (``style_schedule``), through diffusers' step-end callback.

``ZImagePipeline.__call__`` (diffusers 0.42) calls ``callback_on_step_end(pipe, i, t, kwargs)`` after step ``i`` and
takes a ``prompt_embeds`` the callback returns as the captions of the steps after it: a list with one ``[L, D]``
tensor per image (not a batch tensor), in the transformer's dtype and device. The DiT re-reads (and re-embeds) its
caption on every forward and keeps nothing between steps, so each image's caption may change from step to step,
its row count too. Step 0's captions are the ``prompt_embeds`` the pipeline is called with.

The caption at step ``k`` is *the blend at* α(k) (:func:`engine.conditioning.schedule.step_alpha`), fitted like any
caption: the VL extraction and the prompt embedding are made once, and each distinct α is blended once, when its
first step comes (a blend is pooling and a few products: milliseconds, against a DiT step's hundreds of them).
That is exact for every blend mode, and for the modes whose blend is affine in alpha at a fixed length (``linear``,
``interpolate``, ``pool``, ``style_delta``) it is the interpolation ``text + (α(k)/α)·(blended - text)`` between
the two captions. ``append`` follows α(k) by its row count, ``round(α(k)·K)`` (attention selection: the top rows of
one ranking, so the sets are nested); ``replace`` by length and content together; ``adain`` exactly too.

CFG's negative (the empty prompt) carries no reference, so it is the same at every step. A batch mixes scheduled and
constant requests freely: each image has its own captions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.conditioning.schedule import step_alphas
from engine.types import StyleSchedule, StylizeRequest

__all__ = ["StepCaptions", "StepPlan", "step_captions"]


class StepCaptions:
    """One request's caption at each step: ``alphas[k]`` and the caption ``caption_at(alphas[k])`` (CPU, fitted).

    At most the two most recent captions are kept (early/late use two; a ramp uses each once)."""

    def __init__(self, alphas: Sequence[float], caption_at: Callable[[float], torch.Tensor]):
        self.alphas = [float(a) for a in alphas]
        self._caption_at = caption_at
        self._memo: dict[float, torch.Tensor] = {}

    def at(self, step: int) -> torch.Tensor:
        """The caption of ``step`` (0-based; a step past the schedule's end keeps its last caption)."""
        alpha = self.alphas[min(int(step), len(self.alphas) - 1)]
        found = self._memo.get(alpha)
        if found is None:
            if len(self._memo) >= 2:
                self._memo.pop(next(iter(self._memo)))
            found = self._memo[alpha] = self._caption_at(alpha)
        return found


def step_captions(request: StylizeRequest, reference_applied: bool, full_caption: torch.Tensor,
                  blend_at: Callable[[float], torch.Tensor]) -> StepCaptions | None:
    """The request's :class:`StepCaptions`, or ``None`` for one caption throughout (``constant``, or no reference
    applied). ``blend_at(a)`` is the fitted caption at alpha ``a``; ``full_caption`` the one at the request's alpha."""
    schedule = StyleSchedule.parse(request.style_schedule, "style_schedule")
    if schedule is StyleSchedule.CONSTANT or not reference_applied:
        return None
    full = float(request.alpha)
    return StepCaptions(step_alphas(schedule, full, request.steps),
                        lambda a: full_caption if a == full else blend_at(a))


class StepPlan:
    """The captions of every image of one denoising call at each step, converted for the DiT once per caption.

    ``per_image``: one :class:`StepCaptions` (or ``None``: ``constant[j]`` throughout) per image; ``convert``
    checks a CPU caption and moves it to the DiT's device and dtype (``Generator``'s own caption check)."""

    def __init__(self, per_image: Sequence[StepCaptions | None], constant: Sequence[torch.Tensor],
                 convert: Callable[[torch.Tensor], torch.Tensor]):
        if len(per_image) != len(constant):
            raise ValueError(f"step_captions must hold one entry per image ({len(constant)}); got {len(per_image)}")
        self.per_image, self.constant, self.convert = list(per_image), list(constant), convert
        self._converted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def at(self, step: int) -> list[torch.Tensor]:
        """One caption per image for ``step``; only the captions this step uses stay converted."""
        kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        out = []
        for schedule, constant in zip(self.per_image, self.constant):
            if schedule is None:
                out.append(constant)
                continue
            source = schedule.at(step)
            hit = kept.get(id(source)) or self._converted.get(id(source))
            if hit is None or hit[0] is not source:
                hit = (source, self.convert(source))
            kept[id(source)] = hit
            out.append(hit[1])
        self._converted = kept
        return out
