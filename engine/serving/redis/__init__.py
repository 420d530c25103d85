"""Several GPU workers behind one bot, over Redis (issue #17; design: docs/scale-out.md §6).

* :mod:`.scripts` and ``lua/``: the fair queue, caps, leases (a Streams consumer group whose pending entries are the
  lease table; the entry id fences every finish), cancel, requeue and the reaper, each one atomic Lua script.
* :mod:`.queue`: :class:`~.queue.RedisQueue`, the async client of those scripts and of the keys they keep.
* :mod:`.wire`: jobs, references, events and results as Redis values.
* :mod:`.worker_side` and :mod:`.serve`: ``python -m engine serve``, today's ``EngineWorker`` fed from Redis.
* :mod:`.remote`: :class:`~.remote.RedisEngine`, the bot's ``JobEngine`` when ``ZVL_REDIS_URL`` is set.

Nothing here is imported by ``import engine``; only a configured ``redis_url`` brings ``redis`` in.
"""
