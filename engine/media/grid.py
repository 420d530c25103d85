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

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from engine.media.images import encode_for_upload

if TYPE_CHECKING:  # pragma: no cover
    from engine.sweep.plan import SweepPlan

__all__ = ["make_grid", "make_sweep_grid", "fit_grid_for_upload", "wrap_text", "grid_columns"]

BACKGROUND = (24, 24, 27)
CELL_BACKGROUND = (44, 44, 48)
TEXT = (236, 236, 236)
DIM_TEXT = (170, 170, 176)
ERROR_TEXT = (255, 120, 110)
HEADER_TEXT = (150, 200, 255)


def _font(size: int):
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


def make_grid(images: Sequence[Image.Image | None], labels: Sequence[str], *,
              reference: Image.Image | None = None,
              axes: Sequence[str] | None = None,
              cell_axes: Sequence[dict[str, Any]] | None = None,
              side: Sequence[bool] | None = None,
              errors: Sequence[str | None] | None = None,
              title: str | None = None,
              subtitle: str | None = None,
              axis_format=None,
              cell_size: int = 256) -> Image.Image:
    """Compose a labelled grid.

    Args:
        images: one image per cell (``None`` for a cell without one: failed or not run).
        labels: one full label per cell (wrapped, never cut).
        reference: shown first in the left column.
        axes: the axes that vary. With exactly two and ``cell_axes`` given, the main cells are laid out 2-D: rows
            are ``axes[0]``'s values, columns ``axes[1]``'s, with headers; otherwise 1-D with a label under each cell.
        cell_axes: per cell, its value for each axis (a :class:`~engine.sweep.plan.SweepCell`'s ``axes``).
        side: per cell, ``True`` to put it in the left column under the reference (the sweep's baselines).
        errors: per cell, why it has no image (drawn in its box).
        title / subtitle: wrapped text above the grid (the prompt; the fixed settings).
        axis_format: ``f(axis, value) -> str`` for the 2-D headers (default ``engine.sweep.plan.format_axis_value``).
        cell_size: thumbnail box in pixels.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"labels: {len(labels)} labels for {n} images")
    if cell_size < 16:
        raise ValueError(f"cell_size must be at least 16; got {cell_size}")
    side = list(side) if side is not None else [False] * n
    errors = list(errors) if errors is not None else [None] * n
    if axis_format is None:
        from engine.sweep.plan import format_axis_value as axis_format  # noqa: N813

    c = cell_size
    pad = max(4, c // 32)
    font = _font(max(12, c // 18))  # below ~12 px the bundled font's spaces all but vanish
    small = _font(max(10, c // 22))
    title_font = _font(max(12, c // 14))
    lh = _line_height(font)

    side_items: list[tuple[Image.Image | None, str, str | None, bool]] = []
    if reference is not None:
        side_items.append((reference, "reference", None, True))
    main = [i for i in range(n) if not side[i]]
    side_items += [(images[i], labels[i], errors[i], False) for i in range(n) if side[i]]
    has_side = bool(side_items)

    two_d = False
    rows: list[str] = []
    cols: list[str] = []
    pos: dict[int, tuple[int, int]] = {}
    if axes is not None and len(axes) == 2 and cell_axes is not None and main:
        try:
            keys = [(axis_format(axes[0], cell_axes[i][axes[0]]), axis_format(axes[1], cell_axes[i][axes[1]]))
                    for i in main]
        except (KeyError, ValueError):
            keys = []
        if keys and len(set(keys)) == len(keys):
            two_d = True
            for r, col in keys:
                if r not in rows:
                    rows.append(r)
                if col not in cols:
                    cols.append(col)
            pos = {i: (rows.index(r), cols.index(col)) for i, (r, col) in zip(main, keys)}

    # --- measure -------------------------------------------------------------------------------------------------
    header_w = c // 2 if two_d else 0
    if two_d:
        ncols, nrows = len(cols), len(rows)
    else:
        ncols = grid_columns(len(main)) if main else 0
        nrows = math.ceil(len(main) / ncols) if ncols else 0

    if two_d:
        col_header_lines = [wrap_text(col, font, c) for col in cols]
        col_header_h = max(len(lines) for lines in col_header_lines) * lh + pad
        corner = wrap_text(f"rows: {axes[0]}, columns: {axes[1]}", small, header_w)
        col_header_h = max(col_header_h, len(corner) * _line_height(small) + pad)
        row_header_lines = [wrap_text(r, font, header_w) for r in rows]
        row_h = [max(c, len(lines) * lh) + pad for lines in row_header_lines]
        main_h = col_header_h + sum(row_h)
    else:
        label_lines = {i: wrap_text(labels[i], font, c) for i in main}
        row_h = []
        for r in range(nrows):
            members = main[r * ncols:(r + 1) * ncols]
            row_h.append(c + max(len(label_lines[i]) for i in members) * lh + pad)
        main_h = sum(row_h)

    # the left column: reference then baselines, flowed into more columns when it would outgrow the main area
    side_label_lines = [wrap_text(label, font, c) for _img, label, _e, _r in side_items]
    side_item_h = [c + len(lines) * lh + pad for lines in side_label_lines]

    def side_rows(k: int) -> list[int]:
        return [max(side_item_h[j:j + k]) for j in range(0, len(side_item_h), k)]

    main_w = (header_w + pad if two_d else 0) + ncols * (c + pad)

    def area(k: int) -> int:
        return (k * (c + pad) + main_w) * max(sum(side_rows(k)), main_h)

    # as many left columns as make the whole grid smallest (fewest on a tie): a tall stack of baselines beside a
    # short main area flows into a few columns instead of one long strip
    side_cols = min(range(1, len(side_items) + 1), key=lambda k: (area(k), k)) if side_items else 1
    side_row_h = side_rows(side_cols) if side_items else []
    side_h = sum(side_row_h)
    side_w = side_cols * (c + pad) if has_side else 0

    width = pad + side_w + (header_w + pad if two_d else 0) + ncols * (c + pad)
    width = max(width, pad * 2 + c)
    title_lines = wrap_text(title, title_font, width - 2 * pad) if title else []
    subtitle_lines = wrap_text(subtitle, small, width - 2 * pad) if subtitle else []
    title_h = len(title_lines) * _line_height(title_font) + len(subtitle_lines) * _line_height(small)
    top = pad + title_h + (pad if title_h else 0)
    height = top + max(side_h, main_h) + pad

    # --- paint ---------------------------------------------------------------------------------------------------
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    p = _Painter(canvas, c, font, small)
    y = pad
    if title_lines:
        p.text_block(pad, y, title_lines, width=width - 2 * pad, font=title_font, center=False)
        y += len(title_lines) * _line_height(title_font)
    if subtitle_lines:
        p.text_block(pad, y, subtitle_lines, width=width - 2 * pad, font=small, fill=DIM_TEXT, center=False)

    x0 = pad
    if has_side:
        for j, ((img, label, err, is_ref), lines) in enumerate(zip(side_items, side_label_lines)):
            r, k = divmod(j, side_cols)
            x, y = x0 + k * (c + pad), top + sum(side_row_h[:r])
            p.cell_image(x, y, img, err)
            p.text_block(x, y + c, lines, width=c, fill=HEADER_TEXT if is_ref else TEXT)
        x0 += side_w

    if two_d:
        gx = x0 + header_w + pad
        p.text_block(x0, top, corner, width=header_w, font=small, fill=DIM_TEXT)
        for j, lines in enumerate(col_header_lines):
            p.text_block(gx + j * (c + pad), top + col_header_h - pad - len(lines) * lh, lines, width=c,
                         fill=HEADER_TEXT)
        ry = top + col_header_h
        row_top = []
        for r, lines in enumerate(row_header_lines):
            row_top.append(ry)
            p.text_block(x0, ry + (row_h[r] - pad - len(lines) * lh) // 2, lines, width=header_w, fill=HEADER_TEXT)
            ry += row_h[r]
        for j in range(len(cols)):
            for r in range(len(rows)):
                if (r, j) not in pos.values():  # a combination with no cell: leave an empty box
                    p.draw.rectangle([gx + j * (c + pad), row_top[r], gx + j * (c + pad) + c - 1, row_top[r] + c - 1],
                                     outline=CELL_BACKGROUND)
        for i in main:
            r, j = pos[i]
            p.cell_image(gx + j * (c + pad), row_top[r] + (row_h[r] - pad - c) // 2, images[i], errors[i])
    else:
        y = top
        for r in range(nrows):
            members = main[r * ncols:(r + 1) * ncols]
            for k, i in enumerate(members):
                x = x0 + k * (c + pad)
                p.cell_image(x, y, images[i], errors[i])
                p.text_block(x, y + c, label_lines[i], width=c)
            y += row_h[r]
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
