"""``/stylize``: one image in the style of an attached reference, or of a style code (``style:ab12cd34``)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import generation_cooldown
from bot.params import GenerationOptions
from bot.services import services_of
from cogs._options import (
    DESCRIBE,
    MULTI_DESCRIBE,
    BlendModeName,
    Layer,
    Prompt,
    ScheduleName,
    Seed,
    SelectionName,
    Size,
    Steps,
    Strength,
    StyleWeight,
    TokensName,
    Weights,
    preset_autocomplete,
)


class Stylize(commands.Cog):
    """Style-reference generation."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="stylize", description="Make an image in the style of a reference image")
    @app_commands.describe(**DESCRIBE, **MULTI_DESCRIBE)
    @app_commands.autocomplete(preset=preset_autocomplete)
    @app_commands.guild_only()
    @app_commands.checks.bot_has_permissions(attach_files=True, embed_links=True)
    @generation_cooldown()
    async def stylize(self, interaction: discord.Interaction, image: discord.Attachment | None = None,
                      prompt: Prompt | None = None, style_weight: StyleWeight | None = None,
                      blend_mode: BlendModeName | None = None, layer: Layer | None = None,
                      tokens: TokensName | None = None, seed: Seed | None = None, steps: Steps | None = None,
                      size: Size | None = None, strength: Strength | None = None,
                      style_schedule: ScheduleName | None = None, append_selection: SelectionName | None = None,
                      preset: str | None = None, private: bool | None = None, style: str | None = None,
                      image2: discord.Attachment | None = None, image3: discord.Attachment | None = None,
                      image4: discord.Attachment | None = None, weights: Weights | None = None,
                      negative_image: discord.Attachment | None = None, negative_style: str | None = None) -> None:
        options = GenerationOptions(prompt=prompt or "", style_weight=style_weight, blend_mode=blend_mode,
                                    layer=layer, tokens=tokens, seed=seed, steps=steps, size=size, strength=strength,
                                    preset=preset, private=private, style=style, style_schedule=style_schedule,
                                    append_selection=append_selection, weights=weights, negative_style=negative_style)
        await services_of(interaction).jobs.stylize(interaction, image, options, (image2, image3, image4),
                                                    negative_image)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Stylize(bot))
