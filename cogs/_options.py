"""Option types, choices, the sweep value-list transformer and the preset autocomplete shared by the cogs.

Style weight is Midjourney's ``--sw`` scale (0-1000, 100 = the default look); the job service maps it onto the
blend alpha with ``engine.types.style_weight_to_alpha``, the one documented mapping.
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.errors import UserError
from bot.params import (
    APPEND_SELECTIONS,
    BLEND_MODES,
    RESETTABLE,
    SIZES,
    STYLE_SCHEDULES,
    check_axis_values,
    sweep_presets,
)
from bot.services import services_of
from engine.limits import LIMITS

_OPTION_TYPES = {int: discord.AppCommandOptionType.integer, float: discord.AppCommandOptionType.number,
                 str: discord.AppCommandOptionType.string}

PresetName = app_commands.Range[str, 1, 32]  # the store checks the name itself (InvalidPresetName)

BLEND_MODE_CHOICES = [app_commands.Choice(name=f"{mode.value}: {short}"[:100], value=mode.value)
                      for mode, (short, _long) in BLEND_MODES.items()]
TOKEN_CHOICES = [
    app_commands.Choice(name="full: image and prompt text (default)", value="full"),
    app_commands.Choice(name="image: the image tokens with their markers", value="image"),
    app_commands.Choice(name="image_no_markers: the image tokens alone", value="image_no_markers"),
    app_commands.Choice(name="text: no image tokens (almost no style)", value="text"),
]
SCHEDULE_CHOICES = [app_commands.Choice(name=f"{s.value}: {text}"[:100], value=s.value)
                    for s, text in STYLE_SCHEDULES.items()]
SELECTION_CHOICES = [app_commands.Choice(name=f"{s.value}: {text}"[:100], value=s.value)
                     for s, text in APPEND_SELECTIONS.items()]
SIZE_CHOICES = [app_commands.Choice(name=f"{name} ({w}×{h})", value=name) for name, (w, h) in SIZES.items()]
SWEEP_PRESET_CHOICES = [app_commands.Choice(name=f"{name}: {text}"[:100], value=name)
                        for name, text in sweep_presets().items()]
RESET_CHOICES = [app_commands.Choice(name=key, value=key) for key in RESETTABLE]

#: ``describe`` texts shared by every command that takes them.
DESCRIBE = {
    "image": "The style reference image (PNG, JPEG, WebP, GIF, BMP or TIFF)",
    "prompt": "What to draw (optional: without it, the reference alone guides the image)",
    "style_weight": "How strongly the reference's style applies, 0-1000 like Midjourney's --sw (default 100)",
    "blend_mode": "How the reference is mixed into the prompt (see /blendmode info)",
    "layer": "Qwen3-VL hidden layer to read, counted from the end (default -6)",
    "tokens": "Which parts of the reference's sequence to use (default full)",
    "seed": "Seed for a reproducible image (default random)",
    "steps": "Denoising steps (default 9)",
    "size": "Aspect ratio and size of the output, about one megapixel",
    "strength": "Img2img from the reference: noise level to start from (0.05 keeps it, 0.9 keeps a trace, 1 redraws)",
    "preset": "A server preset to start from",
    "private": "Only you see the result",
    "style_schedule": "How the style's share changes over the denoising steps (default constant)",
    "append_selection": "Blend mode append: which parts of the reference are added (default pool)",
    "style": "Style codes from earlier results (e.g. ab12cd34, or ab12cd34::2 ef56ab78), alone or with images",
}

#: ``/stylize``'s options for several references and a negative (``bot.refset``).
MULTI_DESCRIBE = {
    "image2": "A second style reference, mixed with the first (up to 4 references in all)",
    "image3": "A third style reference",
    "image4": "A fourth style reference",
    "weights": "Relative weight of each reference in order: image, image2…, then style codes (e.g. 2,1)",
    "negative_image": "A style to move away from (turns on guidance: a second pass per step, about 2× slower)",
    "negative_style": "A style code to move away from (instead of negative_image)",
}


class AxisValues(app_commands.Transformer):
    """A comma-separated value list for one sweep axis (``0.2,0.4,0.6``, ranges ``0.2:0.8:0.2``, layer mixes
    ``-6+-8``), checked by the engine's parser; a bad list is a clear ephemeral error naming the axis."""

    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.string

    @property
    def max_value(self) -> int:
        return 200

    async def transform(self, interaction: discord.Interaction, value: str) -> str:
        try:
            return check_axis_values(self.key, value)
        except ValueError as exc:
            raise UserError(f"Bad value list: {exc}") from None


