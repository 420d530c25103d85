"""`python -m bot`: start-up refusals are one line and exit status 2; `migrate` applies migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.__main__ import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ZVL_* from the outside, no .env: run from an empty folder."""
    import os

    for key in [k for k in os.environ if k.startswith("ZVL_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZVL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr("bot.log.setup_logging", lambda *a, **k: None)  # keep the root logger as pytest set it
    return tmp_path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("zvl-bot: ")
    return err


def test_missing_token_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """No token: exit 2 with one line naming the setting."""
    assert main([]) == 2
    assert "ZVL_DISCORD_TOKEN" in one_line_error(capsys)


def test_bad_setting_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid value (from the environment) is named, in one line."""
    monkeypatch.setenv("ZVL_ALPHA", "2")
    monkeypatch.setenv("ZVL_DISCORD_TOKEN", "x")
    assert main(["run"]) == 2
    assert "alpha" in one_line_error(capsys)


def test_missing_model_folder_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A model folder that does not exist: exit 2, the token never printed."""
    monkeypatch.setenv("ZVL_DISCORD_TOKEN", "MTIz.secret-token-value")
    assert main(["--zimage-path", str(tmp_path / "nowhere")]) == 2
    err = one_line_error(capsys)
    assert "zimage_path" in err and "secret-token-value" not in err


def test_image_token_budget_below_the_processor_minimum_is_one_line_exit_2(
        monkeypatch: pytest.MonkeyPatch, tiny_models, vl_with_real_minimum, capsys: pytest.CaptureFixture[str]) -> None:
    """`vl_max_image_tokens` under the processor's 64 is refused with the other settings, not at the first job."""
    monkeypatch.setenv("ZVL_DISCORD_TOKEN", "x")
    monkeypatch.setenv("ZVL_VL_MAX_IMAGE_TOKENS", "16")
    assert main(["--zimage-path", str(tiny_models.zimage), "--vl-path", str(vl_with_real_minimum)]) == 2
    err = one_line_error(capsys)
    assert "vl_max_image_tokens" in err and "at least 64" in err and "got 16" in err


def test_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`migrate --db PATH` creates the schema; a second run is up to date."""
    db = tmp_path / "x.sqlite3"
    assert main(["migrate", "--db", str(db)]) == 0
    assert "applied 0001" in capsys.readouterr().out
    assert main(["migrate", "--db", str(db)]) == 0
    assert "up to date" in capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} >= {"jobs", "guild_presets"}
