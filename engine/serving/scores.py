"""Scoring a finished sweep in the worker: after the DiT stage, in the VL thread, beside the next job's denoising.

The DiT stage hands a finished multi-cell job (a sweep, a blend-mode comparison) to :func:`score_results` and goes
straight on to the next job; the scores (``StylizeResult.scores``, see :mod:`engine.scoring`) are computed in the
VL thread, where the Qwen3-VL judge already lives, so the DiT never waits for them. A pipeline without Qwen3-VL
(or without a ``vl_extractor``, like the test fake) gets the weight-free scores only. A failing score is logged and
leaves that cell unscored; it never fails the job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.serving.lifecycle import Models
    from engine.serving.queue import Job

log = logging.getLogger(__name__)

__all__ = ["score_results", "wants_scores"]


def wants_scores(job: Job, enabled: bool) -> bool:
    """Whether the worker scores ``job``: a job of several cells, with scoring enabled."""
    return enabled and len(job.requests) > 1


def score_results(models: Models, job: Job, results: list[Any], unload_after: bool) -> float:  # VL thread
    """Put every result's scores into ``result.scores``; returns the seconds spent loading Qwen3-VL.

    Every cell is scored against the job's reference (a txt2img baseline cell carries none of its own) and its
    own prompt.
    """
    from engine.scoring.judge import Judge
    from engine.scoring.score import score_image

    pipe = models.pipe()
    reference = next((r.reference for r in job.requests if r.reference is not None), None)
    judge, load_s = None, 0.0
    if getattr(pipe, "vl_device", None) is not None and hasattr(pipe, "vl_extractor"):
        try:
            load_s = models.ensure(pipe, "vl")
            judge = Judge.from_extractor(pipe.vl_extractor)
            models.vl_busy = True
        except Exception:  # the images are made: deliver them with the weight-free scores
            log.warning("job=%s: no Qwen3-VL judge; weight-free scores only", job.id, exc_info=True)
    try:
        for request, result in zip(job.requests, results, strict=True):
            if result is None or not result.images:
                continue
            try:
                result.scores = score_image(result.images[0], reference, request.prompt, judge)
            except Exception:
                log.warning("job=%s: scoring a cell failed; it stays unscored", job.id, exc_info=True)
    finally:
        if judge is not None:
            models.vl_busy = False
            models.used_vl()
            if unload_after:
                models.unload_vl()
    return load_s
