"""Option values are checked where a command is parsed (issue 12): the fake sends what Discord's UI would refuse,
as any API client can. A value out of range (or not one of the choices) gets ONE ephemeral message naming the option
and its range; no job row, nothing queued, no cooldown spent. The ends of each range are accepted.

The expected ranges are written out here by hand, not read from ``engine.limits``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bot.harness import FakePipeline, make_settings, png, running_bot
from tests.fakediscord import FakeDiscord, InteractionRecord

pytestmark = pytest.mark.timeout(60)
SMALL = {"size": "1:1 small"}

#: (option, bad value, the range the refusal must state)
BAD_STYLIZE = [
    ("style_weight", -5, "between 0 and 1000"),
    ("style_weight", 100000, "between 0 and 1000"),
    ("steps", 0, "between 1 and 100"),
    ("steps", 101, "between 1 and 100"),
    ("steps", 1000, "between 1 and 100"),
    ("seed", -1, "between 0 and 4294967295"),
    ("seed", 2**32, "between 0 and 4294967295"),
    ("seed", 2**63, "between 0 and 4294967295"),
    ("layer", 0, "between -64 and -1"),
    ("layer", -65, "between -64 and -1"),
    ("strength", 0, "between 0.05 and 1"),
    ("strength", 1.5, "between 0.05 and 1"),
    ("size", "abc", "one of 1:1, 3:2, 2:3"),
    ("blend_mode", "nope", "one of pool, append, linear"),
    ("tokens", "nope", "one of full, image, image_no_markers, text"),
    ("prompt", "x" * 5000, "1 to 1500 characters"),
]


def attach(fake: FakeDiscord) -> dict:
    return fake.add_attachment(png(), "ref.png", "image/png")


async def job_rows(bot) -> int:
    async with bot.services.store.conn.execute("SELECT COUNT(*) FROM jobs") as cursor:
        (count,) = await cursor.fetchone()
    return int(count)


async def assert_one_refusal(rec: InteractionRecord, option: str, range_text: str) -> None:
    ack = await rec.wait_ack(2)
    await rec.wait_settled(2)
    assert ack.type == 4 and ack.ephemeral, ack
    assert f"`{option}`" in ack.content and range_text in ack.content, ack.content
    assert "went wrong" not in ack.content
    assert [r.kind for r in rec.accepted] == [ack.kind] and rec.followups == []


async def result_of(rec: InteractionRecord):
    await rec.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=15)
    return next(r for r in rec.accepted if any(f.filename.startswith("zvl-") for f in r.files))


@pytest.mark.parametrize(("option", "value", "range_text"), BAD_STYLIZE, ids=lambda v: str(v)[:20])
async def test_a_bad_stylize_option_is_refused_before_anything_runs(
        fake: FakeDiscord, tmp_path: Path, option: str, value: object, range_text: str) -> None:
    """With a long cooldown on: the refusal spends none, so the next valid /stylize is accepted, and that one does
    start the cooldown (proof that the cooldown was armed all along)."""
    pipeline = FakePipeline()
    async with running_bot(make_settings(tmp_path, fake, cooldown_s=600), pipeline) as bot:
        rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL, option: value})
        await assert_one_refusal(rec, option, range_text)
        assert await job_rows(bot) == 0 and pipeline.requests == []
        assert await bot.services.worker.jobs_for(fake.default_user.id) == []
        assert not any("/cdn/" in r.path for r in fake.requests)  # the reference was not even downloaded

        valid = await fake.dispatch_slash("stylize", {"image": attach(fake), "prompt": "a fox", **SMALL})
        assert (await valid.wait_ack(2)).type == 5
        await result_of(valid)
        assert await job_rows(bot) == 1 and len(pipeline.requests) == 1
        again = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL})
        assert "Slow down" in (await again.wait_ack(2)).content


#: (command, subcommand, the other options, option, bad value, range text): every other command taking these options.
BAD_ELSEWHERE = [
    ("sweep", None, {"alphas": "0.2,0.5"}, "steps", 1000, "between 1 and 100"),
    ("sweep", None, {"alphas": "0.2,0.5"}, "seed", -1, "between 0 and 4294967295"),
    ("sweep", None, {"alphas": "0.2,0.5"}, "size", "abc", "one of 1:1"),
    ("sweep", None, {}, "preset", "nope", "one of alpha, layer"),
    ("sweep", None, {"alphas": "0.2,0.5"}, "prompt", "x" * 5000, "1 to 1500 characters"),
    ("blendmode", "compare", {}, "style_weight", 100000, "between 0 and 1000"),
    ("blendmode", "compare", {}, "size", "abc", "one of 1:1"),
    ("preset", "use", {"name": "ink"}, "seed", 2**63, "between 0 and 4294967295"),
    ("preset", "use", {"name": "ink"}, "prompt", "x" * 5000, "1 to 1500 characters"),
]
BAD_SETTINGS = [
    ("defaults", "set", "steps", 0, "between 1 and 100"),
    ("defaults", "set", "seed", 2**32, "between 0 and 4294967295"),
    ("defaults", "set", "layer", -65, "between -64 and -1"),
    ("defaults", "set", "size", "abc", "one of 1:1"),
    ("defaults", "set", "tokens", "nope", "one of full"),
    ("defaults", "reset", "setting", "nope", "one of append_selection, blend_mode"),
    ("blendmode", "set", "mode", "nope", "one of pool"),
    ("preset", "save", "style_weight", -5, "between 0 and 1000"),
    ("preset", "save", "blend_mode", "nope", "one of pool"),
]


@pytest.mark.parametrize(("command", "sub", "others", "option", "value", "range_text"), BAD_ELSEWHERE,
                         ids=lambda v: str(v)[:20])
async def test_bad_options_of_other_generation_commands(fake: FakeDiscord, bot, pipeline, command: str,
                                                        sub: str | None, others: dict, option: str, value: object,
                                                        range_text: str) -> None:
    rec = await fake.dispatch_slash(command, {"image": attach(fake), **others, option: value}, subcommand=sub)
    await assert_one_refusal(rec, option, range_text)
    assert await job_rows(bot) == 0 and pipeline.requests == []


@pytest.mark.parametrize(("command", "sub", "option", "value", "range_text"), BAD_SETTINGS, ids=lambda v: str(v)[:20])
async def test_bad_options_of_settings_commands_store_nothing(fake: FakeDiscord, bot, command: str, sub: str,
                                                              option: str, value: object, range_text: str) -> None:
    guild = next(iter(fake.world.guilds.values()))
    others = {"name": "ink"} if (command, sub) == ("preset", "save") else {}
    rec = await fake.dispatch_slash(command, {**others, option: value}, subcommand=sub, user_id=guild.owner_id)
    await assert_one_refusal(rec, option, range_text)
    assert await bot.services.store.defaults.get(guild.owner_id) == {}
    assert await bot.services.store.presets.list(guild.id) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"steps": 100}, {"steps": 100}),
        ({"steps": 1}, {"steps": 1}),
        ({"seed": 2**32 - 1}, {"seeds": (2**32 - 1,)}),
        ({"seed": 0}, {"seeds": (0,)}),
        ({"style_weight": 0}, {"alpha": 0.0}),
        ({"style_weight": 1000}, {"alpha": 1.0}),
        ({"layer": -1}, {"hidden_layer": -1}),  # -64 is the table's end; the tiny VL model has 8 layers
        ({"strength": 0.05}, {"strength": 0.05}),
        ({"strength": 1.0}, {"strength": 1.0}),
        ({"prompt": "p" * 1500}, {"prompt": "p" * 1500}),
    ],
    ids=lambda v: str(v)[:24],
)
async def test_the_ends_of_each_range_are_accepted(fake: FakeDiscord, bot, pipeline, options: dict,
                                                   expected: dict) -> None:
    rec = await fake.dispatch_slash("stylize", {"image": attach(fake), **SMALL, **options})
    assert (await rec.wait_ack(2)).type == 5
    await result_of(rec)
    (request,) = pipeline.requests
    assert {key: getattr(request, key) for key in expected} == expected
