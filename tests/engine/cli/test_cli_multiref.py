"""engine.cli: several ``-i`` with ``--weights``, a negative reference, and their one-line errors (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.media.images import read_png_metadata
from tests.engine.cli.test_cli_styles_describe import TINY, _engine, _error_line, _models


def _png(path: Path, seed: int) -> Path:
    Image.fromarray((np.random.RandomState(seed).rand(48, 64, 3) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture
def refs(tmp_path: Path) -> list[str]:
    return [str(_png(tmp_path / f"r{i}.png", i)) for i in range(5)]


@pytest.mark.parametrize("extra, needle", [
    (["--weights", "2", "x"], "error: --weights: “x” is not a number"),
    (["--weights", "-1", "2"], "error: --weights: a weight must not be negative; got -1"),
    (["--weights", "0", "0"], "error: --weights: the weights must not all be 0"),
    (["--weights", "1", "2", "3"], "error: --weights: 3 weights for 2 references"),
])
def test_bad_weights_are_one_line_exit_2(tmp_path, tiny_models, refs, extra, needle):
    proc = _engine(tmp_path, "stylize", "-i", refs[0], "-i", refs[1], *extra, "-p", "x", "-o", "o.png",
                   *_models(tiny_models))
    assert proc.returncode == 2 and _error_line(proc).startswith(needle)
    assert not (tmp_path / "o.png").exists()


def test_more_than_four_references_are_refused(tmp_path, tiny_models, refs):
    many = [arg for ref in refs for arg in ("-i", ref)]
    proc = _engine(tmp_path, "stylize", *many, "-p", "x", "-o", "o.png", *_models(tiny_models))
    assert proc.returncode == 2
    assert _error_line(proc) == "error: -i/--style: at most 4 references in one request; got 5"


@pytest.mark.slow
def test_two_references_with_weights_and_a_negative(tmp_path, tiny_models, refs):
    out = tmp_path / "two.png"
    proc = _engine(tmp_path, "stylize", "-i", refs[0], "-i", refs[1], "--weights", "2", "1", "--negative-image",
                   refs[2], "-p", "a fox", "-o", str(out), "--json", *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert [r["weight"] for r in record["references"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert [r["path"] for r in record["references"]] == [str(Path(p).resolve()) for p in refs[:2]]
    assert record["negative_reference"]["path"] == str(Path(refs[2]).resolve())
    assert record["params"]["guidance_scale"] == 2.0  # a negative turns CFG on at its default
    assert len(record["style_codes"]) == 2 and all(len(c) == 8 for c in record["style_codes"])
    assert f"style codes {record['style_codes'][0]}, {record['style_codes'][1]}" in proc.stderr
    stored = read_png_metadata(out.read_bytes())
    assert [r["size"] for r in stored["params"]["reference_set"]] == [[64, 48], [64, 48]]
    assert stored["params"]["negative"]["size"] == [64, 48]

    # the codes name the same references: --style CODE::2 with -i gives the same weights
    again = _engine(tmp_path, "stylize", "-i", refs[0], "--style", f"{record['style_codes'][1]}::0.5", "-p",
                    "a fox", "-o", str(tmp_path / "again.png"), "--json", *TINY, *_models(tiny_models))
    assert again.returncode == 0, again.stderr
    assert [r["weight"] for r in json.loads(again.stdout)["references"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)


@pytest.mark.slow
def test_a_sweep_takes_several_references(tmp_path, tiny_models, refs):
    proc = _engine(tmp_path, "sweep", "-i", refs[0], "-i", refs[1], "--weights", "1", "3", "-p", "a fox",
                   "--alphas", "0.3", "0.6", "-o", str(tmp_path / "sw"), "--no-score", *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "sw" / "metadata.json").read_text())
    vl_cells = [c for c in meta["cells"] if not c.get("baseline")]
    assert len(vl_cells) == 2
    for cell in vl_cells:
        assert [r["weight"] for r in cell["params"]["reference_set"]] == pytest.approx([0.25, 0.75], abs=1e-6)
    assert meta["vl_extractions"] == 2  # one per reference, reused by the second alpha
