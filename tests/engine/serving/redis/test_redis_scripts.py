"""The queue's Lua scripts against a real redis-server: order, caps, positions, leases, fencing, reaping."""

from __future__ import annotations

import asyncio

import pytest

from engine.serving.queue import QueueFull
from engine.serving.redis.queue import LOST_MESSAGE


async def put(q, job_id: str, owner: int, **kw) -> int:
    return await q.enqueue(job_id, owner, b"{}", **kw)


async def drain(q, consumer: str = "w") -> list[str]:
    out = []
    while (t := await q.take(consumer)) is not None:
        out.append(t.job_id)
    return out


async def test_turns_follow_the_documented_example(make_queue):
    q = make_queue(max_per_user=10)
    for owner, n in (("A", 4), ("B", 2), ("C", 1)):
        for i in range(1, n + 1):
            await put(q, f"{owner}{i}", ord(owner))
    assert await q.order() == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]
    assert await q.position("C1") == 3
    assert await drain(q) == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]


async def test_caps_are_checked_atomically_under_concurrent_submits(make_queue):
    q = make_queue(max_per_user=3, max_total=5)
    got = await asyncio.gather(*(put(q, f"a{i}", 1) for i in range(8)), return_exceptions=True)
    refused = [g for g in got if isinstance(g, QueueFull)]
    assert len(refused) == 5 and all(r.scope == "user" and r.limit == 3 for r in refused)
    assert "you already have 3 jobs queued or running (the limit is 3)" in str(refused[0])
    await put(q, "b0", 2)
    await put(q, "b1", 2)
    with pytest.raises(QueueFull) as info:
        await put(q, "c0", 3)
    assert info.value.scope == "total"
    # a restored job is never refused; a new owner takes the third turn (after a0 and b0)
    assert await put(q, "c0", 3, check_caps=False) == 3


async def test_a_running_job_counts_until_it_finishes(make_queue):
    q = make_queue(max_per_user=1)
    await put(q, "a", 1)
    taken = await q.take("w1")
    with pytest.raises(QueueFull):
        await put(q, "b", 1)
    assert await q.finish("w1", taken.sid, "a", "done")
    assert await put(q, "b", 1) == 1


async def test_duplicate_ids_are_refused(make_queue):
    q = make_queue()
    await put(q, "a", 1)
    with pytest.raises(ValueError, match="already known"):
        await put(q, "a", 1)


async def test_heartbeat_finish_and_fencing(make_queue):
    q = make_queue()
    await put(q, "a", 1)
    first = await q.take("w1")
    assert first.attempts == 1 and await q.position("a") == 0
    assert await q.heartbeat("w1", first.sid, "a") == 1
    assert await q.heartbeat("w2", first.sid, "a") == 0  # not w2's lease
    await asyncio.sleep(0.05)  # the workload: let the lease (30 ms) run out
    assert await q.reap(0.03, max_attempts=3) == (1, 0, 0)
    assert await q.position("a") == 1
    second = await q.take("w2")
    assert second.sid != first.sid and second.attempts == 2
    assert await q.heartbeat("w1", first.sid, "a") == 0  # the zombie learns it lost the job
    assert not await q.finish("w1", first.sid, "a", "done")  # and its finish is refused
    assert await q.finish("w2", second.sid, "a", "done")
    assert not await q.finish("w2", second.sid, "a", "done")  # exactly once
    job = await q.job("a")
    assert job["status"] == "done"
    assert await q.client.xlen(q.key("run")) == 0


async def test_poison_guard_fails_after_max_attempts(make_queue):
    q = make_queue()
    await put(q, "a", 1)
    for _ in range(2):
        await q.take("w")
        await asyncio.sleep(0.05)
        await q.reap(0.03, max_attempts=2)
    job = await q.job("a")
    assert job["status"] == "failed" and job["error"] == LOST_MESSAGE % 2
    assert await q.depth() == 0 and await put(q, "b", 1) == 1  # its cap slot is free again


async def test_lost_job_goes_back_to_the_front_of_its_owners_line(make_queue):
    q = make_queue(max_per_user=10)
    for job_id, owner in (("a1", 1), ("a2", 1), ("b1", 2), ("b2", 2)):
        await put(q, job_id, owner)
    taken = await q.take("w")
    assert taken.job_id == "a1"
    await asyncio.sleep(0.05)
    await q.reap(0.03, max_attempts=3)
    assert await q.order() == ["a1", "b1", "a2", "b2"]


async def test_cancel_queued_running_and_gone(make_queue):
    q = make_queue(max_per_user=10)
    await put(q, "a", 1)
    await put(q, "b", 1)
    assert await q.cancel("b", "by owner") == "cancelled"
    assert (await q.job("b"))["status"] == "cancelled"
    taken = await q.take("w")
    assert await q.cancel("a", "by admin") == "running"
    assert await q.heartbeat("w", taken.sid, "a") == 2
    assert await q.finish("w", taken.sid, "a", "cancelled", "by admin")
    assert await q.cancel("a") == "gone"
    assert await q.cancel("nope") == "gone"


async def test_requeue_by_the_holder_is_fenced(make_queue):
    q = make_queue()
    await put(q, "a", 1)
    taken = await q.take("w")
    assert await q.requeue("other", taken.sid, "a", "x") is None
    assert await q.requeue("w", taken.sid, "a", "stopping") == 1
    assert (await q.job("a"))["status"] == "queued"
