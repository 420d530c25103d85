"""``/admin``: models, queue, cache, status and command sync, for the bot's admins only.

Hidden from members without Manage Server by ``default_permissions`` (a server can change that default), and
enforced at run time by :meth:`Admin.interaction_check`: bot owners (settings and the application's owner) and the
configured admin role.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import is_bot_admin
from bot.errors import AdminOnly, UserError
from bot.services import services_of
from bot.ui.embeds import info_embed, job_line, worker_lines


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


async def any_active_job(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    rows = await services_of(interaction).store.jobs.list_active()
    return [app_commands.Choice(name=job_line(r.id, r.kind.value, r.params.get("prompt", ""),
                                              status=r.status.value)[:100], value=r.id)
            for r in rows if r.id.startswith(current.strip().lower())][:25]


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class Admin(commands.GroupCog, group_name="admin", group_description="Bot administration (bot admins only)"):
    """The ``/admin`` group."""

    cache = app_commands.Group(name="cache", description="The embedding cache")

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not await is_bot_admin(interaction):
            raise AdminOnly()
        return True

    @app_commands.command(name="reload", description="Reload the models (waits for running jobs)")
    @app_commands.describe(component="Which model to reload (default: all)")
    @app_commands.choices(component=[app_commands.Choice(name=n, value=n) for n in ("all", "vl", "text", "dit")])
    async def reload(self, interaction: discord.Interaction, component: str = "all") -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        result = await services_of(interaction).worker.reload(component)
        if result["error"]:
            text = f"❌ Reloading {component} failed: {result['error'][:1500]}"
        else:
            text = f"✅ Reloaded {component} in {result['seconds']:.1f} s ({result['queued']} job(s) waiting)."
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(name="pause", description="Stop starting new jobs (running ones finish)")
    async def pause(self, interaction: discord.Interaction) -> None:
        services_of(interaction).worker.pause()
        await interaction.response.send_message("⏸️ Paused: new jobs wait in the queue.", ephemeral=True)

    @app_commands.command(name="resume", description="Start jobs again")
    async def resume(self, interaction: discord.Interaction) -> None:
        services_of(interaction).worker.resume()
        await interaction.response.send_message("▶️ Resumed.", ephemeral=True)

    @app_commands.command(name="queue", description="Every queued and running job")
    async def queue(self, interaction: discord.Interaction) -> None:
        services = services_of(interaction)
        lines = []
        for row in await services.store.jobs.list_active():
            where = await services.worker.position(row.id)
            lines.append(job_line(row.id, row.kind.value, row.params.get("prompt", ""), owner_id=row.owner_id,
                                  position=where[0] if where else None, eta_s=where[1] if where else None,
                                  status=row.status.value))
        paused = " (paused)" if services.worker.paused else ""
        await interaction.response.send_message(embed=info_embed(f"Queue{paused}", lines or ["Empty."]),
                                                ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel anyone's job")
    @app_commands.describe(job_id="The job (pick from the list)")
    @app_commands.autocomplete(job_id=any_active_job)
    async def cancel(self, interaction: discord.Interaction, job_id: app_commands.Range[str, 1, 64]) -> None:
        services = services_of(interaction)
        full_id = await services.jobs.find_active(job_id)
        if not await services.worker.cancel(full_id, "cancelled by an admin"):
            raise UserError("That job has already finished.")
        await interaction.response.send_message(f"Cancelled `{full_id[:8]}`.", ephemeral=True)

    @cache.command(name="stats", description="Embedding cache size and hit rate")
    async def cache_stats(self, interaction: discord.Interaction) -> None:
        stats = await services_of(interaction).cache.stats()
        fields = {"Entries": stats["entries"], "Size": f"{_size(stats['bytes'])} of {_size(stats['max_bytes'])}",
                  "Hits / misses": f"{stats['hits']} / {stats['misses']}", "Evictions": stats["evictions"],
                  "Corrupt dropped": stats["corrupt"]}
        if "shared" in stats:  # ZVL_CACHE_REDIS_URL: the Redis tier every worker shares
            shared = stats["shared"]
            fields["Shared tier (Redis)"] = (f"{shared['hits']} hits / {shared['misses']} misses, {shared['stored']} "
                                             f"stored, {shared['refused']} refused"
                                             + ("" if shared["available"] else "; unavailable now (local only)"))
        await interaction.response.send_message(embed=info_embed("Embedding cache", fields), ephemeral=True)

    @cache.command(name="clear", description="Delete every cached embedding")
    async def cache_clear(self, interaction: discord.Interaction) -> None:
        removed = await services_of(interaction).cache.clear()
        await interaction.response.send_message(f"🧹 Removed {removed} cache entries.", ephemeral=True)

    @app_commands.command(name="status", description="Models, devices, memory, queue, cache and uptime")
    async def status(self, interaction: discord.Interaction) -> None:
        status = await services_of(interaction).status()
        worker, cache, devices = status["worker"], status["cache"], status["devices"]
        loaded = ", ".join(k for k, v in worker.loaded.items() if v) or "none yet (loaded on first job)"
        gpus = "; ".join(f"{d['name']}: {_size(d['allocated'])} used, {_size(d['total'])} total"
                         for d in devices["cuda"]) or "no CUDA device (CPU only)"
        fields = {
            "State": "paused" if worker.paused else "reloading" if worker.reloading else "running",
            "Models loaded": loaded,
            "Model errors": worker.model_error or "none",
            "Devices": gpus,
            "Process memory (peak)": _size(devices["process_peak_rss"]),
            "Queue": f"{worker.queue_depth} queued, {len(worker.running)} running",
            "Done / failed / cancelled": "{done} / {failed} / {cancelled}".format(**worker.counters),
            "Cache": f"{cache['entries']} entries, {_size(cache['bytes'])}",
            "Uptime": f"{status['uptime_s'] / 3600:.1f} h",
            "Event-loop lag": "p50 {p50_ms:g} ms, p99 {p99_ms:g} ms, max {max_ms:g} ms".format(**status["loop_lag"]),
        }
        if worker.workers:  # the shared queue: its GPU worker processes
            fields["GPU workers"] = worker_lines(worker.workers)
        await interaction.response.send_message(embed=info_embed("zvl-bot status", fields), ephemeral=True)

    @app_commands.command(name="sync", description="Sync the slash commands with Discord now")
    async def sync(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await self.bot.sync_commands(force=True)  # type: ignore[attr-defined]
        await interaction.followup.send(f"✅ {text}.", ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))
