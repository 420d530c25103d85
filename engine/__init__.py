"""zvl-bot's engine: Qwen3-VL reference extraction, blending into Qwen3 prompt embeddings, Z-Image generation.

The public API, imported lazily (PEP 562, as diffusers does), so ``import engine`` stays cheap — no torch, no
transformers — until a name is used::

    from engine import StylePipeline, StylizeRequest
    pipe = StylePipeline.from_pretrained("/models/Z-Image-Turbo", "/models/Qwen3-VL-4B-Instruct")
    result = pipe(StylizeRequest(prompt="a lighthouse at dusk", reference=image, alpha=0.3))

This package never imports discord, aiosqlite, ``bot`` or ``cogs``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "StylePipeline": "engine.generation.pipeline",
    "StylizeRequest": "engine.types",
    "StylizeResult": "engine.types",
    "blend": "engine.conditioning.blend",
    "fit_caption": "engine.conditioning.sequence",
    "mask_outliers": "engine.conditioning.sequence",
    "EngineWorker": "engine.serving.worker",
    "make_tiny": "engine.models.tiny",
    "load_settings": "engine.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
