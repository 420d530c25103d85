"""Builders for INTERACTION_CREATE payloads: slash commands (type 2), components (3), autocomplete (4).

Option types come from the commands the bot registered (bulk overwrite) when the command is known, else
from the Python value: ``bool`` 5, ``int`` 4, ``float`` 10, ``str`` 3, an attachment dict from
``FakeDiscord.add_attachment`` 11, ``FakeUser``/``FakeMember`` 6, ``FakeChannel`` 7, ``FakeRole`` 8.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from . import payloads
from .rules import DiscordError
from .state import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser
from .world import World

SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
)


def find_command(world: World, name: str, guild_id: int | None, kind: int = 1) -> dict[str, Any] | None:
    """The registered command the client would invoke: the guild's own first, then the global one."""
    for scope in (guild_id, None) if guild_id is not None else (None,):
        for cmd in world.commands.get(scope, []):
            if cmd["name"] == name and int(cmd.get("type", 1)) == kind:
                return cmd
    return None


def _schema_types(command: dict[str, Any] | None, path: list[str]) -> dict[str, int]:
    """Option name -> type at the given group/subcommand path of a registered command."""
    options = (command or {}).get("options") or []
    for part in path:
        options = next((o.get("options") or [] for o in options if o.get("name") == part), [])
    return {o["name"]: int(o["type"]) for o in options if "name" in o and "type" in o}


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, (FakeUser, FakeMember)):
        return USER
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, FakeRole):
        return ROLE
    if isinstance(value, Mapping) and "filename" in value and "url" in value:
        return ATTACHMENT
    return STRING


def _snowflake(value: Any) -> int:
    """The id of a fake entity, or the value itself as an int."""
    if isinstance(value, FakeMember):
        return value.user_id
    if isinstance(value, (FakeUser, FakeRole, FakeChannel)):
        return value.id
    return int(value)


class _Resolver:
    """Builds option values and the ``resolved`` map for one interaction."""

    def __init__(self, world: World, guild: FakeGuild, user_id: int) -> None:
        self.world = world
        self.guild = guild
        self.user_id = user_id
        self.resolved: dict[str, dict[str, Any]] = {}

    def _put(self, kind: str, key: int | str, value: dict[str, Any]) -> None:
        self.resolved.setdefault(kind, {})[str(key)] = value

    def option(self, name: str, value: Any, kind: int) -> dict[str, Any]:
        """One ``{"name", "type", "value"}`` option; snowflake-typed values also land in ``resolved``."""
        if kind == USER or (
            kind == MENTIONABLE and not isinstance(value, FakeRole) and _snowflake(value) in self.world.users
        ):
            value = str(self._user(_snowflake(value)))
        elif kind in (ROLE, MENTIONABLE):
            value = str(self._role(_snowflake(value)))
        elif kind == CHANNEL:
            channel = self.world.channel(_snowflake(value))
            permissions = {"permissions": str(self.guild.permissions_of(self.user_id))}
            self._put("channels", channel.id, payloads.channel(channel) | permissions)
            value = str(channel.id)
        elif kind == ATTACHMENT:
            attachment = dict(value) if isinstance(value, Mapping) else self._known_attachment(int(value))
            self._put("attachments", attachment["id"], attachment)
            value = attachment["id"]
        elif kind == INTEGER:
            value = int(value)
        elif kind == NUMBER:
            value = float(value)
        elif kind == BOOLEAN:
            value = bool(value)
        else:
            value = str(value)
        return {"name": name, "type": kind, "value": value}

    def _user(self, user_id: int) -> int:
        user = self.world.users[user_id]
        self._put("users", user_id, payloads.user(user))
        member = self.guild.members.get(user_id)
        if member is not None:
            perms = self.guild.permissions_of(user_id)
            self._put("members", user_id, payloads.member(member, user, permissions=perms, with_user=False))
        return user_id

    def _role(self, role_id: int) -> int:
        self._put("roles", role_id, payloads.role(self.guild.roles[role_id]))
        return role_id

    def _known_attachment(self, attachment_id: int) -> dict[str, Any]:
        blob = self.world.cdn[attachment_id]
        url = f"{self.world.base_url}/cdn/attachments/0/{attachment_id}/{blob.filename}"
        return payloads.attachment(attachment_id, blob.filename, len(blob.data), blob.content_type, url)


