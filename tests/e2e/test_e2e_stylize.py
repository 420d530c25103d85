"""The real bot process on the tiny models: /stylize end to end, bad attachments, result buttons, server presets."""

from __future__ import annotations

import io
import re
import time
from datetime import datetime

import pytest
from PIL import Image

from engine.media.images import read_png_metadata
from engine.types import style_weight_to_alpha
from tests.e2e.botproc import ephemeral_texts, job_id_of, png_bytes, result_file, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]

PROGRESS_PREFIXES = ("⚙️", "🔍", "🎨")
#: The bot process's progress-edit interval (``ZvlBot(progress_interval=2.0)``; not a setting).
PROGRESS_INTERVAL = 2.0
#: 512×512 at 50 steps: usually longer than the 2 s interval on the tiny models (not assumed: see below).
SLOW = {"size": "1:1 small", "steps": 50}
#: Room for one edit's round trip and the bot's database write around the job's recorded start and end.
EDIT_SLACK = 1.0


def _fake_time(space, db_time: str) -> float:
    """A job row's UTC timestamp on the fake's (monotonic) clock, which stamps every request it receives."""
    return datetime.fromisoformat(db_time).timestamp() - time.time() + space.fake.world.clock.now()


def _check_progress_promise(space, edits, final, row) -> None:
    """What the notifier promises, checked against the job's own timing rather than the machine's speed: status
    edits before the result are at least one interval apart, and a job still running a full interval after the
    last edit gets a progress edit (the trailing edge). A fast machine may finish inside one interval and then
    owes none; a slow one must show one."""
    shown = [r for r in edits if r is not final]
    for before, after in zip(shown, shown[1:]):
        assert after.at - before.at >= PROGRESS_INTERVAL - 0.05, [(r.at, r.content) for r in shown]
    started, finished = _fake_time(space, row["started_at"]), _fake_time(space, row["finished_at"])
    last_before_start = max(r.at for r in shown if r.at <= started + EDIT_SLACK)
    if finished - max(started, last_before_start) > PROGRESS_INTERVAL + EDIT_SLACK:
        assert any(r.content.startswith(PROGRESS_PREFIXES) for r in shown), (
            f"the job ran {finished - started:.1f} s with no progress edit", [r.content for r in shown])


async def test_stylize_result_metadata_and_message_order(space) -> None:
    """Deferred in time; the status message goes queued → progress → result, in that order and nothing after; the
    PNG's ``zvl`` chunk carries exactly what was asked for. The worker is held (``/admin pause``) until the queued
    edit has been seen, so the first edit is always the queued state."""
    user = space.member("alice")
    await space.pause()
    rec = await space.stylize(user, prompt="a red fox in the snow", seed=4242, style_weight=250,
                              blend_mode="adain", **SLOW)
    ack = await rec.wait_ack(3)
    assert ack.type == 5 and not ack.ephemeral
    await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    await space.resume()
    final = await wait_result(rec, timeout=120)

    edits = [r for r in rec.accepted if r.kind == "edit"]
    assert edits[0].content.startswith("⏳ Queued: #1 in line"), edits[0].content
    assert edits[-1] is final, "something was edited after the result"
    # queued (and position/ETA updates) → progress (when the job ran long enough to owe one) → the result
    shape = "".join("R" if r is final else "Q" if r.content.startswith("⏳ Queued: #") and not r.files
                    else "P" if r.content.startswith(PROGRESS_PREFIXES) and not r.files else "?" for r in edits)
    assert re.fullmatch(r"Q+P*R", shape), [r.content for r in edits]
    assert [r.at for r in rec.accepted] == sorted(r.at for r in rec.accepted)
    assert not [r for r in rec.rejected if r.status != 429], [(r.kind, r.status, r.response) for r in rec.rejected]
    job_id = job_id_of(rec)
    (row,) = space.bot.jobs("id = ?", (job_id,))
    _check_progress_promise(space, edits, final, row)

    upload = result_file(rec)
    assert upload.filename.endswith(".png")
    meta = read_png_metadata(upload.data)
    params = meta["params"]
    assert params["prompt"] == "a red fox in the snow" and params["seeds"] == [4242]
    assert params["steps"] == 50 and (params["width"], params["height"]) == (512, 512)
    assert params["blend_mode"] == "adain" and params["alpha"] == pytest.approx(style_weight_to_alpha(250))
    assert params["reference"] == [64, 48]
    assert meta["job_id"] == job_id and meta["resolved"]["style_weight"] == 250
    assert Image.open(io.BytesIO(upload.data)).size == (512, 512)
    fields = {f["name"]: f["value"] for f in final.data["embeds"][0]["fields"]}
    assert fields["Seed"] == "4242" and fields["Steps"] == "50"

    message = space.fake.message(rec.original_message_id)  # the public message everyone sees
    assert message["attachments"][0]["filename"] == upload.filename and not message["flags"] & 64
    assert row["status"] == "done" and row["message_id"] == rec.original_message_id


#: Attachments that are not references: (bytes, file name, the refusal's words, refused from Discord's metadata?).
BAD_ATTACHMENTS = [
    pytest.param(b"These are my notes, not a picture.\n" * 20, "notes.png", "not an image Discord could read", True,
                 id="text-renamed-png"),
    pytest.param(png_bytes((3000, 1)), "thin.png", "3000x1 pixels, too thin to read", True, id="3000x1"),
    pytest.param(png_bytes((256, 256), (1, 2, 3))[:300], "broken.png", "corrupt or truncated", False,
                 id="corrupt-png"),
]


@pytest.mark.parametrize("data, name, expected, from_metadata", BAD_ATTACHMENTS)
async def test_bad_attachment_is_refused_privately_then_the_next_request_works(space, data: bytes, name: str,
                                                                             expected: str,
                                                                             from_metadata: bool) -> None:
    """What Discord's attachment metadata rules out (no pixel size for a "PNG", a 3000×1 strip) is one immediate
    ephemeral reply, with no public "thinking…" first; what only decoding shows comes after a private defer."""
    user = space.member("bob")
    bad = await space.stylize(user, image=space.ref(data, name, "image/png"))
    ack = await bad.wait_ack(3)
    assert (ack.type, ack.ephemeral) == ((4, True) if from_metadata else (5, False)), (ack.type, ack.ephemeral)
    await bad.wait_until(lambda r: bool(ephemeral_texts(r)), timeout=30)
    (text,) = ephemeral_texts(bad)
    assert expected in text and "Traceback" not in text and len(text) < 300, text
    if from_metadata:
        assert [r.kind for r in bad.accepted] == ["callback"], "more than the one immediate reply"
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
