"""The job service: from an interaction to a queued engine job, its row in SQLite, and everything after.

* **Starting** (``/stylize``, ``/sweep``, ``/blendmode compare``, ``/preset use``, the Reroll and Vary buttons):
  refuse what the attachment's metadata rules out, defer (the 3-second rule), resolve the parameters (options >
  user defaults > preset > settings), plan the sweep, download and sanitise the reference, submit to the worker,
  turn the "thinking…" message into the status message and hand it to the notifier.
* **Recording**: :class:`SqliteRecorder` is the worker's ``JobRecorder``; the ``jobs`` table is the truth (a row is
  written before a job can run, and every status change is a checked transition).
* **Restart**: :meth:`JobService.recover` puts interrupted jobs back in the queue from their rows (the reference is
  stored by content, the parameters in the row) and resumes their status messages.
* **Buttons**: :meth:`JobService.press` checks who pressed, then reroll / vary / save / delete / cancel.

A job's row ``params``: ``prompt``, ``resolved`` (user-facing settings), ``request`` (``StylizeRequest.record()``
of the base request), ``strength``, ``preset``, ``reference`` (stored PNG), ``sweep`` (preset + value lists, for
sweeps) and ``delivery`` (``private``, ``upload_limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

from bot.checks import Cooldowns, may_manage_guild, may_moderate
from bot.errors import PUBLIC_DEFER, GuildOnly, JobGone, NotYourJob, UserError, defer_reply
from bot.jobs._delivery import Delivery, Notifier
from bot.jobs._describe import DescribeJobs
from bot.params import (
    GenerationOptions,
    build_request,
    defaults_from,
    fix_seed,
    preset_from,
    settings_defaults,
)
from bot.references import Reference, ReferenceStore
from bot.refset import Extras, ReferenceGatherer, load_extras
from bot.jobs._render import save_results
from bot.store import JobKind, JobStatus, Store, resolve_params
from bot.store.db import utcnow
from bot.styles import StyleBook
from bot.jobs._buttons import PresetNameModal, status_view
from bot.ui.embeds import info_embed, settings_lines, status_line
from engine.serving.events import EventKind, ProgressEvent
from engine.serving.queue import Job, JobOutcome
from engine.sweep.plan import SweepPlan, plan_sweep
from engine.types import StylizeRequest, alpha_to_style_weight

if TYPE_CHECKING:  # pragma: no cover
    from engine.serving.protocols import JobEngine

log = logging.getLogger(__name__)

#: Queued jobs older than this at start-up are not resumed (they fail with a notice instead).
RESUME_WINDOW = timedelta(hours=24)


class SqliteRecorder:
    """The worker's ``JobRecorder`` over the ``jobs`` table (built before the worker, which is given it)."""

    def __init__(self, settings: Any, store: Store) -> None:
        self.settings, self.store = settings, store

    async def on_queued(self, job: Job) -> None:
        d: Delivery = job.context["delivery"]
        await self.store.jobs.create(
            job.owner_id, job.kind, job.context["params"], guild_id=job.guild_id, channel_id=d.channel_id,
            interaction_token=d.token, application_id=d.application_id, interaction_created_at=d.token_created_at,
            message_id=d.message_id, job_id=job.id,
        )  # fmt: skip

    async def on_started(self, job: Job) -> None:
        await self.store.jobs.transition(job.id, JobStatus.RUNNING)

    async def on_finished(self, job: Job, outcome: JobOutcome) -> None:
        paths: list[str] = []
        if outcome.results:
            root = self.settings.data_dir / "results" / job.id
            paths = await asyncio.to_thread(save_results, root, job, outcome)
        await self.store.jobs.transition(job.id, JobStatus(outcome.status.value), error=outcome.error,
                                         timings=outcome.timings, result_paths=paths)

    async def on_interrupted(self, job: Job) -> None:
        await self.store.jobs.transition(job.id, JobStatus.QUEUED)


