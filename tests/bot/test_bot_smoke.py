"""A first end-to-end /stylize against the fake Discord."""

from __future__ import annotations

import pytest

from tests.bot.harness import png
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.timeout(60)


async def test_stylize_end_to_end(fake: FakeDiscord, bot) -> None:
    ref = fake.add_attachment(png(), "ref.png", "image/png", width=64, height=48)
    rec = await fake.dispatch_slash("stylize", {"image": ref, "prompt": "a fox", "size": "1:1 small"})
    ack = await rec.wait_ack(2)
    assert ack.type == 5
    await rec.wait_until(lambda r: any(f.filename.endswith(".png") for f in r.files), timeout=15)
    final = rec.accepted[-1]
    print(final.payload)
