"""FairQueue: round-robin between users, FIFO per user, priority classes, caps, cancel, positions."""

from __future__ import annotations

import asyncio

import pytest

from engine.serving.queue import FairQueue, Job, JobQueue, JobStatus, QueueFull
from engine.types import StylizeRequest

USERS = {"A": 1, "B": 2, "C": 3}


def job(label: str, owner: str | None = None, **kw) -> Job:
    owner = owner or label[0]
    return Job(owner_id=USERS[owner], requests=[StylizeRequest(prompt=label)], id=label, **kw)


async def drain(q: FairQueue) -> list[str]:
    out = []
    while len(q):
        j = await q.get()
        await q.done(j.id)
        out.append(j.id)
    return out


async def test_round_robin_between_users_fifo_within():
    q = FairQueue(max_per_user=10, max_total=50)
    for label in ["A1", "A2", "A3", "A4", "B1", "B2", "C1"]:
        await q.put(job(label))
    assert [j.id for j in await q.snapshot()] == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]
    assert await drain(q) == ["A1", "B1", "C1", "A2", "B2", "A3", "A4"]


async def test_positions_and_jobs_for_follow_service_order():
    q = FairQueue(10, 50)
    positions = [await q.put(job(label)) for label in ["A1", "A2", "B1"]]
    assert positions == [1, 2, 2]  # B1 overtakes A2 on arrival
    assert await q.position("A2") == 3
    assert await q.position("B1") == 2
    assert await q.position("nope") is None
    assert [j.id for j in await q.jobs_for(USERS["A"])] == ["A1", "A2"]


async def test_per_user_cap_counts_running_jobs_until_done():
    q = FairQueue(max_per_user=2, max_total=50)
    await q.put(job("A1"))
    await q.put(job("A2"))
    with pytest.raises(QueueFull) as err:
        await q.put(job("A3"))
    assert err.value.scope == "user" and err.value.limit == 2
    assert str(err.value) == ("you already have 2 jobs queued or running (the limit is 2); "
                              "wait for one to finish or cancel one")
    taken = await q.get()  # running still counts
    with pytest.raises(QueueFull):
        await q.put(job("A3"))
    await q.done(taken.id)
    assert await q.put(job("A3")) == 2
    await q.put(job("B1"))  # other users are not affected


async def test_global_cap():
    q = FairQueue(max_per_user=5, max_total=3)
    for label in ["A1", "B1", "C1"]:
        await q.put(job(label))
    with pytest.raises(QueueFull) as err:
        await q.put(job("A2"))
    assert err.value.scope == "total"
    assert "queue is full (3 jobs)" in str(err.value)
    assert "Job(" not in str(err.value)
    # restored jobs are never refused
    assert await q.put(job("A2"), check_caps=False) == 4


async def test_cancel_removes_a_queued_job_and_frees_its_slot():
    q = FairQueue(max_per_user=2, max_total=50)
    await q.put(job("A1"))
    await q.put(job("A2"))
    removed = await q.cancel("A1")
    assert removed is not None and removed.id == "A1"
    assert await q.cancel("A1") is None
    assert [j.id for j in await q.snapshot()] == ["A2"]
    await q.put(job("A3"))  # the cancelled job no longer counts
    assert await drain(q) == ["A2", "A3"]


async def test_requeue_front_puts_job_and_owner_first():
    q = FairQueue(2, 50)
    await q.put(job("A1"))
    await q.put(job("B1"))
    await q.put(job("A2"))
    a1 = await q.get()
    await q.put(a1, front=True)  # interrupted by a shutdown: back first, no cap check (still active)
    assert [j.id for j in await q.snapshot()] == ["A1", "B1", "A2"]
    with pytest.raises(ValueError):
        await q.put(a1)  # already queued


async def test_priority_class_served_first():
    q = FairQueue(10, 50)
    await q.put(job("A1"))
    await q.put(job("B1", priority=5))
    await q.put(job("A2", priority=5))
    assert await drain(q) == ["B1", "A2", "A1"]


