"""/stylize with several references, weights and a negative against the fake Discord (in-process bot, fake pipeline):
what reaches the engine, what the result shows, and each bad input as one private line with nothing queued."""

from __future__ import annotations

import pytest

from engine.media.images import read_png_metadata
from tests.bot.harness import FakePipeline, png
from tests.cogs.test_cog_stylize import SMALL, attach, result_of
from tests.fakediscord import FakeDiscord

pytestmark = pytest.mark.timeout(60)


def _fields(final) -> dict[str, str]:
    return {f["name"]: f["value"] for f in final.data["embeds"][0]["fields"]}


async def test_two_attachments_with_weights_reach_the_engine(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    red, blue = attach(fake, png(colour=(200, 40, 40))), attach(fake, png((48, 64), (30, 60, 220)), "b.png")
    rec = await fake.dispatch_slash("stylize", {"image": red, "image2": blue, "weights": "2,1", "prompt": "a fox",
                                                **SMALL})
    final = await result_of(rec)
    (request,) = pipeline.requests
    assert request.reference.size == (64, 48) and [r.size for r in request.references] == [(48, 64)]
    assert request.weights == (2.0, 1.0) and request.negative_reference is None
    (encoded,) = pipeline.encoded
    assert len(encoded.more) == 1  # the second reference extracted on its own
    meta = read_png_metadata(final.files[0].data)
    assert [r["size"] for r in meta["references"]] == [[64, 48], [48, 64]] and meta["weights"] == [2.0, 1.0]
    codes = meta["style_codes"]
    assert len(codes) == 2 and _fields(final)["Style code"].startswith(f"`{codes[0]}::2 {codes[1]}::1`")

    # the shown string reuses the whole set, with no attachment
    again = await fake.dispatch_slash("stylize", {"style": f"{codes[0]}::2 {codes[1]}::1", "prompt": "a fox",
                                                  **SMALL})
    await result_of(again)
    reused = pipeline.requests[-1]
    assert reused.weights == (2.0, 1.0) and [r.size for r in reused.references] == [(48, 64)]


async def test_a_negative_image_turns_guidance_on(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "negative_image": attach(fake, png(
        colour=(30, 60, 220)), "neg.png"), "prompt": "a fox", **SMALL})
    final = await result_of(rec)
    (request,) = pipeline.requests
    assert request.negative_reference is not None and request.guidance_scale == 2.0 and request.references == ()
    assert pipeline.encoded[0].negative_vl is not None
    meta = read_png_metadata(final.files[0].data)
    assert meta["params"]["guidance_scale"] == 2.0 and len(meta["negative_sha256"]) == 64
    assert "guidance 2" in _fields(final)["Negative style"]


@pytest.mark.parametrize("options, expected", [
    ({"image2": "b", "weights": "2,x"}, "weights: “x” is not a number"),
    ({"image2": "b", "weights": "-1,2"}, "weights: a weight must not be negative"),
    ({"image2": "b", "weights": "0,0"}, "weights: the weights must not all be 0"),
    ({"image2": "b", "weights": "1,2,3"}, "weights: 3 weights for 2 references"),
    ({"image2": "b", "image3": "c", "image4": "d", "style": "ab12cd34"}, "Too many references: at most 4"),
    ({"negative_image": "b", "negative_style": "ab12cd34"}, "give either negative_image or negative_style"),
    ({"style": "ab12cd34::2 zz"}, "style: “zz” is not a style code"),
    ({"style": "ab12cd34"}, "style: there is no style ab12cd34 in this server"),
])
async def test_bad_input_is_one_private_line_and_nothing_queued(fake: FakeDiscord, bot, pipeline: FakePipeline,
                                                                options: dict, expected: str) -> None:
    given = {"image": attach(fake), "prompt": "a fox", **SMALL}
    given.update({k: attach(fake, name=f"{v}.png") if k.startswith(("image", "negative_image")) else v
                  for k, v in options.items()})
    rec = await fake.dispatch_slash("stylize", given)
    await rec.wait_until(lambda r: any(q.data.get("flags", 0) & 64 and q.content for q in r.accepted))
    refusal = next(q for q in rec.accepted if q.data.get("flags", 0) & 64 and q.content)
    assert expected in refusal.content and "Traceback" not in refusal.content and "\n" not in refusal.content
    assert refusal.kind == "callback"  # before the defer: nothing public, nothing downloaded
    assert await bot.services.store.jobs.list_active() == [] and pipeline.requests == []


async def test_a_negative_at_style_weight_0_is_refused(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "negative_image": attach(fake, name="n.png"),
                                                "style_weight": 0, "prompt": "a fox", **SMALL})
    await rec.wait_until(lambda r: any(q.data.get("flags", 0) & 64 and q.content for q in r.accepted))
    refusal = next(q for q in rec.accepted if q.data.get("flags", 0) & 64 and q.content)
    assert refusal.content.startswith("negative_image: a negative style needs a style weight above 0")
    assert await bot.services.store.jobs.list_active() == [] and pipeline.requests == []


async def test_reroll_keeps_every_reference_and_the_negative(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    rec = await fake.dispatch_slash("stylize", {
        "image": attach(fake), "image2": attach(fake, png((48, 64)), "b.png"), "weights": "3,1",
        "negative_image": attach(fake, png(colour=(0, 0, 250)), "n.png"), "prompt": "a fox", "seed": 5, **SMALL})
    final = await result_of(rec)
    job_id = final.data["embeds"][0]["footer"]["text"].removeprefix("job ")
    again = await fake.dispatch_component(rec.original_message_id, f"zvl:reroll:{job_id}")
    await result_of(again)
    first, second = pipeline.requests
    assert second.seeds != first.seeds
    assert second.weights == first.weights == (3.0, 1.0)
    assert [r.size for r in second.references] == [(48, 64)] and second.references[0] == first.references[0]
    assert second.negative_reference == first.negative_reference and second.guidance_scale == 2.0
