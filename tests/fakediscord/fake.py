"""``FakeDiscord``: the test-facing API — start/stop, build guilds, dispatch interactions, inspect what the bot did."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from . import interactions as build
from .gateway import OP_INVALID_SESSION, OP_RECONNECT, RESUMABLE_CLOSE, Connection, GatewayServer
from .rules import Limits
from .server import RestServer
from .state import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    CommandSync,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    InteractionRecord,
    LoggedRequest,
    RateLimitRule,
)
from .world import World

HOST = "127.0.0.1"


class FakeDiscord:
    """A Discord API v10 + gateway fake on 127.0.0.1 for driving a real discord.py bot in tests.

    Use ``async with FakeDiscord() as fake:`` (or ``await fake.start()`` / ``await fake.stop()``), build
    guilds *before* the bot connects, point the bot at ``fake.api_base`` / ``fake.gateway_url``, then dispatch
    interactions and inspect the returned ``InteractionRecord``.
    """

    def __init__(
        self,
        *,
        heartbeat_interval_ms: int = 41250,
        token: str | None = None,
        ack_timeout: float = 3.0,
        token_lifetime: float = 15 * 60.0,
        limits: Limits | None = None,
        bot_name: str = "zvl-bot",
    ) -> None:
        """``token``: if given, REST and IDENTIFY must use it (else 401 / close 4004); any token otherwise."""
        self.world = World(
            limits=limits or Limits(),
            bot_name=bot_name,
            token=token,
            ack_timeout=ack_timeout,
            token_lifetime=token_lifetime,
        )
        self.gateway = GatewayServer(self.world, heartbeat_interval_ms)
        self._rest = RestServer(self.world, self.gateway)
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        if self._runner is not None:
            raise RuntimeError("the fake is already running")
        runner = web.AppRunner(self._rest.make_app(), handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.world.base_url = f"http://{HOST}:{self.port}"
        return self

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            await asyncio.wait_for(self.gateway.close_all(), 10)
        finally:
            await asyncio.wait_for(runner.cleanup(), 10)

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def api_base(self) -> str:
        """Value for ``ZVL_DISCORD_API_BASE`` / ``discord.http.Route.BASE``."""
        return f"{self.world.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """Value for ``ZVL_DISCORD_GATEWAY_URL`` / ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return f"ws://{HOST}:{self.port}/gateway"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a bot process: ``{"ZVL_DISCORD_API_BASE": ..., "ZVL_DISCORD_GATEWAY_URL": ...}``."""
        return {"ZVL_DISCORD_API_BASE": self.api_base, "ZVL_DISCORD_GATEWAY_URL": self.gateway_url}

    # -- world building ------------------------------------------------------------------------------

    @property
    def bot_user(self) -> FakeUser:
        return self.world.bot_user

    @property
    def default_user(self) -> FakeUser:
        """``tester``: a plain member of every guild made by ``add_guild``; interactions come from it by default."""
        return self.world.default_user

    @property
    def application_id(self) -> int:
        return self.world.application_id

    def add_user(self, username: str, *, bot: bool = False, global_name: str | None = None) -> FakeUser:
        return self.world.add_user(username, bot=bot, global_name=global_name)

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner_id: int | None = None,
        file_size_limit: int | None = None,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        locale: str = "en-US",
    ) -> FakeGuild:
        """A guild with @everyone, #general, the bot (managed role with ``bot_permissions``), an owner and ``tester``.

        ``file_size_limit`` overrides the upload limit (default ``limits.file_size``, 10 MiB) for this guild.
        """
        return self.world.add_guild(
            name,
            owner_id=owner_id,
            file_size_limit=file_size_limit,
            everyone_permissions=everyone_permissions,
            bot_permissions=bot_permissions,
            locale=locale,
        )

    def add_channel(self, guild_id: int, name: str, *, type: int = 0) -> FakeChannel:
        return self.world.add_channel(guild_id, name, type=type)

    def add_role(self, guild_id: int, name: str, permissions: int = 0) -> FakeRole:
        return self.world.add_role(guild_id, name, permissions)

    def add_member(
        self, guild_id: int, user_id: int, *, roles: list[int] | None = None, nick: str | None = None
    ) -> FakeMember:
        return self.world.add_member(guild_id, user_id, roles=roles, nick=nick)

    def add_attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Put bytes on the fake CDN; returns the attachment object (``url``/``proxy_url`` serve the bytes)."""
        return self.world.add_cdn_file(data, filename, content_type, width=width, height=height)

    async def announce_guild(self, guild_id: int) -> None:
        """Send GUILD_CREATE for a guild built after the bot connected (the bot 'joins' it)."""
        await self.gateway.dispatch("GUILD_CREATE", self.gateway.guild_payload(guild_id))

    # -- rules ---------------------------------------------------------------------------------------

    def rate_limit(
        self,
        method: str,
        path_regex: str,
        *,
        times: int = 1,
        retry_after: float = 0.2,
        is_global: bool = False,
        scope: str = "user",
    ) -> RateLimitRule:
        """Answer the next ``times`` matching requests with 429. ``path_regex`` is searched in the path
        after ``/api/v10`` (e.g. ``r"^/webhooks/"``); ``method`` may be ``"*"``."""
        rule = RateLimitRule(method.upper(), re.compile(path_regex), times, retry_after, is_global, scope)
        self.world.rate_limits.append(rule)
        return rule

    def advance_time(self, seconds: float) -> None:
        """Move the fake clock (3 s ack rule, 15 min token rule, message timestamps) forward."""
        self.world.clock.advance(seconds)
        self.world.expire_pending()

    # -- interactions --------------------------------------------------------------------------------

    async def _dispatch_interaction(self, payload: dict[str, Any]) -> InteractionRecord:
        record = self.world.add_interaction(payload)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.world.ack_timeout + 0.01, self.world.ack_expired, record))
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        return record

    async def dispatch_slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        group: str | None = None,
        subcommand: str | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
        permissions: int | None = None,
        app_permissions: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Invoke ``/name [group] [subcommand] options...`` as ``user_id`` (default: ``default_user``).

        Defaults: the first guild and its first text channel; member/app permissions from roles unless given.
        """
        payload, guild = build.base_payload(
            self.world,
            2,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            permissions=permissions,
            app_permissions=app_permissions,
            locale=locale,
        )
        uid = int(payload["member"]["user"]["id"])
        payload["data"] = build.command_data(self.world, guild, uid, name, options, group=group, subcommand=subcommand)
        return await self._dispatch_interaction(payload)

    async def dispatch_autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        group: str | None = None,
        subcommand: str | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Autocomplete (type 4) while typing option ``focused``; the type 8 answer lands in ``record.choices``."""
        payload, guild = build.base_payload(
            self.world,
            4,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            permissions=None,
            app_permissions=None,
            locale=locale,
        )
        uid = int(payload["member"]["user"]["id"])
        payload["data"] = build.command_data(
            self.world, guild, uid, name, options, group=group, subcommand=subcommand, focused=focused
        )
        return await self._dispatch_interaction(payload)

    async def dispatch_component(
        self,
        message_id: int | str,
        custom_id: str,
        *,
        component_type: int = 2,
        values: list[str] | None = None,
        user_id: int | None = None,
        permissions: int | None = None,
        locale: str = "en-US",
    ) -> InteractionRecord:
        """Press button ``custom_id`` (or pick select ``values``) on a message the bot sent."""
        message = self.world.message(message_id)
        payload, _ = build.base_payload(
            self.world,
            3,
            guild_id=int(message["guild_id"]),
            channel_id=int(message["channel_id"]),
            user_id=user_id,
            permissions=permissions,
            app_permissions=None,
            locale=locale,
        )
        payload["message"] = dict(message)
        payload["data"] = build.component_data(custom_id, component_type, values)
        return await self._dispatch_interaction(payload)

    @property
    def interactions(self) -> list[InteractionRecord]:
        return list(self.world.interactions.values())

    # -- gateway -------------------------------------------------------------------------------------

    async def dispatch_event(self, event: str, data: dict[str, Any]) -> int:
        """Send any DISPATCH event to the bot; returns its sequence number."""
        return await self.gateway.dispatch(event, data)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until a bot has identified (READY and GUILD_CREATEs sent) and is connected."""
        await self.world.changes.wait_until(
            lambda: self.gateway.current is not None and self.gateway.current.connected, timeout, "the bot to connect"
        )

    async def wait_resumed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` RESUMEs in total have succeeded and the bot is connected again."""
        await self.world.changes.wait_until(
            lambda: (
                self.gateway.resumes >= count and self.gateway.current is not None and self.gateway.current.connected
            ),
            timeout,
            f"{count} resume(s)",
        )

    async def drop_gateway(self, code: int | None = RESUMABLE_CLOSE) -> None:
        """Close the bot's websocket (``code`` 4000 by default: resumable); ``None`` aborts the TCP connection."""
        await self.gateway.drop(code)
        await self.world.changes.wait_until(
            lambda: self.gateway.current is None or not self.gateway.current.connected, 10.0, "the connection to close"
        )

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT (the bot closes and resumes)."""
        await self.gateway.send_op(OP_RECONNECT, None)

    async def invalidate_session(self, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION (the bot re-identifies unless ``resumable``)."""
        await self.gateway.send_op(OP_INVALID_SESSION, resumable)

    @property
    def connections(self) -> list[Connection]:
        """Every websocket connection so far (``path``, ``query``, ``resumed``, ``heartbeats``, ``open``)."""
        return list(self.gateway.connections)

    @property
    def identify_payloads(self) -> list[dict[str, Any]]:
        return [s.identify for s in self.gateway.sessions.values()]

    # -- inspection ----------------------------------------------------------------------------------

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """The currently registered commands (global, or of ``guild_id``) as returned to the bot, with ids."""
        return list(self.world.commands.get(guild_id, []))

    @property
    def syncs(self) -> list[CommandSync]:
        """Every bulk overwrite the bot made, in order (the bodies it sent)."""
        return list(self.world.syncs)

    async def wait_synced(
        self, guild_id: int | None = None, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait for ``count`` bulk overwrites of the given scope; returns the registered commands."""
        await self.world.changes.wait_until(
            lambda: sum(s.guild_id == guild_id for s in self.world.syncs) >= count, timeout, "a command sync"
        )
        return self.commands(guild_id)

    def message(self, message_id: int | str) -> dict[str, Any]:
        """A stored (not deleted) message, current state; 404-style ``DiscordError`` otherwise."""
        return self.world.message(message_id)

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        """Non-ephemeral, not deleted messages in a channel (channel sends and interaction responses), oldest first."""
        return self.world.channel_messages(channel_id)

    async def wait_channel_messages(
        self, channel_id: int, count: int = 1, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        await self.world.changes.wait_until(
            lambda: len(self.world.channel_messages(channel_id)) >= count,
            timeout,
            f"{count} message(s) in {channel_id}",
        )
        return self.world.channel_messages(channel_id)

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every REST request served (method, path, status), 429s included."""
        return list(self.world.request_log)
