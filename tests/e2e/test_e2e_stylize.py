"""The real bot process on the tiny models: /stylize end to end, bad attachments, result buttons, server presets."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
from PIL import Image

from engine.images import read_png_metadata
from engine.types import style_weight_to_alpha
from tests.e2e.botproc import ephemeral_texts, job_id_of, png_bytes, result_file, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

PROGRESS_PREFIXES = ("⚙️", "🔍", "🎨")
#: The bot process's progress-edit interval (``ZvlBot(progress_interval=2.0)``; not a setting).
PROGRESS_INTERVAL = 2.0
#: 512×512 at 50 steps: a few seconds on the tiny models, longer than the bot's 2 s progress-edit interval.
SLOW = {"size": "1:1 small", "steps": 50}


async def test_stylize_result_metadata_and_message_order(space) -> None:
    """Deferred in time; the status message goes queued → progress → result, in that order and nothing after; the
    PNG's ``zvl`` chunk carries exactly what was asked for. The worker is held (``/admin pause``) a little longer
    than the bot's 2 s progress-edit interval after the queued edit, so at least one progress edit is due however
    fast the machine runs the job."""
    user = space.member("alice")
    await space.pause()
    rec = await space.stylize(user, prompt="a red fox in the snow", seed=4242, style_weight=250,
                              blend_mode="adain", **SLOW)
    ack = await rec.wait_ack(3)
    assert ack.type == 5 and not ack.ephemeral
    await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    await asyncio.sleep(max(0.0, rec.edits[0].at + PROGRESS_INTERVAL + 0.2 - space.fake.world.clock.now()))
    await space.resume()
    final = await wait_result(rec, timeout=120)

    edits = [r for r in rec.accepted if r.kind == "edit"]
    assert edits[0].content.startswith("⏳ Queued: #1 in line"), edits[0].content
    assert edits[-1] is final, "something was edited after the result"
    # queued (and position/ETA updates) → progress → the result: "QQ…PP…R"
    shape = "".join("R" if r is final else "Q" if r.content.startswith("⏳ Queued: #") and not r.files
                    else "P" if r.content.startswith(PROGRESS_PREFIXES) and not r.files else "?" for r in edits)
    assert re.fullmatch(r"Q+P+R", shape), [r.content for r in edits]
    assert [r.at for r in rec.accepted] == sorted(r.at for r in rec.accepted)
    assert not [r for r in rec.rejected if r.status != 429], [(r.kind, r.status, r.response) for r in rec.rejected]

    upload = result_file(rec)
    assert upload.filename.endswith(".png")
    meta = read_png_metadata(upload.data)
    params = meta["params"]
    assert params["prompt"] == "a red fox in the snow" and params["seeds"] == [4242]
    assert params["steps"] == 50 and (params["width"], params["height"]) == (512, 512)
    assert params["blend_mode"] == "adain" and params["alpha"] == pytest.approx(style_weight_to_alpha(250))
    assert params["reference"] == [64, 48]
    job_id = job_id_of(rec)
    assert meta["job_id"] == job_id and meta["resolved"]["style_weight"] == 250
    assert Image.open(io.BytesIO(upload.data)).size == (512, 512)
    fields = {f["name"]: f["value"] for f in final.data["embeds"][0]["fields"]}
    assert fields["Seed"] == "4242" and fields["Steps"] == "50"

    message = space.fake.message(rec.original_message_id)  # the public message everyone sees
    assert message["attachments"][0]["filename"] == upload.filename and not message["flags"] & 64
    (row,) = space.bot.jobs("id = ?", (job_id,))
    assert row["status"] == "done" and row["message_id"] == rec.original_message_id


@pytest.mark.parametrize("data, name, expected", [
    (b"These are my notes, not a picture.\n" * 20, "notes.png", "not a supported image"),
    (png_bytes((256, 256), (1, 2, 3))[:300], "broken.png", "corrupt or truncated"),
], ids=["text-renamed-png", "corrupt-png"])
async def test_bad_attachment_is_refused_privately_then_the_next_request_works(space, data: bytes, name: str,
                                                                             expected: str) -> None:
    user = space.member("bob")
    bad = await space.stylize(user, image=space.ref(data, name, "image/png"))
    await bad.wait_ack(3)
    await bad.wait_until(lambda r: bool(ephemeral_texts(r)), timeout=30)
    (text,) = ephemeral_texts(bad)
    assert expected in text and "Traceback" not in text and len(text) < 300, text
    assert not bad.files
    assert space.fake.channel_messages(space.channel_id) == [], "a refusal left something public"
    assert space.bot.jobs("owner_id = ?", (user.id,)) == []

    good = await space.stylize(user, prompt="after the refusal")
    await good.wait_ack(3)
    await wait_result(good)
    assert read_png_metadata(result_file(good).data)["params"]["prompt"] == "after the refusal"


async def test_buttons_reroll_for_the_owner_and_refuse_others(space) -> None:
    owner, stranger = space.member("owner"), space.member("stranger")
    rec = await space.stylize(owner, prompt="a lighthouse", seed=5)
    await wait_result(rec)
    job_id = job_id_of(rec)
    message_id = rec.original_message_id

    for action in ("reroll", "vary", "delete"):
        refused = await space.fake.dispatch_component(message_id, f"zvl:{action}:{job_id}", user_id=stranger.id)
        ack = await refused.wait_ack(3)
        assert ack.type == 4 and ack.ephemeral and "Only the person who asked" in ack.content, ack.content
    assert space.fake.message(message_id)  # not deleted
    assert len(space.bot.jobs("owner_id = ?", (owner.id,))) == 1 and not space.bot.jobs("owner_id = ?",
                                                                                          (stranger.id,))

    again = await space.fake.dispatch_component(message_id, f"zvl:reroll:{job_id}", user_id=owner.id)
    assert (await again.wait_ack(3)).type == 5
    await wait_result(again)
    before, after = (read_png_metadata(result_file(r).data) for r in (rec, again))
    assert before["params"]["seeds"] == [5] and after["params"]["seeds"] != [5]
    assert after["params"]["prompt"] == "a lighthouse" and after["job_id"] != job_id
    assert result_file(again).data != result_file(rec).data
    (row,) = space.bot.jobs("id = ?", (after["job_id"],))
    assert row["params"]["source_job"] == job_id and row["owner_id"] == owner.id


async def test_admin_preset_is_usable_by_members_who_cannot_save_one(space) -> None:
    member = space.member("member")
    saved = await space.slash("preset", {"name": "inky", "style_weight": 400, "blend_mode": "adain", "steps": 3},
                              space.admin, subcommand="save")
    ack = await saved.wait_ack(3)
    assert ack.ephemeral and "inky" in ack.data["embeds"][0]["title"]

    used = await space.slash("preset", {"name": "inky", "image": space.ref(), "prompt": "a teapot", "seed": 9},
                             member, subcommand="use")
    await used.wait_ack(3)
    await wait_result(used)
    meta = read_png_metadata(result_file(used).data)
    assert meta["params"]["steps"] == 3 and meta["params"]["blend_mode"] == "adain"
    assert meta["params"]["alpha"] == pytest.approx(style_weight_to_alpha(400)) and meta["params"]["seeds"] == [9]
    fields = {f["name"]: f["value"] for f in result_request_embed(used)["fields"]}
    assert fields["Preset"] == "inky"

    refused = await space.slash("preset", {"name": "mine", "steps": 4}, member, subcommand="save")
    ack = await refused.wait_ack(3)
    assert ack.ephemeral and "Manage Server" in ack.content, ack.content
    listed = await space.slash("preset", {}, member, subcommand="list")
    text = (await listed.wait_ack(3)).data["embeds"][0]["description"]
    assert "inky" in text and "mine" not in text


def result_request_embed(rec) -> dict:
    return next(r for r in rec.accepted if r.files and r.data.get("embeds")).data["embeds"][0]
