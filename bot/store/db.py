"""The SQLite connection: how it is opened, how transactions are taken, and how timestamps and JSON are stored.

One ``aiosqlite`` connection is shared by every repository. The connection is opened in autocommit mode
(``isolation_level=None``): Python's sqlite3 never opens a transaction on its own, so every write goes through
:func:`transaction`, which takes the write lock up front (``BEGIN IMMEDIATE``) and serialises the coroutines that
share the connection. Reads outside a transaction are single statements and need no lock.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiosqlite

#: How long a statement waits for another process's write lock before failing with "database is locked".
BUSY_TIMEOUT_MS = 5000


async def open_db(path: str | Path) -> aiosqlite.Connection:
    """Open (creating it and its parent folder if needed) the database at ``path``.

    The connection has WAL journaling, foreign keys on, a 5000 ms busy timeout, ``synchronous=NORMAL`` (durable
    with WAL except for the last commits on power loss) and ``row_factory = aiosqlite.Row``. ``":memory:"`` works
    too (WAL does not apply there). Close it with ``await conn.close()``.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        await conn.close()
        raise
    return conn


class _TxLock:
    """The per-connection transaction lock, remembering which task holds it (to refuse nesting, not deadlock)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None


_tx_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, _TxLock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """``async with transaction(conn):`` runs the block in ``BEGIN IMMEDIATE`` ... ``COMMIT``.

    Any exception rolls back and propagates. Transactions on one connection are serialised by an ``asyncio.Lock``
    (other processes wait on SQLite's busy timeout). Nesting in the same task raises ``RuntimeError`` instead of
    deadlocking; open one transaction and do all the work inside it.
    """
    tx = _tx_locks.get(conn)
    if tx is None:
        tx = _tx_locks[conn] = _TxLock()
    me = asyncio.current_task()
    if tx.lock.locked() and tx.owner is me:
        raise RuntimeError("nested transaction on the same connection; do the work inside the outer transaction")
    async with tx.lock:
        tx.owner = me
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
        finally:
            tx.owner = None


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
    """The first row of ``sql``, or ``None``."""
    async with conn.execute(sql, tuple(params)) as cur:
        return await cur.fetchone()


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
    """Every row of ``sql``."""
    async with conn.execute(sql, tuple(params)) as cur:
        return list(await cur.fetchall())


# --- timestamps -------------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def to_db_time(value: datetime) -> str:
    """An aware datetime as fixed-width ISO-8601 UTC text (sorts correctly as text). Naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamps must be timezone-aware; got naive {value!r}")
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def from_db_time(value: str | None) -> datetime | None:
    """Inverse of :func:`to_db_time` (``None`` stays ``None``)."""
    return None if value is None else datetime.fromisoformat(value)


# --- JSON columns ------------------------------------------------------------------------------------------------


def to_json(value: Any) -> str:
    """Compact JSON with sorted keys; NaN/Infinity are refused (SQLite's json_valid rejects them too)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def from_json(value: str | None, default: Any = None) -> Any:
    return default if value is None else json.loads(value)
