"""Named parameter sets per guild (``/preset save|use|list|delete``).

Names are unique per guild regardless of case: the ``name_key`` column holds the casefolded name under
``UNIQUE (guild_id, name_key)`` and every lookup goes through it; ``name`` keeps the spelling as saved.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite

from bot.store.db import fetch_all, fetch_one, from_db_time, from_json, to_db_time, to_json, transaction, utcnow
from bot.store.defaults import PRESET_KEYS, validate_params

#: Longest preset name, in characters (after stripping).
MAX_NAME_LEN = 32

#: Most rows :meth:`Presets.list` returns (Discord's autocomplete shows 25 choices).
MAX_LIST = 25


class InvalidPresetName(ValueError):
    """The preset name is empty, too long, or contains control characters; the message says which."""


class PresetExistsError(ValueError):
    """A preset with that name (ignoring case) already exists in the guild and overwrite was not asked for."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a preset named {name!r} already exists in this server; save with overwrite to replace it")


@dataclass(frozen=True)
class Preset:
    """One saved preset. ``params`` holds only the keys the preset sets."""

    id: int
    guild_id: int
    name: str
    params: dict[str, Any]
    created_by: int
    created_at: datetime
    uses: int
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Preset:
        return cls(
            id=row["id"],
            guild_id=row["guild_id"],
            name=row["name"],
            params=from_json(row["params"], {}),
            created_by=row["created_by"],
            created_at=from_db_time(row["created_at"]),  # type: ignore[arg-type]
            uses=row["uses"],
            last_used_at=from_db_time(row["last_used_at"]),
        )


def validate_preset_name(name: str) -> str:
    """The name as stored (stripped, NFC); raises :class:`InvalidPresetName` with the reason otherwise."""
    if not isinstance(name, str):
        raise InvalidPresetName(f"preset name must be text; got {name!r}")
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned:
        raise InvalidPresetName("preset name can't be empty")
    if len(cleaned) > MAX_NAME_LEN:
        raise InvalidPresetName(f"preset name must be at most {MAX_NAME_LEN} characters; got {len(cleaned)}")
    for char in cleaned:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidPresetName(
                f"preset name can't contain control characters or line breaks (found U+{ord(char):04X})"
            )
    return cleaned


def name_key(name: str) -> str:
    """The case-insensitive lookup key of a (validated) name."""
    return name.casefold()


class Presets:
    """Repository over ``guild_presets``."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def save(
        self,
        guild_id: int,
        name: str,
        params: Mapping[str, Any],
        created_by: int,
        *,
        overwrite: bool = False,
        now: datetime | None = None,
    ) -> Preset:
        """Save ``params`` (validated like user defaults; ``None`` values dropped) under ``name``.

        An existing preset of the same name (any case) raises :class:`PresetExistsError` unless ``overwrite``;
        overwriting replaces the spelling, parameters, creator and creation time and restarts the usage count.
        """
        clean = validate_preset_name(name)
        checked = validate_params(params, PRESET_KEYS, what="preset parameter")
        checked = {key: value for key, value in checked.items() if value is not None}
        stamp = to_db_time(now or utcnow())
        async with transaction(self.conn):
            existing = await self._row(guild_id, clean)
            if existing is not None and not overwrite:
                raise PresetExistsError(existing["name"])
            if existing is not None:
                await self.conn.execute(
                    "UPDATE guild_presets SET name = ?, params = ?, created_by = ?, created_at = ?, uses = 0, "
                    "last_used_at = NULL WHERE id = ?",
                    (clean, to_json(checked), created_by, stamp, existing["id"]),
                )
            else:
                await self.conn.execute(
                    "INSERT INTO guild_presets (guild_id, name, name_key, params, created_by, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (guild_id, clean, name_key(clean), to_json(checked), created_by, stamp),
                )
            row = await self._row(guild_id, clean)
        assert row is not None
        return Preset.from_row(row)

    async def get(self, guild_id: int, name: str) -> Preset | None:
        """The preset called ``name`` (any case), or ``None``. Also what ``/preset show`` displays."""
        row = await self._row(guild_id, name.strip())
        return None if row is None else Preset.from_row(row)

    show = get

    async def use(self, guild_id: int, name: str, *, now: datetime | None = None) -> dict[str, Any] | None:
        """Count one use of the preset and return its parameters (``None`` when there is no such preset)."""
        key = name_key(unicodedata.normalize("NFC", name.strip()))
        async with transaction(self.conn):
            cur = await self.conn.execute(
                "UPDATE guild_presets SET uses = uses + 1, last_used_at = ? WHERE guild_id = ? AND name_key = ? "
                "RETURNING params",
                (to_db_time(now or utcnow()), guild_id, key),
            )
            row = await cur.fetchone()
            await cur.close()
        return None if row is None else from_json(row["params"], {})

    async def list(self, guild_id: int, prefix: str = "", limit: int = MAX_LIST) -> list[Preset]:
        """Presets whose name starts with ``prefix`` (any case), alphabetically; at most ``min(limit, 25)``."""
        key = name_key(unicodedata.normalize("NFC", prefix.strip()))
        rows = await fetch_all(
            self.conn,
            "SELECT * FROM guild_presets WHERE guild_id = ? AND substr(name_key, 1, ?) = ? "
            "ORDER BY name_key LIMIT ?",
            (guild_id, len(key), key, max(0, min(limit, MAX_LIST))),
        )
        return [Preset.from_row(row) for row in rows]

    async def delete(self, guild_id: int, name: str) -> bool:
        """Delete the preset called ``name`` (any case); ``False`` when there was none."""
        key = name_key(unicodedata.normalize("NFC", name.strip()))
        async with transaction(self.conn):
            cur = await self.conn.execute(
                "DELETE FROM guild_presets WHERE guild_id = ? AND name_key = ?", (guild_id, key)
            )
            deleted = cur.rowcount
            await cur.close()
        return deleted > 0

    async def _row(self, guild_id: int, name: str) -> aiosqlite.Row | None:
        key = name_key(unicodedata.normalize("NFC", name))
        return await fetch_one(
            self.conn, "SELECT * FROM guild_presets WHERE guild_id = ? AND name_key = ?", (guild_id, key)
        )