async def test_get_waits_and_is_safe_to_cancel():
    q = FairQueue(10, 50)
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await q.put(job("A1"))
    getter = asyncio.create_task(q.get())
    assert (await asyncio.wait_for(getter, 1.0)).id == "A1"


def test_protocol_and_job_basics():
    q = FairQueue(1, 1)
    assert isinstance(q, JobQueue)
    with pytest.raises(ValueError, match="requests"):
        Job(owner_id=1, requests=[])
    j = Job(owner_id=1, requests=[StylizeRequest()], context={"token": "secret"})
    assert "secret" not in repr(j)
    assert JobStatus.DONE.is_final and not JobStatus.RUNNING.is_final
    with pytest.raises(ValueError):
        FairQueue(0, 1)


async def test_late_user_gets_the_next_turn_and_cancel_keeps_turns():
    q = FairQueue(10, 50)
    for label in ["A1", "A2", "A3"]:
        await q.put(job(label))
    assert (await q.get()).id == "A1"
    await q.put(job("B1"))  # arrives while A's line is served: next turn, not behind A2, A3
    assert [j.id for j in await q.snapshot()] == ["B1", "A2", "A3"]
    await q.cancel("A2")
    await q.put(job("A4"))
    assert await drain(q) == ["B1", "A3", "A4"]


def test_fairness_invariant_for_any_submission_pattern():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from("ABC"), min_size=1, max_size=20))
    def check(owners: list[str]) -> None:
        async def run() -> list[str]:
            q = FairQueue(100, 100)
            for i, o in enumerate(owners):
                await q.put(Job(owner_id=USERS[o], requests=[StylizeRequest()], id=f"{o}{i:02d}"))
            return await drain(q)

        order = asyncio.run(run())
        for o in "ABC":  # FIFO per owner
            mine = [x for x in order if x[0] == o]
            assert mine == sorted(mine)
        total = {o: owners.count(o) for o in "ABC"}
        served = dict.fromkeys("ABC", 0)
        for x in order:  # round-robin: nobody is served twice more than an owner who is still waiting
            served[x[0]] += 1
            for other in "ABC":
                if served[other] < total[other]:
                    assert served[x[0]] <= served[other] + 1, (order, x)

    check()


def test_two_stage_schedule_accounts_for_overlap():
    from engine.serving.eta import schedule_two_stage

    # DiT-bound: encode 1 s hidden behind the previous job's 2 s DiT
    assert schedule_two_stage([(1.0, 2.0)] * 3, vl_free=0.0, dit_free=0.0) == [3.0, 5.0, 7.0]
    # encode-bound (VL on the CPU): 3 s + 1 s per job overlapped -> one job per 3 s, not per 4 s
    assert schedule_two_stage([(3.0, 1.0)] * 3, vl_free=0.0, dit_free=0.0) == [4.0, 7.0, 10.0]
    # a busy DiT delays the first job's start even when its encode is done
    assert schedule_two_stage([(0.5, 1.0)], vl_free=0.0, dit_free=2.0) == [3.0]


def test_stage_estimator_costs_and_ewma():
    from engine.serving.eta import StageEstimator, dit_units

    r = StylizeRequest(reference=None, steps=9, width=1024, height=1024, seeds=(1, 2))
    assert dit_units(r) == 18
    assert dit_units(r.replace(guidance_scale=4.0, width=512, height=512)) == 9
    est = StageEstimator(alpha=0.5, vl_s=10.0, text_s=0.0, dit_unit_s=1.0)
    est.observe_vl(2.0)  # the first sample replaces the prior
    est.observe_vl(4.0)
    assert est.vl_s == 3.0
    from PIL import Image

    img = Image.new("RGB", (8, 8))
    cells = [StylizeRequest(reference=img, alpha=a, steps=1, width=1024, height=1024) for a in (0.1, 0.9)]
    cells.append(cells[0].replace(hidden_layer=-3))
    v, d = est.costs(Job(owner_id=1, requests=cells))
    assert (v, d) == (6.0, 3.0)  # two distinct extractions (alpha does not matter to the VL stage)
