"""Running one prompt's sweep into its folder: the cells one by one (each scored, unless scoring is off),
metadata.json after each, the grid (and scores.csv and the score chart) at the end.

Extractions and prompt embeddings are reused across cells (and across the prompts of one command) through in-process
dicts keyed by ``StylizeRequest.vl_identity`` / ``text_identity``: a sweep over alphas extracts once.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import ImageOps

from engine.cli._errors import one_line
from engine.cli._output import Progress, atomic_write_json, now, result_record
from engine.cli.sweep_scores import SweepScorer
from engine.files import atomic_write_bytes
from engine.media.grid import make_sweep_grid
from engine.media.images import png_with_metadata
from engine.multiref import reference_requests
from engine.sweep.plan import SweepCell, SweepPlan, fixed_summary
from engine.types import Encoded

__all__ = ["CELL_FILE", "SweepRun", "cell_filename", "prompt_dirname", "run_sweep"]

_SAFE = re.compile(r"[^A-Za-z0-9._+\-]+")

#: The name of a cell's PNG (what ``--overwrite`` deletes from an earlier sweep).
CELL_FILE = re.compile(r"^\d{2,}_[A-Za-z0-9._+\-]*\.png$")


def cell_filename(index: int, label: str) -> str:
    """``03_alpha0.5_layer-8.png``: index first (unique, sorted like the grid), then the label made file-safe."""
    s = label.replace(" | ", "_").replace(": ", "_").replace("=", "").replace("%", "pct").replace(":", "-")
    s = _SAFE.sub("_", s).strip("._-")
    s = re.sub(r"_+", "_", s)[:100]
    return f"{index:02d}_{s or 'cell'}.png"


def prompt_dirname(index: int, prompt: str) -> str:
    """``p01_a_red_fox``: the subfolder of one prompt when a sweep has several."""
    slug = _SAFE.sub("_", prompt.lower()).strip("._-")[:40].strip("._-")
    return f"p{index + 1:02d}_{slug or 'prompt'}"


@dataclass
class SweepRun:
    """State of one prompt's sweep in its folder (what metadata.json holds)."""

    folder: Path
    plan: SweepPlan
    prompt: str
    header: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    thumbs: list[Any] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    status: str = "running"
    started: str = field(default_factory=now)

    def __post_init__(self) -> None:
        for i, cell in enumerate(self.plan.cells):
            self.cells.append({"index": i, "label": cell.label, "file": None, "status": "pending",
                               "baseline": cell.baseline, "axes": cell.axes, "params": cell.request.record(),
                               "error": None})
            self.thumbs.append(None)
            self.errors.append("not run")

    @property
    def ok(self) -> int:
        """Cells that succeeded."""
        return sum(c["status"] == "ok" for c in self.cells)

    @property
    def failed(self) -> int:
        """Cells that failed."""
        return sum(c["status"] == "failed" for c in self.cells)

    @property
    def complete(self) -> bool:
        """Every cell ran and succeeded."""
        return self.status == "complete" and self.ok == len(self.cells)

    def record(self) -> dict[str, Any]:
        """What metadata.json holds."""
        return {
            "format": "zvl-sweep/1",
            "complete": self.complete,
            "status": self.status,
            "started_at": self.started,
            "updated_at": now(),
            "prompt": self.prompt,
            **self.header,
            "cells_total": len(self.cells),
            "cells_ok": self.ok,
            "cells_failed": self.failed,
            "cells_pending": sum(c["status"] == "pending" for c in self.cells),
            "cells": self.cells,
        }

    def save(self) -> None:
        """Rewrite metadata.json (atomically)."""
        atomic_write_json(self.folder / "metadata.json", self.record())


