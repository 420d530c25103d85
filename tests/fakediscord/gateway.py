"""The gateway websocket: HELLO, IDENTIFY → READY + GUILD_CREATE, heartbeats, RESUME with replay, drops.

Frames are JSON (``encoding=json``). With ``compress=zlib-stream`` in the URL query (what discord.py 2.7.1
asks for unless the ``zstandard`` package is installed) every frame is compressed with one shared
``zlib.compressobj`` per connection and flushed with ``Z_SYNC_FLUSH``, then sent as a binary message.
Any other ``compress`` value (e.g. ``zstd-stream``) gets plain text frames, which discord.py also accepts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import zlib
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from . import payloads
from .world import World

_log = logging.getLogger(__name__)

REPLAY_LIMIT = 1000  # events kept per session for RESUME
CLOSE_TIMEOUT = 5.0
RESUMABLE_CLOSE = 4000
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE, OP_VOICE, OP_RESUME = 0, 1, 2, 3, 4, 6
OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 7, 8, 9, 10, 11


class Connection:
    """One websocket connection (a session may move between connections by resuming)."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.path = request.path
        self.query = dict(request.query)
        self.zlib = zlib.compressobj() if self.query.get("compress") == "zlib-stream" else None
        self.session: GatewaySession | None = None
        self.resumed = False
        self.heartbeats = 0
        self._lock = asyncio.Lock()

    @property
    def open(self) -> bool:
        return not self.ws.closed

    async def send(self, frame: dict[str, Any]) -> None:
        raw = json.dumps(frame, separators=(",", ":"))
        async with self._lock:
            if self.zlib is not None:
                await self.ws.send_bytes(self.zlib.compress(raw.encode()) + self.zlib.flush(zlib.Z_SYNC_FLUSH))
            else:
                await self.ws.send_str(raw)


class GatewaySession:
    """A gateway session: its sequence counter and the recent events kept for RESUME."""

    def __init__(self, token: str, identify: dict[str, Any]) -> None:
        self.session_id = secrets.token_hex(16)
        self.token = token
        self.identify = identify
        self.seq = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=REPLAY_LIMIT)
        self.connection: Connection | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.open


