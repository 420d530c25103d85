"""/stylize against the fake Discord: acknowledgement, queue/progress edits, the result (PNG with metadata, embed,
buttons), parameter resolution, privacy, refusals of bad attachments, upload-size fallbacks, the 15-minute rule."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from pathlib import Path

import pytest
from PIL import Image

from bot.store import JobStatus
from engine.media.images import read_metadata, read_png_metadata
from engine.types import BlendMode, style_weight_to_alpha
from tests.bot.harness import FakePipeline, make_settings, png, running_bot, wait_for
from tests.fakediscord import FakeDiscord, InteractionRecord

pytestmark = pytest.mark.timeout(60)
SMALL = {"size": "1:1 small"}


def attach(fake: FakeDiscord, data: bytes | None = None, name: str = "ref.png", ctype: str | None = "image/png",
           **extra) -> dict:
    return fake.add_attachment(png() if data is None else data, name, ctype, **extra)


async def result_of(rec: InteractionRecord, timeout: float = 15):
    """The accepted request that carried the result file."""
    await rec.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=timeout)
    return next(r for r in rec.accepted if any(f.filename.startswith("zvl-") for f in r.files))


async def test_stylize_defers_then_edits_into_the_result(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    """Deferred publicly within the 3 s; the placeholder becomes the status and then the result: a PNG with every
    parameter in its metadata, an embed with parameters, seed and timings, and the five result buttons."""
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "prompt": "a red fox", "seed": 1234,
                                                "style_weight": 250, **SMALL})
    ack = await rec.wait_ack(2)
    assert ack.type == 5 and not ack.ephemeral
    final = await result_of(rec)
    (upload,) = final.files
    meta = read_png_metadata(upload.data)
    assert meta["params"]["seeds"] == [1234] and meta["params"]["prompt"] == "a red fox"
    assert meta["params"]["alpha"] == pytest.approx(style_weight_to_alpha(250))
    assert Image.open(io.BytesIO(upload.data)).size == (512, 512)
    embed = final.data["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Seed"] == "1234" and fields["Style weight"].startswith("250") and "total" in fields["Timings"]
    buttons = [c["custom_id"] for row in final.data["components"] for c in row["components"]]
    job_id = embed["footer"]["text"].removeprefix("job ")
    assert buttons == [f"zvl:{a}:{job_id}" for a in ("reroll", "vary", "defaults", "preset", "delete")]
    message = fake.message(rec.original_message_id)
    assert message["attachments"][0]["filename"] == upload.filename and not message["flags"] & 64
    row = await bot.services.store.jobs.get(job_id)
    assert row.status is JobStatus.DONE and Path(row.result_paths[0]).is_file()
    assert row.message_id == rec.original_message_id
    (request,) = pipeline.requests
    assert request.reference is not None and request.reference.size == (64, 48)


async def test_status_shows_queue_and_throttled_progress(fake: FakeDiscord, tmp_path: Path) -> None:
    """While a job is held: the status says queued/running with a Cancel button; progress edits are spaced by the
    interval; the final edit comes at once."""
    gate = threading.Event()
    interval = 0.4
    pipeline = FakePipeline(gate=gate, step_s=0.05)
    async with running_bot(make_settings(tmp_path, fake), pipeline, progress_interval=interval):
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "steps": 20, **SMALL})
        await rec.wait_ack(2)
        await rec.wait_until(lambda r: len(r.edits) >= 1)
        first = rec.edits[0]
        assert first.content.startswith("⏳ Queued: #1")
        assert first.data["components"][0]["components"][0]["custom_id"].startswith("zvl:cancel:")
        await asyncio.sleep(0.5)
        gate.set()
        await result_of(rec)
        progress = [r for r in rec.edits if not r.files]
        times = [r.at for r in progress]
        assert len(times) >= 2 and all(b - a >= interval - 0.05 for a, b in zip(times, times[1:]))
        assert any(r.content.startswith("🎨 Step") for r in progress)


async def test_parameters_resolve_from_defaults_and_preset(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    """Options > /defaults > preset > settings, all the way into the engine request."""
    guild = next(iter(fake.world.guilds.values()))
    await bot.services.store.defaults.set(fake.default_user.id, {"blend_mode": "adain", "steps": 5})
    await bot.services.store.presets.save(guild.id, "ink", {"steps": 11, "tokens": "image", "layer": -4}, 1)
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "preset": "ink", "layer": -2, **SMALL})
    await result_of(rec)
    (request,) = pipeline.requests
    assert (request.blend_mode, request.steps, request.tokens.value, request.hidden_layer) == (
        BlendMode.ADAIN, 5, "image", -2)
    assert (await bot.services.store.presets.get(guild.id, "ink")).uses == 1


async def test_unknown_preset_is_refused_privately(fake: FakeDiscord, bot) -> None:
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "preset": "nope", **SMALL})
    await rec.wait_followups(1)
    assert rec.followups[-1].ephemeral and "no preset called" in rec.followups[-1].content
    with pytest.raises(Exception):
        fake.message(rec.original_message_id)  # the public "thinking…" was removed


async def test_private_results_are_ephemeral(fake: FakeDiscord, bot) -> None:
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "private": True, **SMALL})
    assert (await rec.wait_ack(2)).ephemeral
    await result_of(rec)
    assert fake.message(rec.original_message_id)["flags"] & 64
    guild = next(iter(fake.world.guilds.values()))
    assert fake.channel_messages(guild.first_text_channel().id) == []


def bomb() -> bytes:
    return png((3000, 3000), mode="1")


def truncated() -> bytes:
    return png((256, 256), colour=(1, 2, 3))[:300]


@pytest.mark.parametrize("data, ctype, extra, expected, before_download", [
    (b"x" * (1 << 20 | 1), "image/png", {}, "too large", True),
    (b"hello", "text/plain", {}, "is not an image", True),
    (png(), "image/png", {"width": 8000, "height": 8000}, "too large when decoded", True),
    (png(fmt="JPEG"), "image/png", {}, "claims to be image/png", False),
    (bomb(), "image/png", {}, "too large when decoded", True),  # Discord declares its 3000×3000
    (bomb(), "image/png", {"width": 30, "height": 30}, "too large when decoded", False),  # declared size lies
    (truncated(), "image/png", {}, "corrupt or truncated", False),  # its header still declares a size
    (b"", "image/png", {}, "not an image Discord could read", True),
    (b"These are my notes, not a picture.\n" * 20, "image/png", {}, "not an image Discord could read", True),
    (b"\x00\x01garbage" * 10, None, {}, "not a supported image", False),
    (png((3000, 1)), "image/png", {}, "too thin to read", True),
    (png((1, 202)), "image/png", {}, "too thin to read", True),
    (png((404, 2), fmt="BMP"), "image/bmp", {}, "too thin to read", False),  # no declared size for a BMP
])
async def test_bad_attachments_are_refused_privately(fake: FakeDiscord, tmp_path: Path, data: bytes,
                                                     ctype: str | None, extra: dict, expected: str,
                                                     before_download: bool) -> None:
    """Each bad reference gets one short ephemeral refusal, no job, nothing public; metadata checks need no
    download."""
    settings = make_settings(tmp_path, fake, max_upload_bytes=1 << 20, max_reference_pixels=4_000_000)
    async with running_bot(settings) as bot:
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake, data, "ref.bin", ctype, **extra)})
        await rec.wait_until(lambda r: any(q.data.get("flags", 0) & 64 and q.content for q in r.accepted))
        refusal = next(q for q in rec.accepted if q.data.get("flags", 0) & 64 and q.content)
        assert expected in refusal.content and "Traceback" not in refusal.content
        assert len(refusal.content) < 300
        downloaded = any("/cdn/" in r.path for r in fake.requests)
        assert downloaded is not before_download
        assert (refusal.kind == "callback") is before_download
        assert await bot.services.store.jobs.list_active() == []
        assert fake.channel_messages(rec.channel_id) == []


async def test_exif_rotation_and_alpha_are_sanitised(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    """A transparent palette GIF arrives in the engine as RGB (first frame)."""
    frames = [Image.new("P", (40, 20), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], transparency=0)
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake, buf.getvalue(), "a.gif", "image/gif"), **SMALL})
    await result_of(rec)
    assert pipeline.requests[0].reference.mode == "RGB" and pipeline.requests[0].reference.size == (40, 20)


async def test_result_over_the_guild_limit_falls_back_to_a_smaller_format(fake: FakeDiscord, tmp_path: Path) -> None:
    """A guild whose upload limit is below the PNG's size gets a WebP/JPEG that fits."""
    small = fake.add_guild("Small uploads", file_size_limit=300_000)
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(noise=True)):
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL}, guild_id=small.id)
        final = await result_of(rec)
        (upload,) = final.files
        assert upload.size <= 300_000 and upload.filename.endswith((".webp", ".jpg"))
        assert read_metadata(upload.data)["job_id"]


