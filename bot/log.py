"""Logging for the bot: compact ``key=value`` lines, and the Discord token redacted wherever it could appear.

discord.py logs request URLs (interaction follow-ups carry the interaction token in the path) and, on some errors,
headers. :class:`RedactingFilter` replaces every registered secret, and every ``/webhooks/<app>/<token>`` or
``/interactions/<id>/<token>`` path segment, before a record is formatted by any handler.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

_TOKEN_PATHS = re.compile(r"(/(?:webhooks|interactions)/\d+/)([A-Za-z0-9_.\-]{20,})")
_BOT_TOKEN_SHAPE = re.compile(r"\b[MNO][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,38}\b")
REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove ``secrets``, anything shaped like a bot token, and interaction/webhook tokens in URL paths."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _TOKEN_PATHS.sub(lambda m: m.group(1) + REDACTED, text)
    return _BOT_TOKEN_SHAPE.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message (with its arguments merged in) through :func:`redact`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(level: str = "INFO", secrets: Iterable[str] = (), stream=None) -> logging.Handler:
    """Configure the root logger once: one stream handler with the redacting filter. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if any(isinstance(f, RedactingFilter) for f in h.filters)]:
        root.removeHandler(old)  # ours from an earlier call (a restart in the same process): one handler, not two
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("discord.gateway", "discord.http", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.INFO))
    return handler
