"""The final message of a finished job: images encoded for the upload limit, the embed, the JSON, the buttons.

Image work (PNG with every parameter in its metadata, or WebP/JPEG/downscaled when over the limit; the sweep grid
and, for a scored sweep, the score chart) runs in a thread; embeds and views are built on the event loop (discord.py
views need it).
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord

from bot.refset import references_record
from bot.params import describe_layer
from bot.text import display_text
from bot.jobs._buttons import result_view, suggestions_view
from bot.ui.embeds import describe_embed, params_json, result_embed, sweep_embed
from engine.files import atomic_write_bytes
from engine.media.grid import fit_grid_for_upload, make_sweep_grid
from engine.media.images import encode_for_upload, png_with_metadata
from engine.scoring.chart import ScoredCell, chart_png
from engine.scoring.score import best_index
from engine.serving.queue import Job, JobOutcome


@dataclass
class Outgoing:
    """A message to send or edit into. ``uploads`` are ``(filename, bytes)``; :attr:`files` makes fresh
    ``discord.File`` objects for every attempt (a file object is consumed by a request)."""

    content: str | None = None
    embeds: list[discord.Embed] = field(default_factory=list)
    uploads: list[tuple[str, bytes]] = field(default_factory=list)
    view: discord.ui.View | None = None

    @property
    def files(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.uploads]

    def fields(self) -> dict[str, Any]:
        return {"content": self.content, "embeds": self.embeds, "view": self.view}


def _record(job: Job, result: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What a result PNG carries: enough to reproduce it."""
    return {"job_id": job.id, "params": result.params, "seeds": result.seeds, "timings": result.timings,
            "resolved": params.get("resolved"), "reference_sha256": (params.get("reference") or {}).get("sha256"),
            **references_record(params)}


def _negative_text(params: dict[str, Any], outcome: JobOutcome) -> str | None:
    """The result's negative reference: its style code and the CFG scale it ran at (``None`` without one)."""
    multi = params.get("multi") or {}
    if not multi.get("negative"):
        return None
    code = params.get("negative_style_code")
    scale = float(outcome.results[0].params.get("guidance_scale", 0.0))
    return f"{f'`{code}`' if code else 'an image'} · guidance {scale:g} (a second pass per step)"


def _encode_images(job: Job, outcome: JobOutcome, limit: int) -> list[tuple[str, bytes]]:
    params = job.context["params"]
    result = outcome.results[0]
    uploads = []
    for image, seed in zip(result.images, result.seeds, strict=True):
        data, name, _ctype = encode_for_upload(image, _record(job, result, params), limit,
                                               stem=f"zvl-{job.id[:8]}-{seed}")
        uploads.append((name, data))
    return uploads


#: The file a /describe job's suggestions are kept in (its row's ``result_paths``), read again by its buttons.
SUGGESTIONS_FILE = "suggestions.json"


def read_suggestions(paths: list[str]) -> list[str] | None:
    """The suggestions a /describe job stored (``None`` when the file is gone, e.g. under retention)."""
    for path in paths:
        if Path(path).name == SUGGESTIONS_FILE:
            try:
                return [str(s) for s in json.loads(Path(path).read_text(encoding="utf-8"))["suggestions"]]
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def save_results(root: Path, job: Job, outcome: JobOutcome) -> list[str]:
    """Write every result image as a PNG with its parameters under ``root`` (a /describe job: its suggestions as
    JSON); returns the paths (for the job row)."""
    root.mkdir(parents=True, exist_ok=True)
    if job.kind == "describe":
        path = root / SUGGESTIONS_FILE
        atomic_write_bytes(path, json.dumps({"job_id": job.id, **outcome.results[0].record()}).encode())
        return [str(path)]
    paths = []
    for i, result in enumerate(outcome.results):
        if result is None:
            continue
        record = _record(job, result, job.context["params"])
        for j, image in enumerate(result.images):
            path = root / f"{i:02d}-{j}.png"
            path.write_bytes(png_with_metadata(image, record))
            paths.append(str(path))
    return paths


def _subtitle(job: Job) -> str:
    r = job.requests[-1]
    strength = "txt2img" if r.strength is None else f"img2img {r.strength:g}"
    return f"{r.width}×{r.height} · {r.steps} steps · seed {r.seeds[0]} · {strength}"


def _encode_grid(job: Job, outcome: JobOutcome, limit: int) -> tuple[str, bytes]:
    plan = job.context["plan"]
    reference = job.context.get("reference")
    images = [res.images[0] if res is not None and res.images else None for res in outcome.results]
    images += [None] * (len(plan.cells) - len(images))
    grid = make_sweep_grid(plan, images, reference=reference.image if reference else None,
                           title=display_text(job.requests[0].prompt, one_line=True) or None, subtitle=_subtitle(job))
    record = {"job_id": job.id, **plan.record()}
    data, name, _ctype = fit_grid_for_upload(grid, record, limit, stem=f"zvl-sweep-{job.id[:8]}")
    return name, data


