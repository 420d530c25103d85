"""bot.store.cache_index: the embedding cache over SQLite, and both CacheIndex implementations agreeing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bot.store import SqliteCacheIndex, Store
from engine.cache.records import cache_key
from engine.cache.store import CacheEntry, EmbeddingCache, MemoryCacheIndex


@pytest.fixture
async def store(tmp_path: Path):
    store = await Store.open(tmp_path / "zvl.sqlite3")
    yield store
    await store.close()


def key_of(n: int) -> str:
    return cache_key({"n": n})


def entry(n: int, used: float, size: int = 10, checksum: str = "c") -> CacheEntry:
    return CacheEntry(key_of(n), "vl", f"{n}.safetensors", size, checksum, {"n": n}, 1.0, used)


@pytest.fixture(params=["memory", "sqlite"])
def index(request: pytest.FixtureRequest, store: Store):
    return MemoryCacheIndex() if request.param == "memory" else SqliteCacheIndex(store.conn)


async def test_index_contract(index) -> None:
    """Both implementations: upsert/get, touch, checksum-guarded delete, totals, LRU victims, clear."""
    for n, used in ((1, 30.0), (2, 10.0), (3, 20.0)):
        await index.upsert(entry(n, used, size=10 * n))
    assert await index.get(key_of(1)) == entry(1, 30.0, size=10)
    assert (await index.count(), await index.total_bytes()) == (3, 60)
    await index.touch(key_of(2), 40.0)
    touched = await index.get(key_of(2))
    assert (touched.last_used_at, touched.hits) == (40.0, 1)
    assert [e.key for e in await index.lru_victims(1)] == [key_of(3)]
    assert [e.key for e in await index.lru_victims(31)] == [key_of(3), key_of(1)]
    assert [e.key for e in await index.lru_victims(31, keep=key_of(3))] == [key_of(1), key_of(2)]
    assert await index.lru_victims(0) == []
    assert await index.delete(key_of(1), checksum="other") is False
    assert await index.delete(key_of(1), checksum="c") is True and await index.get(key_of(1)) is None
    assert sorted(await index.all_keys()) == sorted([key_of(2), key_of(3)])
    await index.upsert(entry(3, 50.0, size=5))  # replace
    assert (await index.get(key_of(3))).bytes == 5 and await index.count() == 2
    await index.clear()
    assert await index.all_entries() == [] and await index.total_bytes() == 0


async def test_cache_round_trip_through_sqlite_survives_reopen(tmp_path: Path) -> None:
    """Put with one connection, read back identical tensors and metadata after reopening the database."""
    stored = {"embeddings": torch.randn(4, 8), "ids": torch.arange(3)}
    store = await Store.open(tmp_path / "zvl.sqlite3")
    cache = EmbeddingCache(tmp_path / "cache", store.cache_index, max_bytes=1_000_000)
    await cache.put(key_of(1), stored, {"kinds": ["text"] * 4}, kind="vl")
    await store.close()

    store = await Store.open(tmp_path / "zvl.sqlite3")
    try:
        cache = EmbeddingCache(tmp_path / "cache", store.cache_index, max_bytes=1_000_000)
        assert await cache.recover() == {"dropped_rows": 0, "removed_files": 0, "removed_temp": 0, "adopted": 0}
        got = await cache.get(key_of(1))
        assert got is not None
        assert all(torch.equal(got[0][k], v) for k, v in stored.items()) and got[1] == {"kinds": ["text"] * 4}
        row = await store.cache_index.get(key_of(1))
        assert row.kind == "vl" and row.hits == 1
    finally:
        await store.close()


async def test_lru_eviction_and_corruption_through_sqlite(store: Store, tmp_path: Path) -> None:
    """The same LRU order and corrupt-file handling as with the memory index."""
    cache = EmbeddingCache(tmp_path / "cache", store.cache_index, max_bytes=1_000_000)
    await cache.put(key_of(0), {"e": torch.zeros(64)}, {})
    size = (await cache.stats())["bytes"]
    await cache.clear()
    cache.max_bytes = 3 * size + size // 2
    for n in (1, 2, 3):
        await cache.put(key_of(n), {"e": torch.full((64,), float(n))}, {})
    assert await cache.get(key_of(1)) is not None
    await cache.put(key_of(4), {"e": torch.full((64,), 4.0)}, {})
    assert sorted(await store.cache_index.all_keys()) == sorted(key_of(n) for n in (1, 3, 4))

    (tmp_path / "cache" / (await store.cache_index.get(key_of(3))).path).write_bytes(b"garbage")
    assert await cache.get(key_of(3)) is None
    assert await store.cache_index.get(key_of(3)) is None
    assert (await cache.stats())["corrupt"] == 1 and (await cache.stats())["evictions"] == 1
