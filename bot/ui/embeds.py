"""Pure rendering: jobs, results, settings and status as Discord embeds and status lines (no I/O).

Every embed goes through :func:`fit_embed`, which enforces Discord's limits (title 256, description 4096, field
name 256, field value 1024, footer 2048, 25 fields, 6000 characters in all) by cutting with an ellipsis; callers
attach the full parameters as JSON whenever something was cut (``Rendered.truncated``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import discord

from bot.params import BLEND_MODES, SEVERAL_REFERENCES, describe_layer, size_name
from bot.text import display_text
from engine.serving.events import EventKind, ProgressEvent
from engine.types import BlendMode

TITLE, DESCRIPTION, FIELD_NAME, FIELD_VALUE, FOOTER, TOTAL, FIELDS = 256, 4096, 256, 1024, 2048, 6000, 25
#: A long prompt is shown up to this many characters in a result embed (the rest is in params.json).
PROMPT_SHOWN = 1000

COLOUR_OK, COLOUR_INFO = discord.Colour(0x5865F2), discord.Colour(0x2B2D31)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``…`` when cut."""
    text = str(text)
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def embed_size(embed: discord.Embed) -> int:
    """Characters Discord counts towards the 6000 total."""
    size = len(embed.title or "") + len(embed.description or "") + len(embed.footer.text or "")
    size += len(embed.author.name or "")
    return size + sum(len(f.name or "") + len(f.value or "") for f in embed.fields)


def fit_embed(embed: discord.Embed) -> tuple[discord.Embed, bool]:
    """Cut ``embed`` to Discord's limits in place; returns it and whether anything was cut."""
    cut = False

    def clip(text: str | None, limit: int) -> str | None:
        nonlocal cut
        if text is not None and len(text) > limit:
            cut = True
            return truncate(text, limit)
        return text

    embed.title = clip(embed.title, TITLE)
    embed.description = clip(embed.description, DESCRIPTION)
    if embed.footer.text:
        embed.set_footer(text=clip(embed.footer.text, FOOTER), icon_url=embed.footer.icon_url)
    fields = [(clip(f.name, FIELD_NAME) or "\u200b", clip(f.value, FIELD_VALUE) or "\u200b", f.inline)
              for f in embed.fields]
    if len(fields) > FIELDS:
        fields, cut = fields[:FIELDS], True
    embed.clear_fields()
    for name, value, inline in fields:
        embed.add_field(name=name, value=value, inline=inline)
    while embed_size(embed) > TOTAL:
        cut = True
        excess = embed_size(embed) - TOTAL
        if embed.description and len(embed.description) > 200:
            embed.description = truncate(embed.description, max(200, len(embed.description) - excess))
        elif embed.fields:
            embed.remove_field(len(embed.fields) - 1)
        else:
            embed.title = truncate(embed.title or "", max(1, len(embed.title or "") - excess))
    return embed, cut


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 1:
        return f"{value:.2f} s"
    return f"{value:.1f} s" if value < 90 else f"{value / 60:.1f} min"


def timings_text(timings: Mapping[str, float]) -> str:
    """``queue 0.2 s · VL 1.1 s · text 0.1 s · DiT 3.0 s · total 4.4 s`` (stages that ran)."""
    names = [("queue", "queue"), ("vl", "VL"), ("describe", "describe"), ("text", "text"), ("dit", "DiT"),
             ("total", "total")]
    return " · ".join(f"{label} {_seconds(timings[key])}" for key, label in names if key in timings) or "–"