def cells_record(job: Job, outcome: JobOutcome) -> dict[str, Any]:
    """``cells.json``: the plan and, per cell, its label, axes and full parameters (with the seeds used)."""
    plan = job.context["plan"]
    cells = []
    for i, cell in enumerate(plan.cells):
        entry = cell.record()
        result = outcome.results[i] if i < len(outcome.results) else None
        if result is not None:
            entry["params"] = result.params
            entry["timings"] = result.timings
            entry["scores"] = result.scores or None
        cells.append(entry)
    return {"job_id": job.id, "plan": plan.record(), "timings": outcome.timings, "cells": cells}


def _scored_cells(job: Job, outcome: JobOutcome) -> list[ScoredCell]:
    plan = job.context["plan"]
    results = list(outcome.results) + [None] * (len(plan.cells) - len(outcome.results))
    return [ScoredCell(label=cell.label, axes=cell.axes, baseline=cell.baseline,
                       scores=(result.scores or None) if result is not None else None)
            for cell, result in zip(plan.cells, results, strict=False)]


def best_cell_line(cells: list[ScoredCell]) -> str | None:
    """The one line naming the cell with the best prompt-adherence × style-similarity balance (``None``: unjudged)."""
    best = best_index([c.scores for c in cells], [c.baseline for c in cells])
    if best is None:
        return None
    scores = cells[best].scores or {}
    return (f"🏆 Best balance (prompt adherence × style similarity): **{display_text(cells[best].label, one_line=True)}**"
            f" ({scores['prompt_adherence']:.2f} × {scores['style_similarity']:.2f})")


def _encode_chart(job: Job, outcome: JobOutcome, limit: int) -> tuple[tuple[str, bytes] | None, str | None]:
    """The score chart as an upload (``None`` when nothing was scored or it is over ``limit``) and the best-cell
    line."""
    cells = _scored_cells(job, outcome)
    if not any(c.scores for c in cells):
        return None, None
    try:
        png, _record = chart_png(cells, job.context["plan"].axes)
    except ValueError:
        return None, best_cell_line(cells)
    upload = (f"zvl-scores-{job.id[:8]}.png", png) if len(png) <= limit else None
    return upload, best_cell_line(cells)


async def render_result(job: Job, outcome: JobOutcome, limit: int) -> Outgoing:
    """The message for a finished job, every file within ``limit`` bytes."""
    params = job.context["params"]
    mention = f"<@{job.owner_id}>"
    if job.kind == "describe":
        suggestions = outcome.results[0].suggestions
        embed = describe_embed(job_id=job.id, suggestions=suggestions, timings=outcome.timings)
        return Outgoing(content=f"{mention} here are {len(suggestions)} prompts for your reference.",
                        embeds=[embed], view=suggestions_view(job.id, len(suggestions)))
    if job.kind == "stylize":
        uploads = await asyncio.to_thread(_encode_images, job, outcome, limit)
        rendered = result_embed(job_id=job.id, prompt=params["prompt"], resolved=params["resolved"],
                                strength=params.get("strength"), preset=params.get("preset"),
                                timings=outcome.timings, style_code=params.get("style_code"),
                                negative=_negative_text(params, outcome))
        if rendered.truncated:
            uploads.append(("params.json", params_json({"job_id": job.id, **params})))
        rendered.embed.set_image(url=f"attachment://{uploads[0][0]}")
        return Outgoing(content=f"{mention} your image is ready.", embeds=[rendered.embed], uploads=uploads,
                        view=result_view(job.id, job.kind))
    plan = job.context["plan"]
    name, data = await asyncio.to_thread(_encode_grid, job, outcome, limit)
    title = "Blend mode comparison" if job.kind == "compare" else f"Sweep: {plan.preset or 'custom'}"
    r = job.requests[-1]
    fixed = {"mode": r.blend_mode.value, "layer": describe_layer(r.record()["hidden_layer"]), "tokens": r.tokens.value}
    fixed = {k: v for k, v in fixed.items() if k not in plan.axes}
    rendered = sweep_embed(job_id=job.id, prompt=params["prompt"], title=title, note=plan.note, axes=plan.axes,
                           cells=len(plan.cells), fixed=fixed, timings=outcome.timings)
    rendered.embed.set_image(url=f"attachment://{name}")
    uploads = [(name, data), ("cells.json", params_json(cells_record(job, outcome)))]
    chart, best = await asyncio.to_thread(_encode_chart, job, outcome, limit)
    if chart is not None:
        uploads.insert(1, chart)  # beside the grid
    content = f"{mention} your {title.lower()} is ready." + (f"\n{best}" if best else "")
    return Outgoing(content=content, embeds=[rendered.embed], uploads=uploads, view=result_view(job.id, job.kind))
