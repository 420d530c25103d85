"""Style codes (``/stylize style:<code>``, ``/style list|show|forget``): the ``style_codes`` table.

A row says "this user sent this reference in this scope, and it is called ``code`` there". The scope rules (a code
works in the server where it was made; a user's own codes also in direct messages) are the queries here:
:meth:`StyleCodes.find` never looks outside the scope it is given, except at the asking user's own rows when the
request comes from a DM. The code itself is derived elsewhere (``engine.styles.style_code``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import aiosqlite

from bot.store.db import fetch_all, fetch_one, from_db_time, to_db_time, transaction, utcnow

#: Most codes :meth:`StyleCodes.list_for` returns (an embed shows 25 fields at most).
MAX_LIST = 25


@dataclass(frozen=True)
class StyleCode:
    """One user's row for one code."""

    scope: str
    code: str
    owner_id: int
    guild_id: int | None
    reference_sha256: str
    reference_path: str
    width: int
    height: int
    created_at: datetime
    last_used_at: datetime
    uses: int

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> StyleCode:
        return cls(scope=row["scope"], code=row["code"], owner_id=row["owner_id"], guild_id=row["guild_id"],
                   reference_sha256=row["reference_sha256"], reference_path=row["reference_path"],
                   width=row["width"], height=row["height"],
                   created_at=from_db_time(row["created_at"]),  # type: ignore[arg-type]
                   last_used_at=from_db_time(row["last_used_at"]),  # type: ignore[arg-type]
                   uses=row["uses"])

    def reference_record(self) -> dict[str, object]:
        """The job-params form of the reference (``bot.references.Reference.record``)."""
        return {"sha256": self.reference_sha256, "path": self.reference_path, "size": [self.width, self.height]}


def scope_of(guild_id: int | None, user_id: int) -> str:
    """Where a code made now belongs: the server, or (in a direct message) the user."""
    return f"g{int(guild_id)}" if guild_id is not None else f"u{int(user_id)}"


class StyleCodes:
    """Repository over ``style_codes``."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def add(self, scope: str, code: str, owner_id: int, guild_id: int | None, reference_sha256: str,
                  reference_path: str, size: tuple[int, int], *, now: datetime | None = None) -> StyleCode | None:
        """Record (or refresh) ``owner_id``'s row for ``code``. ``None`` when ``code`` already names a *different*
        reference in ``scope`` (a 1-in-4-billion collision): the new reference then gets no code rather than
        taking over someone else's."""
        stamp = to_db_time(now or utcnow())
        async with transaction(self.conn):
            other = await fetch_one(self.conn, "SELECT 1 FROM style_codes WHERE scope = ? AND code = ? AND "
                                               "reference_sha256 != ?", (scope, code, reference_sha256))
            if other is not None:
                return None
            await self.conn.execute(
                "INSERT INTO style_codes (scope, code, owner_id, guild_id, reference_sha256, reference_path, width, "
                "height, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (scope, code, owner_id) DO UPDATE SET last_used_at = excluded.last_used_at, "
                "reference_path = excluded.reference_path",
                (scope, code, owner_id, guild_id, reference_sha256, str(reference_path), int(size[0]),
                 int(size[1]), stamp, stamp))
        return await self._own(scope, code, owner_id)

    async def find(self, code: str, *, guild_id: int | None, user_id: int) -> StyleCode | None:
        """The row ``code`` names for ``user_id`` asking from ``guild_id``: in a server, any row of that server
        (the user's own first); in a DM (``guild_id`` None), only the user's own rows, from any scope."""
        if guild_id is not None:
            row = await fetch_one(self.conn, "SELECT * FROM style_codes WHERE scope = ? AND code = ? "
                                             "ORDER BY owner_id != ?, created_at LIMIT 1",
                                  (scope_of(guild_id, user_id), code, user_id))
        else:
            row = await fetch_one(self.conn, "SELECT * FROM style_codes WHERE owner_id = ? AND code = ? "
                                             "ORDER BY last_used_at DESC LIMIT 1", (user_id, code))
        return None if row is None else StyleCode.from_row(row)

    async def used(self, row: StyleCode, *, now: datetime | None = None) -> None:
        """Count one reuse of ``row``."""
        async with transaction(self.conn):
            await self.conn.execute("UPDATE style_codes SET uses = uses + 1, last_used_at = ? WHERE scope = ? AND "
                                    "code = ? AND owner_id = ?",
                                    (to_db_time(now or utcnow()), row.scope, row.code, row.owner_id))

    async def list_for(self, user_id: int, guild_id: int | None, limit: int = MAX_LIST) -> list[StyleCode]:
        """``user_id``'s own codes usable here (this server's; in a DM, all of theirs), most recently used first."""
        if guild_id is not None:
            rows = await fetch_all(self.conn, "SELECT * FROM style_codes WHERE owner_id = ? AND scope = ? "
                                              "ORDER BY last_used_at DESC LIMIT ?",
                                   (user_id, scope_of(guild_id, user_id), limit))
        else:
            rows = await fetch_all(self.conn, "SELECT * FROM style_codes WHERE owner_id = ? "
                                              "ORDER BY last_used_at DESC LIMIT ?", (user_id, limit))
        return [StyleCode.from_row(r) for r in rows]

    async def forget(self, code: str, *, guild_id: int | None, user_id: int) -> bool:
        """Delete ``user_id``'s own row(s) for ``code`` usable here; whether one existed. Other users' rows of a
        shared code stay (it is theirs too)."""
        async with transaction(self.conn):
            if guild_id is not None:
                cur = await self.conn.execute("DELETE FROM style_codes WHERE owner_id = ? AND code = ? AND scope = ?",
                                              (user_id, code, scope_of(guild_id, user_id)))
            else:
                cur = await self.conn.execute("DELETE FROM style_codes WHERE owner_id = ? AND code = ?",
                                              (user_id, code))
            removed = cur.rowcount
            await cur.close()
        return removed > 0

    async def _own(self, scope: str, code: str, owner_id: int) -> StyleCode | None:
        row = await fetch_one(self.conn, "SELECT * FROM style_codes WHERE scope = ? AND code = ? AND owner_id = ?",
                              (scope, code, owner_id))
        return None if row is None else StyleCode.from_row(row)
