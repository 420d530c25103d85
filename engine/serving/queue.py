"""The job model and the fair job queue the engine worker serves.

No Discord types here: a :class:`Job` carries the owner's and guild's ids and an opaque ``context`` dict the bot fills
with whatever it needs to answer later (channel, message id, ...). The worker reaches the queue only through the
:class:`JobQueue` protocol, so a Redis-backed queue feeding several GPU machines can replace :class:`FairQueue`
without touching the worker's callers.

Fairness: users take turns round-robin, each user's own jobs first-in first-out. A user with a long sweep queue gets
one turn per round, so three users who submit 4, 2 and 1 jobs (A, B, C) are served ``A1 B1 C1 A2 B2 A3 A4``, and a
user arriving while A's line is served gets the next turn. A job's ``priority`` (higher first) picks the class that
is served first; turns apply within a class. See :class:`FairQueue` for the rule.

Caps count a user's queued *and* running jobs (a job stays counted from :meth:`JobQueue.put` until
:meth:`JobQueue.done`); a job over a cap is refused at once with :class:`QueueFull`, whose ``str`` is fit to show the
user.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.types import StylizeRequest, StylizeResult


class JobStatus(str, Enum):
    """Where a job is in its life (the same values as the bot's ``jobs.status`` column)."""

    #: Waiting in the queue (new, restored after a restart, or put back by a shutdown that interrupted it).
    QUEUED = "queued"
    #: Taken by the worker: in the VL stage, waiting for the DiT, or in the DiT stage.
    RUNNING = "running"
    #: Finished; ``JobOutcome.results`` holds one result per request.
    DONE = "done"
    #: Ended with an error; ``JobOutcome.error`` says why in words fit for the user.
    FAILED = "failed"
    #: Stopped on request of the owner or an admin.
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    def __str__(self) -> str:
        return self.value


@dataclass(eq=False)
class Job:
    """One unit of work for the worker: one request, or a sweep of many cells (``requests``).

    ``created_at`` is wall-clock (``time.time()``), so it survives a restart; it orders restored jobs. ``context`` is
    opaque to the engine (the bot keeps its Discord follow-up information there).
    """

    owner_id: int
    requests: list[StylizeRequest]
    guild_id: int | None = None
    kind: str = "stylize"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)
    priority: int = 0
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.requests = list(self.requests)
        if not self.requests:
            raise ValueError("requests must hold at least one StylizeRequest")

    def __repr__(self) -> str:  # the context may hold tokens: never print it
        return (f"Job(id={self.id!r}, owner_id={self.owner_id}, kind={self.kind!r}, "
                f"cells={len(self.requests)}, priority={self.priority})")


@dataclass
class JobOutcome:
    """How a job ended. ``timings`` are seconds (``queue``, ``vl``, ``text``, ``dit``, ``total``, ...)."""

    job_id: str
    status: JobStatus
    results: list[StylizeResult] = field(default_factory=list)
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class QueueFull(Exception):
    """A job was refused because a cap is reached. ``str()`` is one sentence fit to show the user.

    ``scope`` is ``"user"`` (the per-user cap) or ``"total"`` (the global cap); ``limit`` is the cap.
    """

    def __init__(self, message: str, *, scope: str, limit: int) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit

    @classmethod
    def user(cls, mine: int, limit: int) -> QueueFull:
        """The per-user cap (``mine`` active jobs) is reached."""
        return cls(f"you already have {mine} job{'s' if mine != 1 else ''} queued or running (the limit is "
                   f"{limit}); wait for one to finish or cancel one", scope="user", limit=limit)

    @classmethod
    def total(cls, limit: int) -> QueueFull:
        """The global cap is reached."""
        return cls(f"the queue is full ({limit} jobs); please try again in a few minutes", scope="total",
                   limit=limit)


class QueueUnavailable(Exception):
    """The shared queue (Redis) cannot be reached. ``str()`` is fit to show the user."""

    def __init__(self, message: str = "the queue is unavailable, try again shortly") -> None:
        super().__init__(message)


@runtime_checkable
class JobQueue(Protocol):
    """What the worker needs from a queue. Every method is async so a networked queue can implement it.

    ``get`` must be safe to cancel while it waits (no job lost). A job is *active* from ``put`` until ``done``; the
    caps count active jobs.
    """

    async def put(self, job: Job, *, front: bool = False, check_caps: bool = True) -> int:
        """Enqueue; returns the 1-based position. ``front`` puts it first in its owner's line and its owner first in
        the rotation (a job interrupted by a shutdown). ``check_caps=False`` never refuses (restored jobs); putting
        back an active job (taken, not done) never checks caps either. Raises :class:`QueueFull`."""
        ...

    async def get(self) -> Job:
        """Wait for and remove the next job in fair order; it stays active until :meth:`done`."""
        ...

    async def done(self, job_id: str) -> None:
        """The job taken by ``get`` has ended (any status); it no longer counts towards the caps."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Remove a queued job; returns it, or ``None`` when it is not queued (running jobs are the worker's)."""
        ...

    async def position(self, job_id: str) -> int | None:
        """1-based position of a queued job in service order, or ``None``."""
        ...

    async def jobs_for(self, owner_id: int) -> list[Job]:
        """The owner's queued jobs in service order."""
        ...

    async def snapshot(self) -> list[Job]:
        """Every queued job in service order (the order :meth:`get` would return them)."""
        ...


