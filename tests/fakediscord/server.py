"""The aiohttp application: middleware (auth, 429s, error bodies, request log) and the REST routes a bot uses.

Interaction callbacks and webhook follow-ups live in ``webhooks.py``. REST is served under ``/api/v10``,
the gateway at ``/gateway`` (and ``/gateway/resume``, the READY ``resume_gateway_url``), CDN files under ``/cdn``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import payloads
from .bodies import json_response, read_body
from .gateway import GatewayServer
from .rules import DiscordError, check_file_sizes, unknown, validate_commands, validate_message
from .state import CommandSync, LoggedRequest
from .webhooks import InteractionRoutes
from .world import World

API = "/api/v10"
GUILD_MESSAGES_INTENT = 1 << 9
MAX_REQUEST_BYTES = 512 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestServer:
    def __init__(self, world: World, gateway: GatewayServer) -> None:
        self.world = world
        self.gateway = gateway
        self.interactions = InteractionRoutes(world)

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_REQUEST_BYTES)
        r = app.router
        r.add_get("/gateway", self.gateway.handle)
        r.add_get("/gateway/resume", self.gateway.handle)
        r.add_get("/cdn/attachments/{channel_id}/{attachment_id}/{filename}", self.cdn_file)
        r.add_get(API + "/gateway", self.get_gateway)
        r.add_get(API + "/gateway/bot", self.get_gateway)
        r.add_get(API + "/users/@me", self.get_me)
        r.add_get(API + "/oauth2/applications/@me", self.get_application)
        r.add_get(API + "/applications/@me", self.get_application)
        for path in ("/applications/{app_id}/commands", "/applications/{app_id}/guilds/{guild_id}/commands"):
            r.add_put(API + path, self.put_commands)
            r.add_get(API + path, self.get_commands)
        r.add_get(API + "/channels/{channel_id}", self.get_channel)
        r.add_post(API + "/channels/{channel_id}/typing", self.typing)
        r.add_post(API + "/channels/{channel_id}/messages", self.create_message)
        r.add_get(API + "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r.add_patch(API + "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r.add_delete(API + "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        self.interactions.register(r, API)
        return app

    # -- middleware ----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith(API + "/"):
                self._check_auth(request)
                limited = self._rate_limited(request)
                response = limited if limited is not None else await handler(request)
            else:
                response = await handler(request)
        except DiscordError as exc:
            response = json_response(exc.body, exc.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = json_response({"message": f"{exc.status}: {exc.reason}", "code": 0}, exc.status)
        self.world.request_log.append(LoggedRequest(request.method, request.path, response.status))
        return response

    def _check_auth(self, request: web.Request) -> None:
        rel = request.path[len(API) :]
        if self.world.token is None or rel.startswith(("/webhooks/", "/interactions/")):
            return
        if request.headers.get("Authorization") != f"Bot {self.world.token}":
            raise DiscordError(401, 0, "401: Unauthorized")

    def _rate_limited(self, request: web.Request) -> web.Response | None:
        rel = request.path[len(API) :]
        rule = next((r for r in self.world.rate_limits if r.matches(request.method, rel)), None)
        if rule is None:
            return None
        rule.times -= 1
        body = {"message": "You are being rate limited.", "retry_after": rule.retry_after, "global": rule.is_global}
        headers = {
            "Retry-After": str(max(1, math.ceil(rule.retry_after))),
            "X-RateLimit-Limit": "1",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
            "X-RateLimit-Bucket": f"fake-{abs(hash((rule.method, rule.pattern.pattern))):x}",
            "X-RateLimit-Scope": rule.scope,
            "Via": "1.1 google",  # discord.py treats a 429 without Via as a Cloudflare ban and does not retry
        }
        if rule.is_global:
            headers["X-RateLimit-Global"] = "true"
        return json_response(body, 429, headers)

    # -- basics --------------------------------------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        url = self.world.base_url.replace("http://", "ws://") + "/gateway"
        if request.path.endswith("/bot"):
            limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return json_response({"url": url, "shards": 1, "session_start_limit": limit})
        return json_response({"url": url})

    async def get_me(self, request: web.Request) -> web.Response:
        me = payloads.user(self.world.bot_user) | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None}
        return json_response(me)

    async def get_application(self, request: web.Request) -> web.Response:
        w = self.world
        return json_response(
            payloads.application(w.application_id, w.bot_user.username, w.app_owner, w.application_flags)
        )

    async def cdn_file(self, request: web.Request) -> web.Response:
        blob = self.world.cdn.get(int(request.match_info["attachment_id"]))
        if blob is None or blob.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=blob.data, content_type=blob.content_type)

    # -- application commands ------------------------------------------------------------------------

    def _command_scope(self, request: web.Request) -> int | None:
        if int(request.match_info["app_id"]) != self.world.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        guild_id = request.match_info.get("guild_id")
        if guild_id is None:
            return None
        return self.world.guild(int(guild_id)).id

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body, _ = await read_body(request)
        validate_commands(body)
        assert isinstance(body, list)
        previous = {(c["name"], c.get("type", 1)): c["id"] for c in self.world.commands.get(scope, [])}
        stored = []
        for cmd in body:
            kind = int(cmd.get("type", 1))
            entry = {
                "type": kind,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
                **cmd,
                "id": previous.get((cmd["name"], kind)) or str(self.world.ids.next()),
                "application_id": str(self.world.application_id),
                "version": str(self.world.ids.next()),
            }
            if scope is not None:
                entry["guild_id"] = str(scope)
            stored.append(entry)
        self.world.commands[scope] = stored
        self.world.syncs.append(CommandSync(scope, [dict(c) for c in body]))
        self.world.changes.notify()
        return json_response(stored)

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.world.commands.get(self._command_scope(request), []))

    # -- channels and messages -----------------------------------------------------------------------

    async def get_channel(self, request: web.Request) -> web.Response:
        return json_response(payloads.channel(self.world.channel(request.match_info["channel_id"])))

    async def typing(self, request: web.Request) -> web.Response:
        self.world.channel(request.match_info["channel_id"])
        return web.Response(status=204)

    def _channel_message(self, request: web.Request) -> dict[str, Any]:
        channel = self.world.channel(request.match_info["channel_id"])
        msg = self.world.message(request.match_info["message_id"])
        if msg["channel_id"] != str(channel.id):
            raise unknown("Message", 10008)
        return msg

    async def _gateway_event(self, event: str, data: dict[str, Any]) -> None:
        """Echo message events to the bot, as Discord does, when it asked for guild message events."""
        session = self.gateway.current
        if session is not None and int(session.identify.get("intents") or 0) & GUILD_MESSAGES_INTENT:
            await self.gateway.dispatch(event, data, session)

    async def create_message(self, request: web.Request) -> web.Response:
        world = self.world
        channel = world.channel(request.match_info["channel_id"])
        body, files = await read_body(request)
        body = body or {}
        check_file_sizes(files, world.file_limit(channel.guild_id))
        validate_message(body, files, world.limits, creating=True)
        msg = payloads.message(
            message_id=world.ids.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=world.bot_user,
            body=body,
            attachments=world.attachments_for(body, files, channel.id, None) or [],
            timestamp=world.clock.iso_now(),
            message_type=19 if body.get("message_reference") else 0,
        )
        world.store_message(msg)
        await self._gateway_event("MESSAGE_CREATE", msg)
        return json_response(msg)

    async def get_message(self, request: web.Request) -> web.Response:
        return json_response(self._channel_message(request))

    async def edit_message(self, request: web.Request) -> web.Response:
        world = self.world
        msg = self._channel_message(request)
        if msg["author"]["id"] != str(world.bot_user.id):
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        body, files = await read_body(request)
        body = body or {}
        check_file_sizes(files, world.file_limit(int(msg["guild_id"]) if msg.get("guild_id") else None))
        validate_message(body, files, world.limits, creating=False)
        attachments = world.attachments_for(body, files, int(msg["channel_id"]), msg["attachments"])
        payloads.apply_edit(msg, body, attachments, world.clock.iso_now())
        world.changes.notify()
        await self._gateway_event("MESSAGE_UPDATE", msg)
        return json_response(msg)

    async def delete_message(self, request: web.Request) -> web.Response:
        msg = self._channel_message(request)
        self.world.delete_message(int(msg["id"]))
        event = {"id": msg["id"], "channel_id": msg["channel_id"]}
        if msg.get("guild_id"):
            event["guild_id"] = msg["guild_id"]
        await self._gateway_event("MESSAGE_DELETE", event)
        return web.Response(status=204)
