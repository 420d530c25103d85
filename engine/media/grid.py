"""Labelled comparison grids for sweeps (the CLI's ``comparison_grid.png`` and the bot's ``/sweep`` reply).

Layout (``pad`` = ``max(4, cell_size // 32)``; everything on a dark background)::

    +---------------------------------------------------------------+
    | title (the prompt, wrapped to the grid's width; never cut)    |
    | subtitle (fixed settings, smaller)                            |
    +-----------+---------------------------------------------------+
    | reference |  2-D (exactly two axes vary):                     |
    |  label    |            col header  col header ...             |
    | baseline  |  row head  [cell]      [cell]                     |
    |  label    |  row head  [cell]      [cell]                     |
    | baseline  |  1-D (otherwise): cells in rows, label under each  |
    +-----------+---------------------------------------------------+

The left column holds the reference and the pure-text baseline cell(s) of the sweep. Labels are wrapped, never cut
(a long word is broken across lines). Thumbnails keep their aspect ratio inside a ``cell_size`` square. A missing
image (a failed or not-yet-run cell) is drawn as a box with its reason. Text uses Pillow's bundled default font at a
size scaled to the cell (``ImageFont.load_default(size=...)``; Pillow >= 10.1 with FreeType), falling back to the
bitmap font without FreeType.

Width, for ``n`` main cells in ``c`` columns: ``pad + s * (cell_size + pad) + (header + pad if 2-D) +
c * (cell_size + pad)``, where ``s`` is the number of left columns (1, or more when the reference and the baselines
would be taller than the main area; 0 without either), the 2-D row-header width is ``cell_size // 2``; in 1-D
``c = n`` for ``n <= 6``, else ``ceil(sqrt(1.5 n))``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from engine.media.images import encode_for_upload
from engine.sweep.axes import format_axis_value
from engine.sweep.plan import SweepPlan

__all__ = ["make_grid", "make_sweep_grid", "fit_grid_for_upload", "wrap_text", "grid_columns", "load_font"]

BACKGROUND = (24, 24, 27)
CELL_BACKGROUND = (44, 44, 48)
TEXT = (236, 236, 236)
DIM_TEXT = (170, 170, 176)
ERROR_TEXT = (255, 120, 110)
HEADER_TEXT = (150, 200, 255)


def load_font(size: int):
    """Pillow's bundled font at ``size`` pixels (the bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def _line_height(font) -> int:
    box = font.getbbox("Ayg|[")
    return int(box[3] - box[1]) + max(2, int(getattr(font, "size", 10) * 0.3))


