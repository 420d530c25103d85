"""``/queue show | cancel``: your jobs, their place in line and ETA, and cancelling them."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.jobs import JobButton
from bot.services import services_of
from bot.ui.embeds import info_embed, job_line


async def active_job_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """The caller's queued and running jobs."""
    entries = await services_of(interaction).worker.jobs_for(interaction.user.id)
    choices = []
    for job, position, _eta in entries:
        label = job_line(job.id, job.kind, job.requests[0].prompt, position=position)
        if current.lower() in (label + job.id).lower():
            choices.append(app_commands.Choice(name=label[:100], value=job.id))
    return choices[:25]


class Queue(commands.GroupCog, group_name="queue", group_description="Your jobs in the queue"):
    """The ``/queue`` group."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="show", description="Your queued and running jobs, with ETA, and your recent ones")
    async def show(self, interaction: discord.Interaction) -> None:
        services = services_of(interaction)
        active = await services.worker.jobs_for(interaction.user.id)
        lines = [job_line(job.id, job.kind, job.requests[0].prompt, position=pos, eta_s=eta)
                 for job, pos, eta in active]
        ids = {job.id for job, _p, _e in active}
        recent = [row for row in await services.store.jobs.list_for_user(interaction.user.id, limit=5)
                  if row.id not in ids]
        lines += [job_line(row.id, row.kind.value, row.params.get("prompt", ""), status=row.status.value,
                           error=row.error) for row in recent]
        view = discord.ui.View(timeout=None)
        for job, position, _eta in active[:5]:
            button = JobButton("cancel", job.id)
            button.item.label = "Cancel running" if position == 0 else f"Cancel #{position}"
            view.add_item(button)
        embed = info_embed("Your jobs", lines or ["Nothing queued. `/stylize` makes an image."])
        await interaction.response.send_message(embed=embed, view=view if active else discord.utils.MISSING,
                                                ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your queued or running jobs")
    @app_commands.describe(job_id="The job (pick from the list)")
    @app_commands.autocomplete(job_id=active_job_autocomplete)
    async def cancel(self, interaction: discord.Interaction, job_id: app_commands.Range[str, 1, 64]) -> None:
        services = services_of(interaction)
        full_id = await services.jobs.find_active(job_id, owner_id=interaction.user.id)
        if not await services.worker.cancel(full_id, "cancelled by its owner"):
            raise UserError("That job has already finished.")
        await interaction.response.send_message("Cancelled.", ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Queue(bot))