def parameter_fields(resolved: Mapping[str, Any], *, strength: float | None = None,
                     preset: str | None = None) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of the settings a user chooses, as the result embed shows them."""
    out = [
        ("Style weight", f"{resolved['style_weight']:g} (alpha {resolved['alpha']:g})"),
        ("Blend mode", str(resolved["blend_mode"])),
        ("VL layer", describe_layer(resolved["layer"])),
        ("Tokens", str(resolved["tokens"])),
        ("Seed", str(resolved.get("seed"))),
        ("Steps", str(resolved["steps"])),
        ("Size", size_name(int(resolved["width"]), int(resolved["height"]))),
        ("Img2img strength", "off (txt2img)" if strength is None else f"{strength:g}"),
    ]
    extra = [("Normalization", resolved.get("normalization"), "row_rms"),
             ("Outliers", resolved.get("outlier_mode"), "none"),
             ("Style schedule", resolved.get("style_schedule"), "constant"),
             ("Append selection", resolved.get("append_selection"), "pool"),
             ("Guidance", resolved.get("guidance_scale"), 0.0)]
    out += [(name, str(value)) for name, value, usual in extra if value is not None and value != usual]
    if preset:
        out.append(("Preset", preset))
    return out


@dataclass(frozen=True)
class Rendered:
    """An embed and whether the full parameters must be attached because something was cut."""

    embed: discord.Embed
    truncated: bool


def result_embed(*, job_id: str, prompt: str, resolved: Mapping[str, Any], strength: float | None,
                 preset: str | None, timings: Mapping[str, float], title: str = "Stylized",
                 style_code: str | None = None, negative: str | None = None) -> Rendered:
    """The result of a /stylize job: the prompt, every parameter, the seed, the reference's style code (to reuse
    it without the image) and the timings."""
    shown = truncate(display_text(prompt), PROMPT_SHOWN) if prompt else "*(no prompt: the reference alone)*"
    embed = discord.Embed(title=title, description=shown, colour=COLOUR_OK)
    for name, value in parameter_fields(resolved, strength=strength, preset=preset):
        embed.add_field(name=name, value=value, inline=True)
    if style_code:
        embed.add_field(name="Style code", value=f"`{style_code}` · reuse with `/stylize style:{style_code}`",
                        inline=False)
    if negative:
        embed.add_field(name="Negative style", value=negative, inline=False)
    embed.add_field(name="Timings", value=timings_text(timings), inline=False)
    embed.set_footer(text=f"job {job_id}")
    embed, cut = fit_embed(embed)
    return Rendered(embed, cut or len(prompt) > PROMPT_SHOWN)


def sweep_embed(*, job_id: str, prompt: str, title: str, note: str, axes: Sequence[str], cells: int,
                fixed: Mapping[str, Any], timings: Mapping[str, float]) -> Rendered:
    """The result of a sweep or comparison: what varied, what stayed fixed, the timings."""
    lines = [truncate(display_text(prompt), PROMPT_SHOWN) if prompt else "*(no prompt)*"]
    if note:
        lines.append(f"-# {note}")
    embed = discord.Embed(title=title, description="\n".join(lines), colour=COLOUR_OK)
    embed.add_field(name="Varies", value=", ".join(axes) or "–", inline=True)
    embed.add_field(name="Cells", value=f"{cells} (per-cell parameters in cells.json)", inline=True)
    embed.add_field(name="Fixed", value=", ".join(f"{k}={v}" for k, v in fixed.items()) or "–", inline=False)
    embed.add_field(name="Timings", value=timings_text(timings), inline=False)
    embed.set_footer(text=f"job {job_id}")
    embed, cut = fit_embed(embed)
    return Rendered(embed, cut)


def describe_embed(*, job_id: str, suggestions: Sequence[str], timings: Mapping[str, float]) -> discord.Embed:
    """The result of a /describe job: the numbered prompt suggestions the buttons under it start."""
    lines = [f"**{i}.** {truncate(display_text(text, one_line=True), 300) or '*(no text)*'}"
             for i, text in enumerate(suggestions, 1)]
    embed = discord.Embed(title="Prompt suggestions", description="\n".join(lines), colour=COLOUR_OK)
    embed.add_field(name="Use one", value="Press its number: a /stylize with that prompt and this reference.",
                    inline=False)
    embed.add_field(name="Timings", value=timings_text(timings), inline=False)
    embed.set_footer(text=f"job {job_id}")
    return fit_embed(embed)[0]


def status_line(event: ProgressEvent, *, kind: str = "stylize") -> str:
    """One line for the status message of a running job."""
    what = {"sweep": "sweep", "compare": "sweep", "describe": "description"}.get(kind, "image")
    cells = f" · cell {min((event.cell or 0) + 1, event.cells)}/{event.cells}" if (event.cells or 0) > 1 else ""
    match event.kind:
        case EventKind.QUEUED | EventKind.POSITION:
            eta = f", about {_seconds(event.eta_s)}" if event.eta_s is not None else ""
            return f"⏳ Queued: #{event.position} in line{eta}."
        case EventKind.STARTED:
            return f"⚙️ Starting your {what}…"
        case EventKind.VL_STARTED:
            where = f" on {event.device}" if event.device else ""
            if kind == "describe":
                return "📝 Qwen3-VL is describing the reference…"
            return f"🔍 Reading the reference{where}…"
        case EventKind.VL_CACHED | EventKind.VL_FINISHED:
            return "🔍 Reference read; encoding the prompt…"
        case EventKind.STEP:
            return f"🎨 Step {event.step}/{event.total}{cells}"
        case EventKind.CELL_DONE:
            return f"🎨 {event.cells_done}/{event.cells} cells done"
        case EventKind.DONE:
            return "✅ Done."
        case EventKind.FAILED:
            return f"❌ Failed: {event.message or 'unknown error'}"
        case EventKind.CANCELLED:
            return f"🚫 Cancelled ({event.message or 'by request'})."
    return "…"


def job_line(job_id: str, kind: str, prompt: str, *, position: int | None = None, eta_s: float | None = None,
             status: str | None = None, error: str | None = None, owner_id: int | None = None) -> str:
    """One line about a job for ``/queue``: short id, kind, prompt, and where it is (or how it ended)."""
    what = truncate(display_text(prompt, one_line=True), 40) if prompt else "(no prompt)"
    if position is not None:
        state = "running" if position == 0 else f"#{position} in line"
        state += f", about {_seconds(eta_s)} left" if eta_s is not None else ""
    else:
        state = status or "?"
        state += f" ({truncate(error, 80)})" if error else ""
    who = f" <@{owner_id}>" if owner_id is not None else ""
    return f"`{job_id[:8]}` {kind}{who} “{what}”: {state}"


def info_embed(title: str, lines: Iterable[str] | Mapping[str, Any], *, description: str | None = None,
               colour: discord.Colour = COLOUR_INFO) -> discord.Embed:
    """A plain embed: a title, an optional description, and ``name: value`` fields (or one line per item)."""
    embed = discord.Embed(title=title, description=description, colour=colour)
    if isinstance(lines, Mapping):
        for name, value in lines.items():
            embed.add_field(name=str(name), value=str(value) if value not in (None, "") else "–", inline=True)
    else:
        text = "\n".join(lines)
        embed.description = "\n\n".join(x for x in (description, text) if x)
    return fit_embed(embed)[0]


def settings_lines(params: Mapping[str, Any]) -> dict[str, str]:
    """Stored settings (defaults or a preset) as display fields."""
    names = {"style_weight": "Style weight", "alpha": "Alpha", "blend_mode": "Blend mode", "layer": "VL layer",
             "tokens": "Tokens", "steps": "Steps", "seed": "Seed", "private": "Private",
             "normalization": "Normalization", "outlier_mode": "Outliers", "style_schedule": "Style schedule",
             "append_selection": "Append selection"}
    out: dict[str, str] = {}
    for key, value in params.items():
        if key in ("width", "height"):
            continue
        out[names.get(key, key)] = describe_layer(value) if key == "layer" else str(value)
    if "width" in params and "height" in params:
        out["Size"] = size_name(int(params["width"]), int(params["height"]))
    return out


def modes_embed(mode: str | None = None) -> discord.Embed:
    """``/blendmode info``: every mode in plain words, or one (``ValueError`` naming ``mode`` for an unknown one)."""
    modes = [BlendMode.parse(mode, "mode")] if mode is not None else list(BLEND_MODES)
    embed = discord.Embed(title="Blend modes" if mode is None else f"Blend mode: {modes[0]}", colour=COLOUR_INFO,
                          description="How the reference is mixed into your prompt. Set yours with "
                                      "`/blendmode set`; compare them with `/blendmode compare`.")
    for m in modes:
        embed.add_field(name=m.value, value=f"{BLEND_MODES[m][1]} *Several references:* {SEVERAL_REFERENCES[m]}",
                        inline=False)
    return fit_embed(embed)[0]


def params_json(data: Any) -> bytes:
    """Readable JSON bytes for a ``params.json`` / ``cells.json`` attachment."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode()


def worker_lines(workers: Iterable[Any]) -> str:
    """One line per GPU worker of the shared queue (``/admin status``): name, device, models, jobs, last heartbeat."""
    lines = []
    for w in workers:
        state = " (draining)" if w.draining else " (paused)" if w.paused else ""
        models = ", ".join(sorted(w.loaded)) or "none"
        jobs = ", ".join(f"`{j['id'][:8]}` {j['stage']}" for j in w.jobs) or "idle"
        lines.append(f"**{w.name}**{state} · {w.device or '?'} · {models} · {jobs} · {w.last_beat_s:g} s ago")
    return "\n".join(lines)[:1024]
