"""The fake's world: clock, ids, guilds/users, stored messages and files, and interaction records.

Everything here is plain data plus small helpers; the HTTP and gateway layers mutate it, tests read it.
All of it lives on one asyncio event loop (the one the fake was started on); nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

DISCORD_EPOCH_MS = 1420070400000
MIB = 1024 * 1024

# Permission bits used by the fake (values from Discord's documentation).
ADMINISTRATOR = 1 << 3
ALL_PERMISSIONS = (1 << 51) - 1
DEFAULT_EVERYONE_PERMISSIONS = (
    (1 << 0)  # create instant invite
    | (1 << 6)  # add reactions
    | (1 << 10)  # view channel
    | (1 << 11)  # send messages
    | (1 << 14)  # embed links
    | (1 << 15)  # attach files
    | (1 << 16)  # read message history
    | (1 << 18)  # use external emojis
    | (1 << 26)  # change nickname
    | (1 << 31)  # use application commands
)
DEFAULT_BOT_PERMISSIONS = DEFAULT_EVERYONE_PERMISSIONS | (1 << 13)  # + manage messages

InteractionStatus = Literal["pending", "acked", "failed"]
RequestKind = Literal["callback", "followup", "get", "edit", "delete"]


class FakeClock:
    """Monotonic clock with a test-controlled offset; drives the 3 s and 15 min interaction rules."""

    def __init__(self) -> None:
        self._offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0; got {seconds}")
        self._offset += seconds

    def iso_now(self) -> str:
        """Wall-clock ISO 8601 timestamp (shifted by the offset), as Discord formats message timestamps."""
        now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._offset)
        return now.isoformat()


class Snowflakes:
    """Unique, increasing Discord snowflakes derived from the current time."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last


class Changes:
    """A broadcast 'something changed' signal that waiters poll with a predicate and a timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        """Return once ``predicate()`` is true; raise ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except TimeoutError:
                continue


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False


@dataclass
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False


@dataclass
class FakeChannel:
    id: int
    guild_id: int
    name: str
    type: int = 0  # 0 text, 2 voice, 4 category, 5 announcement, 15 forum
    position: int = 0
    topic: str | None = None


@dataclass
class FakeMember:
    guild_id: int
    user_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = ""


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    file_size_limit: int
    locale: str = "en-US"
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)

    def permissions_of(self, user_id: int) -> int:
        """Guild-level permissions (no channel overwrites): owner and administrators get everything."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members.get(user_id)
        value = self.roles[self.id].permissions
        for role_id in member.roles if member else []:
            if role_id in self.roles:
                value |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def first_text_channel(self) -> FakeChannel:
        for channel in self.channels.values():
            if channel.type == 0:
                return channel
        raise LookupError(f"guild {self.id} has no text channel")


@dataclass(frozen=True)
class UploadedFile:
    """One ``files[n]`` part of a multipart request, exactly as the client sent it."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class CdnBlob:
    filename: str
    content_type: str
    data: bytes


@dataclass
class SentRequest:
    """One REST request the bot made for an interaction (accepted or rejected), with what it sent and got."""

    kind: RequestKind
    method: str
    path: str
    status: int
    payload: dict[str, Any] | None
    files: list[UploadedFile]
    response: Any
    message_id: int | None
    at: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def type(self) -> int | None:
        """The callback type (4, 5, 6, 7, 8, 9) for callbacks; ``None`` otherwise."""
        return self.payload.get("type") if self.kind == "callback" and self.payload else None

    @property
    def data(self) -> dict[str, Any]:
        """The message-like body: ``payload['data']`` for callbacks, the payload itself otherwise."""
        if not self.payload:
            return {}
        if self.kind == "callback":
            return self.payload.get("data") or {}
        return self.payload

    @property
    def content(self) -> str | None:
        return self.data.get("content")

    @property
    def flags(self) -> int:
        return int(self.data.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & 64)


