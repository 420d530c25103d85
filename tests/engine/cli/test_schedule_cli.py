"""The CLI's style_schedule / append_selection: stylize flags into the PNG's parameters, sweep axes into cells."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from engine.media.images import read_png_metadata
from tests.engine.cli.test_cli import _engine, _models, _one_error_line

TINY = ["--width", "32", "--height", "32", "--steps", "4"]


@pytest.fixture(scope="module")
def ref_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.radial_gradient("L").convert("RGB").resize((96, 64)).save(path)
    return path


@pytest.mark.slow
def test_stylize_records_schedule_and_selection(tmp_path, tiny_models, ref_png):
    out = tmp_path / "out.png"
    proc = _engine(tmp_path, "stylize", "-i", str(ref_png), "-p", "a red fox", "-o", str(out), "--alpha", "0.6",
                   "--mode", "append", "--append-tokens", "6", "--style-schedule", "ramp", "--append-selection",
                   "attention", *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    params = read_png_metadata(out.read_bytes())["params"]
    assert params["style_schedule"] == "ramp" and params["append_selection"] == "attention"
    assert params["style_alphas"] == pytest.approx([0.0, 0.2, 0.4, 0.6])  # a·k/(n-1) over 4 steps


def test_bad_schedule_is_one_line(tmp_path, ref_png):
    proc = _engine(tmp_path, "stylize", "-i", str(ref_png), "-p", "x", "-o", str(tmp_path / "o.png"), "--demo",
                   "--style-schedule", "sometimes")
    assert proc.returncode != 0
    assert "--style-schedule must be one of constant, early, late, ramp, ramp_down" in _one_error_line(proc)


@pytest.mark.slow
def test_sweep_over_schedules_writes_one_cell_per_schedule(tmp_path, tiny_models, ref_png):
    out = tmp_path / "sched"
    proc = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a lighthouse", "-o", str(out), "--alphas", "0.5",
                   "--schedules", "constant", "early", "late", "ramp", "--selections", "pool", "--cell-size", "32",
                   *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    cells = [c for c in meta["cells"] if not c["baseline"]]
    assert [c["axes"]["schedule"] for c in cells] == ["constant", "early", "late", "ramp"]
    assert [c["params"]["style_schedule"] for c in cells] == ["constant", "early", "late", "ramp"]
    assert cells[0]["params"]["style_alphas"] is None
    assert cells[1]["params"]["style_alphas"] == [0.5, 0.5, 0.0, 0.0]
    assert meta["vl_extractions"] == 1  # the schedule changes the captions, not the extraction
    assert all((out / c["file"]).exists() for c in meta["cells"])
    assert (out / "scores.csv").exists() and (out / "scores_chart.png").exists()
