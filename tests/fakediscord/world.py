"""``World``: the single mutable state shared by the REST server, the gateway and the test API."""

from __future__ import annotations

import io
import mimetypes
from typing import Any

from PIL import Image

from . import payloads
from .rules import DiscordError, Limits, unknown
from .state import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    CdnBlob,
    Changes,
    CommandSync,
    FakeChannel,
    FakeClock,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    InteractionRecord,
    LoggedRequest,
    RateLimitRule,
    Snowflakes,
    UploadedFile,
)


class World:
    """Guilds, users, messages, CDN files, interactions and command registrations of one fake Discord."""

    def __init__(
        self,
        *,
        limits: Limits,
        bot_name: str,
        token: str | None,
        ack_timeout: float,
        token_lifetime: float,
    ) -> None:
        self.limits = limits
        self.token = token
        self.ack_timeout = ack_timeout
        self.token_lifetime = token_lifetime
        self.clock = FakeClock()
        self.ids = Snowflakes()
        self.changes = Changes()
        self.base_url = ""  # http://127.0.0.1:PORT, set when the server starts
        self.users: dict[int, FakeUser] = {}
        self.bot_user = self.add_user(bot_name, bot=True)
        self.app_owner = self.add_user("app-owner")
        self.default_user = self.add_user("tester")  # member of every guild; the default interaction user
        self.application_id = self.bot_user.id
        self.application_flags = 0
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.deleted_messages: set[int] = set()
        self.cdn: dict[int, CdnBlob] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self.interactions_by_token: dict[str, InteractionRecord] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.syncs: list[CommandSync] = []
        self.rate_limits: list[RateLimitRule] = []
        self.request_log: list[LoggedRequest] = []

    # -- entities ------------------------------------------------------------------------------------

    def add_user(self, username: str, *, bot: bool = False, global_name: str | None = None) -> FakeUser:
        user = FakeUser(self.ids.next(), username, global_name, bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str,
        *,
        owner_id: int | None,
        file_size_limit: int | None,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        locale: str = "en-US",
    ) -> FakeGuild:
        """A guild with @everyone, a managed bot role, #general, and the bot, owner and ``tester`` as members."""
        owner = self.users[owner_id] if owner_id is not None else self.add_user(f"{name}-owner")
        guild = FakeGuild(
            id=self.ids.next(),
            name=name,
            owner_id=owner.id,
            file_size_limit=file_size_limit or self.limits.file_size,
            locale=locale,
        )
        self.guilds[guild.id] = guild
        guild.roles[guild.id] = FakeRole(guild.id, guild.id, "@everyone", everyone_permissions, 0)
        bot_role = self.add_role(guild.id, self.bot_user.username, bot_permissions, managed=True)
        self.add_member(guild.id, self.bot_user.id, roles=[bot_role.id])
        self.add_member(guild.id, owner.id)
        self.add_member(guild.id, self.default_user.id)
        self.add_channel(guild.id, "general")
        return guild

    def add_role(self, guild_id: int, name: str, permissions: int, *, managed: bool = False) -> FakeRole:
        guild = self.guild(guild_id)
        role = FakeRole(self.ids.next(), guild_id, name, permissions, len(guild.roles), managed)
        guild.roles[role.id] = role
        return role

    def add_channel(self, guild_id: int, name: str, *, type: int = 0) -> FakeChannel:
        guild = self.guild(guild_id)
        channel = FakeChannel(self.ids.next(), guild_id, name, type, len(guild.channels))
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        return channel

    def add_member(
        self, guild_id: int, user_id: int, *, roles: list[int] | None = None, nick: str | None = None
    ) -> FakeMember:
        guild = self.guild(guild_id)
        if user_id not in self.users:
            raise ValueError(f"user_id {user_id} is not a user of this fake")
        for role_id in roles or []:
            if role_id not in guild.roles:
                raise ValueError(f"roles: {role_id} is not a role of guild {guild_id}")
        member = FakeMember(guild_id, user_id, list(roles or []), nick, self.clock.iso_now())
        guild.members[user_id] = member
        return member

    def guild(self, guild_id: int) -> FakeGuild:
        try:
            return self.guilds[int(guild_id)]
        except (KeyError, ValueError):
            raise unknown("Guild", 10004) from None

    def channel(self, channel_id: int | str) -> FakeChannel:
        try:
            return self.channels[int(channel_id)]
        except (KeyError, ValueError):
            raise unknown("Channel", 10003) from None

    def file_limit(self, guild_id: int | None) -> int:
        guild = self.guilds.get(guild_id) if guild_id is not None else None
        return guild.file_size_limit if guild else self.limits.file_size

    # -- messages and files --------------------------------------------------------------------------

    def add_cdn_file(
        self, data: bytes, filename: str, content_type: str | None = None, *, channel_id: int = 0, **extra: Any
    ) -> dict[str, Any]:
        """Store bytes on the fake CDN and return the attachment object pointing at them."""
        if not self.base_url:
            raise RuntimeError("start the fake before adding attachments (their URLs need its port)")
        ctype = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if extra.get("width") is None and extra.get("height") is None:
            extra.update(zip(("width", "height"), probe_size(data)))
        attachment_id = self.ids.next()
        self.cdn[attachment_id] = CdnBlob(filename, ctype, bytes(data))
        url = f"{self.base_url}/cdn/attachments/{channel_id}/{attachment_id}/{filename}"
        return payloads.attachment(attachment_id, filename, len(data), ctype, url, **extra)

    def attachments_for(
        self, body: dict[str, Any], files: list[UploadedFile], channel_id: int, current: list[dict[str, Any]] | None
    ) -> list[dict[str, Any]] | None:
        """Resolve a body's ``attachments`` list against uploaded ``files[n]`` parts and existing attachments.

        Returns ``None`` when an edit leaves attachments unchanged.
        """
        by_index = {f.field[len("files[") : -1]: f for f in files if f.field.startswith("files[")}
        entries = body.get("attachments")
        if entries is None:
            if not files:
                return None
            entries = [{"id": i} for i in by_index]
            keep = list(current or [])
        else:
            keep = []
        existing = {a["id"]: a for a in current or []}
        result = keep
        for entry in entries:
            key = str(entry.get("id"))
            if key in by_index:
                f = by_index.pop(key)
                ctype = mimetypes.guess_type(f.filename)[0] or f.content_type
                extra = {"description": entry.get("description"), "title": entry.get("title")}
                result.append(
                    self.add_cdn_file(
                        f.data, entry.get("filename") or f.filename, ctype, channel_id=channel_id, **extra
                    )
                )
            elif key in existing:
                result.append(existing[key])
            else:
                raise DiscordError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {
                        "attachments": {
                            "_errors": [{"code": "ATTACHMENT_NOT_FOUND", "message": f"Attachment {key} not found"}]
                        }
                    },
                )
        return result

    def store_message(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.messages[int(msg["id"])] = msg
        self.changes.notify()
        return msg

    def message(self, message_id: int | str) -> dict[str, Any]:
        mid = int(message_id)
        if mid not in self.messages or mid in self.deleted_messages:
            raise unknown("Message", 10008)
        return self.messages[mid]

    def delete_message(self, message_id: int) -> None:
        self.deleted_messages.add(int(message_id))
        self.changes.notify()

    def channel_messages(self, channel_id: int) -> list[dict[str, Any]]:
        return [
            m
            for mid, m in self.messages.items()
            if m["channel_id"] == str(channel_id)
            and mid not in self.deleted_messages
            and not m["flags"] & payloads.EPHEMERAL
        ]

    # -- interactions --------------------------------------------------------------------------------

    def add_interaction(self, payload: dict[str, Any]) -> InteractionRecord:
        record = InteractionRecord(payload, self.clock.now(), self.changes)
        self.interactions[record.id] = record
        self.interactions_by_token[record.token] = record
        return record

    def ack_expired(self, record: InteractionRecord) -> bool:
        """True (and the record marked failed) when a pending interaction is past its 3 s deadline."""
        if record.status == "pending" and self.clock.now() - record.created_at > self.ack_timeout:
            record.mark_failed(f"not acknowledged within {self.ack_timeout:g} s")
        return record.failed

    def expire_pending(self) -> None:
        for record in self.interactions.values():
            self.ack_expired(record)

    def token_expired(self, record: InteractionRecord) -> bool:
        return self.clock.now() - record.created_at > self.token_lifetime


#: Formats whose pixel size Discord reads from an upload and declares as the attachment's ``width``/``height``.
PROBED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


def probe_size(data: bytes) -> tuple[int | None, int | None]:
    """What Discord declares for an uploaded file: the pixel size read from the header of a PNG, JPEG, GIF or WebP
    (a truncated file still has its header), ``(None, None)`` for anything else."""
    try:
        with Image.open(io.BytesIO(data), formats=list(PROBED_FORMATS)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - not an image Discord could read
        return None, None
