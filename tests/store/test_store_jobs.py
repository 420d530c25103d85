"""bot.store.jobs: creation, the transition table, listings, recovery after a restart."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.store import Store
from bot.store.jobs import (
    ALLOWED_TRANSITIONS,
    EXPIRED_ERROR,
    InvalidTransition,
    JobKind,
    JobNotFound,
    Jobs,
    JobStatus,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
S = JobStatus


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "zvl.sqlite3")
    yield store
    await store.close()


async def new_job(jobs: Jobs, owner: int = 1, minutes_ago: float = 0, **kwargs):
    at = NOW - timedelta(minutes=minutes_ago)
    kwargs.setdefault("interaction_created_at", at)
    return await jobs.create(owner, "stylize", {"prompt": "fox"}, guild_id=10, channel_id=20, now=at, **kwargs)


# How to reach each status from a new (queued) job.
PATHS = {
    S.QUEUED: [],
    S.RUNNING: [S.RUNNING],
    S.DONE: [S.RUNNING, S.DONE],
    S.FAILED: [S.FAILED],
    S.CANCELLED: [S.CANCELLED],
}


async def test_create_stores_everything_and_hides_the_token(store: Store) -> None:
    job = await store.jobs.create(
        1, JobKind.SWEEP, {"alpha": [0.1, 0.5]}, guild_id=10, channel_id=20, interaction_token="s3cr3t-token",
        application_id=30, interaction_created_at=NOW, message_id=40, now=NOW,
    )  # fmt: skip
    assert (job.status, job.kind, job.params, job.attempts) == (S.QUEUED, JobKind.SWEEP, {"alpha": [0.1, 0.5]}, 0)
    assert (job.guild_id, job.channel_id, job.application_id, job.message_id) == (10, 20, 30, 40)
    assert job.interaction_token == "s3cr3t-token" and job.created_at == job.interaction_created_at == NOW
    assert len(job.id) == 32 and await store.jobs.get(job.id) == job
    assert "s3cr3t" not in repr(job)
    with pytest.raises(ValueError):
        await store.jobs.create(1, "paint", {})


def test_status_enum_is_documented_and_final_states_have_no_exits() -> None:
    assert [s.value for s in S] == ["queued", "running", "done", "failed", "cancelled"]
    assert {s for s in S if s.is_final} == {S.DONE, S.FAILED, S.CANCELLED}
    assert all(not ALLOWED_TRANSITIONS[s] for s in S if s.is_final)


@pytest.mark.parametrize(("start", "target"), list(itertools.product(S, S)), ids=lambda s: s.value)
async def test_transition_table_is_enforced(store: Store, start: JobStatus, target: JobStatus) -> None:
    """Each of the 25 (from, to) pairs is accepted exactly when ALLOWED_TRANSITIONS lists it."""
    job = await new_job(store.jobs)
    for step in PATHS[start]:
        await store.jobs.transition(job.id, step)
    if target in ALLOWED_TRANSITIONS[start]:
        assert (await store.jobs.transition(job.id, target)).status is target
    else:
        with pytest.raises(InvalidTransition, match=f"cannot go from {start.value} to {target.value}"):
            await store.jobs.transition(job.id, target)
        assert (await store.jobs.get(job.id)).status is start


async def test_transitions_keep_times_attempts_and_fields(store: Store) -> None:
    job = await new_job(store.jobs)
    running = await store.jobs.transition(job.id, "running", now=NOW + timedelta(seconds=5))
    assert running.started_at == NOW + timedelta(seconds=5) and running.attempts == 1
    requeued = await store.jobs.transition(job.id, S.QUEUED)
    assert requeued.started_at is None and requeued.attempts == 1
    await store.jobs.transition(job.id, S.RUNNING)
    done = await store.jobs.transition(
        job.id, S.DONE, now=NOW + timedelta(seconds=30), timings={"vl": 1.5, "denoise": 20.0},
        result_paths=[Path("out/a.png"), "out/b.png"],
    )  # fmt: skip
    assert done.finished_at == NOW + timedelta(seconds=30) and done.attempts == 2
    assert done.timings == {"vl": 1.5, "denoise": 20.0} and done.result_paths == ["out/a.png", "out/b.png"]
    failed = await store.jobs.transition((await new_job(store.jobs)).id, S.FAILED, error="out of memory")
    assert failed.error == "out of memory" and failed.finished_at is not None


async def test_bad_fields_and_unknown_jobs(store: Store) -> None:
    job = await new_job(store.jobs)
    with pytest.raises(ValueError, match="unknown job field"):
        await store.jobs.transition(job.id, S.RUNNING, owner_id=5)
    with pytest.raises(JobNotFound):
        await store.jobs.transition("nope", S.RUNNING)
    with pytest.raises(JobNotFound):
        await store.jobs.update("nope", message_id=1)
    assert (await store.jobs.update(job.id, message_id=99)).message_id == 99


async def test_listings(store: Store) -> None:
    a = await new_job(store.jobs, owner=1, minutes_ago=3)
    b = await new_job(store.jobs, owner=2, minutes_ago=2)
    c = await new_job(store.jobs, owner=1, minutes_ago=1)
    await store.jobs.transition(a.id, S.RUNNING)
    await store.jobs.transition(c.id, S.CANCELLED)
    assert [j.id for j in await store.jobs.list_for_user(1)] == [c.id, a.id]
    assert [j.id for j in await store.jobs.list_for_user(1, limit=1)] == [c.id]
    assert [j.id for j in await store.jobs.list_for_user(1, statuses=["running"])] == [a.id]
    assert [j.id for j in await store.jobs.list_active()] == [a.id, b.id]
    assert [j.id for j in await store.jobs.history(limit=2)] == [c.id, b.id]
    assert [j.id for j in await store.jobs.history(guild_id=99)] == []


async def test_recover_after_restart(store: Store) -> None:
    """Running rows are requeued; queued rows younger than 15 minutes resume, older ones fail with a notice."""
    running = await new_job(store.jobs, minutes_ago=2)
    await store.jobs.transition(running.id, S.RUNNING)
    fresh = await new_job(store.jobs, minutes_ago=14.9)
    stale_running = await new_job(store.jobs, minutes_ago=20)
    await store.jobs.transition(stale_running.id, S.RUNNING)
    at_ttl = await new_job(store.jobs, minutes_ago=15)
    no_interaction = await new_job(store.jobs, minutes_ago=16, interaction_created_at=None)
    done = await new_job(store.jobs, minutes_ago=1)
    await store.jobs.transition(done.id, S.RUNNING)
    await store.jobs.transition(done.id, S.DONE)

    resumable, expired = await store.jobs.recover_after_restart(NOW)
    assert [j.id for j in resumable] == [fresh.id, running.id]  # oldest first
    assert all(j.status is S.QUEUED and j.started_at is None for j in resumable)
    assert [j.id for j in expired] == [stale_running.id, no_interaction.id, at_ttl.id]
    assert all(j.status is S.FAILED and j.error == EXPIRED_ERROR and j.finished_at == NOW for j in expired)
    assert (await store.jobs.get(done.id)).status is S.DONE
    assert [j.id for j in await store.jobs.list_active()] == [fresh.id, running.id]
    again = await store.jobs.recover_after_restart(NOW)
    assert ([j.id for j in again[0]], again[1]) == ([fresh.id, running.id], [])


async def test_recover_with_a_custom_ttl(store: Store) -> None:
    job = await new_job(store.jobs, minutes_ago=5)
    resumable, expired = await store.jobs.recover_after_restart(NOW, token_ttl=timedelta(minutes=4))
    assert resumable == [] and [j.id for j in expired] == [job.id]
