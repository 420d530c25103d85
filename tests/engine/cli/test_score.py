"""``engine score`` and the scored CLI sweep: the JSON shape, one-line errors, scores.csv and the chart."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from engine.scoring.chart import chart_size
from engine.scoring.score import SCORE_NAMES

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--width", "32", "--height", "32", "--steps", "1"]


def _engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT),
               XDG_DATA_HOME=str(tmp_path / "xdg"), ZVL_DEVICE="cpu", ZVL_VL_DEVICE="cpu", ZVL_TEXT_DEVICE="cpu",
               ZVL_DTYPE="float32")
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("score-images")
    ref = Image.new("RGB", (96, 64), (30, 90, 200))
    ref.paste((250, 200, 0), (0, 0, 48, 64))
    for x in range(0, 96, 6):
        ref.paste((10, 10, 10), (x, 0, x + 2, 64))
    paths = {"ref": folder / "ref.png", "blur": folder / "blur.png", "bad": folder / "bad.png"}
    ref.save(paths["ref"])
    ref.filter(ImageFilter.GaussianBlur(3)).save(paths["blur"])
    paths["bad"].write_text("not an image")
    return paths


def test_score_json_is_a_list_of_image_and_scores(tmp_path, images):
    proc = _engine(tmp_path, "score", "--reference", str(images["ref"]), str(images["ref"]), str(images["blur"]),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["image"] for r in rows] == [str(images["ref"]), str(images["blur"])]
    assert all(set(r) == {"image", "scores"} for r in rows)
    same, blurred = rows[0]["scores"], rows[1]["scores"]
    assert list(same) == ["color_distance", "texture_distance", "clipped_share", "noise_sigma"]  # no VL: no judge
    assert same["color_distance"] == 0.0 and same["texture_distance"] == 0.0
    assert blurred["texture_distance"] > 0.05 and blurred["color_distance"] > 0


@pytest.mark.slow
def test_score_with_the_demo_judge_adds_the_judged_scores(tmp_path, images, tiny_models):
    proc = _engine(tmp_path, "score", "-r", str(images["ref"]), "-p", "a striped flag", str(images["blur"]),
                   "--json", "--vl-model-path", str(tiny_models.qwen3vl))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)[0]["scores"]
    assert list(scores) == list(SCORE_NAMES)
    assert 0 <= scores["prompt_adherence"] <= 1 and 0 <= scores["style_similarity"] <= 1


@pytest.mark.parametrize("which,needle", [("missing", "image {missing} does not exist"),
                                          ("bad", "not a supported image"),
                                          ("dir", "is a directory")])
def test_score_errors_are_one_line(tmp_path, images, which, needle):
    target = {"missing": str(tmp_path / "nope.png"), "bad": str(images["bad"]), "dir": str(tmp_path)}[which]
    proc = _engine(tmp_path, "score", "-r", str(images["ref"]), str(images["ref"]), target)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert needle.format(missing=target) in lines[0]
    assert proc.stdout == ""  # nothing scored before every file was checked


@pytest.mark.slow
def test_sweep_scores_every_cell_and_draws_the_chart(tmp_path, tiny_models, images):
    out = tmp_path / "alpha"
    proc = _engine(tmp_path, "sweep", "-i", str(images["ref"]), "-p", "a lighthouse", "--sweep", "alpha", "-o",
                   str(out), *TINY, "--model-path", str(tiny_models.zimage), "--vl-model-path",
                   str(tiny_models.qwen3vl))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(meta["cells"]) == 6
    for row, cell in zip(rows, meta["cells"], strict=True):
        assert list(cell["scores"]) == list(SCORE_NAMES)
        assert row["label"] == cell["label"]
        assert [float(row[n]) for n in SCORE_NAMES] == [cell["scores"][n] for n in SCORE_NAMES]
    # the best cell: the largest adherence x similarity among the VL cells, computed here from the CSV
    vl = [r for r in rows if r["baseline"] == "0"]
    best = max(vl, key=lambda r: float(r["prompt_adherence"]) * float(r["style_similarity"]))
    assert [r["label"] for r in rows if r["best"] == "1"] == [best["label"]]
    assert meta["scores"]["best"]["label"] == best["label"]
    assert meta["scores"]["questions"]["style_similarity"].startswith("Are these two images in the same")
    with Image.open(out / "scores_chart.png") as chart:
        assert chart.size == chart_size(len(SCORE_NAMES))
        record = json.loads(chart.text["zvl-chart"])
    assert record["kind"] == "line" and record["panels"] == list(SCORE_NAMES)
    for name in SCORE_NAMES:  # one series per score: the five VL cells against alpha
        assert [x for x, _ in record["series"][name]] == [0.1, 0.3, 0.5, 0.7, 1.0]
        assert [y for _, y in record["series"][name]] == [float(r[name]) for r in vl]


@pytest.mark.slow
def test_no_score_writes_no_score_files(tmp_path, tiny_models, images):
    out = tmp_path / "plain"
    proc = _engine(tmp_path, "sweep", "-i", str(images["ref"]), "-p", "a cat", "--alphas", "0.3", "0.6", "-o",
                   str(out), "--no-score", *TINY, "--model-path", str(tiny_models.zimage), "--vl-model-path",
                   str(tiny_models.qwen3vl))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert "scores" not in meta and all("scores" not in c for c in meta["cells"])
    assert not (out / "scores.csv").exists() and not (out / "scores_chart.png").exists()
