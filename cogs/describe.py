"""``/describe``: Qwen3-VL writes 4 short prompt suggestions for a reference; buttons 1…4 stylize with one."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import generation_cooldown
from bot.services import services_of
from cogs._options import DESCRIBE


class Describe(commands.Cog):
    """Prompt suggestions for a reference image."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="describe", description="Get 4 prompt suggestions for an image (then stylize with one)")
    @app_commands.describe(image=DESCRIBE["image"])
    @app_commands.guild_only()
    @app_commands.checks.bot_has_permissions(embed_links=True)
    @generation_cooldown()
    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await services_of(interaction).jobs.describe(interaction, image)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Describe(bot))
