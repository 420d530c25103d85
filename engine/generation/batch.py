"""Several requests in one batched DiT call (those that share :meth:`~engine.types.StylizeRequest.batch_key`).

What batching promises: a request's images are the images ``StylePipeline.generate`` gives it alone. Each image has
its own CPU generator, so its starting noise is exactly the same; the pixels agree up to float32 reordering (another
batch shape can take other CPU/GPU kernels, which torch does not promise to be bit-identical across shapes, vendors or
thread counts): a level or two, where another seed changes a pixel by ~40 on average.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image

from engine.generation.zimage import AbortFn, Cancelled, Denoised, Generator, ProgressFn
from engine.types import Caption, Encoded, FitMode, StylizeRequest, StylizeResult

__all__ = ["BatchablePipeline", "check_batch", "generate_batch"]


def check_batch(requests: Sequence[StylizeRequest]) -> None:
    """``ValueError`` unless all ``requests`` share one :meth:`~engine.types.StylizeRequest.batch_key`."""
    if len({r.batch_key() for r in requests}) > 1:
        raise ValueError("requests in one batch must share width, height, steps, strength, guidance_scale and shift")


class BatchablePipeline(Protocol):
    """What :func:`generate_batch` needs of a pipeline."""

    @property
    def generator(self) -> Generator: ...

    def caption(self, request: StylizeRequest, encoded: Encoded) -> Caption: ...

    def build_result(self, request: StylizeRequest, caption: Caption, images: list[Image.Image],
                     generation: dict[str, Any], timings: dict[str, float]) -> StylizeResult: ...


def _flatten(requests: Sequence[StylizeRequest], captions: Sequence[Caption]) -> dict[str, Any]:
    """One caption, seed, negative and (img2img) reference per image, in request then seed order."""
    embeds, seeds, images, negatives, steps = [], [], [], [], []
    for request, caption in zip(requests, captions):
        for seed in request.seeds:
            embeds.append(caption.caption)
            steps.append(caption.steps)  # style_schedule's captions, or None
            seeds.append(seed)
            if request.strength is not None:
                images.append(request.reference)
            if caption.negative is not None:
                negatives.append(caption.negative)
    return {"prompt_embeds": embeds, "seeds": seeds, "image": images or None,
            "negative_prompt_embeds": negatives or None,
            "step_captions": steps if any(s is not None for s in steps) else None}


def _denoise(pipe: BatchablePipeline, requests: Sequence[StylizeRequest], captions: Sequence[Caption],
             progress: ProgressFn | None, should_abort: AbortFn | None) -> Denoised:
    first = requests[0]
    # the captions are fitted already: truncating is a no-op that keeps them as they are
    return pipe.generator.denoise(
        **_flatten(requests, captions), steps=first.steps, guidance_scale=first.guidance_scale, shift=first.shift,
        width=first.width, height=first.height, strength=first.strength, fit_mode=FitMode.TRUNCATE,
        progress=progress, should_abort=should_abort)


def generate_batch(pipe: BatchablePipeline, requests: Sequence[StylizeRequest], encoded: Sequence[Encoded], *,
                   progress: ProgressFn | None = None, should_abort: AbortFn | None = None) -> list[StylizeResult]:
    """Blend, fit, then one denoise and decode for all seeds of all ``requests``; one result per request.

    The requests must share :meth:`~engine.types.StylizeRequest.batch_key` (``ValueError`` otherwise). Each keeps its own caption, seeds,
    negative and (img2img) reference; the timings of the shared denoise and decode are the batch's.
    """
    if not requests:
        return []
    if len(encoded) != len(requests):
        raise ValueError("vls and texts must have one entry per request")
    check_batch(requests)
    t_start = time.perf_counter()
    timings: list[dict[str, float]] = []
    captions = []
    for request, enc in zip(requests, encoded):
        t0 = time.perf_counter()
        captions.append(pipe.caption(request, enc))
        timings.append({**enc.timings, "blend": time.perf_counter() - t0})
    den = _denoise(pipe, requests, captions, progress, should_abort)
    if should_abort is not None and should_abort():
        raise Cancelled("cancelled before decoding")
    t0 = time.perf_counter()
    decoded = pipe.generator.decode(den.latents)
    shared = {"denoise": den.seconds, "decode": time.perf_counter() - t0, "total": time.perf_counter() - t_start}
    out, at = [], 0
    for request, caption, tm in zip(requests, captions, timings):
        n = len(request.seeds)
        out.append(pipe.build_result(request, caption, decoded[at:at + n], den.params, {**tm, **shared}))
        at += n
    return out