class GatewayServer:
    def __init__(self, world: World, heartbeat_interval_ms: int) -> None:
        self.world = world
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        self.connections: list[Connection] = []
        self.resumes = 0
        self.presence_updates: list[dict[str, Any]] = []

    def resume_url(self) -> str:
        return self.world.base_url.replace("http://", "ws://") + "/gateway/resume"

    # -- connection handling -------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(ws, request)
        self.connections.append(conn)
        receive_timeout = self.heartbeat_interval_ms / 1000 * 2 + 5
        try:
            await conn.send(
                {"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None}
            )
            while not ws.closed:
                try:
                    msg = await ws.receive(timeout=receive_timeout)
                except TimeoutError:
                    await self._close(conn, 4009, "Session timed out")
                    break
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                await self._on_frame(conn, msg.data)
        except (ConnectionResetError, RuntimeError) as exc:
            _log.debug("gateway connection ended: %r", exc)
        finally:
            if conn.session is not None and conn.session.connection is conn:
                conn.session.connection = None
            self.world.changes.notify()
        return ws

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()), CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionResetError, RuntimeError):
            self._abort(conn)

    @staticmethod
    def _abort(conn: Connection) -> None:
        transport = conn.request.transport
        if transport is not None:
            transport.abort()

    async def _on_frame(self, conn: Connection, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            op, data = frame["op"], frame.get("d")
        except (ValueError, TypeError, KeyError):
            await self._close(conn, 4002, "Error while decoding payload.")
            return
        if op == OP_HEARTBEAT:
            conn.heartbeats += 1
            await conn.send({"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == OP_IDENTIFY:
            await self._identify(conn, data or {})
        elif op == OP_RESUME:
            await self._resume(conn, data or {})
        elif conn.session is None:
            await self._close(conn, 4003, "Not authenticated.")
        elif op == OP_PRESENCE:
            self.presence_updates.append(data)
        elif op == OP_REQUEST_MEMBERS:
            await self._members_chunk(conn.session, data or {})
        elif op != OP_VOICE:
            await self._close(conn, 4001, "Unknown opcode.")

    async def _identify(self, conn: Connection, data: dict[str, Any]) -> None:
        if conn.session is not None:
            await self._close(conn, 4005, "Already authenticated.")
            return
        token = str(data.get("token", ""))
        if self.world.token is not None and token != self.world.token:
            await self._close(conn, 4004, "Authentication failed.")
            return
        session = GatewaySession(token, data)
        self.sessions[session.session_id] = session
        self.current = session
        conn.session, session.connection = session, conn
        shard_id, shard_count = (data.get("shard") or [0, 1])[:2]
        guilds = [g for g in self.world.guilds.values() if (g.id >> 22) % max(1, shard_count) == shard_id]
        bot = payloads.user(self.world.bot_user) | {"verified": True, "mfa_enabled": False, "flags": 0, "email": None}
        ready = {
            "v": 10,
            "user": bot,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.resume_url(),
            "application": {"id": str(self.world.application_id), "flags": self.world.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "session_type": "normal",
            "geo_ordered_rtc_regions": ["local"],
        }
        if data.get("shard"):
            ready["shard"] = [shard_id, shard_count]
        await self.dispatch("READY", ready, session)
        for guild in guilds:
            await self.dispatch("GUILD_CREATE", self.guild_payload(guild.id), session)
        self.world.changes.notify()

    def guild_payload(self, guild_id: int) -> dict[str, Any]:
        guild = self.world.guild(guild_id)
        bot_member = guild.members.get(self.world.bot_user.id)
        joined = bot_member.joined_at if bot_member else self.world.clock.iso_now()
        return payloads.guild_create(guild, self.world.users, joined)

    async def _resume(self, conn: Connection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        seq = int(data.get("seq") or 0)
        oldest = session.events[0]["s"] if session and session.events else 1
        if session is None or data.get("token") != session.token or seq + 1 < oldest:
            await conn.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        if session.connection is not None and session.connection is not conn and session.connection.open:
            await self._close(session.connection, RESUMABLE_CLOSE, "Session resumed elsewhere.")
        conn.session, conn.resumed = session, True
        sent = seq
        while True:  # replay until caught up, then attach without yielding so nothing slips in between
            missed = [f for f in session.events if f["s"] > sent]
            if not missed:
                break
            for frame in missed:
                await conn.send(frame)
                sent = frame["s"]
        session.connection = conn
        self.current = session
        self.resumes += 1
        await self.dispatch("RESUMED", {}, session)
        self.world.changes.notify()

    async def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.world.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        wanted = {int(u) for u in data.get("user_ids") or []}
        query = str(data.get("query") or "").lower()
        members = [
            payloads.member(m, self.world.users[m.user_id])
            for m in guild.members.values()
            if (not wanted or m.user_id in wanted) and self.world.users[m.user_id].username.lower().startswith(query)
        ]
        limit = int(data.get("limit") or 0)
        chunk = {
            "guild_id": str(guild.id),
            "members": members[:limit] if limit else members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self.dispatch("GUILD_MEMBERS_CHUNK", chunk, session)

    # -- test controls -------------------------------------------------------------------------------

    def _session(self, session: GatewaySession | None) -> GatewaySession:
        session = session or self.current
        if session is None:
            raise RuntimeError("no bot has identified on the fake gateway yet")
        return session

    async def dispatch(self, event: str, data: dict[str, Any], session: GatewaySession | None = None) -> int:
        """Send a DISPATCH event (buffered for RESUME if the bot is disconnected); return its sequence number."""
        session = self._session(session)
        session.seq += 1
        seq = session.seq
        frame = {"op": OP_DISPATCH, "s": seq, "t": event, "d": data}
        session.events.append(frame)
        conn = session.connection
        if conn is not None and conn.open:
            try:
                await conn.send(frame)
            except (ConnectionResetError, RuntimeError):
                pass  # the bot resumes and gets it replayed
        return seq

    async def send_op(self, op: int, data: Any) -> None:
        session = self._session(None)
        if session.connection is not None and session.connection.open:
            await session.connection.send({"op": op, "d": data, "s": None, "t": None})

    async def drop(self, code: int | None = RESUMABLE_CLOSE) -> None:
        """Close the bot's connection with ``code``, or abort the TCP connection when ``code`` is ``None``."""
        conn = self._session(None).connection
        if conn is None or not conn.open:
            raise RuntimeError("the bot is not connected to the fake gateway")
        if code is None:
            self._abort(conn)
        else:
            await self._close(conn, code, "Dropped by the test.")

    async def close_all(self) -> None:
        for conn in self.connections:
            if conn.open:
                await self._close(conn, 1001, "Fake Discord shutting down.")
