"""The shared embedding-cache tier (engine.cache.shared, engine.cache.redis_tier) against a real redis-server.

Two "workers" are two TieredCaches with local caches in different folders over one Redis. What is asserted: an
entry put by one is a hit on the other (equal to what was put, and kept in the other's local cache); a corrupted,
foreign or truncated Redis value is refused (a miss, deleted); a killed, paused or never-evicting Redis leaves the
local tier working; LRU eviction only ever turns hits into misses.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.cache import files
from engine.cache.records import cache_key
from engine.cache.redis_tier import MAGIC, NAMESPACE, RedisTier
from engine.cache.shared import TieredCache
from engine.cache.store import EmbeddingCache, MemoryCacheIndex, vl_entry
from engine.types import VLResult
from tests.redisserver import RedisServer

pytestmark = [pytest.mark.timeout(120)]


class Clock:
    """A monotonic clock the test moves (the tier's retry-after is time-based; no test sleeps for it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lru_redis(tmp_path_factory: pytest.TempPathFactory):
    """A cache Redis as the README says to run one: allkeys-lru under a maxmemory."""
    server = RedisServer(tmp_path_factory.mktemp("rc"), maxmemory_policy="allkeys-lru", maxmemory="64mb").start()
    try:
        yield server
    finally:
        server.stop()


def raw(server: RedisServer):
    import redis

    return redis.Redis(unix_socket_path=str(server.socket))


def worker(root: Path, server: RedisServer, clock: Clock | None = None, **tier) -> TieredCache:
    tier.setdefault("timeout_s", 1.0)
    local = EmbeddingCache(root, MemoryCacheIndex(), 64 << 20)
    return TieredCache(local, RedisTier(server.url, clock=clock or Clock(), **tier))


def vl_result(seed: int, rows: int = 6) -> VLResult:
    gen = torch.Generator().manual_seed(seed)
    return VLResult(embeddings=torch.randn(rows, 8, generator=gen), kinds=["marker"] + ["image"] * (rows - 1),
                    image_span=(1, rows), original_std=1.5, scaled_std=1.0, scale_factor=0.66,
                    settings={"layers": -6, "tokens": "image"})


def key(n: int) -> str:
    return cache_key({"shared-test": n})


def same_vl(a: VLResult | None, b: VLResult) -> bool:
    return a is not None and torch.equal(a.embeddings, b.embeddings) and a.metadata() == b.metadata()


async def test_an_entry_put_by_one_worker_is_a_hit_on_another(lru_redis, tmp_path: Path) -> None:
    a, b = worker(tmp_path / "a", lru_redis), worker(tmp_path / "b", lru_redis)
    vl, text = vl_result(1), {"embedding": torch.arange(12.0).reshape(3, 4)}
    await a.put_vl(key(1), vl)
    await a.put(key(2), text, {"shape": [3, 4]}, kind="text")
    assert same_vl(await b.get_vl(key(1)), vl)
    tensors, meta = await b.get(key(2))
    assert torch.equal(tensors["embedding"], text["embedding"]) and meta == {"shape": [3, 4]}
    assert b.shared.stats()["hits"] == 2 and (await b.local.stats())["entries"] == 2  # kept in B's local tier
    raw(lru_redis).flushall()
    assert same_vl(await b.get_vl(key(1)), vl)  # from B's local tier now
    assert b.shared.stats()["hits"] == 2
    assert (await b.stats())["shared"]["misses"] == 0
    await a.aclose()
    await b.aclose()


def _flip_a_byte(value: bytes) -> bytes:
    return value[:-40] + bytes([value[-40] ^ 1]) + value[-39:]


@pytest.mark.parametrize("corrupt", [
    pytest.param(_flip_a_byte, id="bit-flip"),
    pytest.param(lambda v: v[: len(v) // 2], id="truncated"),
    pytest.param(lambda v: b"hello", id="garbage"),
    pytest.param(lambda v: b"zvl-cache/9\n" + v[len(MAGIC):], id="other-format"),
])
async def test_a_corrupted_shared_entry_is_refused(lru_redis, tmp_path: Path, corrupt) -> None:
    a, b = worker(tmp_path / "a", lru_redis), worker(tmp_path / "b", lru_redis)
    await a.put_vl(key(1), vl_result(1))
    client = raw(lru_redis)
    client.set(NAMESPACE + key(1), corrupt(client.get(NAMESPACE + key(1))))
    assert await b.get_vl(key(1)) is None
    assert await b.get(key(1)) is None
    assert b.shared.stats()["refused"] == 1 and client.exists(NAMESPACE + key(1)) == 0  # deleted at the first read
    assert (await b.local.stats())["entries"] == 0
    assert same_vl(await a.get_vl(key(1)), vl_result(1))  # A's local copy is untouched


async def test_a_valid_entry_under_the_wrong_key_or_kind_is_refused(lru_redis, tmp_path: Path) -> None:
    """A value whose checksum holds but that is another key's entry, or a text entry where a VL one is asked."""
    a, b = worker(tmp_path / "a", lru_redis), worker(tmp_path / "b", lru_redis)
    await a.put_vl(key(1), vl_result(1))
    await a.put(key(2), {"embedding": torch.ones(3, 4)}, {"shape": [3, 4]}, kind="text")
    client = raw(lru_redis)
    client.set(NAMESPACE + key(3), client.get(NAMESPACE + key(1)))
    assert await b.get_vl(key(3)) is None and await b.get(key(3)) is None
    assert await b.get_vl(key(2)) is None
    assert b.shared.stats()["refused"] == 2 and client.exists(NAMESPACE + key(2), NAMESPACE + key(3)) == 0


async def test_a_killed_redis_leaves_the_local_tier_working(lru_redis, tmp_path: Path, caplog) -> None:
    clock = Clock()
    a = worker(tmp_path / "a", lru_redis, clock, retry_after_s=30.0)
    await a.put_vl(key(1), vl_result(1))
    lru_redis.kill()
    caplog.set_level(logging.INFO, logger="engine.cache.redis_tier")
    assert same_vl(await a.get_vl(key(1)), vl_result(1))  # a local hit needs no Redis
    for n in (2, 3, 4):
        assert await a.get_vl(key(n)) is None  # a miss, not an error
        await a.put_vl(key(n), vl_result(n))
        assert same_vl(await a.get_vl(key(n)), vl_result(n))
    assert await a.delete(key(2))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.message]
    assert len(warnings) == 1 and a.shared.stats()["failures"] == 1 and not a.shared.available
    lru_redis.start()  # AOF on: key(1) survived the kill
    clock.now += 31.0
    b = worker(tmp_path / "b", lru_redis)
    await a.put_vl(key(5), vl_result(5))
    assert same_vl(await b.get_vl(key(5)), vl_result(5)) and same_vl(await b.get_vl(key(1)), vl_result(1))
    assert any("reachable again" in r.message for r in caplog.records)


async def test_a_paused_redis_costs_one_timeout_then_is_skipped(lru_redis, tmp_path: Path) -> None:
    """SIGSTOP: the server accepts nothing and answers nothing, as an overloaded one. The first call times out, the
    following ones skip the Redis, and after SIGCONT and the retry-after the tier is used again."""
    clock = Clock()
    a = worker(tmp_path / "a", lru_redis, clock, timeout_s=0.3, retry_after_s=30.0)
    await a.put_vl(key(1), vl_result(1))
    os.kill(lru_redis.proc.pid, signal.SIGSTOP)
    try:
        await a.local.clear()
        assert await a.get_vl(key(1)) is None
        assert a.shared.stats()["failures"] == 1 and not a.shared.available
        await a.put_vl(key(2), vl_result(2))
        assert same_vl(await a.get_vl(key(2)), vl_result(2)) and a.shared.stats()["failures"] == 1
    finally:
        os.kill(lru_redis.proc.pid, signal.SIGCONT)
    clock.now += 31.0
    assert await a.get_vl(key(3)) is None  # not the late reply to the timed-out read: that connection was dropped
    assert same_vl(await a.get_vl(key(1)), vl_result(1)) and a.shared.stats()["refused"] == 0
    await a.aclose()


async def test_lru_eviction_only_turns_hits_into_misses(tmp_path_factory, tmp_path: Path) -> None:
    """A 2 MB allkeys-lru Redis and 40 entries of ~100 kB: older entries go, every read is the entry or a miss,
    and an entry larger than the whole Redis is refused by the server without taking the tier down."""
    server = RedisServer(tmp_path_factory.mktemp("lru"), maxmemory_policy="allkeys-lru", maxmemory="2mb").start()
    try:
        a, b = worker(tmp_path / "a", server), worker(tmp_path / "b", server)
        results = {n: vl_result(n, rows=3200) for n in range(40)}  # 3200 x 8 float32 = 102 kB
        for n, vl in results.items():
            await a.put_vl(key(n), vl)
        found = {n: await b.get_vl(key(n)) for n in results}
        assert all(vl is None or same_vl(vl, results[n]) for n, vl in found.items())
        assert found[39] is not None and sum(vl is None for vl in found.values()) >= 20
        await a.put_vl(key(99), vl_result(99, rows=100_000))  # 3.2 MB > maxmemory: the server answers OOM
        assert a.shared.available and a.shared.stats()["failures"] == 0 and a.shared.stats()["refused"] == 0
        assert same_vl(await a.get_vl(key(99)), vl_result(99, rows=100_000))  # kept locally
    finally:
        server.stop()


async def test_entries_have_a_ttl_and_a_size_bound(lru_redis, tmp_path: Path) -> None:
    a = worker(tmp_path / "a", lru_redis, ttl_s=3600, max_entry_bytes=50_000)
    await a.put_vl(key(1), vl_result(1))
    await a.put_vl(key(2), vl_result(2, rows=3200))  # ~102 kB: stays local
    client = raw(lru_redis)
    assert 0 < client.ttl(NAMESPACE + key(1)) <= 3600 and client.exists(NAMESPACE + key(2)) == 0
    assert a.shared.stats()["too_large"] == 1 and same_vl(await a.get_vl(key(2)), vl_result(2, rows=3200))


async def test_a_redis_that_never_evicts_is_only_read(redis_server, tmp_path: Path, caplog) -> None:
    """The queue's Redis (noeviction) by mistake: nothing is written to it, what is there is still read."""
    a = worker(tmp_path / "a", redis_server)
    with caplog.at_level(logging.WARNING, logger="engine.cache.redis_tier"):
        await a.put_vl(key(1), vl_result(1))
    assert raw(redis_server).dbsize() == 0 and any("noeviction" in r.message for r in caplog.records)
    tensors, meta = vl_entry(vl_result(2))  # another worker's entry, in the documented value format
    data, checksum = files.serialize(tensors, files.entry_header(key(2), "vl", meta))
    raw(redis_server).set(NAMESPACE + key(2), MAGIC + checksum.encode() + data)
    assert same_vl(await worker(tmp_path / "b", redis_server).get_vl(key(2)), vl_result(2))


def test_without_a_cache_redis_url_the_local_cache_is_used_and_redis_not_imported(tmp_path: Path) -> None:
    """No URL: the local cache as it is, and no redis import; a URL: the two tiers; a URL redis cannot parse: the
    local cache (logged), not a failed start."""
    code = (
        "import sys\n"
        "from engine.config import EngineSettings\n"
        "from engine.cache.shared import build_embedding_store\n"
        "from engine.cache.store import EmbeddingCache, MemoryCacheIndex\n"
        f"local = EmbeddingCache({str(tmp_path)!r}, MemoryCacheIndex(), 1000)\n"
        "assert build_embedding_store(EngineSettings(_env_file=None), local) is local\n"
        "assert 'redis' not in sys.modules, 'redis was imported'\n"
        "store = build_embedding_store(EngineSettings(_env_file=None, cache_redis_url='unix:///nowhere.sock'), local)\n"
        "assert type(store).__name__ == 'TieredCache' and store.local is local\n"
        "bad = EngineSettings(_env_file=None, cache_redis_url='redis://host:notaport')\n"
        "assert build_embedding_store(bad, local) is local\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
