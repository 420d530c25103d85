"""``/blendmode set | info | compare``: choose, understand and compare the ways a reference is blended in."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import generation_cooldown
from bot.params import GenerationOptions
from bot.services import services_of
from bot.store import JobKind
from bot.ui.embeds import info_embed, modes_embed, settings_lines
from cogs._options import (
    DESCRIBE,
    ModeName,
    Modes,
    Prompt,
    Seed,
    Size,
    Steps,
    StyleWeight,
)


@app_commands.guild_only()
class BlendModes(commands.GroupCog, group_name="blendmode",
                 group_description="Blend modes: how the reference is mixed in"):
    """The ``/blendmode`` group."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="set", description="Use this blend mode by default for your images")
    @app_commands.describe(mode="The blend mode to use when you don't pick one")
    async def set_mode(self, interaction: discord.Interaction, mode: ModeName) -> None:
        saved = await services_of(interaction).store.defaults.set(interaction.user.id, {"blend_mode": mode})
        await interaction.response.send_message(embed=info_embed("Your defaults", settings_lines(saved)),
                                                ephemeral=True)

    @app_commands.command(name="info", description="What each blend mode does, in plain words")
    @app_commands.describe(mode="One mode (default: all of them)")
    async def info(self, interaction: discord.Interaction, mode: ModeName | None = None) -> None:
        embed = modes_embed(mode)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="compare", description="One reference and prompt through every blend mode, as a grid")
    @app_commands.describe(modes="Modes to compare, comma-separated (default: all)", **{
        k: DESCRIBE[k] for k in ("image", "prompt", "style_weight", "seed", "steps", "size", "private")})
    @app_commands.checks.bot_has_permissions(attach_files=True, embed_links=True)
    @generation_cooldown()
    async def compare(self, interaction: discord.Interaction, image: discord.Attachment, prompt: Prompt | None = None,
                      modes: Modes | None = None,
                      style_weight: StyleWeight | None = None, seed: Seed | None = None, steps: Steps | None = None,
                      size: Size | None = None, private: bool | None = None) -> None:
        options = GenerationOptions(prompt=prompt or "", style_weight=style_weight, seed=seed, steps=steps, size=size,
                                    private=private)
        await services_of(interaction).jobs.sweep(interaction, image, options, preset=None if modes else "modes",
                                                  overrides={"modes": modes} if modes else {}, kind=JobKind.COMPARE)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(BlendModes(bot))
