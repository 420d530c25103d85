"""The bot's settings: the engine's (:class:`engine.config.EngineSettings`) plus the Discord ones.

Read from the same sources with the same names (CLI flags > ``ZVL_*`` environment / ``.env`` > the TOML profile >
defaults); unlike the engine's, an unknown key is refused here, because the bot knows every key there is.

The Discord token is a ``SecretStr``: it is never logged, and never shown in a ``repr`` or an error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from engine.config import EngineSettings, build_settings

__all__ = ["BotSettings", "load_bot_settings"]


class BotSettings(EngineSettings):
    """Every setting of zvl-bot: the engine's and these."""

    model_config = SettingsConfigDict(**{**EngineSettings.model_config, "extra": "forbid"})

    discord_token: SecretStr | None = Field(None, description="bot token (secret)")
    discord_api_base: str | None = Field(None, description="REST base URL, for tests (default: Discord's)")
    discord_gateway_url: str | None = Field(None, description="gateway websocket URL, for tests")
    dev_guild_id: int | None = Field(None, description="sync commands to this guild only (instant)")
    admin_role_id: int | None = Field(None, description="role whose members may use /admin")
    owner_ids: list[int] = Field(default_factory=list, description="user ids with every permission")
    cooldown_s: float = Field(3.0, ge=0, description="per-user cooldown between generation commands")
    max_upload_bytes: int = Field(20 << 20, ge=1 << 20, description="largest reference attachment accepted")
    sweep_max_cells: int = Field(24, ge=1, le=64, description="largest sweep grid")
    retention_days: float = Field(30.0, ge=0, description="delete result images and stored references older than "
                                  "this many days (0 = keep them forever)")

    def __repr_args__(self):
        # pydantic already masks SecretStr; drop it entirely so not even its length-free mask shows.
        return [(k, v) for k, v in super().__repr_args__() if k != "discord_token"]


def load_bot_settings(overrides: dict[str, Any] | None = None, *, env_file: str | Path | None = ".env") -> BotSettings:
    """The bot's settings; :class:`engine.config.SettingsError` with one printable line on any invalid value."""
    return build_settings(BotSettings, overrides, env_file=env_file)
