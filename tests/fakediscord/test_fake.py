"""A real discord.py ``commands.Bot`` against the fake over real sockets (REST + gateway on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from . import FakeDiscord, InteractionFailed
from .client_patch import point_discord_at
from .state import MIB

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


class ZvlLikeBot(commands.Bot):
    """A small bot exercising what zvl-bot does: defer + file follow-ups, ephemeral replies, buttons, errors."""

    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            guild_ready_timeout=0.05,
            help_command=None,
        )
        self.errors: list[app_commands.AppCommandError] = []
        self.stash: dict[str, discord.Interaction] = {}
        self.tree.error(self._on_tree_error)
        self._add_commands()

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def _on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(error)

    def _add_commands(self) -> None:
        tree = self.tree

        @tree.command(description="Draw an image")
        async def draw(interaction: discord.Interaction, prompt: str, ref: discord.Attachment | None = None) -> None:
            await interaction.response.defer()
            data = await ref.read() if ref is not None else prompt.encode()
            await interaction.followup.send(f"done: {prompt}", file=discord.File(io.BytesIO(data), "out.png"))

        @tree.command(description="Slow to answer")
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(3.5)
            await interaction.response.send_message("too late")

        @tree.command(description="Defer and let the test follow up later")
        async def later(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True)
            self.stash["later"] = interaction

        @tree.command(description="Send a file of n bytes")
        async def blob(interaction: discord.Interaction, size: int) -> None:
            await interaction.response.send_message(file=discord.File(io.BytesIO(bytes(size)), "blob.bin"))

        @tree.command(description="Say n characters")
        async def say(interaction: discord.Interaction, n: int, embed_description: int = 0) -> None:
            embeds = [discord.Embed(description="e" * embed_description)] if embed_description else []
            await interaction.response.send_message("x" * n, embeds=embeds)

        @tree.command(description="A counter button")
        async def counter(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("count: 0", view=CounterView())

        @tree.command(description="Announce in the channel")
        async def announce(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.send_message("ok", ephemeral=True)
            assert isinstance(interaction.channel, discord.TextChannel)
            await interaction.channel.send(text)

        @tree.command(description="Pick a style")
        async def style(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(f"style {name}")

        @style.autocomplete("name")
        async def style_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            names = ["watercolor", "woodcut", "oil"]
            return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

        @tree.command(description="Open a feedback form")
        async def feedback(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(FeedbackModal())

        preset = app_commands.Group(name="preset", description="Presets")
        mine = app_commands.Group(name="mine", description="My presets", parent=preset)

        @mine.command(name="save", description="Save a preset")
        async def preset_save(
            interaction: discord.Interaction, name: str, strength: float = 0.5, public: bool = False
        ) -> None:
            await interaction.response.send_message(f"saved {name} {strength} {public}", ephemeral=True)

        tree.add_command(preset)


class CounterView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=60)
        self.count = 0

    @discord.ui.button(label="+1", custom_id="counter:add")
    async def add(self, interaction: discord.Interaction, button: discord.ui.Button[CounterView]) -> None:
        self.count += 1
        await interaction.response.edit_message(content=f"count: {self.count}", view=self)

    @discord.ui.button(label="reset", custom_id="counter:reset")
    async def reset(self, interaction: discord.Interaction, button: discord.ui.Button[CounterView]) -> None:
        await interaction.response.defer()  # type 6: no visible answer yet
        self.count = 0
        await interaction.edit_original_response(content="count: reset", view=None)


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(label="Your feedback", custom_id="feedback:text")


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a bot-side condition (the fake's own state has ``wait_*`` helpers instead)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(heartbeat_interval_ms=1000) as fake:
        fake.add_guild("Test Guild")
        previous = point_discord_at(fake.api_base, fake.gateway_url)
        try:
            yield fake
        finally:
            point_discord_at(*previous)


@asynccontextmanager
async def running(bot: commands.Bot) -> AsyncIterator[commands.Bot]:
    """Start the bot against the fake, wait for on_ready, and always close it."""
    task = asyncio.create_task(bot.start("fake-token"))
    ready = asyncio.create_task(bot.wait_until_ready())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # re-raise the start failure
        assert ready in done, "bot did not become ready"
        yield bot
    finally:
        ready.cancel()
        await bot.close()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[ZvlLikeBot]:
    async with running(ZvlLikeBot()) as bot:
        assert isinstance(bot, ZvlLikeBot)
        yield bot


async def test_login_ready_and_guilds(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    guild = next(iter(fake.world.guilds.values()))
    assert bot.user is not None and bot.user.id == fake.bot_user.id
    assert bot.application_id == fake.application_id
    assert [g.id for g in bot.guilds] == [guild.id]
    dguild = bot.guilds[0]
    assert dguild.owner_id == guild.owner_id
    assert [c.name for c in dguild.text_channels] == ["general"]
    assert dguild.me is not None and dguild.me.guild_permissions.attach_files
    first = fake.connections[0]
    assert first.path == "/gateway" and first.query["compress"] == "zlib-stream" and first.query["v"] == "10"
    assert fake.identify_payloads[0]["token"] == "fake-token"
    assert first.heartbeats >= 1 and bot.latency < 1  # HELLO's first heartbeat was acknowledged


async def test_sync_records_bulk_overwrite(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    commands_ = await fake.wait_synced()
    assert fake.syncs[0].guild_id is None
    names = {c["name"] for c in commands_}
    assert {"draw", "slow", "counter", "preset"} <= names
    assert all(c["id"] and c["application_id"] == str(fake.application_id) for c in commands_)
    draw = next(c for c in commands_ if c["name"] == "draw")
    assert [(o["name"], o["type"]) for o in draw["options"]] == [("prompt", 3), ("ref", 11)]
    guild = next(iter(fake.world.guilds.values()))
    bot.tree.copy_global_to(guild=discord.Object(guild.id))
    await bot.tree.sync(guild=discord.Object(guild.id))
    guild_draw = next(c for c in fake.commands(guild.id) if c["name"] == "draw")
    assert guild_draw["guild_id"] == str(guild.id) and guild_draw["id"] != draw["id"]
    rec = await fake.dispatch_slash("say", {"n": 3})
    assert rec.payload["data"]["guild_id"] == str(guild.id)  # routed to the guild copy, as Discord would
    assert (await rec.wait_ack()).content == "xxx"


async def test_defer_then_followup_with_file_from_attachment(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    ref = fake.add_attachment(PNG, "ref.png", "image/png", width=8, height=8)
    rec = await fake.dispatch_slash("draw", {"prompt": "a cat", "ref": ref})
    ack = await rec.wait_ack()
    assert ack.type == 5
    (followup,) = await rec.wait_followups(1)
    assert followup.content == "done: a cat"
    (upload,) = followup.files
    assert upload.filename == "out.png" and upload.data == PNG  # read via Attachment.read(), sent back intact
    assert followup.payload is not None and followup.payload["attachments"] == [{"id": 0, "filename": "out.png"}]
    # The first follow-up after a defer replaces the "thinking" message.
    original = fake.message(rec.original_message_id or 0)
    assert original["content"] == "done: a cat" and not original["flags"] & 128
    assert original["attachments"][0]["content_type"] == "image/png"
    assert bot.errors == []


async def test_ephemeral_reply_to_a_subcommand_in_a_group(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash(
        "preset", {"name": "ink", "strength": 0.75, "public": True}, group="mine", subcommand="save"
    )
    ack = await rec.wait_ack()
    assert ack.type == 4 and ack.ephemeral and ack.flags == 64
    assert ack.content == "saved ink 0.75 True"
    option = rec.payload["data"]["options"][0]["options"][0]["options"]
    assert [(o["name"], o["type"]) for o in option] == [("name", 3), ("strength", 10), ("public", 5)]


async def test_button_press_answered_with_update(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash("counter")
    await rec.wait_ack()
    message_id = rec.original_message_id
    assert message_id is not None
    assert fake.message(message_id)["components"][0]["components"][0]["custom_id"] == "counter:add"
    for expected in (1, 2):
        press = await fake.dispatch_component(message_id, "counter:add")
        ack = await press.wait_ack()
        assert ack.type == 7 and ack.content == f"count: {expected}"
    assert fake.message(message_id)["content"] == "count: 2"
    press = await fake.dispatch_component(message_id, "counter:reset")
    assert (await press.wait_ack()).type == 6
    (edit,) = (await press.wait_requests(2))[1:]
    assert edit.kind == "edit" and edit.path.endswith("/messages/@original") and edit.message_id == message_id
    assert fake.message(message_id)["content"] == "count: reset" and fake.message(message_id)["components"] == []


async def test_modal_response(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash("feedback")
    assert (await rec.wait_ack()).type == 9
    assert rec.modal is not None and rec.modal["title"] == "Feedback"


async def test_autocomplete_choices(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_autocomplete("style", {"name": "w"}, focused="name")
    ack = await rec.wait_ack()
    assert ack.type == 8
    assert rec.choices == [{"name": "watercolor", "value": "watercolor"}, {"name": "woodcut", "value": "woodcut"}]


async def test_channel_message_is_recorded(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    guild = next(iter(fake.world.guilds.values()))
    channel = guild.first_text_channel()
    rec = await fake.dispatch_slash("announce", {"text": "hello channel"})
    await rec.wait_ack()
    (msg,) = await fake.wait_channel_messages(channel.id, 1)  # the ephemeral "ok" is not listed
    assert msg["content"] == "hello channel" and msg["author"]["id"] == str(fake.bot_user.id)


async def test_three_second_rule(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash("slow")
    with pytest.raises(InteractionFailed):
        await rec.wait_ack(5)
    assert rec.failed
    await rec.wait_requests(1, timeout=3)  # the late callback still arrives and is refused
    assert rec.requests[0].status == 404 and rec.requests[0].response["code"] == 10062
    await eventually(lambda: len(bot.errors) == 1)
    (error,) = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError) and isinstance(error.original, discord.NotFound)
    assert error.original.code == 10062


async def test_fifteen_minute_token_rule(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash("later")
    assert (await rec.wait_ack()).ephemeral
    await eventually(lambda: "later" in bot.stash)
    interaction = bot.stash["later"]
    first = await interaction.followup.send("still in time", wait=True)
    assert first.id == rec.original_message_id and first.flags.ephemeral  # replaced the ephemeral "thinking"
    fake.advance_time(15 * 60 + 1)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction.followup.send("too late")
    assert caught.value.status == 401 and caught.value.code == 50027
    with pytest.raises(discord.HTTPException):
        await interaction.edit_original_response(content="too late")
    assert [r.status for r in rec.requests] == [200, 200, 401, 401]


async def test_file_over_the_limit_gets_413(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    small = fake.add_guild("Small uploads", file_size_limit=1000)
    await fake.announce_guild(small.id)
    await eventually(lambda: bot.get_guild(small.id) is not None)
    rec = await fake.dispatch_slash("blob", {"size": 1001}, guild_id=small.id)
    (rejected,) = await rec.wait_requests(1)
    assert rejected.status == 413 and rejected.response == {"message": "Request entity too large", "code": 40005}
    assert rec.status == "pending"  # a rejected callback does not acknowledge
    rec = await fake.dispatch_slash("blob", {"size": 10 * MIB + 1})
    (rejected,) = await rec.wait_requests(1)
    assert rejected.status == 413
    ok = await fake.dispatch_slash("blob", {"size": 1000}, guild_id=small.id)
    assert (await ok.wait_ack()).files[0].size == 1000
    await eventually(lambda: len(bot.errors) == 2)
    assert [getattr(e, "original", None).status for e in bot.errors] == [413, 413]  # type: ignore[union-attr]


async def test_rate_limited_requests_are_retried(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    fake.rate_limit("POST", r"^/webhooks/\d+/[^/]+$", times=1, retry_after=0.3)
    started = time.monotonic()
    rec = await fake.dispatch_slash("draw", {"prompt": "retry"})
    (followup,) = await rec.wait_followups(1, timeout=5)
    assert followup.content == "done: retry"
    assert time.monotonic() - started >= 0.3
    statuses = [r.status for r in fake.requests if r.method == "POST" and r.path.startswith("/api/v10/webhooks/")]
    assert statuses == [429, 200]
    fake.rate_limit("POST", r"^/channels/\d+/messages$", times=2, retry_after=0.05)
    rec = await fake.dispatch_slash("announce", {"text": "after two 429s"})
    await rec.wait_ack()
    guild = next(iter(fake.world.guilds.values()))
    messages = await fake.wait_channel_messages(guild.first_text_channel().id, 2)
    assert [m["content"] for m in messages] == ["done: retry", "after two 429s"]
    assert [r.status for r in fake.requests if r.path.endswith("/messages")] == [429, 429, 200]
    assert bot.errors == []


async def test_too_long_content_and_embed_rejected(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash("say", {"n": 2001})
    (rejected,) = await rec.wait_requests(1)
    assert rejected.status == 400 and rejected.response["code"] == 50035
    assert rejected.response["errors"]["data"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"
    rec = await fake.dispatch_slash("say", {"n": 10, "embed_description": 4097})
    (rejected,) = await rec.wait_requests(1)
    assert "description" in rejected.response["errors"]["data"]["embeds"]["0"]
    rec = await fake.dispatch_slash("say", {"n": 2000})
    assert len((await rec.wait_ack()).content or "") == 2000


async def test_gateway_drop_resume_and_replay(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    assert bot.ws is not None
    await fake.drop_gateway(4000)
    # Dispatched while the bot is away: buffered and replayed on RESUME.
    rec = await fake.dispatch_slash("preset", {"name": "a"}, group="mine", subcommand="save")
    await fake.wait_resumed(1)
    await rec.wait_ack()
    assert fake.connections[-1].path == "/gateway/resume" and fake.connections[-1].resumed
    await fake.drop_gateway(None)  # abnormal close: TCP connection aborted
    await fake.wait_resumed(2)
    rec = await fake.dispatch_slash("counter")
    await rec.wait_ack()
    session = fake.gateway.current
    assert session is not None and len(fake.gateway.sessions) == 1
    await eventually(lambda: bot.ws is not None and bot.ws.sequence == session.seq)


async def test_reconnect_and_invalid_session(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    await fake.send_reconnect()  # op 7: the bot closes and resumes
    await fake.wait_resumed(1)
    # op 9 with d=true: resumable. (With d=false discord.py re-IDENTIFYs, but only after sleeping 5 s.)
    await fake.invalidate_session(resumable=True)
    await fake.wait_resumed(2)
    rec = await fake.dispatch_slash("counter")
    await rec.wait_ack()
    assert [c.resumed for c in fake.connections] == [False, True, True]
    assert len(fake.gateway.sessions) == 1


async def test_second_ack_and_raw_rules(fake: FakeDiscord, bot: ZvlLikeBot) -> None:
    rec = await fake.dispatch_slash("counter")
    await rec.wait_ack()
    channel_id = rec.channel_id
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
            async with http.post(fake.api_base + path, json=body) as resp:
                return resp.status, await resp.json()

        status, body = await post(
            f"/interactions/{rec.id}/{rec.token}/callback", {"type": 4, "data": {"content": "again"}}
        )
        assert (status, body["code"]) == (400, 40060)
        row = {"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": "x" * 101}]}
        status, body = await post(f"/channels/{channel_id}/messages", {"components": [row]})
        assert status == 400 and "custom_id" in body["errors"]["components"]["0"]["components"]["0"]
        rows = [
            {"type": 1, "components": [{"type": 2, "style": 1, "label": "b", "custom_id": f"{i}"}]} for i in range(6)
        ]
        status, body = await post(f"/channels/{channel_id}/messages", {"components": rows})
        assert status == 400 and "components" in body["errors"]
        embeds = [{"description": "d" * 4000}, {"description": "d" * 2001}]
        status, body = await post(f"/channels/{channel_id}/messages", {"embeds": embeds})
        assert status == 400 and body["errors"]["embeds"]["_errors"][0]["code"] == "MAX_EMBED_SIZE_EXCEEDED"
        status, body = await post(f"/channels/{channel_id}/messages", {})
        assert (status, body["code"]) == (400, 50006)
    assert rec.requests[-1].status == 400  # the raw second callback is on the record too
