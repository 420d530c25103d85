"""What a user is told when a job fails: one line, never a traceback, no host paths (used by the worker)."""

from __future__ import annotations

import torch

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
