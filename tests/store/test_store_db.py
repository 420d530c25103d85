"""bot.store.db: connection pragmas, transactions, timestamps."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiosqlite
import pytest

from bot.store.db import fetch_one, from_db_time, open_db, to_db_time, transaction


@pytest.fixture
async def conn(tmp_path: Path):
    conn = await open_db(tmp_path / "nested" / "dir" / "zvl.sqlite3")
    await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    yield conn
    await conn.close()


async def test_open_db_sets_wal_foreign_keys_busy_timeout_and_rows(conn: aiosqlite.Connection, tmp_path: Path) -> None:
    """The parent folder is created; WAL, foreign keys, a 5 s busy timeout and Row access by name are on."""
    assert (tmp_path / "nested" / "dir" / "zvl.sqlite3").exists()
    assert (await fetch_one(conn, "PRAGMA journal_mode"))[0] == "wal"
    assert (await fetch_one(conn, "PRAGMA foreign_keys"))[0] == 1
    assert (await fetch_one(conn, "PRAGMA busy_timeout"))[0] == 5000
    row = await fetch_one(conn, "SELECT 7 AS seven")
    assert isinstance(row, aiosqlite.Row) and row["seven"] == 7


async def test_foreign_keys_are_enforced(conn: aiosqlite.Connection) -> None:
    await conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES t (id))")
    with pytest.raises(Exception, match="FOREIGN KEY"):
        await conn.execute("INSERT INTO child (parent) VALUES (42)")


async def test_transaction_commits_and_rolls_back(conn: aiosqlite.Connection) -> None:
    async with transaction(conn):
        await conn.execute("INSERT INTO t (n) VALUES (1)")
    with pytest.raises(RuntimeError, match="boom"):
        async with transaction(conn):
            await conn.execute("INSERT INTO t (n) VALUES (2)")
            raise RuntimeError("boom")
    assert not conn.in_transaction
    assert (await fetch_one(conn, "SELECT group_concat(n) AS ns FROM t"))["ns"] == "1"


async def test_transactions_on_one_connection_are_serialised(conn: aiosqlite.Connection) -> None:
    """Two read-modify-write transactions racing on one connection do not lose an update."""
    await conn.execute("INSERT INTO t (id, n) VALUES (1, 0)")

    async def bump() -> None:
        async with transaction(conn):
            n = (await fetch_one(conn, "SELECT n FROM t WHERE id = 1"))["n"]
            await asyncio.sleep(0.01)
            await conn.execute("UPDATE t SET n = ? WHERE id = 1", (n + 1,))

    await asyncio.gather(bump(), bump(), bump())
    assert (await fetch_one(conn, "SELECT n FROM t WHERE id = 1"))["n"] == 3


async def test_nested_transaction_is_refused_not_deadlocked(conn: aiosqlite.Connection) -> None:
    async with transaction(conn):
        with pytest.raises(RuntimeError, match="nested transaction"):
            async with transaction(conn):
                pass  # pragma: no cover


def test_timestamps_are_aware_utc_text() -> None:
    """Stored as fixed-width UTC ISO text that sorts like time; naive datetimes are refused."""
    t = datetime(2026, 11, 27, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    text = to_db_time(t)
    assert text == "2026-11-27T10:00:00.000000+00:00" and from_db_time(text) == t
    assert to_db_time(t + timedelta(microseconds=1)) > text
    with pytest.raises(ValueError, match="timezone-aware"):
        to_db_time(datetime(2026, 11, 27))
