"""``/describe`` and its suggestion buttons: a part of :class:`~bot.jobs._service.JobService` (mixed in), kept apart
so the service module stays readable.

``/describe image`` queues a job of kind ``describe`` through the same fair queue as generation (it needs the same
Qwen3-VL, so it waits its turn like any job and counts towards the same caps); the worker's encode stage answers it
(``engine.serving.stages``), the recorder keeps the suggestions next to the job (``suggestions.json``), and the
result shows buttons 1…4. Pressing one starts a ``/stylize`` with that suggestion as the prompt and the same stored
reference, under the presser's own defaults and a fresh seed; it works after a restart too (all it needs is the
job row and the two stored files).
"""

from __future__ import annotations

from typing import Any

import discord

from bot.checks import may_moderate
from bot.errors import JobGone, NotYourJob, UserError, defer_reply
from bot.jobs._render import read_suggestions
from bot.params import GenerationOptions
from bot.store import JobKind


class DescribeJobs:
    """``describe`` and ``use_suggestion``; reaches the service's own job-starting steps through ``self``."""

    settings: Any
    store: Any
    references: Any
    styles: Any
    cooldowns: Any

    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        """``/describe``: queue Qwen3-VL's prompt suggestions for ``image``."""
        async with self._starting_job():
            self.references.check_declared(image)
            user = await self.store.defaults.get(interaction.user.id)
            private = bool(user.get("private", False))
            await defer_reply(interaction, private=private)
            resolved, _preset = await self._resolve(interaction, GenerationOptions(), user)
            params = self._params("", resolved, None, None, None, None, private, interaction.filesize_limit)
            reference = await self.references.fetch(image)
            params["reference"] = reference.record()
            params["style_code"] = await self.styles.remember(reference, guild_id=interaction.guild_id,
                                                              user_id=interaction.user.id)
            await self._submit(interaction, JobKind.DESCRIBE, params, reference)

    async def use_suggestion(self, interaction: discord.Interaction, job_id: str, index: int) -> None:
        """Button ``index`` under a /describe result: a /stylize with that suggestion and the same reference (the
        job's owner or a moderator may press it, as every result button)."""
        row = await self.store.jobs.get(job_id)
        if row is None or row.kind != JobKind.DESCRIBE:
            raise JobGone()
        if not await may_moderate(interaction, row.owner_id):
            raise NotYourJob()
        suggestions = read_suggestions(row.result_paths)
        if suggestions is None or not 1 <= index <= len(suggestions):
            raise UserError("Those suggestions are no longer stored; run `/describe` again.")
        self.cooldowns.check(interaction.user.id)
        async with self._starting_job():
            user = await self.store.defaults.get(interaction.user.id)
            private = bool(row.params["delivery"]["private"])
            await defer_reply(interaction, private=private)
            reference = await self.references.load(row.params["reference"])
            resolved, _preset = await self._resolve(interaction, GenerationOptions(), user)  # a fresh seed
            prompt = suggestions[index - 1]
            params = self._params(prompt, resolved, None, None, row.params["reference"], None, private,
                                  interaction.filesize_limit)
            params.update(source_job=row.id, suggestion=index, style_code=row.params.get("style_code"))
            await self._submit(interaction, JobKind.STYLIZE, params, reference)