def wrap_text(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; a word wider than the line is broken between characters; explicit
    newlines are kept. Nothing is dropped: ``"".join`` of the result's words equals the input's."""
    max_width = max(1, int(max_width))
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        words = paragraph.split(" ")
        line = ""
        for word in words:
            candidate = word if not line else f"{line} {word}"
            if _text_width(font, candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
                line = ""
            while word and _text_width(font, word) > max_width:  # break an over-long word
                cut = len(word) - 1
                while cut > 1 and _text_width(font, word[:cut]) > max_width:
                    cut -= 1
                # prefer a break just after = _ + , / : | (``mode=`` / ``adain_`` / ``per_dim``)
                soft = max(word.rfind(ch, 0, cut) for ch in "=_+,/:|")
                if soft >= 1:
                    cut = soft + 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def grid_columns(n: int) -> int:
    """Columns of a 1-D grid of ``n`` cells: all in one row up to 6, then about 3 columns for every 2 rows."""
    if n <= 6:
        return max(1, n)
    return math.ceil(math.sqrt(1.5 * n))


def _thumb(image: Image.Image, size: int) -> Image.Image:
    im = image if image.mode == "RGB" else image.convert("RGB")
    return ImageOps.contain(im, (size, size), Image.Resampling.LANCZOS)


class _Painter:
    def __init__(self, canvas: Image.Image, cell: int, font, small_font):
        self.canvas = canvas
        self.draw = ImageDraw.Draw(canvas)
        self.cell = cell
        self.font = font
        self.small = small_font
        self.lh = _line_height(font)

    def text_block(self, x: int, y: int, lines: Sequence[str], *, width: int, font=None, fill=TEXT,
                   center: bool = True) -> None:
        font = font or self.font
        lh = _line_height(font)
        for i, line in enumerate(lines):
            w = _text_width(font, line)
            tx = x + (width - w) / 2 if center else x
            self.draw.text((tx, y + i * lh), line, font=font, fill=fill)

    def cell_image(self, x: int, y: int, image: Image.Image | None, reason: str | None) -> None:
        c = self.cell
        self.draw.rectangle([x, y, x + c - 1, y + c - 1], fill=CELL_BACKGROUND)
        if image is not None:
            t = _thumb(image, c)
            self.canvas.paste(t, (x + (c - t.width) // 2, y + (c - t.height) // 2))
            return
        text = reason or "no image"
        lines = wrap_text(text, self.small, c - 8)
        lh = _line_height(self.small)
        max_lines = max(1, (c - 8) // lh)
        if len(lines) > max_lines:  # the box is small; the full error is in metadata.json
            lines = lines[: max_lines - 1] + ["..."]
        top = y + (c - len(lines) * lh) // 2
        self.text_block(x + 4, top, lines, width=c - 8, font=self.small, fill=ERROR_TEXT)


@dataclass(frozen=True)
class _Style:
    """The grid's sizes and fonts, all derived from ``cell_size``."""

    cell: int
    pad: int
    font: Any
    small: Any
    title_font: Any

    @property
    def step(self) -> int:
        """Distance between the left edges of two neighbouring cells."""
        return self.cell + self.pad

    @property
    def lh(self) -> int:
        """Line height of the label font."""
        return _line_height(self.font)


def _style(cell_size: int) -> _Style:
    return _Style(cell=cell_size, pad=max(4, cell_size // 32),
                  font=load_font(max(12, cell_size // 18)),  # below ~12 px the bundled font's spaces all but vanish
                  small=load_font(max(10, cell_size // 22)), title_font=load_font(max(12, cell_size // 14)))


@dataclass
class _MainArea:
    """The main cells: rows of labelled cells (1-D), or a table with row and column headers (2-D)."""

    cells: list[int]
    ncols: int
    row_h: list[int]
    height: int
    width: int
    labels: dict[int, list[str]] = field(default_factory=dict)  #: 1-D: each cell's wrapped label
    two_d: bool = False
    header_w: int = 0  #: 2-D: width of the row headers
    pos: dict[int, tuple[int, int]] = field(default_factory=dict)  #: 2-D: cell -> (row, column)
    corner: list[str] = field(default_factory=list)
    col_headers: list[list[str]] = field(default_factory=list)
    row_headers: list[list[str]] = field(default_factory=list)
    col_header_h: int = 0


@dataclass
class _SideColumn:
    """The left column: the reference, then the baselines, flowed into ``cols`` columns."""

    items: list[tuple[Image.Image | None, str, str | None, bool]]  #: (image, label, error, is the reference)
    labels: list[list[str]]
    cols: int
    row_h: list[int]
    width: int

    @property
    def height(self) -> int:
        """Height of the whole column."""
        return sum(self.row_h)


def _table(axes: Sequence[str] | None, cell_axes: Sequence[dict[str, Any]] | None, main: list[int],
           axis_format) -> tuple[list[str], list[str], dict[int, tuple[int, int]]] | None:
    """``(row values, column values, cell -> (row, column))`` when the main cells form a 2-D table, else ``None``."""
    if axes is None or len(axes) != 2 or cell_axes is None or not main:
        return None
    try:
        keys = [(axis_format(axes[0], cell_axes[i][axes[0]]), axis_format(axes[1], cell_axes[i][axes[1]]))
                for i in main]
    except (KeyError, ValueError):
        return None
    if len(set(keys)) != len(keys):
        return None
    rows = list(dict.fromkeys(r for r, _col in keys))
    cols = list(dict.fromkeys(col for _r, col in keys))
    return rows, cols, {i: (rows.index(r), cols.index(col)) for i, (r, col) in zip(main, keys)}


def _measure_1d(s: _Style, main: list[int], labels: Sequence[str]) -> _MainArea:
    ncols = grid_columns(len(main)) if main else 0
    nrows = math.ceil(len(main) / ncols) if ncols else 0
    label_lines = {i: wrap_text(labels[i], s.font, s.cell) for i in main}
    row_h = [s.cell + max(len(label_lines[i]) for i in main[r * ncols:(r + 1) * ncols]) * s.lh + s.pad
             for r in range(nrows)]
    return _MainArea(cells=main, ncols=ncols, row_h=row_h, height=sum(row_h), width=ncols * s.step,
                     labels=label_lines)


def _measure_2d(s: _Style, main: list[int], axes: Sequence[str], table) -> _MainArea:
    rows, cols, pos = table
    header_w = s.cell // 2
    col_headers = [wrap_text(col, s.font, s.cell) for col in cols]
    corner = wrap_text(f"rows: {axes[0]}, columns: {axes[1]}", s.small, header_w)
    col_header_h = max(max(len(lines) for lines in col_headers) * s.lh + s.pad,
                       len(corner) * _line_height(s.small) + s.pad)
    row_headers = [wrap_text(r, s.font, header_w) for r in rows]
    row_h = [max(s.cell, len(lines) * s.lh) + s.pad for lines in row_headers]
    return _MainArea(cells=main, ncols=len(cols), row_h=row_h, height=col_header_h + sum(row_h),
                     width=header_w + s.pad + len(cols) * s.step, two_d=True, header_w=header_w, pos=pos,
                     corner=corner, col_headers=col_headers, row_headers=row_headers, col_header_h=col_header_h)


def _measure_side(s: _Style, items: list, area: _MainArea) -> _SideColumn:
    """As many left columns as make the whole grid smallest (fewest on a tie): a tall stack of baselines beside a
    short main area flows into a few columns instead of one long strip."""
    labels = [wrap_text(label, s.font, s.cell) for _img, label, _e, _r in items]
    item_h = [s.cell + len(lines) * s.lh + s.pad for lines in labels]

    def side_rows(k: int) -> list[int]:
        return [max(item_h[j:j + k]) for j in range(0, len(item_h), k)]

    def grid_area(k: int) -> int:
        return (k * s.step + area.width) * max(sum(side_rows(k)), area.height)

    cols = min(range(1, len(items) + 1), key=lambda k: (grid_area(k), k)) if items else 1
    return _SideColumn(items=items, labels=labels, cols=cols, row_h=side_rows(cols) if items else [],
                       width=cols * s.step if items else 0)


def _header_lines(s: _Style, title: str | None, subtitle: str | None, width: int) -> tuple[list[str], list[str], int]:
    """The wrapped title and subtitle lines, and the top of the cell area below them."""
    title_lines = wrap_text(title, s.title_font, width - 2 * s.pad) if title else []
    subtitle_lines = wrap_text(subtitle, s.small, width - 2 * s.pad) if subtitle else []
    title_h = len(title_lines) * _line_height(s.title_font) + len(subtitle_lines) * _line_height(s.small)
    return title_lines, subtitle_lines, s.pad + title_h + (s.pad if title_h else 0)


def _draw_header(p: _Painter, s: _Style, title_lines: list[str], subtitle_lines: list[str], width: int) -> None:
    y = s.pad
    if title_lines:
        p.text_block(s.pad, y, title_lines, width=width - 2 * s.pad, font=s.title_font, center=False)
        y += len(title_lines) * _line_height(s.title_font)
    if subtitle_lines:
        p.text_block(s.pad, y, subtitle_lines, width=width - 2 * s.pad, font=s.small, fill=DIM_TEXT, center=False)


def _draw_side(p: _Painter, s: _Style, side: _SideColumn, top: int) -> None:
    for j, ((img, _label, err, is_ref), lines) in enumerate(zip(side.items, side.labels)):
        r, k = divmod(j, side.cols)
        x, y = s.pad + k * s.step, top + sum(side.row_h[:r])
        p.cell_image(x, y, img, err)
        p.text_block(x, y + s.cell, lines, width=s.cell, fill=HEADER_TEXT if is_ref else TEXT)


def _draw_table_headers(p: _Painter, s: _Style, area: _MainArea, x0: int, top: int) -> list[int]:
    """The corner note, column and row headers of a 2-D grid; returns each row's top."""
    gx = x0 + area.header_w + s.pad
    p.text_block(x0, top, area.corner, width=area.header_w, font=s.small, fill=DIM_TEXT)
    for j, lines in enumerate(area.col_headers):
        p.text_block(gx + j * s.step, top + area.col_header_h - s.pad - len(lines) * s.lh, lines, width=s.cell,
                     fill=HEADER_TEXT)
    row_top = list(itertools.accumulate(area.row_h[:-1], initial=top + area.col_header_h))
    for r, lines in enumerate(area.row_headers):
        p.text_block(x0, row_top[r] + (area.row_h[r] - s.pad - len(lines) * s.lh) // 2, lines, width=area.header_w,
                     fill=HEADER_TEXT)
    return row_top


def _draw_table(p: _Painter, s: _Style, area: _MainArea, x0: int, top: int, images, errors) -> None:
    row_top = _draw_table_headers(p, s, area, x0, top)
    gx = x0 + area.header_w + s.pad
    taken = set(area.pos.values())
    for j in range(area.ncols):
        for r in range(len(area.row_h)):
            if (r, j) not in taken:  # a combination with no cell: leave an empty box
                p.draw.rectangle([gx + j * s.step, row_top[r], gx + j * s.step + s.cell - 1, row_top[r] + s.cell - 1],
                                 outline=CELL_BACKGROUND)
    for i in area.cells:
        r, j = area.pos[i]
        p.cell_image(gx + j * s.step, row_top[r] + (area.row_h[r] - s.pad - s.cell) // 2, images[i], errors[i])


def _draw_rows(p: _Painter, s: _Style, area: _MainArea, x0: int, top: int, images, errors) -> None:
    y = top
    for r, height in enumerate(area.row_h):
        for k, i in enumerate(area.cells[r * area.ncols:(r + 1) * area.ncols]):
            x = x0 + k * s.step
            p.cell_image(x, y, images[i], errors[i])
            p.text_block(x, y + s.cell, area.labels[i], width=s.cell)
        y += height


def make_grid(images: Sequence[Image.Image | None], labels: Sequence[str], *, reference: Image.Image | None = None,
              axes: Sequence[str] | None = None, cell_axes: Sequence[dict[str, Any]] | None = None,
              side: Sequence[bool] | None = None, errors: Sequence[str | None] | None = None,
              title: str | None = None, subtitle: str | None = None, axis_format=None,
              cell_size: int = 256) -> Image.Image:
    """Compose a labelled grid (layout in the module docstring).

    ``images``: one per cell (``None``: failed or not run); ``labels``: one full label per cell (wrapped, never cut);
    ``reference``: shown first in the left column; ``axes``: the axes that vary: with exactly two and ``cell_axes``
    (per cell, its value for each axis: a :class:`~engine.sweep.plan.SweepCell`'s ``axes``) the main cells are laid
    out 2-D (rows ``axes[0]``, columns ``axes[1]``, with headers), else 1-D with a label under each cell; ``side``:
    per cell, ``True`` for the left column under the reference (the baselines); ``errors``: per cell, why it has no
    image; ``title`` / ``subtitle``: wrapped text above; ``axis_format``: ``f(axis, value) -> str`` for the 2-D
    headers (default :func:`engine.sweep.axes.format_axis_value`); ``cell_size``: thumbnail box in pixels.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"labels: {len(labels)} labels for {n} images")
    if cell_size < 16:
        raise ValueError(f"cell_size must be at least 16; got {cell_size}")
    side = list(side) if side is not None else [False] * n
    errors = list(errors) if errors is not None else [None] * n
    s = _style(cell_size)
    main = [i for i in range(n) if not side[i]]
    table = _table(axes, cell_axes, main, axis_format or format_axis_value)
    area = _measure_2d(s, main, axes, table) if table else _measure_1d(s, main, labels)
    items = ([(reference, "reference", None, True)] if reference is not None else []) + \
        [(images[i], labels[i], errors[i], False) for i in range(n) if side[i]]
    column = _measure_side(s, items, area)
    width = max(s.pad + column.width + area.width, s.pad * 2 + s.cell)
    title_lines, subtitle_lines, top = _header_lines(s, title, subtitle, width)
    canvas = Image.new("RGB", (width, top + max(column.height, area.height) + s.pad), BACKGROUND)
    p = _Painter(canvas, s.cell, s.font, s.small)
    _draw_header(p, s, title_lines, subtitle_lines, width)
    _draw_side(p, s, column, top)
    draw_main = _draw_table if area.two_d else _draw_rows
    draw_main(p, s, area, s.pad + column.width, top, images, errors)
    return canvas


def make_sweep_grid(plan: SweepPlan, images: Sequence[Image.Image | None], *, reference: Image.Image | None = None,
                    errors: Sequence[str | None] | None = None, title: str | None = None,
                    subtitle: str | None = None, cell_size: int = 256) -> Image.Image:
    """:func:`make_grid` for a :class:`~engine.sweep.plan.SweepPlan`: baselines beside the reference, 2-D when the plan
    varies exactly two axes."""
    if len(images) != len(plan.cells):
        raise ValueError(f"images: {len(images)} images for {len(plan.cells)} cells")
    return make_grid(images, [cell.label for cell in plan.cells], reference=reference, axes=plan.axes,
                     cell_axes=[cell.axes for cell in plan.cells], side=[cell.baseline for cell in plan.cells],
                     errors=errors, title=title, subtitle=subtitle, cell_size=cell_size)


def fit_grid_for_upload(grid: Image.Image, record: dict[str, Any], limit_bytes: int, *,
                        stem: str = "comparison_grid") -> tuple[bytes, str, str]:
    """Encode a grid for an upload limit (PNG with the record, else WebP/JPEG, else downscaled);
    see :func:`engine.media.images.encode_for_upload`."""
    return encode_for_upload(grid, record, limit_bytes, stem=stem)
