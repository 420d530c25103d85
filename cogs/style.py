"""``/style list | show | forget``: your style codes (each reference you send gets one; reuse it with
``/stylize style:<code>``). Codes work in the server where they were made; your own codes also in direct messages."""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.services import services_of
from bot.ui.embeds import info_embed

CODE = "A style code, e.g. ab12cd34"


class Style(commands.GroupCog, group_name="style", group_description="Your style codes (reuse a reference)"):
    """The ``/style`` group (thin: ``bot.styles.StyleBook`` does the work)."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="list", description="Your style codes usable here")
    async def list_codes(self, interaction: discord.Interaction) -> None:
        rows = await services_of(interaction).styles.codes.list_for(interaction.user.id, interaction.guild_id)
        lines = [f"`{r.code}`: {r.width}×{r.height}, used {r.uses} times, last "
                 f"{discord.utils.format_dt(r.last_used_at, 'R')}" for r in rows]
        embed = info_embed("Your style codes", lines or ["None yet: every reference you send to `/stylize` gets one."],
                           description="Reuse one with `/stylize style:<code>`.")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="show", description="The reference image of a style code")
    @app_commands.describe(code=CODE)
    async def show(self, interaction: discord.Interaction, code: str) -> None:
        book = services_of(interaction).styles
        row = await book.find(code, guild_id=interaction.guild_id, user_id=interaction.user.id, option="code")
        data = await book.thumbnail(row)
        embed = info_embed(f"Style {row.code}", [f"{row.width}×{row.height}, used {row.uses} times"],
                           description=f"Reuse with `/stylize style:{row.code}`.")
        embed.set_thumbnail(url=f"attachment://style-{row.code}.png")
        await interaction.response.send_message(embed=embed, ephemeral=True,
                                                file=discord.File(fp=io.BytesIO(data), filename=f"style-{row.code}.png"))

    @app_commands.command(name="forget", description="Forget one of your style codes")
    @app_commands.describe(code=CODE)
    async def forget(self, interaction: discord.Interaction, code: str) -> None:
        book = services_of(interaction).styles
        gone = await book.forget(code, guild_id=interaction.guild_id, user_id=interaction.user.id)
        await interaction.response.send_message(f"Forgot style {gone}.", ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Style(bot))