class InteractionRecord:
    """Everything that happened to one dispatched interaction; returned by ``FakeDiscord.dispatch_*``."""

    def __init__(self, payload: dict[str, Any], created_at: float, changes: Changes) -> None:
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.application_id = int(payload["application_id"])
        self.guild_id = int(payload["guild_id"]) if payload.get("guild_id") else None
        self.channel_id = int(payload["channel_id"]) if payload.get("channel_id") else None
        self.created_at = created_at
        self.status: InteractionStatus = "pending"
        self.failure: str | None = None
        self.ack_type: int | None = None
        self.requests: list[SentRequest] = []
        self.original_message_id: int | None = None
        self.message_ids: list[int] = []
        self.target_message_id: int | None = int(payload["message"]["id"]) if payload.get("message") else None
        self.choices: list[dict[str, Any]] | None = None
        self.modal: dict[str, Any] | None = None
        self._changes = changes

    def __repr__(self) -> str:
        return f"<InteractionRecord id={self.id} type={self.type} status={self.status} requests={len(self.requests)}>"

    @property
    def acked(self) -> bool:
        return self.status == "acked"

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def accepted(self) -> list[SentRequest]:
        """Accepted (2xx) requests in order: callback, follow-ups, edits, deletes."""
        return [r for r in self.requests if r.ok]

    @property
    def callback(self) -> SentRequest | None:
        return next((r for r in self.accepted if r.kind == "callback"), None)

    @property
    def followups(self) -> list[SentRequest]:
        return [r for r in self.accepted if r.kind == "followup"]

    @property
    def edits(self) -> list[SentRequest]:
        return [r for r in self.accepted if r.kind == "edit"]

    @property
    def rejected(self) -> list[SentRequest]:
        return [r for r in self.requests if not r.ok]

    @property
    def files(self) -> list[UploadedFile]:
        """Every file the bot uploaded for this interaction (accepted requests only), in order."""
        return [f for r in self.accepted for f in r.files]

    def add_request(self, request: SentRequest) -> None:
        self.requests.append(request)
        self._changes.notify()

    def mark_failed(self, reason: str) -> None:
        if self.status == "pending":
            self.status = "failed"
            self.failure = reason
            self._changes.notify()

    async def wait_until(self, predicate: Callable[[InteractionRecord], bool], timeout: float = 5.0) -> None:
        await self._changes.wait_until(lambda: predicate(self), timeout, f"{self!r} to satisfy the predicate")

    async def wait_settled(self, timeout: float = 5.0) -> InteractionStatus:
        """Wait until the interaction is acknowledged or has failed; return the status."""
        await self._changes.wait_until(lambda: self.status != "pending", timeout, f"{self!r} to settle")
        return self.status

    async def wait_ack(self, timeout: float = 5.0) -> SentRequest:
        """Wait for the accepted callback; raise ``InteractionFailed`` if the interaction failed instead."""
        await self.wait_settled(timeout)
        if self.failed or self.callback is None:
            raise InteractionFailed(f"interaction {self.id} failed: {self.failure}")
        return self.callback

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[SentRequest]:
        await self._changes.wait_until(lambda: len(self.followups) >= count, timeout, f"{count} follow-up(s)")
        return self.followups

    async def wait_requests(self, count: int, timeout: float = 5.0) -> list[SentRequest]:
        """Wait until ``count`` requests (accepted or not) were made for this interaction."""
        await self._changes.wait_until(lambda: len(self.requests) >= count, timeout, f"{count} request(s)")
        return self.requests


class InteractionFailed(AssertionError):
    """Raised by ``InteractionRecord.wait_ack`` when the interaction failed (e.g. not acknowledged in 3 s)."""


@dataclass
class RateLimitRule:
    method: str
    pattern: re.Pattern[str]
    times: int
    retry_after: float
    is_global: bool
    scope: str

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and self.method in ("*", method) and self.pattern.search(path) is not None


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int


@dataclass(frozen=True)
class CommandSync:
    """One bulk overwrite of application commands; ``guild_id`` is ``None`` for global commands."""

    guild_id: int | None
    commands: list[dict[str, Any]]
