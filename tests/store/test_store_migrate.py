"""bot.store.migrate: ordered, recorded, idempotent migrations; refusal of newer schemas; the CLI."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from bot.store.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    SchemaTooNewError,
    discover,
    main,
    migrate,
    run_migrate_cli,
    split_statements,
)

EXPECTED_TABLES = {"schema_migrations", "user_defaults", "guild_presets", "jobs", "cache_entries"}


def tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as raw, raw:
        return {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def recorded(db: Path) -> list[tuple]:
    with closing(sqlite3.connect(db)) as raw, raw:
        return raw.execute("SELECT version, name, applied_at, checksum FROM schema_migrations ORDER BY 1").fetchall()


async def test_migrate_from_empty_creates_schema_and_records_it(tmp_path: Path) -> None:
    """An empty database gets every table; schema_migrations records version, name, time and checksum."""
    db = tmp_path / "zvl.sqlite3"
    applied = await migrate(db)
    assert [m.label for m in applied] == [m.label for m in discover()]
    assert applied[0].label == "0001_init"
    assert EXPECTED_TABLES <= tables(db)
    (version, name, applied_at, checksum), *_ = recorded(db)
    assert (version, name) == (1, "init") and applied_at.endswith("+00:00")
    sql = (MIGRATIONS_DIR / "0001_init.sql").read_text(encoding="utf-8").replace("\r\n", "\n")
    assert checksum == hashlib.sha256(sql.encode()).hexdigest()
    with closing(sqlite3.connect(db)) as raw, raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == applied[-1].version


async def test_rerun_is_a_no_op(tmp_path: Path) -> None:
    db = tmp_path / "zvl.sqlite3"
    await migrate(db)
    before = recorded(db)
    assert await migrate(db) == []
    assert recorded(db) == before


async def test_newer_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "zvl.sqlite3"
    await migrate(db)
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("INSERT INTO schema_migrations VALUES (7, 'future', '2030-01-01T00:00:00+00:00', 'x')")
    latest = discover()[-1].version
    with pytest.raises(SchemaTooNewError) as info:
        await migrate(db)
    assert str(info.value) == (
        f"database schema version 7 is newer than this code (latest {latest}): "
        "upgrade zvl-bot or point ZVL_DB_PATH elsewhere"
    )


def _write(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"-- Reason: test {name}\n{body}\n", encoding="utf-8")


async def test_migrations_apply_in_order_and_a_failing_one_rolls_back(tmp_path: Path) -> None:
    """0002 builds on 0001; a failing 0003 leaves nothing behind (not recorded, its first statement undone)."""
    mig, db = tmp_path / "migrations", tmp_path / "zvl.sqlite3"
    _write(mig, "0002_add_col.sql", "ALTER TABLE a ADD COLUMN note TEXT DEFAULT 'x;y';")
    _write(mig, "0001_first.sql", "CREATE TABLE a (id INTEGER PRIMARY KEY);")
    assert [m.label for m in await migrate(db, mig)] == ["0001_first", "0002_add_col"]
    _write(mig, "0003_broken.sql", "CREATE TABLE b (id INTEGER);\nINSERT INTO missing_table VALUES (1);")
    with pytest.raises(sqlite3.OperationalError, match="missing_table"):
        await migrate(db, mig)
    assert "b" not in tables(db) and [r[0] for r in recorded(db)] == [1, 2]
    (mig / "0003_broken.sql").unlink()
    _write(mig, "0003_fixed.sql", "CREATE TABLE b (id INTEGER);")
    assert [m.label for m in await migrate(db, mig)] == ["0003_fixed"]


async def test_edited_migration_is_refused(tmp_path: Path) -> None:
    mig, db = tmp_path / "migrations", tmp_path / "zvl.sqlite3"
    _write(mig, "0001_first.sql", "CREATE TABLE a (id INTEGER);")
    await migrate(db, mig)
    _write(mig, "0001_first.sql", "CREATE TABLE a (id INTEGER, extra TEXT);")
    with pytest.raises(MigrationError, match="append-only"):
        await migrate(db, mig)


def test_migration_files_follow_the_rules(tmp_path: Path) -> None:
    """Real files have NNNN_name.sql names and a Reason header; bad names, duplicates and no header are refused."""
    assert discover()[0].version == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0001_x.sql").write_text("CREATE TABLE a (id INTEGER);")
    with pytest.raises(MigrationError, match="Reason"):
        discover(bad)
    (bad / "0001_x.sql").unlink()
    _write(bad, "1_x.sql", "")
    with pytest.raises(MigrationError, match="0001_name.sql"):
        discover(bad)
    (bad / "1_x.sql").unlink()
    _write(bad, "0001_a.sql", "")
    _write(bad, "0001_b.sql", "")
    with pytest.raises(MigrationError, match="two migrations"):
        discover(bad)


def test_split_statements_respects_strings_comments_and_triggers() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (t TEXT DEFAULT ';');
    CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE a SET t = 'x'; END;
    INSERT INTO a VALUES ('1'); INSERT INTO a VALUES ('2');
    """
    statements = split_statements(script)
    assert len(statements) == 4 and statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(MigrationError, match="after the last"):
        split_statements("CREATE TABLE a (id INTEGER)")


def test_cli_reports_applied_then_up_to_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "zvl.sqlite3"
    assert run_migrate_cli(db) == 0
    assert "applied 0001_init" in capsys.readouterr().out
    assert main(["--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == f"{db}: up to date"


def test_cli_refuses_newer_database_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "zvl.sqlite3"
    run_migrate_cli(db)
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("INSERT INTO schema_migrations VALUES (7, 'future', '2030-01-01T00:00:00+00:00', 'x')")
    capsys.readouterr()
    assert run_migrate_cli(db) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "database schema version 7 is newer than this code" in err


def test_cli_without_db_uses_the_settings_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "from-env.sqlite3"
    monkeypatch.setenv("ZVL_DB_PATH", str(db))
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert main([]) == 0 and db.exists()
    assert "applied 0001_init" in capsys.readouterr().out
