"""The embedding cache's index in SQLite (``cache_entries``): ``engine.cache.store.CacheIndex`` over aiosqlite."""

from __future__ import annotations

import aiosqlite

from bot.store.db import fetch_all, fetch_one, from_json, to_json, transaction
from engine.cache.store import CacheEntry


def _entry(row: aiosqlite.Row) -> CacheEntry:
    return CacheEntry(
        key=row["key"],
        kind=row["kind"],
        path=row["path"],
        bytes=row["bytes"],
        checksum=row["checksum"],
        meta=from_json(row["meta"], {}),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        hits=row["hits"],
    )


class SqliteCacheIndex:
    """Cache rows in ``cache_entries``; least recently used = smallest ``last_used_at`` (ties by key)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def get(self, key: str) -> CacheEntry | None:
        row = await fetch_one(self.conn, "SELECT * FROM cache_entries WHERE key = ?", (key,))
        return None if row is None else _entry(row)

    async def upsert(self, entry: CacheEntry) -> None:
        async with transaction(self.conn):
            await self.conn.execute(
                "INSERT OR REPLACE INTO cache_entries "
                "(key, kind, path, bytes, checksum, meta, created_at, last_used_at, hits) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.key, entry.kind, entry.path, entry.bytes, entry.checksum, to_json(entry.meta),
                 entry.created_at, entry.last_used_at, entry.hits),
            )  # fmt: skip

    async def touch(self, key: str, at: float) -> None:
        async with transaction(self.conn):
            await self.conn.execute(
                "UPDATE cache_entries SET last_used_at = ?, hits = hits + 1 WHERE key = ?", (at, key)
            )

    async def delete(self, key: str, checksum: str | None = None) -> bool:
        sql, params = "DELETE FROM cache_entries WHERE key = ?", [key]
        if checksum is not None:
            sql, params = sql + " AND checksum = ?", [key, checksum]
        async with transaction(self.conn):
            cur = await self.conn.execute(sql, params)
            deleted = cur.rowcount
            await cur.close()
        return deleted > 0

    async def total_bytes(self) -> int:
        row = await fetch_one(self.conn, "SELECT COALESCE(SUM(bytes), 0) AS total FROM cache_entries")
        return int(row["total"]) if row is not None else 0

    async def count(self) -> int:
        row = await fetch_one(self.conn, "SELECT COUNT(*) AS n FROM cache_entries")
        return int(row["n"]) if row is not None else 0

    async def lru_victims(self, bytes_to_free: int, keep: str | None = None) -> list[CacheEntry]:
        victims: list[CacheEntry] = []
        freed = 0
        async with self.conn.execute(
            "SELECT * FROM cache_entries WHERE key IS NOT ? ORDER BY last_used_at, key", (keep,)
        ) as cur:
            async for row in cur:
                if freed >= bytes_to_free:
                    break
                victims.append(_entry(row))
                freed += row["bytes"]
        return victims

    async def all_entries(self) -> list[CacheEntry]:
        return [_entry(row) for row in await fetch_all(self.conn, "SELECT * FROM cache_entries ORDER BY key")]

    async def all_keys(self) -> list[str]:
        return [row["key"] for row in await fetch_all(self.conn, "SELECT key FROM cache_entries ORDER BY key")]

    async def clear(self) -> None:
        async with transaction(self.conn):
            await self.conn.execute("DELETE FROM cache_entries")