def run_sweep(pipe: Any, plan: SweepPlan, folder: Path, *, prompt: str, reference: Any, header: dict[str, Any],
              progress: Progress, vl_cache: dict, text_cache: dict, cell_size: int = 256,
              counter: tuple[int, int] = (0, 0), scorer: SweepScorer | None = None) -> SweepRun:
    """Run every cell of ``plan`` into ``folder``; returns the run (its ``status`` says how it ended).

    ``pipe`` needs ``encode_reference``, ``encode_prompt`` and ``generate`` (the :class:`StylePipeline` API).
    Extractions are reused through ``vl_cache`` (keyed by ``StylizeRequest.vl_identity``), prompt embeddings
    through ``text_cache`` (``StylizeRequest.text_identity``). metadata.json is rewritten atomically before the
    first cell and after every cell. A failing cell is recorded and the sweep goes on; Ctrl-C stops it with
    ``status: interrupted``. The grid is written at the end in every case (marked INCOMPLETE, with the missing
    cells drawn as such, unless every cell succeeded). ``counter`` is ``(cells done before, cells in all)``.
    With a ``scorer``, every successful cell gets its ``scores`` in metadata.json, and the end writes scores.csv
    and the chart (see :mod:`engine.cli.sweep_scores`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    run = SweepRun(folder=folder, plan=plan, prompt=prompt,
                   header=dict(header, vl_extractions=0, text_encodings=0, grid=None))
    run.save()
    done_before, grand_total = counter
    cells = _CellRunner(pipe, run, progress, vl_cache, text_cache, cell_size, scorer)
    try:
        for i, cell in enumerate(plan.cells):
            cells.run(i, cell, f"[{done_before + i + 1}/{grand_total or len(plan.cells)}] {cell.label}")
    except KeyboardInterrupt:
        run.status = "interrupted"
        _finish(run, reference, cell_size, scorer)
        raise
    run.status = "complete" if run.failed == 0 else "failed"
    _finish(run, reference, cell_size, scorer)
    return run


@dataclass
class _CellRunner:
    """Runs cells into a :class:`SweepRun`, reusing extractions and prompt embeddings through the caches."""

    pipe: Any
    sweep: SweepRun
    progress: Progress
    vl_cache: dict
    text_cache: dict
    cell_size: int
    scorer: SweepScorer | None = None

    def run(self, i: int, cell: SweepCell, prefix: str) -> None:
        """Run cell ``i``; a failure is recorded (the sweep goes on), Ctrl-C leaves it pending and propagates."""
        entry = self.sweep.cells[i]
        t0 = time.perf_counter()
        try:
            with self.progress.steps(prefix) as on_step:
                image, result, reused = self._generate(cell, on_step)
        except KeyboardInterrupt:
            entry["status"] = "pending"
            entry["error"] = "interrupted"
            raise
        except Exception as exc:  # noqa: BLE001 - a failed cell is recorded; the sweep goes on
            entry.update(status="failed", error=one_line(exc), seconds=round(time.perf_counter() - t0, 3))
            self.sweep.errors[i] = f"failed: {one_line(exc)}"
            self.sweep.save()
            self.progress.line(f"{prefix}: FAILED: {one_line(exc)}")
            return
        self._keep(i, cell, image, result, reused, round(time.perf_counter() - t0, 3))
        self.progress.line(f"{prefix}: ok ({entry['seconds']:.1f} s){' [VL reused]' if reused else ''}")

    def _generate(self, cell: SweepCell, on_step: Callable) -> tuple[Any, Any, bool]:
        request = cell.request
        vl, reused = self._extraction(request)
        tkey = request.text_identity()
        if tkey not in self.text_cache:
            self.text_cache[tkey] = self.pipe.encode_prompt(request)
            self.sweep.header["text_encodings"] += 1
        text = self.text_cache[tkey]
        if request.references:  # several -i: each reference's extraction reused like the first's
            more = tuple(self._extraction(sub)[0] for sub in reference_requests(request)[1:])
            vl = Encoded(text, vl, more=more)
        result = self.pipe.generate(request, vl, text, progress=on_step)
        if not result.images:
            raise RuntimeError("the pipeline returned no image")
        return result.images[0], result, reused

    def _extraction(self, request: Any) -> tuple[Any, bool]:
        """``(the VL extraction or None, whether it was reused)``."""
        if request.reference is None or request.alpha <= 0:
            return None, False
        key = request.vl_identity()
        if key in self.vl_cache:
            return self.vl_cache[key], True
        self.vl_cache[key] = self.pipe.encode_reference(request)
        self.sweep.header["vl_extractions"] += 1
        return self.vl_cache[key], False

    def _keep(self, i: int, cell: SweepCell, image: Any, result: Any, reused: bool, seconds: float) -> None:
        """Write the cell's PNG, record it in metadata.json and keep its thumbnail for the grid."""
        name = cell_filename(i, cell.label)
        rec = result_record(result, label=cell.label, axes=cell.axes, baseline=cell.baseline,
                            sweep=self.sweep.plan.preset, reference=self.sweep.header.get("reference"))
        atomic_write_bytes(self.sweep.folder / name, png_with_metadata(image, rec))
        self.sweep.cells[i].update(status="ok", file=name, error=None, seconds=seconds, params=rec["params"],
                                   timings=rec["timings"], stats=rec["stats"], vl=rec["vl"], vl_reused=reused,
                                   masked_dimensions=(result.vl or {}).get("masked_dimensions", []))
        self.sweep.thumbs[i] = ImageOps.contain(image.convert("RGB"), (self.cell_size, self.cell_size))
        self.sweep.errors[i] = None
        if self.scorer is not None:
            self.scorer.score_cell(self.sweep.cells[i], image, cell.request)
        self.sweep.save()


def _finish(run: SweepRun, reference: Any, cell_size: int, scorer: SweepScorer | None = None) -> None:
    """Write the grid (marked INCOMPLETE when it is), the score files and the final metadata."""
    title = f"Prompt: {run.prompt}"
    if not run.complete:
        title = f"INCOMPLETE ({run.status}: {run.ok} of {len(run.cells)} cells) - {title}"
    try:
        grid = make_sweep_grid(run.plan, run.thumbs, reference=reference, errors=run.errors, title=title,
                               subtitle=fixed_summary(run.plan), cell_size=cell_size)
        buf = io.BytesIO()
        grid.save(buf, format="PNG", optimize=False)
        atomic_write_bytes(run.folder / "comparison_grid.png", buf.getvalue())
        run.header["grid"] = "comparison_grid.png"
        run.header["grid_size"] = list(grid.size)
    except Exception as exc:  # noqa: BLE001 - a grid failure must not hide the cells' results
        run.header["grid"] = None
        run.header["grid_error"] = one_line(exc)
    if scorer is not None:
        run.header["scores"] = scorer.write(run.folder, run.cells, run.plan.axes, title)
    run.header["finished_at"] = now()
    run.save()
