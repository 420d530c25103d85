"""``/defaults show | set | reset``: your own default settings (used whenever a command leaves one out)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.params import RESET_KEYS, GenerationOptions, effective_settings
from bot.services import services_of
from bot.ui.embeds import info_embed, settings_lines
from cogs._options import (
    DESCRIBE,
    BlendModeName,
    Layer,
    ResetName,
    ScheduleName,
    Seed,
    SelectionName,
    Size,
    Steps,
    StyleWeight,
    TokensName,
)

SHOWN = ("style_weight", "blend_mode", "layer", "tokens", "steps", "width", "height", "seed", "private",
         "style_schedule", "append_selection")


class Defaults(commands.GroupCog, group_name="defaults", group_description="Your default settings"):
    """The ``/defaults`` group."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="show", description="Show your defaults and the settings your images will use")
    async def show(self, interaction: discord.Interaction) -> None:
        services = services_of(interaction)
        mine = await services.store.defaults.get(interaction.user.id)
        effective = effective_settings(mine, services.settings)
        embed = info_embed("Your settings", settings_lines({k: effective[k] for k in SHOWN if k in effective}),
                           description="Yours: " + (", ".join(sorted(mine)) or "none yet (server defaults)"))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="set", description="Change your defaults (only the options you give)")
    @app_commands.describe(**{k: DESCRIBE[k] for k in ("style_weight", "blend_mode", "layer", "tokens", "seed",
                                                       "steps", "size", "style_schedule", "append_selection")},
                           private="Make your results private by default")
    async def set_defaults(self, interaction: discord.Interaction, style_weight: StyleWeight | None = None,
                           blend_mode: BlendModeName | None = None, layer: Layer | None = None,
                           tokens: TokensName | None = None,
                           seed: Seed | None = None, steps: Steps | None = None, size: Size | None = None,
                           private: bool | None = None, style_schedule: ScheduleName | None = None,
                           append_selection: SelectionName | None = None) -> None:
        changes = GenerationOptions(style_weight=style_weight, blend_mode=blend_mode, layer=layer, tokens=tokens,
                                    seed=seed, steps=steps, size=size, private=private, style_schedule=style_schedule,
                                    append_selection=append_selection).request_layer()
        if not changes:
            raise UserError("Give at least one setting to change (see `/defaults show`).")
        try:
            saved = await services_of(interaction).store.defaults.set(interaction.user.id, changes)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        await interaction.response.send_message(embed=info_embed("Your defaults", settings_lines(saved)),
                                                ephemeral=True)

    @app_commands.command(name="reset", description="Forget one of your defaults, or all of them")
    @app_commands.describe(setting="The setting to forget (default: all)")
    async def reset(self, interaction: discord.Interaction, setting: ResetName | None = None) -> None:
        keys = None if setting is None else RESET_KEYS.get(setting, [setting])
        left = await services_of(interaction).store.defaults.reset(interaction.user.id, keys)
        title = "All your defaults are reset" if setting is None else f"Reset {setting}"
        await interaction.response.send_message(embed=info_embed(title, settings_lines(left) or {"Left": "none"}),
                                                ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Defaults(bot))
