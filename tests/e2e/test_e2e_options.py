"""The real bot process: option values out of range are refused where the command is parsed (issue 12), and a
prompt's control characters never reach the public result card."""

from __future__ import annotations

import pytest

from tests.e2e.botproc import ephemeral_texts, wait_result

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


@pytest.mark.parametrize(
    ("option", "value", "range_text"),
    [
        ("steps", 1000, "between 1 and 100"),
        ("seed", -1, "between 0 and 4294967295"),
        ("size", "abc", "one of 1:1"),
        ("prompt", "x" * 5000, "1 to 1500 characters"),
    ],
    ids=["steps", "seed", "size", "prompt"],
)
async def test_out_of_range_options_get_one_private_refusal(space, option: str, value: object,
                                                            range_text: str) -> None:
    """One ephemeral answer naming the option and its range; nothing public, no job (the bot logs no traceback:
    the ``bot`` fixture checks its log at the end)."""
    user = space.member("mallory")
    rec = await space.stylize(user, **{"size": "1:1 small", option: value})
    ack = await rec.wait_ack(3)
    await rec.wait_settled(5)
    assert ack.type == 4 and ack.ephemeral
    (text,) = ephemeral_texts(rec)
    assert f"`{option}`" in text and range_text in text and "went wrong" not in text
    assert rec.files == [] and space.fake.channel_messages(space.channel_id) == []
    queue = await space.slash("queue", {}, user, subcommand="show")
    listing = await queue.wait_ack(5)
    assert "Nothing queued" in str(listing.data["embeds"][0])  # no job row for this user, queued or finished


async def test_control_characters_are_removed_from_the_result_card(space) -> None:
    user = space.member("carol")
    prompt = "a \u202eFOX\u202c in \x1b[31mred\x1b[0m snow"
    rec = await space.stylize(user, prompt=prompt, size="1:1 small")
    final = await wait_result(rec, timeout=120)
    description = final.data["embeds"][0]["description"]
    assert description == "a FOX in red snow"
    assert not any(ch in description for ch in ("\u202e", "\u202c", "\x1b"))
