"""Style codes and /describe through the real bot process and the fake Discord.

* A result shows its reference's style code; ``/stylize style:<code>`` reuses the stored reference with no
  attachment (from the embedding cache), and again after a restart whose cache lost its files (the extraction is
  rebuilt from the stored reference); the code is refused in another server, and once the reference expired the
  user is told so in one line. ``/style list | show | forget``.
* ``/describe`` answers with 4 suggestions and buttons 1…4; pressing 3 starts a /stylize with suggestion 3 as the
  prompt and the same reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.media.images import read_png_metadata
from tests.e2e.botproc import ephemeral_texts, job_id_of, png_bytes, result_file, result_request, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]


def _style_code(rec) -> str:
    embed = result_request(rec).data["embeds"][0]
    (value,) = [f["value"] for f in embed["fields"] if f["name"] == "Style code"]
    return value.split("`")[1]


async def _refusal(rec) -> str:
    await rec.wait_ack(5)
    await rec.wait_until(lambda r: bool(ephemeral_texts(r)), timeout=30)
    (text,) = ephemeral_texts(rec)
    return text


async def test_a_style_code_reuses_the_reference_across_a_restart_and_only_in_its_server(space) -> None:
    fake, bot = space.fake, space.bot
    alice = space.member("alice")
    first = await space.stylize(alice, prompt="a lighthouse", seed=3)
    await wait_result(first, timeout=120)
    code = _style_code(first)
    sha = read_png_metadata(result_file(first).data)["reference_sha256"]
    assert len(code) == 8 and int(code, 16) >= 0

    again = await space.slash("stylize", {"style": code, "prompt": "a lighthouse", "seed": 3}, alice)
    await wait_result(again, timeout=120)
    meta = read_png_metadata(result_file(again).data)
    assert meta["reference_sha256"] == sha and _style_code(again) == code
    (row,) = bot.jobs("id = ?", (meta["job_id"],))
    assert "vl" not in row["timings"], "the extraction should have come from the embedding cache"

    listed = await space.slash("style", {}, alice, subcommand="list")
    ack = await listed.wait_ack(5)
    assert ack.ephemeral and f"`{code}`" in json.dumps(ack.data["embeds"])

    assert await bot.stop() == 0
    shutil.rmtree(Path(bot.data_dir) / "cache", ignore_errors=True)  # every cached embedding is gone
    await bot.start()
    after = await space.slash("stylize", {"style": code.upper(), "prompt": "after the restart"}, alice)
    await wait_result(after, timeout=120)
    meta = read_png_metadata(result_file(after).data)
    assert meta["reference_sha256"] == sha and meta["params"]["prompt"] == "after the restart"
    (row,) = bot.jobs("id = ?", (meta["job_id"],))
    assert row["timings"]["vl"] > 0, "the evicted extraction should have been rebuilt from the stored reference"

    elsewhere = fake.add_guild("another server")
    fake.add_member(elsewhere.id, alice.id)
    await fake.announce_guild(elsewhere.id)
    refused = await fake.dispatch_slash("stylize", {"style": code}, guild_id=elsewhere.id, user_id=alice.id)
    text = await _refusal(refused)
    assert text.startswith(f"style: there is no style {code} in this server"), text
    assert bot.jobs("guild_id = ?", (elsewhere.id,)) == []

    neither = await space.slash("stylize", {"prompt": "no reference"}, alice)
    assert (await _refusal(neither)).startswith("Attach a reference image, or give `style:` a style code")
    both = await space.slash("stylize", {"style": code, "image": space.ref(png_bytes(colour=(20, 200, 60)))}, alice)
    await wait_result(both, timeout=120)  # several references (issue 15): the attachment first, then the code
    mixed = read_png_metadata(result_file(both).data)
    assert [r["sha256"] for r in mixed["references"]][1] == sha and len(mixed["style_codes"]) == 2
    bad = await space.slash("stylize", {"style": f"{code}::2"}, alice)
    assert "style: a weight (::2) only matters when several references are mixed" in await _refusal(bad)

    shown = await space.slash("style", {"code": code}, alice, subcommand="show")
    await shown.wait_ack(5)
    assert [f.filename for f in shown.files] == [f"style-{code}.png"]

    (Path(bot.data_dir) / "references" / f"{sha}.png").unlink()  # what retention does to an unused reference
    expired = await space.slash("stylize", {"style": code}, alice)
    text = await _refusal(expired)
    assert text.startswith(f"style: the reference image of style {code} expired under the retention policy"), text
    assert "\n" not in text

    forgot = await space.slash("style", {"code": code}, alice, subcommand="forget")
    assert (await forgot.wait_ack(5)).content == f"Forgot style {code}."
    gone = await space.slash("stylize", {"style": code}, alice)
    assert "there is no style" in await _refusal(gone)


def _suggestion_buttons(request) -> list[str]:
    return [c["custom_id"] for row in request.data.get("components") or [] for c in row.get("components", [])
            if c.get("custom_id", "").startswith("zvl:suggest:")]


async def test_describe_returns_four_suggestions_and_a_button_stylizes_with_one(space) -> None:
    bot = space.bot
    owner, stranger = space.member("owner"), space.member("stranger")
    described = await space.slash("describe", {"image": space.ref()}, owner)
    await described.wait_ack(3)
    await described.wait_until(lambda r: any(_suggestion_buttons(q) for q in r.accepted), timeout=120)
    result = next(q for q in described.accepted if _suggestion_buttons(q))
    job_id = job_id_of(described)
    assert _suggestion_buttons(result) == [f"zvl:suggest:{job_id}:{i}" for i in range(1, 5)]
    embed = result.data["embeds"][0]
    assert embed["title"] == "Prompt suggestions" and [line[:6] for line in embed["description"].split("\n")] == \
        ["**1.**", "**2.**", "**3.**", "**4.**"]
    (row,) = bot.jobs("id = ?", (job_id,))
    assert row["kind"] == "describe" and row["status"] == "done" and "dit" not in row["timings"]
    stored = json.loads(Path(row["result_paths"][0]).read_text())
    suggestions = stored["suggestions"]
    assert len(suggestions) == 4 and all(1 <= n <= 48 for n in stored["new_tokens"])

    message_id = described.original_message_id
    refused = await space.fake.dispatch_component(message_id, f"zvl:suggest:{job_id}:3", user_id=stranger.id)
    ack = await refused.wait_ack(3)
    assert ack.ephemeral and "Only the person who asked" in ack.content

    pressed = await space.fake.dispatch_component(message_id, f"zvl:suggest:{job_id}:3", user_id=owner.id)
    assert (await pressed.wait_ack(3)).type == 5
    await wait_result(pressed, timeout=120)
    meta = read_png_metadata(result_file(pressed).data)
    assert meta["params"]["prompt"] == suggestions[2]
    assert meta["reference_sha256"] == row["params"]["reference"]["sha256"]
    (job,) = bot.jobs("id = ?", (meta["job_id"],))
    assert job["kind"] == "stylize" and job["params"]["source_job"] == job_id and job["params"]["suggestion"] == 3
    assert job["owner_id"] == owner.id
