"""Fixtures of the Redis queue tests: a real ``redis-server`` (tests/redisserver.py) and queues on it."""

from __future__ import annotations

import pytest

from engine.serving.redis.queue import RedisQueue, connect


@pytest.fixture
async def make_queue(redis_server):
    """``make_queue(max_per_user=3, max_total=50, namespace="q")`` -> a RedisQueue on the test's server."""
    made: list[RedisQueue] = []

    def make(**kw) -> RedisQueue:
        queue = RedisQueue(connect(redis_server.url), **kw)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.aclose()
