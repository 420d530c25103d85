"""The bot's ``CommandTree``: one error handler for every slash command (see :mod:`bot.errors` for the ladder)."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.errors import report_error


class ZvlTree(app_commands.CommandTree):
    """``CommandTree`` whose ``on_error`` turns any command, check or option failure into one short ephemeral reply
    (``bot.errors.report_error``); unexpected errors are logged with an id and never shown as a traceback."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)
