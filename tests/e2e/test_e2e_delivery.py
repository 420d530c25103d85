"""The real bot process: results reach Discord despite a gateway drop, 429s, a low upload limit and an expired
interaction token."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time

import pytest
from PIL import Image

from engine.media.images import read_metadata, read_png_metadata
from tests.e2e.botproc import job_id_of, result_file, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]

SLOW = {"size": "1:1 small", "steps": 50}  # a few seconds on the tiny models


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_gateway_drop_mid_job_still_delivers(space) -> None:
    """The websocket is cut (TCP abort) while the job runs: the result still arrives (REST needs no gateway), the
    bot resumes its session, and the next command works."""
    fake, bot = space.fake, space.bot
    user = space.member("drop")
    rec = await space.stylize(user, prompt="through the storm", **SLOW)
    await rec.wait_ack(3)
    await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    job_id = job_id_of(rec)
    await until(lambda: bot.jobs("id = ? AND status = 'running'", (job_id,)), 60, "the job to start running")
    resumes, connections = fake.gateway.resumes, len(fake.connections)
    await fake.drop_gateway(None)
    await wait_result(rec, timeout=120)
    assert read_png_metadata(result_file(rec).data)["params"]["prompt"] == "through the storm"
    await fake.wait_resumed(resumes + 1, timeout=60)
    assert len(fake.connections) > connections
    after = await space.stylize(user, prompt="after the drop")
    await after.wait_ack(3)
    await wait_result(after)


def limited(fake, token: str) -> list:
    return [r for r in fake.requests if r.status == 429 and token in r.path]


async def test_429_on_the_result_edit_is_retried_and_delivered(space) -> None:
    """The interaction webhook answers 429 (with Retry-After and Via, as Discord does) to the next two requests after
    the queued status (the result edit, or a progress edit just before it): discord.py waits and retries, and the
    result is delivered, once."""
    fake = space.fake
    user = space.member("limited")
    await space.pause()
    rec = await space.stylize(user, prompt="slow down")
    await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    fake.rate_limit("*", rf"^/webhooks/\d+/{re.escape(rec.token)}", times=2, retry_after=0.3)
    await space.resume()
    final = await wait_result(rec, timeout=60)
    hits = limited(fake, rec.token)
    assert len(hits) == 2, hits
    assert sum(1 for r in rec.accepted if r.files) == 1 and final.files[0].filename.endswith(".png")
    assert fake.message(rec.original_message_id)["attachments"]


async def test_429_on_a_follow_up_is_retried_and_delivered(space) -> None:
    """A follow-up message (POST to the interaction webhook: /admin reload's answer) rate-limited once."""
    fake = space.fake
    rec = await space.slash("admin", {"component": "text"}, space.admin, subcommand="reload")
    fake.rate_limit("POST", rf"^/webhooks/\d+/{re.escape(rec.token)}$", times=1, retry_after=0.5)
    assert (await rec.wait_ack(3)).type == 5
    (followup,) = await rec.wait_followups(1, timeout=60)
    assert followup.content.startswith("✅ Reloaded text") and followup.ephemeral
    assert len(limited(fake, rec.token)) == 1


async def test_over_limit_sweep_grid_falls_back_to_a_smaller_file(space) -> None:
    """The same sweep in a server whose upload limit is half the PNG grid's size: a smaller grid that fits, still
    labelled with the job (metadata), plus cells.json."""
    fake = space.fake
    user = space.member("sweeper")
    options = {"alphas": "0.2,0.5,0.8", "seed": 3, "prompt": "a grid"}
    big = await space.slash("sweep", {"image": space.ref(), **options}, user)
    await big.wait_ack(3)
    await big.wait_until(lambda r: any(f.filename == "cells.json" for f in r.files), timeout=120)
    png_grid = next(f for f in big.files if f.filename.startswith("zvl-sweep-"))
    assert png_grid.filename.endswith(".png")
    limit = png_grid.size // 2

    small = fake.add_guild(f"small uploads {space.guild.id % 1000}", file_size_limit=limit)
    fake.add_member(small.id, user.id)
    fake.add_member(small.id, space.admin.id)
    await fake.announce_guild(small.id)
    rec = await fake.dispatch_slash("sweep", {"image": space.ref(), **options}, guild_id=small.id, user_id=user.id)
    await rec.wait_ack(3)
    await rec.wait_until(lambda r: any(f.filename == "cells.json" for f in r.files), timeout=120)
    final = next(r for r in rec.accepted if any(f.filename == "cells.json" for f in r.files))
    grid = next(f for f in final.files if f.filename.startswith("zvl-sweep-"))
    assert grid.size <= limit < png_grid.size, (grid.filename, grid.size, limit)
    Image.open(io.BytesIO(grid.data)).verify()
    assert read_metadata(grid.data)["job_id"] == job_id_of(rec)
    cells = json.loads(next(f for f in final.files if f.filename == "cells.json").data)
    assert [c["params"]["alpha"] for c in cells["cells"]] == [0.0, 0.2, 0.5, 0.8]
    assert not [r for r in rec.rejected if r.status == 413], "the bot uploaded more than the announced limit"


async def test_result_after_the_token_expired_goes_through_the_bot_token(space) -> None:
    """A job that finishes 16 minutes after its interaction: the webhook refuses the token (401), and the status
    message in the channel is edited with the bot token instead."""
    fake = space.fake
    user = space.member("late")
    await space.pause()
    rec = await space.stylize(user, prompt="much later")
    await rec.wait_until(lambda r: len(r.edits) >= 1, timeout=30)
    message_id = rec.original_message_id
    fake.advance_time(16 * 60)
    await space.resume()
    await until(lambda: fake.message(message_id)["attachments"], 60, "the result on the status message")

    message = fake.message(message_id)
    assert message["embeds"][0]["title"] == "Stylized" and f"<@{user.id}>" in message["content"]
    channel_edits = [r for r in fake.requests if r.method == "PATCH"
                     and r.path.endswith(f"/channels/{space.channel_id}/messages/{message_id}")]
    assert channel_edits and all(r.status == 200 for r in channel_edits)
    refused = [r for r in fake.requests if rec.token in r.path and r.status == 401]
    assert refused, "the expired webhook was not tried (or not refused)"
    assert not [r for r in rec.accepted if r.files], "a file went through the expired webhook"
    assert message["attachments"][0]["filename"].startswith("zvl-")
