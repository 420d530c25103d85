"""Differential property test: the Lua queue serves exactly FairQueue's order, for random put / front put / take /
cancel / done sequences over a few owners and two priority classes, with the same cap refusals."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.serving.queue import FairQueue, Job, QueueFull
from engine.serving.redis.queue import RedisQueue, connect
from engine.types import StylizeRequest

OWNERS = (1, 2, 3, 4)
OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(OWNERS), st.booleans(), st.sampled_from((0, 0, 0, 1))),
    st.tuples(st.just("take")),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("done"), st.integers(0, 40)),
)


async def _refused(put) -> str | None:
    try:
        await put
    except QueueFull as exc:
        return exc.scope
    return None


async def scenario(url: str, ops: list[tuple]) -> None:
    fair = FairQueue(max_per_user=4, max_total=9)
    redis_q = RedisQueue(connect(url), namespace=uuid.uuid4().hex, max_per_user=4, max_total=9)
    ids: list[str] = []
    taken: dict[str, str] = {}  # job id -> sid
    try:
        for n, op in enumerate(ops):
            if op[0] == "put":
                _, owner, front, prio = op
                job = Job(owner_id=owner, requests=[StylizeRequest()], id=f"j{n}", priority=prio)
                mine = await _refused(fair.put(job, front=front))
                theirs = await _refused(redis_q.enqueue(job.id, owner, b"{}", priority=prio, front=front))
                assert mine == theirs, op
                if mine is None:
                    ids.append(job.id)
            elif op[0] == "take":
                if fair.order():
                    expected = (await fair.get()).id
                    got = await redis_q.take("w")
                    assert got is not None and got.job_id == expected
                    taken[got.job_id] = got.sid
            elif op[0] == "cancel" and ids:
                job_id = ids[op[1] % len(ids)]
                removed = await fair.cancel(job_id)
                assert (await redis_q.cancel(job_id) == "cancelled") == (removed is not None)
            elif op[0] == "done" and taken:
                job_id = sorted(taken)[op[1] % len(taken)]
                await fair.done(job_id)
                assert await redis_q.finish("w", taken.pop(job_id), job_id, "done")
            assert await redis_q.order() == [j.id for j in fair.order()], f"after step {n}: {op}"
    finally:
        await redis_q.aclose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=1, max_size=40))
def test_lua_order_equals_fair_queue(redis_server, ops):
    asyncio.run(scenario(redis_server.url, ops))
