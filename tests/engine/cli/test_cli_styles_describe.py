"""engine.cli: ``stylize --style CODE`` (the CLI's own style store) and ``describe`` on the tiny models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.media.images import read_png_metadata
from tests.imagecheck import assert_same_image

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--width", "32", "--height", "32", "--steps", "1"]


def _engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT),
               XDG_DATA_HOME=str(tmp_path / "xdg"), ZVL_DEVICE="cpu", ZVL_VL_DEVICE="cpu", ZVL_TEXT_DEVICE="cpu",
               ZVL_DTYPE="float32", ZVL_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _models(tiny_models) -> list[str]:
    return ["--model-path", str(tiny_models.zimage), "--vl-model-path", str(tiny_models.qwen3vl)]


@pytest.fixture
def ref_png(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    image = Image.new("RGB", (80, 48), (30, 90, 200))
    image.paste((250, 200, 0), (0, 0, 40, 48))
    image.save(path)
    return path


@pytest.mark.parametrize(("style", "needle"), [
    ("nothex!!", "--style: “nothex!!” is not a style code"),
    ("ab12cd34::2", "--style: a weight (::2) only matters when several references are mixed"),
    ("ab12cd34::-1", "--style: the weight after “::” must be a number above 0"),
    ("ab12cd34", "--style: no style ab12cd34 in"),
])
def test_bad_style_codes_are_one_line_before_any_model_loads(tmp_path, tiny_models, style, needle):
    proc = _engine(tmp_path, "stylize", "--style", style, "-p", "x", "-o", str(tmp_path / "o.png"),
                   *_models(tiny_models))
    assert proc.returncode == 2
    assert needle in _error_line(proc)


def test_image_and_style_mix_and_an_unknown_code_is_named(tmp_path, ref_png):
    """Several references (issue 15): -i and --style mix; the code is looked up before any model loads."""
    proc = _engine(tmp_path, "stylize", "-i", str(ref_png), "--style", "ab12cd34", "-p", "x", "-o", "o.png")
    assert proc.returncode == 2 and "--style: no style ab12cd34 in" in _error_line(proc)


@pytest.mark.slow
def test_a_printed_style_code_reuses_the_stored_reference(tmp_path, tiny_models, ref_png):
    first = _engine(tmp_path, "stylize", "-i", str(ref_png), "-p", "a fox", "-o", str(tmp_path / "a.png"),
                    "--seed", "3", "--json", *TINY, *_models(tiny_models))
    assert first.returncode == 0, first.stderr
    code = json.loads(first.stdout)["style_code"]
    stored = list((tmp_path / "data" / "styles" / "references").glob("*.png"))
    assert len(stored) == 1
    digest = hashlib.sha256(stored[0].read_bytes()).hexdigest()
    assert stored[0].stem == digest  # stored by content
    assert code == hashlib.sha256(f"zvl-style-code/v1\nlocal\n{digest}".encode()).hexdigest()[:8]
    assert f"style code {code}" in first.stderr

    ref_png.unlink()  # the code must not need the original file
    second = _engine(tmp_path, "stylize", "--style", code.upper(), "-p", "a fox", "-o", str(tmp_path / "b.png"),
                     "--seed", "3", "--json", *TINY, *_models(tiny_models))
    assert second.returncode == 0, second.stderr
    record = json.loads(second.stdout)
    assert record["style_code"] == code and record["reference"]["path"] == str(stored[0].resolve())
    assert read_png_metadata((tmp_path / "b.png").read_bytes())["reference"]["sha256"] == digest
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert_same_image(a, b)  # same reference pixels, prompt and seed

    stored[0].unlink()  # what retention would do
    gone = _engine(tmp_path, "stylize", "--style", code, "-p", "a fox", "-o", str(tmp_path / "c.png"),
                   *_models(tiny_models))
    assert gone.returncode == 2 and f"the reference of style {code} is no longer stored" in _error_line(gone)


@pytest.mark.slow
def test_describe_prints_n_suggestions(tmp_path, tiny_models, ref_png):
    proc = _engine(tmp_path, "describe", "-i", str(ref_png), "--json", "--max-new-tokens", "6",
                   *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert len(record["suggestions"]) == 4 and all(isinstance(s, str) and "\n" not in s
                                                   for s in record["suggestions"])
    assert all(1 <= n <= 6 for n in record["new_tokens"])
    assert record["settings"]["greedy"] is True and record["stopped"] == "finished"

    plain = _engine(tmp_path, "describe", "-i", str(ref_png), "--max-new-tokens", "6", *_models(tiny_models))
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert [line[:3] for line in lines] == ["1. ", "2. ", "3. ", "4. "]
    assert [line[3:] for line in lines] == record["suggestions"]  # greedy, same batch: the same text again


def test_fewer_suggestions_take_the_first_angles(tiny_models):
    """``n`` picks the first ``n`` instructions: n=2 writes 2 suggestions (noise on tiny models, but one line each,
    at most max_new_tokens each), and the processor saw the image once per suggestion."""
    import torch

    from engine.conditioning.describe import describe_image
    from engine.conditioning.vision import VLExtractor

    extractor = VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", torch.float32, lazy=True)
    out = describe_image(extractor, Image.new("RGB", (64, 64), (10, 200, 30)), n=2, max_new_tokens=5)
    assert len(out.suggestions) == 2 and len(out.new_tokens) == 2 and all(1 <= n <= 5 for n in out.new_tokens)
    assert out.settings["n"] == 2 and out.settings["image_size"] == [64, 64]


@pytest.mark.parametrize(("flag", "value", "needle"), [("--n", "9", "--n must be from 1 to 8"),
                                                        ("--max-new-tokens", "0", "--max-new-tokens must be from 1"),
                                                        ("--max-time", "0", "--max-time must be above 0")])
def test_describe_bad_flags_are_one_line(tmp_path, ref_png, flag, value, needle):
    proc = _engine(tmp_path, "describe", "-i", str(ref_png), flag, value)
    assert proc.returncode == 2 and needle in _error_line(proc)
