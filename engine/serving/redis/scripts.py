"""The queue's Lua scripts, loaded once per client (EVALSHA, reloaded by redis-py after a server restart).

Each script in ``lua/`` runs after ``lua/common.lua`` (the helpers every script shares), so a rule such as "where a
front put goes" or "what a final status does" has one home in Lua.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).with_name("lua")
NAMES = ("enqueue", "take", "cancel", "heartbeat", "finish", "requeue", "reap")


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (common helpers first)."""
    return (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()


def register(client: Any) -> dict[str, Any]:
    """``{name: AsyncScript}`` for every script, registered on ``client`` (a ``redis.asyncio.Redis``)."""
    return {name: client.register_script(source(name)) for name in NAMES}
