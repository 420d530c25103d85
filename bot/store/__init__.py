"""Persistence: one SQLite database (aiosqlite), migrated at start-up, with one small repository per concern.

All SQL of the bot lives in this package; cogs reach it through the services handle. No discord imports here.

    store = await Store.open(settings.db_path)      # opens, migrates, builds the repositories
    job = await store.jobs.create(user_id, "stylize", request.record(), ...)
    await store.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.store.cache_index import SqliteCacheIndex
from bot.store.db import open_db, transaction
from bot.store.defaults import UserDefaults, global_defaults, resolve_params, validate_params
from bot.store.jobs import ALLOWED_TRANSITIONS, InvalidTransition, Job, JobKind, JobNotFound, Jobs, JobStatus
from bot.store.migrate import MigrationError, SchemaTooNewError, apply_migrations, migrate, run_migrate_cli
from bot.store.presets import InvalidPresetName, Preset, PresetExistsError, Presets, validate_preset_name
from bot.store.styles import StyleCode, StyleCodes, scope_of

__all__ = [
    "ALLOWED_TRANSITIONS",
    "InvalidPresetName",
    "InvalidTransition",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobStatus",
    "Jobs",
    "MigrationError",
    "Preset",
    "PresetExistsError",
    "Presets",
    "SchemaTooNewError",
    "SqliteCacheIndex",
    "Store",
    "StyleCode",
    "StyleCodes",
    "UserDefaults",
    "apply_migrations",
    "global_defaults",
    "migrate",
    "open_db",
    "resolve_params",
    "run_migrate_cli",
    "scope_of",
    "transaction",
    "validate_params",
    "validate_preset_name",
]


@dataclass
class Store:
    """The open database and its repositories (what ``bot.services`` hands to cogs and the worker)."""

    conn: aiosqlite.Connection
    jobs: Jobs
    defaults: UserDefaults
    presets: Presets
    cache_index: SqliteCacheIndex
    styles: StyleCodes

    @classmethod
    async def open(cls, path: str | Path, *, run_migrations: bool = True) -> Store:
        """Open ``path`` and apply pending migrations (``SchemaTooNewError`` if the database is newer)."""
        conn = await open_db(path)
        try:
            if run_migrations:
                await apply_migrations(conn)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, Jobs(conn), UserDefaults(conn), Presets(conn), SqliteCacheIndex(conn), StyleCodes(conn))

    async def close(self) -> None:
        await self.conn.close()
