"""What a user is told when a job fails (one line, never a traceback, no host paths), and the worker's handling of
a failed stage: logging it, releasing the memory its traceback pins."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable

import torch

from engine.models.loading import free_memory

log = logging.getLogger(__name__)

OOM_MESSAGE = "the GPU ran out of memory; try a smaller size or fewer images"
CORRUPT_MESSAGE = "the reference image could not be read (it may be corrupt or truncated); please upload another one"


class ModelLoadError(RuntimeError):
    """A model (or the pipeline) could not be loaded.

    ``str()`` is what a user sees: the component, without the cause (which can hold file paths of the host);
    :attr:`detail` names the cause too, for ``status()`` and the admins.
    """

    def __init__(self, component: str, cause: BaseException) -> None:
        self.component = component
        self.cause = cause
        text = f"{type(cause).__name__}: {cause}"
        if len(text) > 300:
            text = text[:297] + "..."
        name = {"vl": "Qwen3-VL", "text": "text encoder", "dit": "Z-Image", "pipeline": "pipeline"}.get(component,
                                                                                                     component)
        self.detail = f"the {name} model could not be loaded ({text})"
        super().__init__(f"the {name} model could not be loaded; the admins have been told (see /admin status)")


def is_oom(exc: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, whatever wrapper raised it."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def is_corrupt_image(exc: BaseException) -> bool:
    try:
        from PIL import UnidentifiedImageError
    except ImportError:  # pragma: no cover - PIL is a dependency
        return False
    if isinstance(exc, UnidentifiedImageError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (OSError, SyntaxError)) and ("image" in text or "truncated" in text)


def user_message(exc: BaseException, job_id: str) -> str:
    """The message a user sees for a job that raised ``exc`` (never a traceback)."""
    if isinstance(exc, ModelLoadError):
        return str(exc)
    if is_oom(exc):
        return OOM_MESSAGE
    if isinstance(exc, ValueError):  # parameter problems name the parameter (check_inputs)
        return str(exc)
    if is_corrupt_image(exc):
        return CORRUPT_MESSAGE
    return f"generation failed (job {job_id}); the admins have the details"


def clear_frames(exc: BaseException | None) -> None:
    """Clear the frames of ``exc`` and its causes: tracebacks pin the failed work's tensors (an OOM's
    activations) until cleared."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def drop_result(fut: asyncio.Future) -> None:
    """Retrieve a dropped thread future's exception so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None:
            log.debug("work of an aborted job ended with %s: %s", type(exc).__name__, exc)


def log_failure(exc: BaseException, job_id: str, stage: str, message: str) -> None:
    """Log a job's failure: with the traceback when the user was told "generation failed" (a bug or an unknown
    error), as one line when the message names the cause."""
    if message.startswith("generation failed"):
        log.error("job=%s failed in the %s stage", job_id, stage, exc_info=exc)
    else:
        log.warning("job=%s failed in the %s stage: %s: %s", job_id, stage, type(exc).__name__, exc)


async def fail_and_free(exc: Exception, job_id: str, stage: str, end: Callable[[str], Awaitable[None]],
                        run_in_stage: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
    """A stage raised ``exc``: log it, end the job as failed with the user's message (``end(message)``), then
    free memory in the stage's own thread (``run_in_stage(fn)``: after the failed work, off the event loop)."""
    message = user_message(exc, job_id)
    log_failure(exc, job_id, stage, message)
    clear_frames(exc)
    del exc
    await end(message)
    try:
        await run_in_stage(free_memory)
    except RuntimeError:  # the stage thread was shut down (stop() in progress)
        free_memory()
