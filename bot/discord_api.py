"""Pointing discord.py at the configured Discord endpoints (a fake Discord in tests, the real one otherwise).

discord.py builds every REST URL from the class attribute ``discord.http.Route.BASE`` and opens the gateway at
``DiscordWebSocket.DEFAULT_GATEWAY`` (after READY it resumes at READY's ``resume_gateway_url``, which a fake sets to
itself). Interaction webhooks go through ``Route`` too, and ``Attachment.read()`` fetches the attachment's own URL,
so these two attributes are all there is to change. Both are process-wide; :func:`point_discord_at` returns the
previous values so a caller (the bot's ``close``, a test) can put them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route


@dataclass(frozen=True)
class Endpoints:
    """A REST API root (``http://host:port/api/v10``) and a gateway websocket root (``ws://host:port/gateway``)."""

    api_base: str
    gateway_url: str


def current_endpoints() -> Endpoints:
    """What discord.py uses now."""
    return Endpoints(Route.BASE, str(DiscordWebSocket.DEFAULT_GATEWAY))


def point_discord_at(api_base: str | None, gateway_url: str | None) -> Endpoints:
    """Send REST calls to ``api_base`` and the gateway connection to ``gateway_url`` (``None`` leaves one as it is).

    Must run before ``login``. Returns the endpoints in use before the call.
    """
    previous = current_endpoints()
    if api_base:
        Route.BASE = api_base.rstrip("/")
    if gateway_url:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    return previous
