"""``/preset save | use | list | show | delete``: named settings shared by a server.

Anyone may list, show and use a preset; saving and deleting need Manage Server (or a bot admin).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import generation_cooldown, manage_guild
from bot.errors import UserError
from bot.params import GenerationOptions, defaults_from
from bot.services import services_of
from bot.ui.embeds import info_embed, settings_lines
from cogs._options import (
    DESCRIBE,
    BlendModeName,
    Layer,
    PresetName,
    Prompt,
    ScheduleName,
    Seed,
    SelectionName,
    Size,
    Steps,
    StyleWeight,
    TokensName,
    preset_autocomplete,
)


@app_commands.guild_only()
class Presets(commands.GroupCog, group_name="preset", group_description="Server presets: named settings"):
    """The ``/preset`` group."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="save", description="Save settings as a server preset (Manage Server)")
    @app_commands.describe(name="Preset name (up to 32 characters)",
                           overwrite="Replace a preset of the same name",
                           **{k: DESCRIBE[k] for k in ("style_weight", "blend_mode", "layer", "tokens", "steps",
                                                       "size", "style_schedule", "append_selection")})
    @manage_guild()
    async def save(self, interaction: discord.Interaction, name: PresetName, style_weight: StyleWeight | None = None,
                   blend_mode: BlendModeName | None = None, layer: Layer | None = None,
                   tokens: TokensName | None = None,
                   steps: Steps | None = None, size: Size | None = None, overwrite: bool = False,
                   style_schedule: ScheduleName | None = None, append_selection: SelectionName | None = None) -> None:
        services = services_of(interaction)
        params = GenerationOptions(style_weight=style_weight, blend_mode=blend_mode, layer=layer, tokens=tokens,
                                   steps=steps, size=size, style_schedule=style_schedule,
                                   append_selection=append_selection).request_layer()
        if not params:  # no settings given: the caller's own defaults
            params = defaults_from(await services.store.defaults.get(interaction.user.id))
        if not params:
            raise UserError("Give at least one setting to save (or set some with `/defaults set` first).")
        preset = await services.store.presets.save(interaction.guild_id, name, params, interaction.user.id,
                                                   overwrite=overwrite)
        await interaction.response.send_message(
            embed=info_embed(f"Saved preset “{preset.name}”", settings_lines(preset.params)), ephemeral=True)

    @app_commands.command(name="use", description="Make an image with a server preset")
    @app_commands.describe(name="The preset", **{k: DESCRIBE[k] for k in ("image", "prompt", "seed", "private")})
    @app_commands.autocomplete(name=preset_autocomplete)
    @generation_cooldown()
    async def use(self, interaction: discord.Interaction, name: str, image: discord.Attachment,
                  prompt: Prompt | None = None, seed: Seed | None = None, private: bool | None = None) -> None:
        options = GenerationOptions(prompt=prompt or "", seed=seed, preset=name, private=private)
        await services_of(interaction).jobs.stylize(interaction, image, options)

    @app_commands.command(name="list", description="The presets of this server")
    async def list_presets(self, interaction: discord.Interaction) -> None:
        presets = await services_of(interaction).store.presets.list(interaction.guild_id)
        lines = [f"**{p.name}**: " + ", ".join(f"{k} {v}" for k, v in settings_lines(p.params).items())
                 for p in presets]
        embed = info_embed("Server presets", lines or ["No presets yet: `/preset save` makes one."])
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="show", description="The settings of one preset")
    @app_commands.describe(name="The preset")
    @app_commands.autocomplete(name=preset_autocomplete)
    async def show(self, interaction: discord.Interaction, name: str) -> None:
        preset = await services_of(interaction).store.presets.get(interaction.guild_id, name)
        if preset is None:
            raise UserError(f"There is no preset called “{name[:40]}” in this server (see `/preset list`).")
        embed = info_embed(f"Preset “{preset.name}”", settings_lines(preset.params),
                           description=f"Saved by <@{preset.created_by}>, used {preset.uses} times.")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="delete", description="Delete a server preset (Manage Server)")
    @app_commands.describe(name="The preset")
    @app_commands.autocomplete(name=preset_autocomplete)
    @manage_guild()
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        if not await services_of(interaction).store.presets.delete(interaction.guild_id, name):
            raise UserError(f"There is no preset called “{name[:40]}” in this server.")
        await interaction.response.send_message(f"Deleted preset “{name}”.", ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Presets(bot))
