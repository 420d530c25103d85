"""bot.errors: the message ladder (one short user-safe sentence per error kind, None for unexpected ones)."""

from __future__ import annotations

import pytest
from discord import app_commands

from bot.errors import AdminOnly, NotYourJob, UserError, user_message
from bot.store import InvalidPresetName, PresetExistsError
from engine.media.images import ReferenceImageError
from engine.serving.queue import QueueFull


def invoke_error(original: Exception) -> app_commands.CommandInvokeError:
    class FakeCommand:
        name = "stylize"

    return app_commands.CommandInvokeError(FakeCommand(), original)  # type: ignore[arg-type]


@pytest.mark.parametrize("error, expected", [
    (UserError("The reference image is too large."), "The reference image is too large."),
    (invoke_error(UserError("wrapped")), "wrapped"),
    (AdminOnly(), "This command is for the bot's admins."),
    (NotYourJob(), "Only the person who asked for this image"),
    (QueueFull("you already have 3 jobs queued", scope="user", limit=3), "You already have 3 jobs queued"),
    (invoke_error(ReferenceImageError("the reference image is empty")), "The reference image is empty"),
    (InvalidPresetName("preset name can't be empty"), "Preset name can't be empty"),
    (PresetExistsError("ink"), "already exists"),
    (PermissionError("you can only cancel your own jobs"), "You can only cancel your own jobs"),
    (app_commands.CommandOnCooldown(app_commands.Cooldown(1, 3), 2.34), "try again in 2.3 s"),
    (app_commands.MissingPermissions(["manage_guild"]), "Manage Server permission"),
    (app_commands.BotMissingPermissions(["attach_files"]), "I need the Attach Files permission"),
    (app_commands.NoPrivateMessage(), "only works in a server"),
    (app_commands.CheckFailure(), "can't use this command here"),
])
def test_ladder(error: Exception, expected: str) -> None:
    assert expected in (user_message(error) or "")


@pytest.mark.parametrize("error", [RuntimeError("db exploded at /secret/path"), invoke_error(KeyError("x")),
                                   ValueError("internal detail")])
def test_unexpected_errors_get_no_message(error: Exception) -> None:
    """Unexpected errors are not shown as they are (the caller logs them and sends a generic message)."""
    assert user_message(error) is None
