"""Builders for Discord API v10 JSON objects (users, members, roles, channels, guilds, messages, attachments).

Only the fields discord.py 2.7.1 reads (plus the usual companions) are produced. Snowflakes are strings,
permission bitfields are strings, as on the real API.
"""

from __future__ import annotations

from typing import Any

from .state import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser

LOADING = 1 << 7  # message flag of a deferred ("thinking") response
EPHEMERAL = 1 << 6
COMPONENTS_V2 = 1 << 15


def user(u: FakeUser) -> dict[str, Any]:
    return {
        "id": str(u.id),
        "username": u.username,
        "discriminator": "0",
        "global_name": u.global_name,
        "avatar": None,
        "bot": u.bot,
        "public_flags": 0,
    }


def role(r: FakeRole) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "name": r.name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": r.position,
        "permissions": str(r.permissions),
        "managed": r.managed,
        "mentionable": False,
        "flags": 0,
    }


def channel(c: FakeChannel, *, with_guild_id: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(c.id),
        "type": c.type,
        "name": c.name,
        "position": c.position,
        "permission_overwrites": [],
        "parent_id": None,
        "nsfw": False,
        "topic": c.topic,
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "flags": 0,
    }
    if with_guild_id:
        data["guild_id"] = str(c.guild_id)
    return data


def member(m: FakeMember, u: FakeUser, *, permissions: int | None = None, with_user: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "roles": [str(r) for r in m.roles],
        "nick": m.nick,
        "avatar": None,
        "joined_at": m.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
        "communication_disabled_until": None,
    }
    if with_user:
        data["user"] = user(u)
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def guild_create(g: FakeGuild, users: dict[int, FakeUser], joined_at: str) -> dict[str, Any]:
    """The full GUILD_CREATE payload: roles, channels and every member (so no chunking is needed)."""
    return {
        "id": str(g.id),
        "name": g.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(g.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": g.locale,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "features": [],
        "roles": [role(r) for r in g.roles.values()],
        "emojis": [],
        "stickers": [],
        "channels": [channel(c, with_guild_id=False) for c in g.channels.values()],
        "threads": [],
        "members": [member(m, users[m.user_id]) for m in g.members.values()],
        "member_count": len(g.members),
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "large": False,
        "unavailable": False,
        "joined_at": joined_at,
        "lazy": True,
        "application_id": None,
        "premium_progress_bar_enabled": False,
    }


def application(app_id: int, name: str, owner: FakeUser, flags: int) -> dict[str, Any]:
    """``GET /oauth2/applications/@me``."""
    return {
        "id": str(app_id),
        "name": name,
        "icon": None,
        "description": "",
        "rpc_origins": [],
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": user(owner),
        "team": None,
        "verify_key": "0" * 64,
        "flags": flags,
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "integration_types_config": {"0": {}},
    }


def attachment(
    attachment_id: int, filename: str, size: int, content_type: str, url: str, **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(attachment_id),
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
        "flags": 0,
    }
    data.update({k: v for k, v in extra.items() if v is not None})
    return data


def message(
    *,
    message_id: int,
    channel_id: int,
    guild_id: int | None,
    author: FakeUser,
    body: dict[str, Any],
    attachments: list[dict[str, Any]],
    timestamp: str,
    message_type: int = 0,
    application_id: int | None = None,
    interaction_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A stored message built from a create body (content/embeds/components/flags) and its attachments."""
    data: dict[str, Any] = {
        "id": str(message_id),
        "channel_id": str(channel_id),
        "type": message_type,
        "author": user(author),
        "content": body.get("content") or "",
        "timestamp": timestamp,
        "edited_timestamp": None,
        "tts": bool(body.get("tts", False)),
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": list(body.get("embeds") or []),
        "components": list(body.get("components") or []),
        "pinned": False,
        "flags": int(body.get("flags") or 0),
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    if application_id is not None:
        data["webhook_id"] = str(application_id)
        data["application_id"] = str(application_id)
    if interaction_metadata is not None:
        data["interaction_metadata"] = interaction_metadata
    return data


def apply_edit(
    msg: dict[str, Any], body: dict[str, Any], attachments: list[dict[str, Any]] | None, timestamp: str
) -> None:
    """Apply an edit body to a stored message in place (``attachments=None`` keeps the current ones)."""
    for key in ("content", "embeds", "components"):
        if key in body:
            empty: Any = "" if key == "content" else []
            msg[key] = body[key] if body[key] is not None else empty
    if body.get("flags") is not None:
        # Only SUPPRESS_EMBEDS (4) and COMPONENTS_V2 may change; ephemeral stays as it was.
        kept = msg["flags"] & EPHEMERAL
        msg["flags"] = kept | (int(body["flags"]) & (4 | COMPONENTS_V2))
    msg["flags"] &= ~LOADING
    if attachments is not None:
        msg["attachments"] = attachments
    msg["edited_timestamp"] = timestamp
