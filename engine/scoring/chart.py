"""A sweep's scores as a chart (matplotlib, Agg: no display, thread-safe ``Figure`` objects) and as scores.csv.

One panel per score (:data:`~engine.scoring.score.SCORES` order, only scores some cell has):

* **1-D sweep** — the score against the swept value (numeric values on a numeric axis, others as categories); a
  baseline cell that carries the swept value (``alpha`` 0 in an alpha sweep) is a grey point on the same axis, one
  that does not is a dashed grey line.
* **2-D sweep** — a heat map per score (rows: the first axis, columns: the second), each square annotated.
* **Anything else** (a single VL cell, three or more axes) — the score per cell, cells in plan order.

The cell with the best prompt-adherence × style-similarity balance (:func:`~engine.scoring.score.best_index`) is
marked in every panel (a red star, or a red frame in a heat map) and named in the title. The PNG carries the
chart's description as JSON in its ``zvl-chart`` text chunk (kind, panels, the plotted points), which is what a
test or a tool can read back without parsing pixels.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.scoring.score import SCORES, balance, best_index

__all__ = ["PANEL_PX", "ScoredCell", "chart_png", "chart_size", "scores_csv"]

#: Pixel size of one panel (width, height); the chart is a grid of at most three panels per row.
PANEL_PX = (420, 340)
_DPI = 100
_COLUMNS = 3


@dataclass(frozen=True)
class ScoredCell:
    """One sweep cell as the chart sees it."""

    label: str
    axes: dict[str, Any]
    baseline: bool = False
    scores: dict[str, float] | None = field(default=None)


def _panels(cells: Sequence[ScoredCell]) -> list[Any]:
    return [s for s in SCORES if any(c.scores and s.name in c.scores for c in cells)]


def chart_size(n_panels: int) -> tuple[int, int]:
    """The chart's pixel size for ``n_panels`` panels."""
    cols = min(_COLUMNS, max(1, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    return cols * PANEL_PX[0], rows * PANEL_PX[1]


def _kind(axes: Sequence[str]) -> str:
    return {1: "line", 2: "heatmap"}.get(len(axes), "cells")


def chart_png(cells: Sequence[ScoredCell], axes: Sequence[str], title: str = "") -> tuple[bytes, dict[str, Any]]:
    """The chart as PNG bytes and its description; ``ValueError`` when no cell has a score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _panels(cells)
    if not panels:
        raise ValueError("no cell has a score to chart")
    best = best_index([c.scores for c in cells], [c.baseline for c in cells])
    kind = _kind(axes)
    width, height = chart_size(len(panels))
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    cols = min(_COLUMNS, len(panels))
    series = {}
    for k, info in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / cols), cols, k + 1)
        draw = {"line": _draw_line, "heatmap": _draw_heatmap, "cells": _draw_cells}[kind]
        series[info.name] = draw(ax, cells, list(axes), info.name, best)
        ax.set_title(info.title, fontsize=9)
    best_text = f"best balance: {cells[best].label}" if best is not None else "best balance: n/a (no judged scores)"
    fig.suptitle(f"{title}\n{best_text}" if title else best_text, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    record = {"kind": kind, "axes": list(axes), "panels": [p.name for p in panels], "size": [width, height],
              "best": best, "best_label": cells[best].label if best is not None else None, "series": series}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"zvl-chart": json.dumps(record, allow_nan=False)})
    return buf.getvalue(), record


def _value(cell: ScoredCell, name: str) -> float | None:
    v = (cell.scores or {}).get(name)
    return None if v is None or not math.isfinite(v) else float(v)


def _positions(values: list[Any]) -> tuple[dict[str, float], list[str] | None]:
    """x positions of the axis values: the numbers themselves, or 0, 1, ... for categories (with tick labels)."""
    keys = list(dict.fromkeys(json.dumps(v) for v in values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {k: float(json.loads(k)) for k in keys}, None
    return {k: float(i) for i, k in enumerate(keys)}, [str(json.loads(k)) for k in keys]


def _draw_line(ax: Any, cells: Sequence[ScoredCell], axes: list[str], name: str, best: int | None) -> list:
    axis = axes[0]
    on_axis = [i for i, c in enumerate(cells) if axis in c.axes]
    pos, ticks = _positions([cells[i].axes[axis] for i in on_axis])
    x_of = {i: pos[json.dumps(cells[i].axes[axis])] for i in on_axis}
    vl = sorted((x_of[i], _value(cells[i], name)) for i in on_axis if not cells[i].baseline)
    vl = [(x, y) for x, y in vl if y is not None]
    ax.plot([x for x, _ in vl], [y for _, y in vl], marker="o", color="tab:blue")
    points = [[x, y] for x, y in vl]
    for i, c in enumerate(cells):
        y = _value(c, name)
        if not c.baseline or y is None:
            continue
        if i in x_of:
            ax.plot([x_of[i]], [y], marker="s", color="grey", linestyle="none")
        else:
            ax.axhline(y, color="grey", linestyle="--", linewidth=1)
    if best is not None and best in x_of and _value(cells[best], name) is not None:
        ax.plot([x_of[best]], [_value(cells[best], name)], marker="*", markersize=14, color="red", linestyle="none")
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7, rotation=_rotation(ticks))
    ax.set_xlabel(axis, fontsize=8)
    return points


def _draw_heatmap(ax: Any, cells: Sequence[ScoredCell], axes: list[str], name: str, best: int | None) -> list:
    import numpy as np

    grid = [i for i, c in enumerate(cells) if not c.baseline and all(a in c.axes for a in axes)]
    rows = list(dict.fromkeys(json.dumps(cells[i].axes[axes[0]]) for i in grid))
    cols = list(dict.fromkeys(json.dumps(cells[i].axes[axes[1]]) for i in grid))
    matrix = np.full((len(rows), len(cols)), np.nan)
    where = {}
    for i in grid:
        r, c = rows.index(json.dumps(cells[i].axes[axes[0]])), cols.index(json.dumps(cells[i].axes[axes[1]]))
        where[i] = (r, c)
        y = _value(cells[i], name)
        if y is not None:
            matrix[r, c] = y
    shown = ax.imshow(matrix, cmap="viridis", aspect="auto")
    for r, c in where.values():
        if not math.isnan(matrix[r, c]):  # dark text on the bright end of viridis, light on the dark end
            light = shown.norm(matrix[r, c]) < 0.6
            ax.text(c, r, f"{matrix[r, c]:.3g}", ha="center", va="center", fontsize=7,
                    color="white" if light else "black")
    if best in where:
        r, c = where[best]
        ax.add_patch(_frame(c, r))
    ax.set_yticks(range(len(rows)), [str(json.loads(k)) for k in rows], fontsize=7)
    col_labels = [str(json.loads(k)) for k in cols]
    ax.set_xticks(range(len(cols)), col_labels, fontsize=7, rotation=_rotation(col_labels))
    ax.set_ylabel(axes[0], fontsize=8)
    ax.set_xlabel(axes[1], fontsize=8)
    return [[r, c, None if math.isnan(matrix[r, c]) else float(matrix[r, c])] for r, c in where.values()]


def _rotation(labels: list[str]) -> int:
    """Slanted tick labels only when they are long enough to collide (a slanted "-2" reads as ".2")."""
    return 30 if max((len(t) for t in labels), default=0) > 5 else 0


def _frame(x: float, y: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5)


def _draw_cells(ax: Any, cells: Sequence[ScoredCell], axes: list[str], name: str, best: int | None) -> list:
    points = [[i, _value(c, name)] for i, c in enumerate(cells) if _value(c, name) is not None]
    colours = ["grey" if cells[i].baseline else "tab:blue" for i, _ in points]
    ax.bar([i for i, _ in points], [y for _, y in points], color=colours)
    if best is not None and _value(cells[best], name) is not None:
        ax.plot([best], [_value(cells[best], name)], marker="*", markersize=14, color="red", linestyle="none")
    ax.set_xticks(range(len(cells)), [str(i) for i in range(len(cells))], fontsize=7)
    ax.set_xlabel("cell", fontsize=8)
    return points


def scores_csv(cells: Sequence[ScoredCell], axes: Sequence[str]) -> str:
    """scores.csv: one row per cell: index, label, baseline, the axis values, every score, balance, best (0/1)."""
    best = best_index([c.scores for c in cells], [c.baseline for c in cells])
    names = [s.name for s in SCORES]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "label", "baseline", *axes, *names, "balance", "best"])
    for i, c in enumerate(cells):
        scores = c.scores or {}
        axis_values = [_csv_value(c.axes[a]) if a in c.axes else "" for a in axes]
        b = balance(scores)
        writer.writerow([i, c.label, int(c.baseline), *axis_values, *[scores.get(n, "") for n in names],
                         "" if b is None else f"{b:.6g}", int(best == i)])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    """Numbers and text as they are; anything else (a layer mix, null) as JSON."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return json.dumps(value)