class FairQueue:
    """In-process :class:`JobQueue`: priority classes, then fair turns between owners, FIFO per owner, with caps.

    Turns are start-time fair queuing with one unit per job: a job's tag is ``S = max(V, F[owner])``, where ``V`` is
    the tag of the job dispatched last and ``F[owner]`` is one past the tag of the owner's previous job; jobs are
    served by ``(-priority, S, arrival)``. So owners alternate round by round, and an owner who arrives while
    another's long line is being served gets the very next turn instead of waiting behind that line.
    """

    def __init__(self, max_per_user: int, max_total: int) -> None:
        if max_per_user < 1 or max_total < 1:
            raise ValueError(f"queue caps must be >= 1; got max_per_user={max_per_user}, max_total={max_total}")
        self.max_per_user = max_per_user
        self.max_total = max_total
        self._queued: dict[str, tuple[tuple[int, int, int], Job]] = {}  # id -> ((-priority, S, seq), job)
        self._active: dict[str, Job] = {}  # queued + taken-but-not-done, by id
        self._vtime: dict[int, int] = {}  # per priority: S of the job dispatched last
        self._finish: dict[tuple[int, int], int] = {}  # (priority, owner) -> S of the owner's last job + 1
        self._seq = 0
        self._changed = asyncio.Condition()

    @classmethod
    def from_settings(cls, settings: Any) -> FairQueue:
        return cls(settings.max_jobs_per_user, settings.max_jobs_total)

    # --- sync helpers (the in-process queue can answer without awaiting) ---------------------------------------
    def __len__(self) -> int:
        return len(self._queued)

    def active_count(self, owner_id: int | None = None) -> int:
        if owner_id is None:
            return len(self._active)
        return sum(1 for j in self._active.values() if j.owner_id == owner_id)

    def order(self) -> list[Job]:
        """Queued jobs in service order."""
        return [job for _key, job in sorted(self._queued.values(), key=lambda kj: kj[0])]

    def _check_caps(self, job: Job) -> None:
        mine = self.active_count(job.owner_id)
        if mine >= self.max_per_user:
            raise QueueFull.user(mine, self.max_per_user)
        if len(self._active) >= self.max_total:
            raise QueueFull.total(self.max_total)

    def _tag(self, job: Job, front: bool) -> tuple[int, int, int]:
        prio = job.priority
        vtime = self._vtime.get(prio, 0)
        self._seq += 1
        if front:  # first of all: below every queued tag of its class, and before any arrival
            tags = [k[1] for k, _ in self._queued.values() if k[0] == -prio]
            return (-prio, min([vtime, *tags]), -self._seq)
        start = max(vtime, self._finish.get((prio, job.owner_id), 0))
        self._finish[(prio, job.owner_id)] = start + 1
        return (-prio, start, self._seq)

    # --- JobQueue --------------------------------------------------------------------------------------------------
    async def put(self, job: Job, *, front: bool = False, check_caps: bool = True) -> int:
        if job.id in self._queued:
            raise ValueError(f"job {job.id} is already in the queue")
        if check_caps and job.id not in self._active:  # an active job put back (requeue) is never refused
            self._check_caps(job)
        self._active[job.id] = job
        self._queued[job.id] = (self._tag(job, front), job)
        async with self._changed:
            self._changed.notify_all()
        return self._position(job.id) or 0

    async def get(self) -> Job:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._queued) > 0)
            # no await between the check and the removal: a cancelled waiter never loses a job
            key, job = min(self._queued.values(), key=lambda kj: kj[0])
            del self._queued[job.id]
            prio = -key[0]
            self._vtime[prio] = max(self._vtime.get(prio, 0), key[1])
            # forget owners whose tags can no longer matter (their next job starts at V anyway)
            vtime = self._vtime[prio]
            for k in [k for k, f in self._finish.items() if k[0] == prio and f <= vtime]:
                del self._finish[k]
            return job

    async def done(self, job_id: str) -> None:
        self._active.pop(job_id, None)

    async def cancel(self, job_id: str) -> Job | None:
        entry = self._queued.pop(job_id, None)
        if entry is None:
            return None
        key, job = entry
        self._active.pop(job_id, None)
        # the owner's next job takes the turn the cancelled one held, not one after it
        mine = [k[1] for k, j in self._queued.values() if j.owner_id == job.owner_id and k[0] == key[0]]
        self._finish[(job.priority, job.owner_id)] = max(mine) + 1 if mine else self._vtime.get(job.priority, 0)
        return job

    def _position(self, job_id: str) -> int | None:
        for i, job in enumerate(self.order(), start=1):
            if job.id == job_id:
                return i
        return None

    async def position(self, job_id: str) -> int | None:
        return self._position(job_id)

    async def jobs_for(self, owner_id: int) -> list[Job]:
        return [j for j in self.order() if j.owner_id == owner_id]

    async def snapshot(self) -> list[Job]:
        return self.order()