async def test_a_lower_enforced_limit_is_retried_smaller(fake: FakeDiscord, tmp_path: Path) -> None:
    """Discord announced 10 MiB but refuses more than 250 KB (413): the bot halves its limit until it fits."""
    gate = threading.Event()
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(noise=True, gate=gate)):
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await rec.wait_until(lambda r: len(r.edits) >= 1)
        next(iter(fake.world.guilds.values())).file_size_limit = 250_000
        gate.set()
        final = await result_of(rec)
        assert final.files[0].size <= 250_000
        assert any(r.status == 413 for r in rec.requests)


async def test_results_after_the_token_expires_use_the_bot_token(fake: FakeDiscord, tmp_path: Path) -> None:
    """A job finishing after the 15-minute token: the status message is edited through the channel endpoint."""
    gate = threading.Event()
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(gate=gate)):
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await rec.wait_until(lambda r: len(r.edits) >= 1)
        fake.advance_time(15 * 60 + 5)
        gate.set()
        mid = rec.original_message_id
        await wait_for(lambda: fake.message(mid)["attachments"], what="the result on the status message")
        patches = [r for r in fake.requests if r.method == "PATCH" and r.path.endswith(f"/messages/{mid}")
                   and "/channels/" in r.path]
        assert patches and patches[-1].status == 200
        assert fake.message(mid)["embeds"][0]["title"] == "Stylized"


