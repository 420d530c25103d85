"""Point discord.py 2.7.1 at a fake (or any other) Discord, without editing discord.py's files.

discord.py builds every REST URL as ``Route.BASE + path`` (``discord.http.Route.BASE``, a class attribute read
when each ``Route`` is created), and ``Client.connect`` opens the gateway at
``DiscordWebSocket.DEFAULT_GATEWAY`` (a class attribute; ``AutoShardedClient`` asks ``GET /gateway/bot``
instead, which the fake answers with its own URL). After READY, reconnects use READY's ``resume_gateway_url``;
an INVALID_SESSION falls back to ``DEFAULT_GATEWAY``. Interaction webhooks use ``Route`` too, and
``Attachment.read()`` fetches the attachment's own ``url``, so nothing else needs changing.
"""

from __future__ import annotations

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route


def point_discord_at(api_base: str, gateway_url: str) -> tuple[str, str]:
    """Send discord.py's REST calls to ``api_base`` and its gateway connection to ``gateway_url``.

    ``api_base`` is the full API root, e.g. ``http://127.0.0.1:PORT/api/v10`` (``ZVL_DISCORD_API_BASE``);
    ``gateway_url`` the websocket root, e.g. ``ws://127.0.0.1:PORT/gateway`` (``ZVL_DISCORD_GATEWAY_URL``);
    discord.py adds ``?v=10&encoding=json&compress=zlib-stream`` itself. Affects the whole process and
    must be called before ``Client.start``/``login``. Returns the previous ``(api_base, gateway_url)`` so a
    test can restore them with another call.
    """
    previous = (Route.BASE, str(DiscordWebSocket.DEFAULT_GATEWAY))
    Route.BASE = api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    return previous
