"""``create_bot(settings)`` -> :class:`ZvlBot`: the discord.py bot, its services, cogs and command sync.

``setup_hook`` (after login, before the gateway connects) wires everything, in order: services (database and
migrations, embedding cache, worker), the persistent button class, the cogs, restart recovery and the worker,
then the command sync: to ``settings.dev_guild_id`` when set (``copy_global_to`` + guild sync, instant), else
global. A global sync is skipped when the command payload is unchanged since the last one (a hash under
``data_dir``); ``/admin sync`` forces it. Nothing is synced in ``on_ready`` (it fires again on every reconnect).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import discord
from discord.ext import commands

from bot.discord_api import Endpoints, point_discord_at
from bot.jobs import JobButton, SuggestionButton
from bot.services import PipelineFactory, Services
from bot.tree import ZvlTree

log = logging.getLogger(__name__)

#: Extensions loaded by :meth:`ZvlBot.load_cogs`, in order.
COGS = ("cogs.stylize", "cogs.blendmode", "cogs.sweep", "cogs.defaults", "cogs.presets", "cogs.queue", "cogs.admin",
        "cogs.style", "cogs.describe")


class ZvlBot(commands.Bot):
    """The bot. ``services`` exists from ``setup_hook`` on; cogs reach everything through it."""

    services: Services

    def __init__(self, settings: Any, *, pipeline_factory: PipelineFactory | None = None,
                 progress_interval: float = 2.0, shutdown_grace_s: float = 20.0, **options: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, tree_cls=ZvlTree,
                         help_command=None, allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self._pipeline_factory = pipeline_factory
        self._progress_interval = progress_interval
        self._shutdown_grace_s = shutdown_grace_s
        self._previous_endpoints: Endpoints | None = None

    async def load_cogs(self) -> None:
        """Load every cog (offline: no database or network needed; ``python -m bot commands`` uses this)."""
        for name in COGS:
            if name not in self.extensions:
                await self.load_extension(name)

    async def login(self, token: str) -> None:
        if self.settings.discord_api_base or self.settings.discord_gateway_url:
            self._previous_endpoints = point_discord_at(self.settings.discord_api_base,
                                                        self.settings.discord_gateway_url)
            log.info("using Discord endpoints %s and %s", self.settings.discord_api_base,
                     self.settings.discord_gateway_url)
        await super().login(token)

    async def setup_hook(self) -> None:
        self.services = await Services.open(self, self.settings, self._pipeline_factory,
                                            progress_interval=self._progress_interval)
        self.add_dynamic_items(JobButton, SuggestionButton)
        await self.load_cogs()
        await self.services.start()
        await self.sync_commands()

    async def sync_commands(self, *, force: bool = False) -> str:
        """Sync the command tree (dev guild, else global); returns what was done, in words."""
        guild_id = self.settings.dev_guild_id
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            return f"Synced {len(synced)} commands to the dev guild {guild_id}"
        digest = hashlib.sha256(json.dumps(command_payload(self.tree), sort_keys=True).encode()).hexdigest()
        stamp = self.settings.data_dir / "commands.sha256"
        if not force and stamp.is_file() and stamp.read_text().strip() == digest:
            log.info("application commands unchanged since the last global sync; not syncing")
            return "Commands unchanged; nothing to sync"
        synced = await self.tree.sync()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest + "\n")
        return f"Synced {len(synced)} global commands (may take up to an hour to show everywhere)"

    async def close(self) -> None:
        services = getattr(self, "services", None)
        if services is not None:
            try:
                await services.close(grace_s=self._shutdown_grace_s)
            except Exception:
                log.exception("closing the services failed")
            del self.services
        await super().close()
        if self._previous_endpoints is not None:
            point_discord_at(self._previous_endpoints.api_base, self._previous_endpoints.gateway_url)
            self._previous_endpoints = None


def command_payload(tree: discord.app_commands.CommandTree) -> list[dict[str, Any]]:
    """Every global application command exactly as a sync sends it."""
    return [cmd.to_dict(tree) for cmd in tree.get_commands()]


def create_bot(settings: Any, **options: Any) -> ZvlBot:
    """The bot for ``settings`` (not connected; ``await bot.start(token)`` runs it). ``options`` go to
    :class:`ZvlBot` (``pipeline_factory``, ``progress_interval``, ``shutdown_grace_s``) and to ``commands.Bot``."""
    return ZvlBot(settings, **options)
