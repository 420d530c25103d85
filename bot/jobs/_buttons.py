"""Result and status buttons as ``discord.ui.DynamicItem``: the state lives in the custom id ``zvl:<action>:<job_id>``.

Because the job id is in the custom id and the job's parameters are in the ``jobs`` table, the buttons keep
working after a restart with nothing to re-register but the item class (``bot.add_dynamic_items(JobButton)``).
Presses go to ``services.jobs.press`` (owner or moderator check, then the action); any failure is answered with
the one error policy (``bot.errors.report_error``), as slash commands are.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import discord

from bot.errors import report_error

#: action -> (label, emoji, style). The order is the order on a result message.
ACTIONS: dict[str, tuple[str, str, discord.ButtonStyle]] = {
    "reroll": ("Reroll", "🎲", discord.ButtonStyle.primary),
    "vary": ("Vary", "🔀", discord.ButtonStyle.secondary),
    "defaults": ("Save as my defaults", "💾", discord.ButtonStyle.secondary),
    "preset": ("Save as server preset", "📌", discord.ButtonStyle.secondary),
    "delete": ("Delete", "🗑️", discord.ButtonStyle.danger),
    "cancel": ("Cancel", "✖️", discord.ButtonStyle.danger),
}
#: Buttons of each job kind's result message.
RESULT_ACTIONS = {"stylize": ("reroll", "vary", "defaults", "preset", "delete"), "sweep": ("reroll", "delete"),
                  "compare": ("reroll", "delete")}


class JobActions(Protocol):
    """What a button press calls (``bot.jobs.JobService`` implements it; a Protocol here keeps this UI module free of
    an import of the service, which imports this module for its views)."""

    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None: ...

    async def save_preset(self, interaction: discord.Interaction, job_id: str, name: str) -> None: ...

    async def use_suggestion(self, interaction: discord.Interaction, job_id: str, index: int) -> None: ...


def job_actions(interaction: discord.Interaction) -> JobActions:
    """The job service of the bot that received ``interaction``."""
    return interaction.client.services.jobs  # type: ignore[attr-defined,no-any-return]


def custom_id(action: str, job_id: str) -> str:
    return f"zvl:{action}:{job_id}"


_TEMPLATE = r"zvl:(?P<action>" + "|".join(ACTIONS) + r"):(?P<job_id>[0-9a-f]{32})"


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=_TEMPLATE):
    """One button of a job's message; pressing it calls ``services.jobs.press(interaction, action, job_id)``."""

    def __init__(self, action: str, job_id: str) -> None:
        label, emoji, style = ACTIONS[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=custom_id(action, job_id)))
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> JobButton:
        return cls(match["action"], match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> Any:
        try:
            await job_actions(interaction).press(interaction, self.action, self.job_id)
        except Exception as exc:  # one error policy for buttons too
            await report_error(interaction, exc)


class SuggestionButton(discord.ui.DynamicItem[discord.ui.Button],
                       template=r"zvl:suggest:(?P<job_id>[0-9a-f]{32}):(?P<index>[1-8])"):
    """Button "n" under a /describe result: a /stylize with suggestion ``n`` as the prompt and the same reference
    (``services.jobs.use_suggestion``). Like :class:`JobButton`, its state is all in the custom id."""

    def __init__(self, job_id: str, index: int) -> None:
        super().__init__(discord.ui.Button(label=str(index), style=discord.ButtonStyle.primary,
                                           custom_id=f"zvl:suggest:{job_id}:{index}"))
        self.job_id, self.index = job_id, index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> SuggestionButton:
        return cls(match["job_id"], int(match["index"]))

    async def callback(self, interaction: discord.Interaction) -> Any:
        try:
            await job_actions(interaction).use_suggestion(interaction, self.job_id, self.index)
        except Exception as exc:  # one error policy for buttons too
            await report_error(interaction, exc)


def suggestions_view(job_id: str, count: int) -> discord.ui.View:
    """Buttons 1…count (one per suggestion), then Delete, under a /describe result."""
    view = discord.ui.View(timeout=None)
    for index in range(1, count + 1):
        view.add_item(SuggestionButton(job_id, index))
    view.add_item(JobButton("delete", job_id))
    return view


def _view(job_id: str, actions: tuple[str, ...]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job_id))
    return view


def result_view(job_id: str, kind: str) -> discord.ui.View:
    """The buttons under a finished job's result."""
    return _view(job_id, RESULT_ACTIONS.get(kind, ("delete",)))


def status_view(job_id: str) -> discord.ui.View:
    """The Cancel button under a queued or running job's status message."""
    return _view(job_id, ("cancel",))


class PresetNameModal(discord.ui.Modal, title="Save as server preset"):
    """Asks for the preset name, then saves the job's settings under it (``services.jobs.save_preset``)."""

    name: discord.ui.TextInput = discord.ui.TextInput(label="Preset name", min_length=1, max_length=32,
                                                     placeholder="e.g. watercolor")

    def __init__(self, job_id: str) -> None:
        super().__init__(custom_id=f"zvl:presetname:{job_id}", timeout=600)
        self.job_id = job_id

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await job_actions(interaction).save_preset(interaction, self.job_id, self.name.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)
