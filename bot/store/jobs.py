"""The ``jobs`` table: one row per request, the source of truth for its state.

The in-memory queue is rebuilt from these rows at start-up (:meth:`Jobs.recover_after_restart`). Status changes go
through :meth:`Jobs.transition`, which enforces :data:`ALLOWED_TRANSITIONS` atomically (compare-and-set on the
current status inside one write transaction).

The Discord interaction token is stored so a restarted bot can still edit its follow-up within the token's
15-minute life. It is sensitive: :class:`Job` leaves it out of ``repr`` and this module never logs it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import aiosqlite

from bot.store.db import fetch_all, fetch_one, from_db_time, from_json, to_db_time, to_json, transaction, utcnow
from engine.serving.queue import JobStatus

log = logging.getLogger(__name__)

#: Discord interaction tokens are valid for 15 minutes.
INTERACTION_TOKEN_TTL = timedelta(minutes=15)

#: The error recorded on queued jobs whose interaction expired while the bot was down.
EXPIRED_ERROR = "bot restarted; the request expired"


# One status enum for the worker and the jobs table (engine.serving.queue holds no torch: importing it stays cheap).
_FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class JobKind(str, Enum):
    """What the job makes."""

    STYLIZE = "stylize"  #: one /stylize request (one or more seeds)
    SWEEP = "sweep"  #: a parameter sweep rendered as a labelled grid
    COMPARE = "compare"  #: the same request under several blend modes, side by side
    DESCRIBE = "describe"  #: prompt suggestions for a reference (engine.serving.stages.DESCRIBE_KIND)

    def __str__(self) -> str:
        return self.value


#: The only status changes :meth:`Jobs.transition` accepts. ``running -> queued`` is the requeue after a restart.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

#: Columns a caller may set along with a transition (or through :meth:`Jobs.update`), and how they are stored.
_FIELDS: dict[str, Any] = {
    "error": None,
    "timings": lambda value: to_json({} if value is None else dict(value)),
    "result_paths": lambda value: to_json([] if value is None else [str(p) for p in value]),
    "message_id": None,
    "interaction_token": None,
}


class JobNotFound(LookupError):
    """No job has that id."""


class InvalidTransition(ValueError):
    """The job's current status does not allow the requested change."""

    def __init__(self, job_id: str, current: JobStatus, wanted: JobStatus) -> None:
        self.job_id, self.current, self.wanted = job_id, current, wanted
        super().__init__(f"job {job_id} cannot go from {current} to {wanted}")


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``. Timestamps are aware UTC datetimes."""

    id: str
    owner_id: int
    guild_id: int | None
    channel_id: int | None
    kind: JobKind
    params: dict[str, Any]
    status: JobStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float]
    error: str | None
    result_paths: list[str]
    interaction_token: str | None = field(repr=False)
    application_id: int | None
    interaction_created_at: datetime | None
    message_id: int | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Job:
        return cls(
            id=row["id"],
            owner_id=row["owner_id"],
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            kind=JobKind(row["kind"]),
            params=from_json(row["params"], {}),
            status=JobStatus(row["status"]),
            attempts=row["attempts"],
            created_at=from_db_time(row["created_at"]),  # type: ignore[arg-type]
            started_at=from_db_time(row["started_at"]),
            finished_at=from_db_time(row["finished_at"]),
            timings=from_json(row["timings"], {}),
            error=row["error"],
            result_paths=from_json(row["result_paths"], []),
            interaction_token=row["interaction_token"],
            application_id=row["application_id"],
            interaction_created_at=from_db_time(row["interaction_created_at"]),
            message_id=row["message_id"],
        )

    def token_expired(self, now: datetime, ttl: timedelta = INTERACTION_TOKEN_TTL) -> bool:
        """Whether the interaction (or, without one, the job) is at least ``ttl`` old at ``now``."""
        return now - (self.interaction_created_at or self.created_at) >= ttl


class Jobs:
    """Repository over ``jobs``."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def create(
        self,
        owner_id: int,
        kind: JobKind | str,
        params: Mapping[str, Any],
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        interaction_token: str | None = None,
        application_id: int | None = None,
        interaction_created_at: datetime | None = None,
        message_id: int | None = None,
        job_id: str | None = None,
        now: datetime | None = None,
    ) -> Job:
        """Insert a ``queued`` job and return it. ``params`` must be JSON-safe (``StylizeRequest.record()``)."""
        job_id = job_id or uuid.uuid4().hex
        kind = JobKind(kind)
        async with transaction(self.conn):
            await self.conn.execute(
                "INSERT INTO jobs (id, owner_id, guild_id, channel_id, kind, params, status, created_at, "
                "interaction_token, application_id, interaction_created_at, message_id) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (
                    job_id, owner_id, guild_id, channel_id, kind.value, to_json(dict(params)),
                    to_db_time(now or utcnow()), interaction_token, application_id,
                    None if interaction_created_at is None else to_db_time(interaction_created_at), message_id,
                ),
            )  # fmt: skip
        log.debug("job=%s user=%s kind=%s status=queued", job_id, owner_id, kind)
        return await self._require(job_id)

    async def get(self, job_id: str) -> Job | None:
        row = await fetch_one(self.conn, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else Job.from_row(row)

    async def transition(
        self, job_id: str, new_status: JobStatus | str, *, now: datetime | None = None, **fields: Any
    ) -> Job:
        """Move the job to ``new_status``, setting ``fields`` (error, timings, result_paths, message_id,
        interaction_token) in the same write; returns the updated job.

        Entering ``running`` sets ``started_at`` and counts an attempt; a final status sets ``finished_at``;
        ``running -> queued`` clears ``started_at``. A change not in :data:`ALLOWED_TRANSITIONS` raises
        :class:`InvalidTransition`; an unknown id raises :class:`JobNotFound`.
        """
        new = JobStatus(new_status)
        sets, values = self._field_updates(fields)
        stamp = to_db_time(now or utcnow())
        if new is JobStatus.RUNNING:
            sets += ["started_at = ?", "attempts = attempts + 1"]
            values.append(stamp)
        elif new is JobStatus.QUEUED:
            sets.append("started_at = NULL")
        else:
            sets.append("finished_at = ?")
            values.append(stamp)
        async with transaction(self.conn):
            row = await fetch_one(self.conn, "SELECT status FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                raise JobNotFound(f"no job with id {job_id}")
            current = JobStatus(row["status"])
            if new not in ALLOWED_TRANSITIONS[current]:
                raise InvalidTransition(job_id, current, new)
            await self.conn.execute(
                f"UPDATE jobs SET status = ?, {', '.join(sets)} WHERE id = ? AND status = ?",
                (new.value, *values, job_id, current.value),
            )
        log.debug("job=%s status=%s->%s", job_id, current, new)
        return await self._require(job_id)

    async def update(self, job_id: str, **fields: Any) -> Job:
        """Set ``fields`` without a status change (e.g. the status ``message_id`` once it is sent)."""
        sets, values = self._field_updates(fields)
        if not sets:
            return await self._require(job_id)
        async with transaction(self.conn):
            cur = await self.conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*values, job_id))
            changed = cur.rowcount
            await cur.close()
        if not changed:
            raise JobNotFound(f"no job with id {job_id}")
        return await self._require(job_id)

    async def list_for_user(
        self, owner_id: int, limit: int = 10, statuses: Iterable[JobStatus | str] | None = None
    ) -> list[Job]:
        """The user's jobs, newest first (optionally only the given statuses)."""
        sql, params = "SELECT * FROM jobs WHERE owner_id = ?", [owner_id]
        if statuses is not None:
            wanted = [JobStatus(s).value for s in statuses]
            sql += f" AND status IN ({', '.join('?' * len(wanted))})"
            params += wanted
        rows = await fetch_all(self.conn, sql + " ORDER BY created_at DESC, id LIMIT ?", (*params, limit))
        return [Job.from_row(row) for row in rows]

    async def list_active(self) -> list[Job]:
        """Queued and running jobs, oldest first (the order they were submitted)."""
        rows = await fetch_all(
            self.conn, "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id"
        )
        return [Job.from_row(row) for row in rows]

    async def history(self, limit: int = 20, guild_id: int | None = None) -> list[Job]:
        """The most recent jobs of everyone (or of one guild), newest first: the admin view."""
        if guild_id is None:
            rows = await fetch_all(self.conn, "SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?", (limit,))
        else:
            rows = await fetch_all(
                self.conn,
                "SELECT * FROM jobs WHERE guild_id = ? ORDER BY created_at DESC, id LIMIT ?",
                (guild_id, limit),
            )
        return [Job.from_row(row) for row in rows]

    async def recover_after_restart(
        self, now: datetime, token_ttl: timedelta = INTERACTION_TOKEN_TTL
    ) -> tuple[list[Job], list[Job]]:
        """Start-up recovery; returns ``(resumable, expired)``, both oldest first.

        Running rows (interrupted by the restart) go back to ``queued``. Queued rows whose interaction is younger
        than ``token_ttl`` at ``now`` can still be answered and are resumable; older ones are marked ``failed``
        with :data:`EXPIRED_ERROR` and returned so the bot can post a notice in their channel.
        """
        stamp = to_db_time(now)
        async with transaction(self.conn):
            await self.conn.execute("UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'")
            queued = [
                Job.from_row(row)
                for row in await fetch_all(
                    self.conn, "SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, id"
                )
            ]
            expired_ids = [job.id for job in queued if job.token_expired(now, token_ttl)]
            await self.conn.executemany(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                [(EXPIRED_ERROR, stamp, job_id) for job_id in expired_ids],
            )
        gone = set(expired_ids)
        resumable = [job for job in queued if job.id not in gone]
        expired = [await self._require(job_id) for job_id in expired_ids]
        log.info("recovered jobs after restart: resumable=%d expired=%d", len(resumable), len(expired))
        return resumable, expired

    def _field_updates(self, fields: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown job field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}")
        sets, values = [], []
        for name, value in fields.items():
            encode = _FIELDS[name]
            sets.append(f"{name} = ?")
            values.append(value if encode is None else encode(value))
        return sets, values

    async def _require(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job
