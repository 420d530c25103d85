"""``/sweep``: one reference and prompt over a preset's or your own parameter values, as one labelled grid."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import generation_cooldown
from bot.errors import UserError
from bot.params import GenerationOptions
from bot.services import services_of
from cogs._options import (
    DESCRIBE,
    Alphas,
    BlendModeName,
    Layers,
    Modes,
    Normalizations,
    Outliers,
    Prompt,
    Schedules,
    Seed,
    Seeds,
    Selections,
    Size,
    Steps,
    Strengths,
    StyleWeight,
    SweepPresetName,
    TokenModes,
)

#: Value-list options and the sweep axis each one sets.
LISTS = {"alphas": "alphas", "layers": "layers", "modes": "modes", "token_modes": "tokens",
         "normalizations": "normalizations", "outliers": "outliers", "strengths": "strengths", "seeds": "seeds",
         "schedules": "schedules", "selections": "selections"}


class Sweep(commands.Cog):
    """Parameter sweeps (like Midjourney's permutations, but over the style settings)."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="sweep", description="Compare settings side by side: one labelled grid")
    @app_commands.describe(
        preset="A ready-made sweep (the value lists below replace or add to its values)",
        alphas="Blend alphas 0-1, e.g. 0.2,0.4,0.6 or 0.2:0.8:0.2",
        layers="VL layers, e.g. -2,-6,-12 (a mix: -6+-8)",
        modes="Blend modes, e.g. pool,adain,append",
        token_modes="Token selections, e.g. full,image,text",
        normalizations="Normalizations: global, per_dim, hybrid, none",
        outliers="Outlier masking: none, zero, clamp, scale",
        strengths="Img2img strengths 0-1 (none = txt2img), e.g. none,0.6,0.9",
        seeds="Seeds, e.g. 1,2,3",
        schedules="Style schedules: constant, early, late, ramp, ramp_down",
        selections="Append's selections: pool, attention",
        **{k: DESCRIBE[k] for k in ("image", "prompt", "style_weight", "blend_mode", "seed", "steps", "size",
                                    "private")},
    )
    @app_commands.guild_only()
    @app_commands.checks.bot_has_permissions(attach_files=True, embed_links=True)
    @generation_cooldown()
    async def sweep(self, interaction: discord.Interaction, image: discord.Attachment,
                    preset: SweepPresetName | None = None,
                    prompt: Prompt | None = None,
                    alphas: Alphas | None = None,
                    layers: Layers | None = None,
                    modes: Modes | None = None,
                    token_modes: TokenModes | None = None,
                    normalizations: Normalizations | None = None,
                    outliers: Outliers | None = None,
                    strengths: Strengths | None = None, seeds: Seeds | None = None,
                    schedules: Schedules | None = None, selections: Selections | None = None,
                    style_weight: StyleWeight | None = None, blend_mode: BlendModeName | None = None,
                    seed: Seed | None = None, steps: Steps | None = None, size: Size | None = None,
                    private: bool | None = None) -> None:
        given = {name: value for name, value in locals().items() if name in LISTS}  # the value-list options
        overrides = {LISTS[name]: value for name, value in given.items() if value is not None}
        if preset is None and not overrides:
            raise UserError("Pick a sweep `preset` or give at least one value list (e.g. `alphas: 0.2,0.5,0.8`).")
        options = GenerationOptions(prompt=prompt or "", style_weight=style_weight, blend_mode=blend_mode, seed=seed,
                                    steps=steps, size=size, private=private)
        await services_of(interaction).jobs.sweep(interaction, image, options, preset=preset, overrides=overrides)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Sweep(bot))
