"""A protocol-level fake of Discord (REST API v10 + gateway) on 127.0.0.1 for testing a real discord.py bot.

See README.md in this folder. Entry point: ``FakeDiscord``; point discord.py at it with
``client_patch.point_discord_at(fake.api_base, fake.gateway_url)``.
"""

from __future__ import annotations

from .fake import FakeDiscord
from .rules import DiscordError, Limits
from .state import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    InteractionFailed,
    InteractionRecord,
    SentRequest,
    UploadedFile,
)

Interaction = InteractionRecord  # the name used in the issue

__all__ = [
    "DiscordError",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "Interaction",
    "InteractionFailed",
    "InteractionRecord",
    "Limits",
    "SentRequest",
    "UploadedFile",
]
