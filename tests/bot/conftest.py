"""Fixtures for the bot tests: a FakeDiscord with one guild, settings pointing at it, a running bot (defined once,
in tests/bot/harness.py)."""

from tests.bot.harness import bot, fake, pipeline, settings  # noqa: F401  (pytest fixtures)