class JobService(DescribeJobs):
    """Starts, records, restores and acts on jobs (see the module docstring; ``/describe`` in ``_describe``)."""

    def __init__(self, settings: Any, store: Store, worker: JobEngine, references: ReferenceStore,
                 notifier: Notifier, cooldowns: Cooldowns, styles: StyleBook) -> None:
        self.settings, self.store, self.worker = settings, store, worker
        self.references, self.notifier, self.cooldowns, self.styles = references, notifier, cooldowns, styles
        self.gatherer = ReferenceGatherer(references, styles)
        self.closing = False
        self._starting = 0
        self._none_starting = asyncio.Event()
        self._none_starting.set()

    @contextlib.asynccontextmanager
    async def _starting_job(self) -> AsyncIterator[None]:
        """Track a job being started (so shutdown can wait for it); refuse new ones once closing."""
        if self.closing:
            raise UserError("The bot is restarting; please try again in a minute.")
        self._starting += 1
        self._none_starting.clear()
        try:
            yield
        finally:
            self._starting -= 1
            if not self._starting:
                self._none_starting.set()

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs and wait (up to ``timeout``) for those being started to reach the queue."""
        self.closing = True
        try:
            await asyncio.wait_for(self._none_starting.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d job(s) were still being started at shutdown", self._starting)

    # --- starting jobs --------------------------------------------------------------------------------------------
    async def stylize(self, interaction: discord.Interaction, image: discord.Attachment | None,
                      options: GenerationOptions, more: tuple[discord.Attachment | None, ...] = (),
                      negative: discord.Attachment | None = None) -> None:
        """``/stylize`` (and ``/preset use``): one image in the style of ``image`` and ``more`` (``image2``…) and of
        ``options.style``'s codes, weighted by ``options.weights``, away from ``negative`` (``bot.refset``)."""
        await self._start(interaction, JobKind.STYLIZE, image, options, None, more, negative)

    async def sweep(self, interaction: discord.Interaction, image: discord.Attachment, options: GenerationOptions,
                    *, preset: str | None, overrides: dict[str, str], kind: JobKind = JobKind.SWEEP) -> None:
        """``/sweep`` and ``/blendmode compare``: one labelled grid over the values of a preset or given lists."""
        await self._start(interaction, kind, image, options, {"preset": preset, "overrides": overrides})

    async def _start(self, interaction: discord.Interaction, kind: JobKind, image: discord.Attachment | None,
                     options: GenerationOptions, sweep: dict[str, Any] | None,
                     more: tuple[discord.Attachment | None, ...] = (), negative: discord.Attachment | None = None
                     ) -> None:
        async with self._starting_job():
            gathered = await self.gatherer.check(interaction, [image, *more], options, negative)  # private refusals
            await self._start_job(interaction, kind, gathered, options, sweep)

    async def _start_job(self, interaction: discord.Interaction, kind: JobKind, gathered: Any,
                         options: GenerationOptions, sweep: dict[str, Any] | None) -> None:
        user = await self.store.defaults.get(interaction.user.id)
        private = options.private if options.private is not None else bool(user.get("private", False))
        await defer_reply(interaction, private=private)
        resolved, preset = await self._resolve(interaction, options, user)
        params = self._params(options.prompt, resolved, options.strength, preset, None, sweep, private,
                              interaction.filesize_limit)
        if sweep is not None:
            self._requests(kind, params, None)  # refuse a bad sweep before downloading anything
        self.gatherer.check_resolved(gathered, resolved)
        reference, extras = await self.gatherer.fetch(gathered)
        params["reference"] = reference.record() if reference is not None else None
        params.update(await self.gatherer.remember(reference, extras, guild_id=interaction.guild_id,
                                                   user_id=interaction.user.id))
        await self._submit(interaction, kind, params, reference, extras)

    async def _resolve(self, interaction: discord.Interaction, options: GenerationOptions,
                       user: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        preset = None
        if options.preset:
            if interaction.guild_id is None:
                raise GuildOnly("Presets belong to a server; use this in one.")
            preset = await self.store.presets.use(interaction.guild_id, options.preset)
            if preset is None:
                raise UserError(f"There is no preset called “{options.preset[:40]}” in this server "
                                "(see `/preset list`).")
        resolved = resolve_params(options.request_layer(), user, preset, settings_defaults(self.settings))
        return fix_seed(resolved), options.preset if preset is not None else None

    def _params(self, prompt: str, resolved: dict[str, Any], strength: float | None, preset: str | None,
                reference: dict[str, Any] | None, sweep: dict[str, Any] | None, private: bool,
                upload_limit: int) -> dict[str, Any]:
        try:
            request = build_request(resolved, prompt=prompt, reference=None, strength=strength)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return {"prompt": prompt, "resolved": resolved, "request": request.record(), "strength": strength,
                "preset": preset, "reference": reference, "sweep": sweep,
                "delivery": {"private": private, "upload_limit": int(upload_limit)}}

    def _requests(self, kind: str, params: dict[str, Any], reference: Reference | None,
                  extras: Extras | None = None) -> tuple[list[StylizeRequest], SweepPlan | None]:
        base = StylizeRequest.from_record(params["request"], reference.image if reference else None)
        base = extras.apply(base) if extras is not None else base
        if kind in (JobKind.STYLIZE, JobKind.DESCRIBE):
            return [base], None
        sweep = params["sweep"]
        try:
            plan = plan_sweep(base, sweep["preset"], sweep["overrides"], max_cells=self.settings.sweep_max_cells)
        except ValueError as exc:
            raise UserError(str(exc)[:1].upper() + str(exc)[1:]) from None
        return [cell.request for cell in plan.cells], plan

    async def _submit(self, interaction: discord.Interaction, kind: JobKind, params: dict[str, Any],
                      reference: Reference | None, extras: Extras | None = None) -> None:
        requests, plan = self._requests(kind, params, reference, extras)
        delivery = Delivery.from_interaction(interaction, params["delivery"]["private"])
        job = Job(owner_id=interaction.user.id, requests=requests, guild_id=interaction.guild_id, kind=kind.value,
                  context={"delivery": delivery, "params": params, "reference": reference, "plan": plan})
        position = await self.worker.submit(job)
        self.cooldowns.start(job.owner_id)
        eta = await self.worker.position(job.id)
        queued = ProgressEvent(job.id, EventKind.QUEUED, position=position, eta_s=eta[1] if eta else None)
        try:
            message = await interaction.edit_original_response(content=status_line(queued, kind=job.kind),
                                                               view=status_view(job.id))
        except discord.HTTPException as exc:
            log.warning("job=%s: status message failed (%s); the result will be posted instead", job.id, exc.status)
        else:
            interaction.extras.pop(PUBLIC_DEFER, None)
            delivery.message_id = message.id
            await self.store.jobs.update(job.id, message_id=message.id)
        log.info("job=%s user=%s kind=%s cells=%d queued at %d", job.id, job.owner_id, kind, len(requests), position)
        self.notifier.follow(job, just_edited=delivery.message_id is not None)

    # --- restart ----------------------------------------------------------------------------------------------------
    async def recover(self) -> int:
        """Re-queue the jobs a restart interrupted (their rows are ``queued`` again) and resume their status
        messages; jobs too old to resume, or whose reference is gone, fail with a notice. Returns the count."""
        resumable, expired = await self.store.jobs.recover_after_restart(utcnow(), token_ttl=RESUME_WINDOW)
        jobs = []
        for row in resumable:
            try:
                jobs.append(await self._rebuild(row))
            except (UserError, KeyError, TypeError, ValueError) as exc:
                message = str(exc) if isinstance(exc, UserError) else "its stored parameters could not be read"
                log.warning("job=%s cannot be resumed: %s", row.id, message)
                await self.store.jobs.transition(row.id, JobStatus.FAILED, error=message)
                await self.notifier.notice(self._delivery(row), f"❌ Could not resume after a restart: {message}")
        await self.worker.restore(jobs)
        for job in jobs:
            self.notifier.follow(job)
        for row in expired:
            await self.notifier.notice(self._delivery(row), "❌ The bot restarted and this request expired; "
                                                            "please run it again.")
        if jobs or expired:
            log.info("restart: %d job(s) resumed, %d expired", len(jobs), len(expired))
        return len(jobs)

    def _delivery(self, row: Any) -> Delivery:
        delivery = (row.params or {}).get("delivery") or {}
        return Delivery(owner_id=row.owner_id, channel_id=row.channel_id, guild_id=row.guild_id,
                        private=bool(delivery.get("private", False)),
                        upload_limit=int(delivery.get("upload_limit", 10 << 20)), application_id=row.application_id,
                        token=row.interaction_token, token_created_at=row.interaction_created_at,
                        message_id=row.message_id)

    async def _rebuild(self, row: Any) -> Job:
        params = row.params
        reference = await self.references.load(params["reference"]) if params.get("reference") else None
        requests, plan = self._requests(row.kind.value, params, reference, await load_extras(self.references, params))
        return Job(owner_id=row.owner_id, requests=requests, guild_id=row.guild_id, kind=row.kind.value, id=row.id,
                   created_at=row.created_at.timestamp(),
                   context={"delivery": self._delivery(row), "params": params, "reference": reference, "plan": plan})

    # --- queries ----------------------------------------------------------------------------------------------------
    async def find_active(self, job_id: str, owner_id: int | None = None) -> str:
        """The full id of a queued or running job given its id or a prefix of it (``owner_id``: among that user's
        jobs only). :class:`UserError` when none or several match."""
        job_id = job_id.strip().lower()
        if owner_id is not None:
            ids = [job.id for job, _p, _e in await self.worker.jobs_for(owner_id)]
        else:
            ids = [row.id for row in await self.store.jobs.list_active()]
        found = [i for i in ids if i.startswith(job_id)] if job_id else []
        if len(found) != 1:
            raise UserError("That job is not queued or running (see `/queue show`)." if not found
                            else "Several jobs start with that id; give more of it.")
        return found[0]

    # --- buttons ----------------------------------------------------------------------------------------------------
    async def press(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        """A result or status button: only the job's owner or a moderator may press it."""
        row = await self.store.jobs.get(job_id)
        if row is None:
            raise JobGone()
        if not await may_moderate(interaction, row.owner_id):
            raise NotYourJob()
        if action == "cancel":
            by = "its owner" if interaction.user.id == row.owner_id else "an admin"
            done = await self.worker.cancel(job_id, f"cancelled by {by}")
            text = "Cancelled." if done else "That job is not queued or running any more."
            await interaction.response.send_message(text, ephemeral=True)
        elif action == "delete":
            await interaction.response.defer()
            await interaction.delete_original_response()
        elif action in ("reroll", "vary"):
            self.cooldowns.check(interaction.user.id)
            async with self._starting_job():
                await self._derive(interaction, row, vary=action == "vary")
        elif action == "defaults":
            saved = await self.store.defaults.set(interaction.user.id, defaults_from(row.params["resolved"]))
            await interaction.response.send_message(embed=info_embed("Saved as your defaults", settings_lines(saved)),
                                                    ephemeral=True)
        elif action == "preset":
            if interaction.guild_id is None:
                raise GuildOnly()
            if not await may_manage_guild(interaction):
                raise app_commands.MissingPermissions(["manage_guild"])
            await interaction.response.send_modal(PresetNameModal(job_id))

    async def save_preset(self, interaction: discord.Interaction, job_id: str, name: str) -> None:
        """The preset-name modal was submitted: save the job's settings as a server preset."""
        row = await self.store.jobs.get(job_id)
        if row is None:
            raise JobGone()
        if interaction.guild_id is None:
            raise GuildOnly()
        if not await may_manage_guild(interaction):
            raise app_commands.MissingPermissions(["manage_guild"])
        preset = await self.store.presets.save(interaction.guild_id, name, preset_from(row.params["resolved"]),
                                               interaction.user.id)
        await interaction.response.send_message(
            embed=info_embed(f"Saved server preset “{preset.name}”", settings_lines(preset.params)), ephemeral=True)

    async def _derive(self, interaction: discord.Interaction, row: Any, *, vary: bool) -> None:
        """Reroll (a new seed) or vary (the same seed, a nearby style weight) a finished job."""
        params = copy.deepcopy(row.params)
        resolved = params["resolved"]
        if vary:
            alpha = nearby_alpha(float(resolved["alpha"]))
            resolved.update(alpha=alpha, style_weight=alpha_to_style_weight(alpha))
        else:
            resolved["seed"] = secrets.randbelow(2**32)
        private = bool(params["delivery"]["private"])
        await defer_reply(interaction, private=private)
        reference = await self.references.load(params["reference"]) if params.get("reference") else None
        extras = await load_extras(self.references, params)
        new = self._params(params["prompt"], resolved, params.get("strength"), params.get("preset"),
                           params.get("reference"), params.get("sweep"), private, interaction.filesize_limit)
        new["source_job"] = row.id
        new.update({k: params[k] for k in ("style_code", "style_codes", "negative_style_code", "multi") if k in params})
        await self._submit(interaction, JobKind(row.kind), new, reference, extras)


def nearby_alpha(alpha: float, rng: random.Random | None = None) -> float:
    """A subtly different alpha: 0.04 to 0.10 away, kept inside [0.01, 1]; moves inwards at the ends."""
    rng = rng or random.Random()
    step = rng.uniform(0.04, 0.10)
    up = alpha + step <= 1.0 and (alpha - step < 0.01 or rng.random() < 0.5)
    return round(min(1.0, max(0.01, alpha + step if up else alpha - step)), 4)

