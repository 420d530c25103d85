"""Several references and a negative through the real bot process on the tiny models (issue 15).

* ``/stylize`` with two attachments and ``weights:2,1``: the result's PNG lists both references with their weights,
  and the job, queued when the bot was stopped, is rebuilt with both after the restart (``params.multi``).
* ``/stylize`` with ``negative_image``: guidance turns on at 2.0, the PNG records the scale and the negative's hash,
  and the image differs from the same request without the negative.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image

from engine.media.images import read_png_metadata
from tests.e2e.botproc import job_id_of, png_bytes, result_file, result_request, wait_result
from tests.imagecheck import MAX_LEVELS, MEAN_LEVELS, image_difference

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]

RED, BLUE = (220, 30, 30), (20, 40, 230)


def _fields(rec) -> dict[str, str]:
    return {f["name"]: f["value"] for f in result_request(rec).data["embeds"][0]["fields"]}


async def test_two_references_with_weights_survive_a_restart(space) -> None:
    bot = space.bot
    alice = space.member("alice")
    await space.pause()
    rec = await space.slash("stylize", {"image": space.ref(png_bytes((64, 48), RED)),
                                        "image2": space.ref(png_bytes((48, 64), BLUE), "b.png"),
                                        "weights": "2,1", "prompt": "two styles", "seed": 5}, alice)
    await rec.wait_ack(3)
    await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    job_id = job_id_of(rec)
    assert await bot.stop() == 0
    (row,) = bot.jobs("id = ?", (job_id,))
    assert row["status"] == "queued"

    await bot.start()  # the worker starts unpaused: the job is recovered from its row
    await wait_result(rec, timeout=120)
    meta = read_png_metadata(result_file(rec).data)
    assert [r["size"] for r in meta["references"]] == [[64, 48], [48, 64]] and meta["weights"] == [2.0, 1.0]
    assert [r["weight"] for r in meta["params"]["reference_set"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert [r["size"] for r in meta["params"]["reference_set"]] == [[64, 48], [48, 64]]
    assert meta["params"]["guidance_scale"] == 0.0 and meta["params"]["negative"] is None
    codes = meta["style_codes"]
    assert _fields(rec)["Style code"].startswith(f"`{codes[0]}::2 {codes[1]}::1`")
    assert "restart: 1 job(s) resumed" in bot.log_text()


async def test_a_negative_image_changes_the_image_and_records_the_cfg_scale(space) -> None:
    bob = space.member("bob")
    options = {"prompt": "a red fox", "seed": 11, "style_weight": 300}
    plain = await space.slash("stylize", {"image": space.ref(png_bytes((64, 48), RED)), **options}, bob)
    await wait_result(plain, timeout=120)
    negative = await space.slash("stylize", {"image": space.ref(png_bytes((64, 48), RED)),
                                             "negative_image": space.ref(png_bytes((48, 64), BLUE), "neg.png"),
                                             **options}, bob)
    await wait_result(negative, timeout=120)
    meta = read_png_metadata(result_file(negative).data)
    assert meta["params"]["guidance_scale"] == 2.0 and meta["params"]["negative"]["size"] == [48, 64]
    assert len(meta["negative_sha256"]) == 64 and meta["params"]["seeds"] == [11]
    assert "guidance 2" in _fields(negative)["Negative style"]
    worst, mean = image_difference(Image.open(BytesIO(result_file(plain).data)),
                                   Image.open(BytesIO(result_file(negative).data)))
    assert worst > 2 * MAX_LEVELS and mean > 2 * MEAN_LEVELS, (worst, mean)  # far beyond reordering
