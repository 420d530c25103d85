"""Progress and results on Discord: one status message per job, edited at most once per ``interval`` plus a final edit.

Each job is answered through a :class:`Delivery` stored with it: the status message (the deferred "thinking…"
reply), the interaction token, and the upload limit. Edits use the interaction webhook while the token is fresh and
the **bot token** on the channel message afterwards (tokens last 15 minutes; a queued job may finish later, or
after a restart). A token Discord refuses (401) is treated as expired on the spot. An ephemeral (private) status
message can only be edited through the token; after it expires the result goes to the owner by direct message.

Progress edits are coalesced: an event arriving less than ``interval`` after the last edit is held, and the newest
held event is shown once the interval has passed, so the message never lags behind for long and never edits more
often than once per ``interval``. The final result is always sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.jobs._render import Outgoing
from bot.jobs._buttons import status_view
from bot.ui.embeds import status_line
from engine.serving.events import EventKind, ProgressEvent, throttle
from engine.serving.queue import Job, JobOutcome, JobStatus

if TYPE_CHECKING:  # pragma: no cover
    from engine.serving.protocols import JobEngine

log = logging.getLogger(__name__)

#: Stop using an interaction token this long after the interaction (Discord's limit is 15 minutes).
TOKEN_MARGIN = timedelta(minutes=14)
#: Seconds between attempts to deliver a result after a network or Discord server error.
RETRY_DELAYS = (2.0, 5.0, 15.0)
#: Smallest upload limit tried after Discord refused a file as too large (413).
MIN_UPLOAD_LIMIT = 64 * 1024
_FINAL_EVENTS = {JobStatus.FAILED: EventKind.FAILED, JobStatus.CANCELLED: EventKind.CANCELLED}
MENTIONS = discord.AllowedMentions(users=True, roles=False, everyone=False, replied_user=False)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Delivery:
    """Where a job is answered. ``token`` is the interaction token (secret: never logged, not in ``repr``)."""

    owner_id: int
    channel_id: int | None
    guild_id: int | None
    private: bool
    upload_limit: int
    application_id: int | None = None
    token: str | None = field(default=None, repr=False)
    token_created_at: datetime | None = None
    message_id: int | None = None

    @classmethod
    def from_interaction(cls, interaction: discord.Interaction, private: bool) -> Delivery:
        return cls(owner_id=interaction.user.id, channel_id=interaction.channel_id, guild_id=interaction.guild_id,
                   private=private, upload_limit=int(interaction.filesize_limit),
                   application_id=interaction.application_id, token=interaction.token,
                   token_created_at=interaction.created_at)

    def token_usable(self, now: datetime) -> bool:
        return bool(self.token and self.application_id and self.token_created_at
                    and now - self.token_created_at < TOKEN_MARGIN)


class Notifier:
    """Follows jobs of an :class:`~engine.serving.protocols.JobEngine` and keeps their Discord messages up to date.

    ``render(job, outcome, limit)`` builds the final message (``bot.jobs.render_result``); ``now`` is the wall
    clock used for token age, ``clock`` the monotonic clock of the edit throttle (both replaceable in tests).
    """

    def __init__(self, bot: discord.Client, worker: JobEngine, render: Callable[..., Any], *,
                 interval: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = _utcnow, retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.bot, self.worker, self.render = bot, worker, render
        self.interval, self.retry_delays = interval, retry_delays
        self.clock, self.now = clock, now
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def follow(self, job: Job, *, just_edited: bool = False) -> asyncio.Task[None]:
        """Start keeping ``job``'s status message up to date until its result is delivered. ``just_edited``: the
        caller has just shown the queued state, so the next edit waits a full interval."""
        task = asyncio.create_task(self._follow(job, just_edited), name=f"zvl-notify-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job.id, None))
        return task

    async def close(self, grace_s: float = 5.0) -> None:
        """Give deliveries of finished jobs up to ``grace_s``, then stop following the rest (still-queued jobs are
        followed again after the restart)."""
        finishing = [t for job_id, t in self._tasks.items() if await self.worker.position(job_id) is None]
        if finishing:
            await asyncio.wait(finishing, timeout=grace_s)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, job: Job, just_edited: bool) -> None:
        try:
            await self._progress(job, just_edited)
            outcome = await self.worker.wait(job.id)
            await self.deliver(job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job=%s: keeping its Discord message up to date failed", job.id)

    async def _progress(self, job: Job, just_edited: bool = False) -> None:
        """Throttled edits for every event until the final one (``engine.serving.events.throttle``: the newest state,
        at most one edit per ``interval``)."""
        events = self.worker.subscribe(job.id)
        start = self.clock() if just_edited else -math.inf
        try:
            async for event in throttle(events, self.interval, clock=self.clock, last=start):
                if event.final:
                    return
                await self._show(job, event)
        finally:
            events.close()

    async def _show(self, job: Job, event: ProgressEvent) -> None:
        delivery: Delivery = job.context["delivery"]
        try:
            await self.edit(delivery, content=status_line(event, kind=job.kind), view=status_view(job.id))
        except discord.HTTPException as exc:
            log.info("job=%s: progress edit failed: %s %s", job.id, exc.status, exc.code)

    async def deliver(self, job: Job, outcome: JobOutcome) -> None:
        """Send the final state: the result (PNG, or a smaller format / size when over the upload limit), or why
        there is none. A 413 from Discord (a lower limit than announced) halves the limit and tries again; a
        network or server error is retried after ``retry_delays`` seconds (default :data:`RETRY_DELAYS`). The images are on disk whatever
        happens (``data_dir/results/<job id>``)."""
        delivery: Delivery = job.context["delivery"]
        limit = delivery.upload_limit
        delays = list(self.retry_delays)
        while True:
            out = await self._final_message(job, outcome, limit)
            try:
                await self._place(delivery, out)
                log.info("job=%s delivered (%s)", job.id, outcome.status)
                return
            except discord.HTTPException as exc:
                if exc.status == 413 and out.files and limit > MIN_UPLOAD_LIMIT:
                    limit = max(MIN_UPLOAD_LIMIT, limit // 2)
                    log.info("job=%s: upload refused as too large; retrying under %d bytes", job.id, limit)
                    continue
                if not (exc.status >= 500 and delays):
                    log.warning("job=%s: delivering the result failed: %s %s", job.id, exc.status, exc.code)
                    return
                problem = f"{exc.status} {exc.code}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if not delays:
                    log.warning("job=%s: delivering the result failed: %s", job.id, type(exc).__name__)
                    return
                problem = type(exc).__name__
            delay = delays.pop(0)
            log.info("job=%s: delivery failed (%s); retrying in %g s", job.id, problem, delay)
            await asyncio.sleep(delay)

    async def _final_message(self, job: Job, outcome: JobOutcome, limit: int) -> Outgoing:
        if outcome.status is JobStatus.DONE:
            return await self.render(job, outcome, limit)
        event = ProgressEvent(job.id, _FINAL_EVENTS[outcome.status], message=outcome.error)
        return Outgoing(content=status_line(event, kind=job.kind))

    async def _place(self, delivery: Delivery, out: Outgoing) -> None:
        """Edit the status message into ``out``; a new message when it is gone; a DM when it can't be reached."""
        fields = out.fields()
        if delivery.message_id is not None:
            try:
                if await self.edit(delivery, **fields, attachments=out.files):
                    return
            except discord.NotFound:
                log.info("status message %s is gone; sending a new message", delivery.message_id)
        mention = f"<@{delivery.owner_id}>"
        if mention not in (fields.get("content") or ""):
            fields["content"] = f"{mention} {fields.get('content') or ''}".strip()
        if not delivery.private and delivery.channel_id is not None:
            channel = self.bot.get_partial_messageable(delivery.channel_id, guild_id=delivery.guild_id)
            message = await channel.send(**fields, files=out.files, allowed_mentions=MENTIONS)
            delivery.message_id = message.id
            return
        user = self.bot.get_user(delivery.owner_id) or await self.bot.fetch_user(delivery.owner_id)
        await user.send(**fields, files=out.files)

    async def edit(self, delivery: Delivery, **fields: Any) -> bool:
        """Edit the status message (webhook while the token is fresh, else the bot token). ``False`` when it
        can't be edited at all (an ephemeral message whose token expired)."""
        if delivery.message_id is None:
            return False
        if delivery.token_usable(self.now()):
            assert delivery.application_id is not None and delivery.token is not None
            webhook = discord.Webhook.partial(delivery.application_id, delivery.token, client=self.bot)
            try:
                await webhook.edit_message(delivery.message_id, allowed_mentions=MENTIONS, **fields)
                return True
            except discord.HTTPException as exc:
                if exc.status != 401:
                    raise
                delivery.token = None  # Discord says it expired: from now on, the bot token
        if delivery.private or delivery.channel_id is None:
            return False
        channel = self.bot.get_partial_messageable(delivery.channel_id, guild_id=delivery.guild_id)
        await channel.get_partial_message(delivery.message_id).edit(allowed_mentions=MENTIONS, **fields)
        return True

    async def notice(self, delivery: Delivery, text: str) -> None:
        """Put ``text`` on a job's status message (restart notices); failures are only logged."""
        try:
            if not await self.edit(delivery, content=text, view=None):
                log.info("could not post a notice for a private job after its token expired")
        except discord.HTTPException as exc:
            log.info("notice failed: %s %s", exc.status, exc.code)