async def test_queue_cap_is_a_private_refusal(fake: FakeDiscord, tmp_path: Path) -> None:
    gate = threading.Event()
    async with running_bot(make_settings(tmp_path, fake, max_jobs_per_user=1), FakePipeline(gate=gate)):
        first = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await first.wait_until(lambda r: len(r.edits) >= 1)
        second = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await second.wait_followups(1)
        assert second.followups[-1].ephemeral and "limit is 1" in second.followups[-1].content
        gate.set()
        await result_of(first)


async def test_cooldown_applies_per_user(fake: FakeDiscord, tmp_path: Path) -> None:
    """One cooldown across generation commands, started by an accepted job (a refused one costs nothing)."""
    async with running_bot(make_settings(tmp_path, fake, cooldown_s=30)):
        refused = await fake.dispatch_slash("stylize", {"image": attach(fake, b"no", "a.txt", "text/plain")})
        assert "not an image" in (await refused.wait_ack(2)).content
        first = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await result_of(first)
        again = await fake.dispatch_slash("sweep", {"image": attach(fake), "alphas": "0.5"})
        ack = await again.wait_ack(2)
        assert ack.type == 4 and ack.ephemeral and "try again in" in ack.content


async def test_engine_failure_is_reported_on_the_status_message(fake: FakeDiscord, tmp_path: Path) -> None:
    """A job the engine fails: the status message says why in user words; no traceback anywhere."""
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(fail=RuntimeError("CUDA kernel died"))):
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await rec.wait_until(lambda r: any((q.content or "").startswith("❌") for q in r.edits), timeout=10)
        text = next(q.content for q in rec.edits if (q.content or "").startswith("❌"))
        assert "generation failed" in text and "CUDA" not in text


async def test_a_deleted_status_message_gets_a_new_result_message(fake: FakeDiscord, tmp_path: Path) -> None:
    """Someone deleted the status message while the job ran: the result is posted as a new message, mentioning
    the requester."""
    gate = threading.Event()
    async with running_bot(make_settings(tmp_path, fake), FakePipeline(gate=gate)):
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        await rec.wait_until(lambda r: len(r.edits) >= 1)
        fake.world.delete_message(rec.original_message_id)
        gate.set()
        (message,) = await fake.wait_channel_messages(rec.channel_id, 1, timeout=10)
        assert message["content"].startswith(f"<@{fake.default_user.id}>")
        assert message["attachments"][0]["filename"].startswith("zvl-")


async def test_new_jobs_are_refused_while_shutting_down(fake: FakeDiscord, bot) -> None:
    bot.services.jobs.closing = True
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
    ack = await rec.wait_ack(2)
    assert ack.ephemeral and "restarting" in ack.content


async def test_logs_carry_the_job_id_never_the_token(fake: FakeDiscord, bot, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
    final = await result_of(rec)
    job_id = final.data["embeds"][0]["footer"]["text"].removeprefix("job ")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("bot", "engine", "cogs"))]
    assert any(job_id in m for m in ours)
    assert not any(rec.token in m for m in ours)


async def test_refused_where_the_bot_cannot_attach_files(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    """Results are files: a channel where the bot may not attach them gets an ephemeral reason, and no job."""
    no_attach = (1 << 10) | (1 << 11) | (1 << 14)  # view channel, send messages, embed links
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "prompt": "a fox", **SMALL},
                                    app_permissions=no_attach)
    ack = await rec.wait_ack(2)
    assert ack.ephemeral and "Attach Files" in ack.content
    assert pipeline.requests == []


async def test_schedule_and_selection_reach_the_request(fake: FakeDiscord, bot, pipeline: FakePipeline) -> None:
    """/stylize style_schedule / append_selection, and a user's default of one, go all the way into the request."""
    await bot.services.store.defaults.set(fake.default_user.id, {"append_selection": "attention"})
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), "prompt": "a fox", "blend_mode": "append",
                                                "style_schedule": "late", **SMALL})
    await result_of(rec)
    (request,) = pipeline.requests
    assert (request.style_schedule.value, request.append_selection.value) == ("late", "attention")