class Bounded(app_commands.Transformer):
    """A number (or text) option within ``engine.limits.LIMITS[key]``: the range is declared to Discord, and what
    arrives is checked too, because ``Range`` only declares it and a client can send anything. Transformers run
    after the command's checks but before its body, so a refused value queues nothing and spends no cooldown."""

    def __init__(self, key: str, option_type: type | None = None) -> None:
        self.bound = LIMITS[key]
        self._type = _OPTION_TYPES[option_type or self.bound.kind]

    @property
    def type(self) -> discord.AppCommandOptionType:
        return self._type

    @property
    def min_value(self) -> int | float:
        return _declared(self.bound.lo)

    @property
    def max_value(self) -> int | float:
        return _declared(self.bound.hi)

    async def transform(self, interaction: discord.Interaction, value: object) -> object:
        try:
            return self.bound.check(value, f"`{self.bound.name}`")
        except ValueError as exc:
            raise UserError(f"{exc}.") from None


def _declared(limit: float) -> int | float:
    """Whole limits as ``int`` (Discord shows ``100``, not ``100.0``)."""
    return int(limit) if float(limit).is_integer() else limit


class OneOf(app_commands.Transformer):
    """A text option with fixed choices; anything else (a client can send it) is a clear error naming the option."""

    def __init__(self, option: str, choices: list[app_commands.Choice[str]]) -> None:
        self.option, self._choices = option, choices

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.string

    @property
    def choices(self) -> list[app_commands.Choice[str]]:
        return self._choices

    async def transform(self, interaction: discord.Interaction, value: object) -> str:
        allowed = [c.value for c in self._choices]
        if value not in allowed:
            shown = str(value)[:40]
            raise UserError(f"`{self.option}` must be one of {', '.join(allowed)}; got {shown!r}.")
        return str(value)


StyleWeight = app_commands.Transform[float, Bounded("style_weight", int)]
Steps = app_commands.Transform[int, Bounded("steps")]
Layer = app_commands.Transform[int, Bounded("layer")]
Seed = app_commands.Transform[int, Bounded("seed")]
Strength = app_commands.Transform[float, Bounded("strength")]
Prompt = app_commands.Transform[str, Bounded("prompt")]
Size = app_commands.Transform[str, OneOf("size", SIZE_CHOICES)]
BlendModeName = app_commands.Transform[str, OneOf("blend_mode", BLEND_MODE_CHOICES)]
ModeName = app_commands.Transform[str, OneOf("mode", BLEND_MODE_CHOICES)]  # /blendmode set|info call it "mode"
TokensName = app_commands.Transform[str, OneOf("tokens", TOKEN_CHOICES)]
ScheduleName = app_commands.Transform[str, OneOf("style_schedule", SCHEDULE_CHOICES)]
SelectionName = app_commands.Transform[str, OneOf("append_selection", SELECTION_CHOICES)]
SweepPresetName = app_commands.Transform[str, OneOf("preset", SWEEP_PRESET_CHOICES)]
ResetName = app_commands.Transform[str, OneOf("setting", RESET_CHOICES)]

Weights = app_commands.Range[str, 1, 60]  #: checked against the references' count by ``bot.refset``

Alphas = app_commands.Transform[str, AxisValues("alphas")]
Layers = app_commands.Transform[str, AxisValues("layers")]
Modes = app_commands.Transform[str, AxisValues("modes")]
TokenModes = app_commands.Transform[str, AxisValues("tokens")]
Normalizations = app_commands.Transform[str, AxisValues("normalizations")]
Outliers = app_commands.Transform[str, AxisValues("outliers")]
Strengths = app_commands.Transform[str, AxisValues("strengths")]
Seeds = app_commands.Transform[str, AxisValues("seeds")]
Schedules = app_commands.Transform[str, AxisValues("schedules")]
Selections = app_commands.Transform[str, AxisValues("selections")]


async def preset_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The server's presets whose name starts with what was typed (at most 25)."""
    if interaction.guild_id is None:
        return []
    presets = await services_of(interaction).store.presets.list(interaction.guild_id, current)
    return [app_commands.Choice(name=p.name, value=p.name) for p in presets]
