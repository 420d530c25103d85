"""``python -m bot``: run the bot; ``python -m bot migrate``; ``python -m bot commands``.

    python -m bot [run] [--demo] [--config FILE] [--profile NAME] [--zimage-path DIR] [--vl-path DIR] [--db FILE]
                        [--data-dir DIR] [--dev-guild ID] [--log-level LEVEL]
    python -m bot migrate [--db FILE]       apply pending database migrations
    python -m bot commands                  print the application commands as JSON (offline, no token needed)

Settings come from these flags, then ``ZVL_*`` environment variables / ``.env``, then the TOML profile. A missing
token, a bad setting or a missing model folder is one line on stderr and exit status 2. SIGINT / SIGTERM stop the
bot cleanly: the worker drains (jobs it can't finish stay queued in the database), then the database closes,
and the process exits even while discord.py is waiting to reconnect to an unreachable Discord.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("bot")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="zvl-bot: style-reference images on Discord.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the bot (the default)")
    for p in (parser, run):
        p.add_argument("--demo", action="store_true", default=None, help="tiny random models (images are noise)")
        p.add_argument("--config", dest="config_file", type=Path, help="TOML file with named profiles")
        p.add_argument("--profile", help="profile of the TOML file")
        p.add_argument("--zimage-path", type=Path, help="Z-Image-Turbo diffusers folder")
        p.add_argument("--vl-path", type=Path, help="Qwen3-VL folder")
        p.add_argument("--db", dest="db_path", type=Path, help="SQLite database file")
        p.add_argument("--data-dir", type=Path, help="caches, references, results")
        p.add_argument("--dev-guild", dest="dev_guild_id", type=int, help="sync commands to this guild only")
        p.add_argument("--log-level", help="DEBUG | INFO | WARNING | ERROR")
    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.add_argument("--db", dest="db_path", type=Path, help="SQLite database file (default: from settings)")
    sub.add_parser("commands", help="print the application commands as JSON, as they would be synced")
    return parser


def _fail(message: str) -> int:
    print(f"zvl-bot: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _settings(overrides: dict[str, Any]):
    from bot.settings import load_bot_settings

    return load_bot_settings({k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    from engine.config import SettingsError

    try:
        if command == "migrate":
            return _migrate(overrides)
        if command == "commands":
            return _commands(overrides)
        return _run(overrides)
    except SettingsError as exc:
        return _fail(str(exc))


def _migrate(overrides: dict[str, Any]) -> int:
    from bot.store import run_migrate_cli

    db_path = overrides.get("db_path") or _settings({}).db_path
    return run_migrate_cli(Path(db_path))


def _commands(overrides: dict[str, Any]) -> int:
    from bot.client import command_payload, create_bot

    settings = _settings({"data_dir": overrides.get("data_dir")})

    async def dump() -> list[dict[str, Any]]:
        bot = create_bot(settings)
        await bot.load_cogs()
        return command_payload(bot.tree)

    print(json.dumps(asyncio.run(dump()), indent=2, ensure_ascii=False))
    return 0


def _run(overrides: dict[str, Any]) -> int:
    from bot.log import setup_logging
    from engine.config import SettingsError
    from engine.models.folders import check_model_folders
    from engine.models.tiny import resolve_demo

    settings = _settings(overrides)
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise SettingsError("discord_token (ZVL_DISCORD_TOKEN) is not set: put the bot token in .env or the "
                            "environment")
    token = settings.discord_token.get_secret_value().strip()
    setup_logging(settings.log_level, secrets=[token])
    settings = resolve_demo(settings, notify=_loud)
    check_model_folders(settings)
    return asyncio.run(_serve(settings, token))


def _loud(message: str) -> None:
    print(message, file=sys.stderr)
    log.warning(message)


async def _serve(settings: Any, token: str) -> int:
    import discord

    from bot.client import create_bot
    from bot.store import MigrationError

    bot = create_bot(settings)
    async with bot:
        # start() runs as a task so that a stop can cancel it: in its reconnect back-off (up to ~300 s while
        # Discord is down) discord.py only looks at is_closed() after the sleep, so close() alone does not end it.
        running = asyncio.ensure_future(bot.start(token))
        stopping = _stop_on_signals(bot, running)
        try:
            await running
        except asyncio.CancelledError:
            if not (stopping and running.cancelled()) or _current_task_cancelling():
                raise  # not the cancel a stop asked for
        except discord.LoginFailure:
            return _fail("Discord refused the token (ZVL_DISCORD_TOKEN): check it in the developer portal")
        except MigrationError as exc:
            return _fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a stop closed the HTTP session under a login still in flight
            if not stopping:
                raise
            log.info("stopped while connecting to Discord (%s)", type(exc).__name__)
        finally:
            if stopping:
                await asyncio.gather(*stopping, return_exceptions=True)
    return 0


def _stop_on_signals(bot: Any, running: asyncio.Future[None]) -> list[asyncio.Task[None]]:
    """On the first SIGINT / SIGTERM: close the bot, then cancel ``running`` (its ``start()``). Returns the list
    that then holds the stopping task."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def shutdown() -> None:
        try:
            await bot.close()  # the worker drains and the database closes while start() still runs
        finally:
            running.cancel()  # whatever discord.py is waiting on; a no-op when start() has already returned

    def stop(signame: str) -> None:
        if not stopping:
            log.info("%s received: stopping", signame)
            stopping.append(loop.create_task(shutdown()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    return stopping


def _current_task_cancelling() -> bool:
    """Whether this task itself is being cancelled (then a CancelledError is not ours to swallow)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


if __name__ == "__main__":
    sys.exit(main())
