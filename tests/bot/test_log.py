"""The token never reaches a log line, whatever logs it."""

from __future__ import annotations

import io
import logging

from bot.log import REDACTED, redact, setup_logging

BOT_TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0Mw.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"


def test_redact_removes_secrets_token_shapes_and_url_tokens():
    text = (f"token={BOT_TOKEN} custom=hunter2-secret "
            "POST https://x/api/v10/webhooks/123/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OmFiY2Rl/messages/@original")
    out = redact(text, ["hunter2-secret"])
    assert BOT_TOKEN not in out and "hunter2-secret" not in out
    assert "aW50ZXJhY3Rpb246MTIzNDU2" not in out
    assert out.count(REDACTED) == 3
    assert "/webhooks/123/" in out  # the application id stays: it is not a secret


def test_logged_arguments_and_tracebacks_are_redacted():
    stream = io.StringIO()
    handler = setup_logging("DEBUG", secrets=["s3cr3t-value"], stream=stream)
    try:
        log = logging.getLogger("discord.client")
        log.warning("login with %s and %s", BOT_TOKEN, "s3cr3t-value")
        try:
            raise RuntimeError(f"boom {BOT_TOKEN}")
        except RuntimeError:
            log.exception("failed for job=%s", "j1")
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert BOT_TOKEN not in text and "s3cr3t-value" not in text
    assert "job=j1" in text and "RuntimeError: boom [redacted]" in text
