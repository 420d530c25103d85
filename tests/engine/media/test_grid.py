"""engine.media.grid: layout (1-D / 2-D, reference column), wrapped labels, upload fitting."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engine.media.grid import fit_grid_for_upload, grid_columns, load_font, make_grid, make_sweep_grid, wrap_text
from engine.media.images import read_metadata
from engine.sweep.plan import plan_sweep
from engine.types import StylizeRequest

REF = Image.new("RGB", (90, 60), (250, 0, 0))
BASE = StylizeRequest(prompt="a cat", reference=REF)


def _imgs(n, size=(40, 40)):
    return [Image.new("RGB", size, (10 * i % 255, 200, 30)) for i in range(n)]


def test_wrap_keeps_every_character():
    font = load_font(14)
    text = "alpha=0.3 | layer=-16 | tokens=image_no_markers | supercalifragilisticexpialidocious" * 2
    lines = wrap_text(text, font, 80)
    assert len(lines) > 3
    assert all(font.getlength(line) <= 80 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert wrap_text("a\nb", font, 500) == ["a", "b"]


def test_one_d_size_and_reference_column():
    plan = plan_sweep(BASE, "alpha", {}, max_cells=16)  # 1 baseline + 5
    c, pad = 64, 4
    grid = make_sweep_grid(plan, _imgs(len(plan.cells)), reference=REF, title="Prompt: a cat", cell_size=c)
    assert grid.mode == "RGB"
    # one row of cells: the reference and the baseline sit side by side before them (the smallest layout)
    assert grid.width == pad + 2 * (c + pad) + 5 * (c + pad)
    # the reference's red shows in the first column, under the title
    reds = [grid.getpixel((pad + c // 2, y)) for y in range(grid.height)]
    assert (250, 0, 0) in reds


def test_one_d_wraps_into_rows():
    plan = plan_sweep(BASE, "full", {}, max_cells=32)  # 18 VL cells
    c = 32
    grid = make_sweep_grid(plan, _imgs(len(plan.cells)), reference=REF, cell_size=c)
    cols = grid_columns(18)
    assert cols == 6
    assert grid.width == 4 + (c + 4) + cols * (c + 4)


def test_two_d_layout_has_headers():
    plan = plan_sweep(BASE, None, {"alphas": [0.3, 0.6, 0.9], "layers": [-6, -8]}, max_cells=16)
    assert plan.axes == ["alpha", "layer"]
    c, pad = 64, 4
    grid = make_sweep_grid(plan, _imgs(len(plan.cells)), reference=REF, cell_size=c)
    # side column + row headers (c // 2) + 2 columns (layers)
    assert grid.width == pad + (c + pad) + (c // 2 + pad) + 2 * (c + pad)
    one_d = make_grid(_imgs(6), [cell.label for cell in plan.cells if not cell.baseline], cell_size=c)
    assert one_d.width == pad + 6 * (c + pad)


def test_many_baselines_flow_into_several_side_columns():
    plan = plan_sweep(BASE, "think_comparison", {"steps": [1, 2]}, max_cells=16)  # 4 baselines, 2x2 main grid
    c, pad = 64, 4
    grid = make_sweep_grid(plan, _imgs(len(plan.cells)), reference=REF, cell_size=c)
    side_cols = (grid.width - pad - (c // 2 + pad) - 2 * (c + pad)) // (c + pad)
    assert side_cols > 1  # not one strip five cells tall beside a two-row grid
    assert grid.height < 4 * c
    tall = make_grid(_imgs(5), ["a"] * 5, side=[True] * 4 + [False], cell_size=c)
    assert tall.height < 3 * c


def test_long_labels_make_the_grid_taller_not_cut():
    short = make_grid(_imgs(2), ["a", "b"], cell_size=64)
    long = make_grid(_imgs(2), ["a", "tokens=image_no_markers | normalization=per_dim | outlier=clamp"], cell_size=64)
    assert long.width == short.width and long.height > short.height


def test_title_wraps():
    one = make_grid(_imgs(2), ["a", "b"], title="Prompt: short", cell_size=64)
    many = make_grid(_imgs(2), ["a", "b"], title="Prompt: " + "a very long prompt " * 20, cell_size=64)
    assert many.height > one.height + 30


def test_missing_images_and_errors_are_drawn():
    grid = make_grid([None, *_imgs(2)], ["x", "y", "z"], errors=["failed: out of memory", None, None], cell_size=64)
    assert grid.size[0] == 4 + 3 * 68


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="labels"):
        make_grid(_imgs(2), ["a"])


def test_fit_grid_for_upload():
    grid = Image.effect_noise((600, 400), 90).convert("RGB")
    record = {"preset": "alpha", "cells": 6}
    data, name, ctype = fit_grid_for_upload(grid, record, 10 << 20)
    assert name == "comparison_grid.png" and ctype == "image/png"
    small, name, ctype = fit_grid_for_upload(grid, record, 30_000)
    assert len(small) <= 30_000 and ctype in ("image/webp", "image/jpeg")
    assert read_metadata(small) == record
    with Image.open(io.BytesIO(small)) as im:
        assert im.width <= 600
