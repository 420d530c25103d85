"""Schema migrations: ``migrations/NNNN_name.sql`` applied in order, each in its own transaction.

Every applied file is recorded in ``schema_migrations`` (version, name, applied_at, checksum) and the latest
version is mirrored in ``PRAGMA user_version``. Files are append-only: a recorded migration whose file changed is
refused (:class:`MigrationError`), and a database that records a version this code has no file for, newer than the
newest file, is refused with :class:`SchemaTooNewError` so an old release never runs against a newer schema.

``python -m bot migrate [--db PATH]`` ends up in :func:`run_migrate_cli`; ``python -m bot.store.migrate`` works too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.store.db import fetch_all, open_db, to_db_time, transaction, utcnow

log = logging.getLogger(__name__)

#: The repository's ``migrations/`` folder.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    checksum    TEXT NOT NULL
)
"""


class MigrationError(RuntimeError):
    """The migrations folder or the database's migration record is inconsistent; the message says how."""


class SchemaTooNewError(MigrationError):
    """The database was migrated by a newer zvl-bot than this one."""

    def __init__(self, db_version: int, code_version: int) -> None:
        self.db_version = db_version
        self.code_version = code_version
        super().__init__(
            f"database schema version {db_version} is newer than this code (latest {code_version}): "
            "upgrade zvl-bot or point ZVL_DB_PATH elsewhere"
        )


@dataclass(frozen=True)
class Migration:
    """One ``NNNN_name.sql`` file: its statements and the sha256 of its text (line endings normalised)."""

    version: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def discover(migrations_dir: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in ``migrations_dir``, by version. Other ``.sql`` names, duplicate versions and files
    without a ``-- Reason:`` header line are errors."""
    found: dict[int, Migration] = {}
    for path in sorted(Path(migrations_dir).glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name must look like 0001_name.sql (lowercase); got {path.name}")
        version, name = int(match.group(1)), match.group(2)
        if version in found:
            raise MigrationError(f"two migrations have version {version:04d}: {found[version].path.name}, {path.name}")
        sql = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        if not re.search(r"^--\s*Reason:", sql, flags=re.MULTILINE):
            raise MigrationError(f"migration {path.name} has no '-- Reason:' header line")
        checksum = hashlib.sha256(sql.encode("utf-8")).hexdigest()
        found[version] = Migration(version, name, path, sql, checksum)
    return [found[v] for v in sorted(found)]


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (``;`` inside strings, comments and triggers is respected)."""
    statements: list[str] = []
    start = 0
    for i, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : i + 1]):
            statement = script[start : i + 1].strip()
            if _strip_comments(statement).strip(" \n\t;"):
                statements.append(statement)
            start = i + 1
    if _strip_comments(script[start:]).strip():
        raise MigrationError(f"SQL after the last ';' is not a complete statement: {script[start:].strip()[:80]!r}")
    return statements


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


async def apply_migrations(conn: aiosqlite.Connection, migrations_dir: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Bring the database on ``conn`` up to the newest migration; returns those applied now (empty: up to date).

    Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with its ``schema_migrations`` row, so
    a failing file leaves the database at the previous version. Another process migrating at the same time waits
    for the lock and then finds the version already recorded.
    """
    migrations = discover(migrations_dir)
    await conn.execute(_CREATE_SCHEMA_MIGRATIONS)
    _check_recorded(migrations, await _recorded(conn))
    applied: list[Migration] = []
    for migration in migrations:
        async with transaction(conn):
            if migration.version in await _recorded(conn):  # applied by someone else meanwhile
                continue
            for statement in split_statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at, checksum) VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, to_db_time(utcnow()), migration.checksum),
            )
            await conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        log.info("applied migration %s", migration.label)
        applied.append(migration)
    return applied


async def _recorded(conn: aiosqlite.Connection) -> dict[int, str]:
    rows = await fetch_all(conn, "SELECT version, checksum FROM schema_migrations")
    return {int(row["version"]): str(row["checksum"]) for row in rows}


def _check_recorded(migrations: Sequence[Migration], recorded: dict[int, str]) -> None:
    known = {m.version: m for m in migrations}
    latest = max(known, default=0)
    unknown = sorted(set(recorded) - set(known))
    if unknown and unknown[-1] > latest:
        raise SchemaTooNewError(unknown[-1], latest)
    if unknown:
        raise MigrationError(f"database records migration {unknown[0]:04d} but migrations/ has no such file")
    for version, checksum in recorded.items():
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {known[version].label} changed after it was applied; migrations are append-only, "
                "so add a new numbered file instead"
            )


async def migrate(db_path: str | Path, migrations_dir: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Open ``db_path`` (created if missing), apply pending migrations, close; returns the migrations applied."""
    conn = await open_db(db_path)
    try:
        return await apply_migrations(conn, migrations_dir)
    finally:
        await conn.close()


def run_migrate_cli(db_path: Path, migrations_dir: Path = MIGRATIONS_DIR) -> int:
    """Migrate ``db_path`` printing one line per applied migration, or ``up to date``; returns the exit status
    (0 on success, 1 with a one-line message on stderr when the migrations or the database are inconsistent)."""
    try:
        applied = asyncio.run(migrate(db_path, migrations_dir))
    except MigrationError as exc:
        print(f"zvl migrate: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"zvl migrate: {db_path}: {exc}", file=sys.stderr)
        return 1
    for migration in applied:
        print(f"applied {migration.label}")
    if not applied:
        print(f"{db_path}: up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``migrate [--db PATH]``: without ``--db`` the path comes from the settings (``ZVL_DB_PATH``, ``.env``,
    profile, else ``<data_dir>/zvl.sqlite3``)."""
    parser = argparse.ArgumentParser(prog="python -m bot migrate", description="Apply pending schema migrations.")
    parser.add_argument("--db", type=Path, default=None, help="SQLite database file (default: from the settings)")
    args = parser.parse_args(argv)
    if args.db is not None:
        return run_migrate_cli(args.db)
    from bot.settings import load_bot_settings
    from engine.config import SettingsError

    try:
        db_path = load_bot_settings().db_path
    except SettingsError as exc:
        print(f"zvl migrate: {exc}", file=sys.stderr)
        return 2
    return run_migrate_cli(Path(db_path))


if __name__ == "__main__":  # pragma: no cover - python -m bot.store.migrate
    sys.exit(main())
