"""The whole stack once: /stylize through the real StylePipeline on the tiny random models (64×64, 2 steps)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from engine.media.images import read_png_metadata
from tests.bot.harness import make_settings, png, running_bot
from tests.fakediscord import FakeDiscord

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


async def test_stylize_with_the_tiny_models(fake: FakeDiscord, tmp_path: Path, tiny_models) -> None:
    settings = make_settings(tmp_path, fake, zimage_path=tiny_models.zimage, vl_path=tiny_models.qwen3vl,
                             width=64, height=64, steps=2, device="cpu", vl_device="cpu", text_device="cpu")
    async with running_bot(settings, pipeline_factory=None) as bot:
        rec = await fake.dispatch_slash("stylize", {"image": fake.add_attachment(png((80, 60)), "r.png", "image/png"),
                                                    "prompt": "a tiny cat", "style_weight": 400, "seed": 11})
        assert (await rec.wait_ack(2)).type == 5
        failed = lambda r: any((q.content or "").startswith("❌") for q in r.edits)  # noqa: E731
        await rec.wait_until(lambda r: failed(r) or any(f.filename.startswith("zvl-") for f in r.files), timeout=240)
        assert not failed(rec), [q.content for q in rec.edits]
        upload = next(f for f in rec.files if f.filename.startswith("zvl-"))
        assert Image.open(io.BytesIO(upload.data)).size == (64, 64)
        meta = read_png_metadata(upload.data)
        assert meta["params"]["seeds"] == [11] and meta["params"]["steps"] == 2
        status = await bot.services.worker.status()
        assert status.counters["done"] == 1 and status.counters["vl_extractions"] == 1
