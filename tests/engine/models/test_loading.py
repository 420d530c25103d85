"""Model loads in several threads at once (the worker's stage threads at start-up) must not break each other."""

from __future__ import annotations

import threading

from engine.generation.zimage import Generator
from engine.conditioning.text import TextEncoder
from engine.conditioning.vision import VLExtractor


def test_concurrent_loads_in_threads_all_succeed(tiny_models):
    """transformers/diffusers build models on the meta device through process-wide patches; unserialised loads in
    two threads failed with "Cannot copy out of meta tensor" (seen in the bot's start-up preload)."""
    for _round in range(4):
        models = [
            VLExtractor.from_pretrained(tiny_models.qwen3vl, device="cpu", dtype="float32", lazy=True),
            Generator.from_pretrained(tiny_models.zimage, "cpu", "float32", lazy=True),
            TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32", lazy=True),
        ]
        errors: list[BaseException] = []
        start = threading.Barrier(len(models))

        def load(model) -> None:
            start.wait()
            try:
                model.load()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert all(m.loaded for m in models)
