"""The bot's one error policy: typed user errors, the message ladder, and the ephemeral reply that carries it.

Every failure a user can see goes through :func:`report_error`, called by the command tree's ``on_error``
(``bot.tree.ZvlTree``), by the result buttons and by the preset-name modal. It picks the message with
:func:`user_message` (the ladder below) and answers with :func:`reply_ephemeral`; it never shows a traceback and
logs unexpected errors with an error id the user is given.

The ladder, first match wins (errors wrapped in ``CommandInvokeError`` / ``TransformerError`` are unwrapped first):

1. :class:`ZvlError` and its subclasses: their own message (the class docstring's first line by default).
2. Engine and store errors whose text is written for users: ``QueueFull``, ``QueueUnavailable`` (the shared
   queue's Redis is down), ``ReferenceImageError``,
   ``InvalidPresetName``, ``PresetExistsError``, ``PermissionError`` from the worker's cancel.
3. ``CommandOnCooldown``: how long to wait.
4. ``MissingPermissions`` / ``BotMissingPermissions`` / ``NoPrivateMessage`` / other ``CheckFailure``.
5. ``TransformerError`` (an option Discord sent that could not be converted).
6. ``discord.NotFound`` 10062 (the interaction expired before we answered): nothing can be sent; logged.
7. Anything else: logged with an error id, and a generic message naming that id.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aiohttp
import discord
from discord import app_commands

from bot.store import InvalidPresetName, PresetExistsError
from engine.media.images import ReferenceImageError
from engine.serving.queue import QueueFull, QueueUnavailable

log = logging.getLogger(__name__)

#: ``interaction.extras`` key set when the bot deferred with a *public* "thinking…" message: a refusal must then
#: remove that message first, or Discord would turn the refusal into a public reply.
PUBLIC_DEFER = "zvl_public_defer"

#: Longest refusal we send (Discord's content limit is 2000).
MAX_MESSAGE = 1800


class ZvlError(app_commands.AppCommandError):
    """Something went wrong."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "Something went wrong.").strip().splitlines()[0])


class UserError(ZvlError):
    """That request can't be done."""


class NotAllowed(ZvlError, app_commands.CheckFailure):
    """You are not allowed to do that."""


class AdminOnly(NotAllowed):
    """This command is for the bot's admins."""


class NotYourJob(NotAllowed):
    """Only the person who asked for this image (or a moderator) can use its buttons."""


class JobGone(UserError):
    """That job no longer exists."""


class GuildOnly(UserError):
    """This only works in a server."""


def _unwrap(error: BaseException) -> BaseException:
    """The error that matters: the original of ``CommandInvokeError`` and of a ``TransformerError`` cause."""
    for _ in range(4):
        if isinstance(error, app_commands.CommandInvokeError):
            error = error.original
        elif isinstance(error, app_commands.TransformerError) and isinstance(error.__cause__, ZvlError):
            error = error.__cause__
        else:
            break
    return error


def _permissions(names: list[str]) -> str:
    return ", ".join(name.replace("_", " ").replace("guild", "server").title() for name in names)


def user_message(error: BaseException) -> str | None:
    """The message for ``error`` by the ladder in the module docstring, or ``None`` for an unexpected error."""
    error = _unwrap(error)
    if isinstance(error, ZvlError):
        return str(error)
    if isinstance(error, (QueueFull, QueueUnavailable, ReferenceImageError, InvalidPresetName, PresetExistsError,
                          PermissionError)):
        text = str(error)
        return text[:1].upper() + text[1:]
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down a little: try again in {error.retry_after:.1f} s."
    if isinstance(error, app_commands.MissingPermissions):
        return f"You need the {_permissions(error.missing_permissions)} permission for that."
    if isinstance(error, app_commands.BotMissingPermissions):
        return f"I need the {_permissions(error.missing_permissions)} permission in this channel."
    if isinstance(error, app_commands.NoPrivateMessage):
        return GuildOnly.__doc__
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    if isinstance(error, app_commands.TransformerError):
        return f"{str(error.value)[:100]!r} is not a valid value for that option."
    return None


async def defer_reply(interaction: discord.Interaction, *, private: bool) -> None:
    """Acknowledge at once with a "thinking…" message (ephemeral when ``private``); remembers a public one so that
    a later refusal can still be private (:func:`reply_ephemeral`)."""
    await interaction.response.defer(thinking=True, ephemeral=private)
    if not private:
        interaction.extras[PUBLIC_DEFER] = True


async def reply_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer ``interaction`` with a short ephemeral message, whatever was already sent.

    Not answered yet: an ephemeral response. Deferred publicly: the public "thinking…" message is deleted first,
    then an ephemeral follow-up is sent. Otherwise: an ephemeral follow-up (it replaces an ephemeral "thinking…").
    """
    text = text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
        return
    if interaction.extras.pop(PUBLIC_DEFER, False):
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            log.debug("could not delete the public placeholder of interaction %s", interaction.id)
    await interaction.followup.send(text, ephemeral=True)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Log ``error`` as it deserves and tell the user in one short ephemeral message (never a traceback)."""
    original = _unwrap(error)
    what = _describe(interaction)
    message = user_message(original)
    if message is None:
        if isinstance(original, discord.NotFound) and original.code == 10062:
            log.warning("interaction expired before it was answered: %s", what)
            return
        error_id = uuid.uuid4().hex[:8]
        log.error("unexpected error %s in %s", error_id, what, exc_info=original)
        message = f"Something went wrong on our side (error id `{error_id}`); the admins can look it up."
    else:
        log.info("refused %s: %s", what, message)
    try:
        await reply_ephemeral(interaction, message)
    except (discord.HTTPException, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("could not send the error message for %s: %s", what, type(exc).__name__)


def _describe(interaction: discord.Interaction) -> str:
    command = interaction.command.qualified_name if interaction.command else None
    if command is None and isinstance(interaction.data, dict):
        command = interaction.data.get("custom_id") or interaction.data.get("name")
    return f"command={command} user={interaction.user.id} guild={interaction.guild_id} interaction={interaction.id}"
