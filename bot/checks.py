"""Who may do what: bot admins, server managers, moderators of a result, and the shared generation cooldown.

*Bot admins* run ``/admin``: the user ids in ``settings.owner_ids``, the application's owner (or its team's admins
and developers), and members holding ``settings.admin_role_id``. ``/admin`` is also hidden from members without
Manage Server by ``default_permissions``, but that is only a default a server can change, so :func:`is_bot_admin`
is what enforces it (``cogs.admin.Admin.interaction_check`` runs it before every ``/admin`` command).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

T = TypeVar("T")


class _Access(Protocol):
    """What the checks need of the bot's services (``bot.services.Services`` has it; declared here so that this
    leaf module imports nothing of the services that use it)."""

    settings: Any  # owner_ids, admin_role_id
    cooldowns: Cooldowns


def _access(interaction: discord.Interaction) -> _Access:
    return interaction.client.services  # type: ignore[attr-defined,no-any-return]


async def is_bot_admin(interaction: discord.Interaction) -> bool:
    """Owner ids from the settings, the application's owner or team, or the configured admin role."""
    user = interaction.user
    settings = _access(interaction).settings
    if user.id in settings.owner_ids:
        return True
    role_id = settings.admin_role_id
    if role_id is not None and isinstance(user, discord.Member) and any(r.id == role_id for r in user.roles):
        return True
    client = interaction.client
    return isinstance(client, commands.Bot) and await client.is_owner(user)


async def may_moderate(interaction: discord.Interaction, owner_id: int) -> bool:
    """The owner of a job, a member who may manage messages in the channel, or a bot admin."""
    if interaction.user.id == owner_id:
        return True
    if interaction.guild_id is not None and interaction.permissions.manage_messages:
        return True
    return await is_bot_admin(interaction)


async def may_manage_guild(interaction: discord.Interaction) -> bool:
    """Manage Server in this server, or a bot admin."""
    if interaction.guild_id is not None and interaction.permissions.manage_guild:
        return True
    return await is_bot_admin(interaction)


def manage_guild() -> Callable[[T], T]:
    """A check: Manage Server, or a bot admin (raises ``MissingPermissions``)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        if not await may_manage_guild(interaction):
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    return app_commands.check(predicate)


class Cooldowns:
    """One cooldown per user shared by every generation command and button (``settings.cooldown_s``; 0 = off).

    It starts when a job is accepted (:meth:`start`, called by the job service), so a refused request (a bad file,
    a typo in a value list) costs no waiting; :meth:`check` refuses while it runs.
    """

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = float(per_s)
        self._clock = clock
        self._until: dict[int, float] = {}

    def remaining(self, user_id: int) -> float | None:
        """Seconds left of ``user_id``'s cooldown, or ``None``."""
        left = self._until.get(user_id, 0.0) - self._clock()
        return left if left > 0 else None

    def start(self, user_id: int) -> None:
        if self.per_s <= 0:
            return
        now = self._clock()
        if len(self._until) > 4096:  # forget finished cooldowns
            self._until = {u: t for u, t in self._until.items() if t > now}
        self._until[user_id] = now + self.per_s

    def check(self, user_id: int) -> None:
        """Raise ``CommandOnCooldown`` while ``user_id`` is cooling down."""
        retry_after = self.remaining(user_id)
        if retry_after is not None:
            raise app_commands.CommandOnCooldown(app_commands.Cooldown(1, self.per_s), retry_after)


def generation_cooldown() -> Callable[[T], T]:
    """A check applying the shared per-user generation cooldown."""

    async def predicate(interaction: discord.Interaction) -> Any:
        _access(interaction).cooldowns.check(interaction.user.id)
        return True

    return app_commands.check(predicate)
