"""bot.settings: the Discord settings beside the engine's, unknown keys refused, the secret token, .env.example."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.settings import BotSettings, load_bot_settings
from engine.config import EngineSettings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("settings_sandbox")


def test_the_discord_settings_live_in_the_bot_and_the_engine_ones_are_shared():
    discord_only = set(BotSettings.model_fields) - set(EngineSettings.model_fields)
    assert {"discord_token", "dev_guild_id", "admin_role_id", "owner_ids", "cooldown_s", "max_upload_bytes",
            "retention_days"} <= discord_only
    assert not {name for name in EngineSettings.model_fields if name.startswith("discord")}
    s = load_bot_settings({"steps": 5, "cooldown_s": 0})
    assert s.steps == 5 and s.cooldown_s == 0


def test_an_unknown_setting_is_refused_in_one_line():
    with pytest.raises(SettingsError) as info:
        load_bot_settings({"colour": "blue"})
    assert str(info.value) == "unknown setting 'colour'"


def test_token_never_appears_in_repr_str_errors_or_logs(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch):
    secret = "MTIzNDU2Nzg5.super-secret-token"
    monkeypatch.setenv("ZVL_DISCORD_TOKEN", secret)
    s = load_bot_settings()
    assert s.discord_token is not None and s.discord_token.get_secret_value() == secret
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("zvl.test").info("settings: %r / %s / %s", s, s, s.model_dump())
    for text in (repr(s), str(s), caplog.text, str(s.model_dump()), s.model_dump_json()):
        assert secret not in text
    monkeypatch.setenv("ZVL_ALPHA", "2")  # an error raised while the token is set does not echo it either
    with pytest.raises(SettingsError) as info:
        load_bot_settings()
    assert secret not in str(info.value)


def test_every_setting_has_a_description():
    """.env.example documents each setting; every field carries the description it is generated from."""
    assert [name for name, field in BotSettings.model_fields.items() if not field.description] == []


def test_env_example_documents_every_setting_with_its_default():
    text = (ROOT / ".env.example").read_text()
    for name in BotSettings.model_fields:
        assert f"ZVL_{name.upper()}=" in text, name


def test_a_copied_env_example_loads_as_the_defaults(tmp_path: Path):
    """Empty values in .env mean "not set", so copying .env.example to .env changes nothing."""
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    assert load_bot_settings().model_dump() == load_bot_settings(env_file=None).model_dump()