def base_payload(
    world: World,
    kind: int,
    *,
    guild_id: int | None,
    channel_id: int | None,
    user_id: int | None,
    permissions: int | None,
    app_permissions: int | None,
    locale: str,
) -> tuple[dict[str, Any], FakeGuild]:
    """Fields every guild interaction carries: ids, token, member with permissions, channel, limits."""
    guild = world.guild(guild_id) if guild_id is not None else next(iter(world.guilds.values()), None)
    if guild is None:
        raise RuntimeError("add a guild to the fake before dispatching interactions")
    channel = world.channel(channel_id) if channel_id is not None else guild.first_text_channel()
    if user_id is None:
        user_id = world.default_user.id if world.default_user.id in guild.members else guild.owner_id
    member = guild.members.get(user_id)
    if member is None:
        raise ValueError(f"user_id {user_id} is not a member of guild {guild.id}; add_member first")
    perms = guild.permissions_of(user_id) if permissions is None else permissions
    bot_perms = guild.permissions_of(world.bot_user.id) if app_permissions is None else app_permissions
    payload: dict[str, Any] = {
        "id": str(world.ids.next()),
        "application_id": str(world.application_id),
        "type": kind,
        "token": "fake-" + secrets.token_urlsafe(24),
        "version": 1,
        "guild_id": str(guild.id),
        "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
        "channel_id": str(channel.id),
        "channel": payloads.channel(channel) | {"permissions": str(perms)},
        "member": payloads.member(member, world.users[user_id], permissions=perms),
        "app_permissions": str(bot_perms),
        "locale": locale,
        "guild_locale": guild.locale,
        "entitlements": [],
        "entitlement_sku_ids": [],
        "authorizing_integration_owners": {"0": str(guild.id)},
        "context": 0,
        "attachment_size_limit": guild.file_size_limit,
    }
    return payload, guild


def command_data(
    world: World,
    guild: FakeGuild,
    user_id: int,
    name: str,
    options: Mapping[str, Any] | None,
    *,
    group: str | None,
    subcommand: str | None,
    focused: str | None = None,
) -> dict[str, Any]:
    """``data`` of a chat-input command (or autocomplete when ``focused`` names the option being typed)."""
    if group is not None and subcommand is None:
        raise ValueError("group needs a subcommand: Discord cannot invoke a subcommand group itself")
    command = find_command(world, name, guild.id)
    path = [p for p in (group, subcommand) if p is not None]
    types = _schema_types(command, path)
    resolver = _Resolver(world, guild, user_id)
    leaf = []
    for opt_name, value in (options or {}).items():
        kind = types.get(opt_name) or _infer_type(value)
        try:
            entry = resolver.option(opt_name, value, kind)
        except (LookupError, ValueError, TypeError, DiscordError) as exc:
            raise ValueError(f"option {opt_name!r}: cannot use {value!r} as option type {kind}: {exc}") from None
        if focused is not None and opt_name == focused:
            entry["value"], entry["focused"] = str(value), True
        leaf.append(entry)
    if focused is not None and focused not in (options or {}):
        raise ValueError(f"focused option {focused!r} must be one of the options")
    if subcommand is not None:
        leaf = [{"name": subcommand, "type": SUB_COMMAND, "options": leaf}]
    if group is not None:
        leaf = [{"name": group, "type": SUB_COMMAND_GROUP, "options": leaf}]
    data: dict[str, Any] = {
        "id": command["id"] if command else str(world.ids.next()),
        "name": name,
        "type": 1,
        "options": leaf,
    }
    if resolver.resolved:
        data["resolved"] = resolver.resolved
    if command is not None and command.get("guild_id"):
        data["guild_id"] = command["guild_id"]
    return data


def component_data(custom_id: str, component_type: int, values: list[str] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
    if values is not None or component_type in (3, 5, 6, 7, 8):
        data["values"] = list(values or [])
    return data
