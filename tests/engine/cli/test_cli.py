"""engine.cli: the real command line on tiny models, error exits, and the sweep runner with a fake pipeline."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.cli import main
from engine.cli._output import Progress
from engine.cli.sweep_run import cell_filename, run_sweep
from engine.media.images import read_png_metadata
from engine.sweep.plan import plan_sweep
from engine.types import StylizeRequest, StylizeResult, VLResult

ROOT = Path(__file__).resolve().parents[3]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT),
               XDG_DATA_HOME=str(tmp_path / "xdg"), ZVL_DEVICE="cpu", ZVL_VL_DEVICE="cpu", ZVL_TEXT_DEVICE="cpu",
               ZVL_DTYPE="float32")
    return env


def _engine(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def ref_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    im = Image.new("RGBA", (80, 48), (30, 90, 200, 255))
    im.paste((250, 200, 0, 128), (0, 0, 40, 48))
    im.save(path)
    return path


# --------------------------------------------------------------------------------------------------------------
# error exits (no models are loaded: each of these is refused before torch is imported)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,code,needle", [
    (["stylize", "-i", "missing.png", "-p", "a cat", "-o", "out.png"], 2, "does not exist"),
    (["sweep", "-i", "{ref}", "-p", "a cat", "--sweep", "bogus"], 2, "sweep must be one of alpha"),
    (["stylize", "-i", "{ref}", "-p", "a cat", "-o", "out.png", "--alpha", "1.7"], 2, "--alpha must be between 0 and 1"),
    (["sweep", "-i", "{ref}", "-p", "a cat", "--alphas", "0.2", "1.7"], 2, "alphas"),
    (["stylize", "-i", "{ref}", "-p", "a cat", "-o", "out.png", "--style-weight", "2000"], 2, "style_weight"),
    (["stylize", "-i", "{ref}", "-p", "a cat", "-o", "out.png", "--mode", "blur"], 2, "--mode must be one of"),
    (["stylize", "-i", "{ref}", "-p", "a cat", "-o", "out.png", "--width", "33"], 2, "multiple of 16"),
    (["stylize", "-i", "{ref}", "-p", "a cat", "-o", "out.png", "--model-path", "nowhere"], 2, "nowhere does not exist"),
    (["stylize", "-i", "{ref}", "-p", "a cat"], 2, "--output"),
    (["stylize", "-i", "{ref}", "-p", "a cat", "-o", "out.png", "--steps", "many"], 2, "invalid int value"),
    (["sweep", "-i", "{ref}", "-p", "a cat", "--sweep", "full", "--max-cells", "16"], 2, "19 cells"),
    (["sweep", "-i", "{ref}", "-p", "a cat", "--config", "none.toml"], 2, "none.toml does not exist"),
    (["stylize", "-i", "{bad}", "-p", "a cat", "-o", "out.png"], 2, "not a supported image"),
    (["stylize", "-i", "{bomb}", "-p", "a cat", "-o", "out.png"], 2, "too large when decoded"),
    (["stylize", "-i", "{dir}", "-p", "a cat", "-o", "out.png"], 2, "is a directory"),
    (["stylize", "-i", "{thin}", "-p", "a cat", "-o", "out.png"], 2, "3000x1 pixels, too thin to read"),
    (["sweep", "-i", "{thin}", "-p", "a cat", "--alphas", "0.2", "0.4"], 2, "too thin to read"),
    (["bogus-command"], 2, "invalid choice"),
])
def test_error_exits_are_one_line(tmp_path, ref_png, args, code, needle):
    import struct
    import zlib

    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not an image")
    bomb = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda k, b: struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b))  # noqa: E731
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    thin = tmp_path / "thin.png"
    Image.new("RGB", (3000, 1), (10, 200, 30)).save(thin)
    subs = {"{ref}": str(ref_png), "{bad}": str(bad), "{bomb}": str(bomb), "{dir}": str(tmp_path), "{thin}": str(thin)}
    args = [subs.get(a, a) for a in args]
    t0 = time.perf_counter()
    proc = _engine(tmp_path, *args, timeout=120)
    assert proc.returncode == code, proc.stderr
    line = _one_error_line(proc)
    assert needle in line
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "out.png").exists()


def test_image_token_budget_below_the_processor_minimum_is_one_line(tmp_path, tiny_models, vl_with_real_minimum,
                                                                     ref_png):
    proc = _engine(tmp_path, "stylize", "-i", str(ref_png), "-p", "a cat", "-o", "out.png", "--model-path",
                   str(tiny_models.zimage), "--vl-model-path", str(vl_with_real_minimum), "--vl-max-image-tokens", "16")
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert "vl_max_image_tokens" in line and "at least 64 tokens; got 16" in line
    assert not (tmp_path / "out.png").exists()


def test_main_in_process_returns_codes(capsys, tmp_path):
    assert main(["stylize", "-i", str(tmp_path / "x.png"), "-p", "p", "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reference image") and err.count("\n") == 1
    assert main([]) == 2


# --------------------------------------------------------------------------------------------------------------
# the sweep runner with a fake pipeline: VL reuse, failing cells, Ctrl-C, atomic metadata
# --------------------------------------------------------------------------------------------------------------


class FakePipe:
    def __init__(self, fail_on: str | None = None, interrupt_on: str | None = None):
        self.fail_on, self.interrupt_on = fail_on, interrupt_on
        self.vl_calls: list[StylizeRequest] = []
        self.text_calls: list[StylizeRequest] = []
        self.generated: list[str] = []

    def check_inputs(self, request):
        pass

    def encode_reference(self, request):
        import torch

        self.vl_calls.append(request)
        return VLResult(embeddings=torch.zeros(4, 8), kinds=["image"] * 4, image_span=(0, 4), original_std=7.0,
                        scaled_std=61.0, scale_factor=8.7, masked_dimensions=[3], masked_ratios={3: 12.0})

    def encode_prompt(self, request):
        self.text_calls.append(request)
        return ("text", request.prompt, request.think)

    def generate(self, request, vl, text_emb=None, *, progress=None, should_abort=None):
        label = f"a{request.alpha:g}"
        if self.interrupt_on and self.interrupt_on == label:
            raise KeyboardInterrupt
        if self.fail_on and self.fail_on == label:
            raise RuntimeError("CUDA out of memory (fake)")
        assert text_emb == ("text", request.prompt, request.think)
        if progress:
            progress(1, 1)
        self.generated.append(label)
        img = Image.new("RGB", (32, 32), (int(255 * request.alpha), 0, 0))
        return StylizeResult(images=[img], seeds=list(request.seeds), params=request.record(),
                             timings={"total": 0.01}, vl=vl.metadata() if vl is not None else None,
                             stats={"text_std": 60.0})


def _plan(preset="alpha", overrides=None):
    ref = Image.new("RGB", (32, 32), (0, 0, 255))
    base = StylizeRequest(prompt="a red fox", reference=ref, seeds=(7,), steps=1, width=32, height=32)
    return plan_sweep(base, preset, overrides or {}, max_cells=64), ref


def _run(tmp_path, pipe, plan, ref):
    return run_sweep(pipe, plan, tmp_path / "out", prompt="a red fox", reference=ref, header={"preset": plan.preset},
                     progress=Progress(False), vl_cache={}, text_cache={}, cell_size=32)


def test_run_sweep_reuses_extractions_and_writes_everything(tmp_path):
    plan, ref = _plan("alpha")
    pipe = FakePipe()
    run = _run(tmp_path, pipe, plan, ref)
    assert run.complete and run.ok == 6
    # five VL cells share one VL setting: one extraction; the baseline has no reference: none
    assert len(pipe.vl_calls) == 1
    assert len(pipe.text_calls) == 1
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["complete"] is True and meta["status"] == "complete"
    assert meta["cells_ok"] == 6 and meta["vl_extractions"] == 1
    assert [c["vl_reused"] for c in meta["cells"][1:]] == [False, True, True, True, True]
    assert meta["cells"][0]["baseline"] is True and meta["cells"][0]["vl"] is None
    assert meta["cells"][1]["masked_dimensions"] == [3]
    for c in meta["cells"]:
        assert (tmp_path / "out" / c["file"]).is_file()
        assert c["params"]["shift"] == 3.0
    assert (tmp_path / "out" / "comparison_grid.png").is_file()
    assert meta["grid"] == "comparison_grid.png"


def test_run_sweep_extracts_once_per_vl_setting(tmp_path):
    plan, ref = _plan(None, {"alphas": [0.3, 0.6], "layers": [-2, -4]})
    pipe = FakePipe()
    _run(tmp_path, pipe, plan, ref)
    assert len(pipe.vl_calls) == 2  # one per layer, shared across alphas
    assert {r.hidden_layer for r in pipe.vl_calls} == {-2, -4}


def test_think_cells_encode_the_prompt_separately(tmp_path):
    plan, ref = _plan("think_comparison")
    pipe = FakePipe()
    _run(tmp_path, pipe, plan, ref)
    assert sorted(r.think for r in pipe.text_calls) == [False, True]


def test_failed_cell_is_recorded_and_sweep_is_incomplete(tmp_path):
    plan, ref = _plan("alpha")
    run = _run(tmp_path, FakePipe(fail_on="a0.5"), plan, ref)
    assert run.status == "failed" and not run.complete
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["complete"] is False and meta["cells_failed"] == 1 and meta["cells_ok"] == 5
    bad = [c for c in meta["cells"] if c["status"] == "failed"]
    assert bad[0]["label"] == "alpha=0.5" and "out of memory" in bad[0]["error"] and bad[0]["file"] is None
    assert (tmp_path / "out" / "comparison_grid.png").is_file()  # drawn, with the failure marked


def test_interrupted_sweep_says_incomplete(tmp_path):
    plan, ref = _plan("alpha")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, FakePipe(interrupt_on="a0.5"), plan, ref)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["complete"] is False and meta["status"] == "interrupted"
    assert meta["cells_ok"] == 3 and meta["cells_pending"] == 3
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no half-written files left behind


def test_cell_filename_and_vl_key():
    assert cell_filename(3, "alpha=0.5 | layers=-6+-8") == "03_alpha0.5_layers-6+-8.png"
    assert cell_filename(0, "baseline: text only (alpha=0)") == "00_baseline_text_only_alpha0.png"
    plan, _ = _plan(None, {"alphas": [0.3, 0.6]})
    a, b = plan.cells[1].request, plan.cells[2].request
    assert a.vl_identity() == b.vl_identity()
    assert a.vl_identity() != a.replace(hidden_layer=-8).vl_identity()
    assert a.vl_identity() != a.replace(vl_text="other").vl_identity()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw_a_cell(p: Progress) -> None:
    with p.bar("loading models", total=1, unit="model") as bar:
        bar.update(1)
    with p.steps("[1/3] alpha=0.1") as on_step:
        on_step(1, 2)
        on_step(2, 2)
    p.line("[1/3] alpha=0.1: ok")


def test_progress_lines_without_tty():
    """Not a terminal: no bars (tqdm's own tty check), only the lines that stay."""
    buf = io.StringIO()
    _draw_a_cell(Progress(True, buf))
    assert buf.getvalue() == "[1/3] alpha=0.1: ok\n"


def test_progress_bars_on_a_terminal_but_not_with_json_or_quiet():
    """A terminal gets tqdm bars beside the lines; --json keeps the lines only; --quiet prints nothing."""
    tty = _Terminal()
    _draw_a_cell(Progress(True, tty))
    assert "loading models" in tty.getvalue() and "[1/3] alpha=0.1: ok\n" in tty.getvalue()
    json_mode = _Terminal()
    _draw_a_cell(Progress(True, json_mode, bars=False))
    assert json_mode.getvalue() == "[1/3] alpha=0.1: ok\n"
    quiet = _Terminal()
    _draw_a_cell(Progress(False, quiet))
    assert quiet.getvalue() == ""


# --------------------------------------------------------------------------------------------------------------
# end to end: the real command line on the tiny models
# --------------------------------------------------------------------------------------------------------------

TINY = ["--width", "32", "--height", "32", "--steps", "1"]


def _models(tiny_models) -> list[str]:
    return ["--model-path", str(tiny_models.zimage), "--vl-model-path", str(tiny_models.qwen3vl)]


@pytest.mark.slow
def test_stylize_end_to_end(tmp_path, tiny_models, ref_png):
    out = tmp_path / "sub" / "out.png"
    proc = _engine(tmp_path, "stylize", "-i", str(ref_png), "-p", "a red fox in the snow", "-o", str(out),
                   "--alpha", "0.5", "--seed", "5", "--json", *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    with Image.open(out) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    meta = read_png_metadata(out.read_bytes())
    params = meta["params"]
    assert params["alpha"] == 0.5 and params["shift"] == 3.0 and params["prompt"] == "a red fox in the snow"
    assert meta["seeds"] == [5]
    assert meta["reference"]["size"] == [80, 48]
    assert meta["vl"] is not None and "original_std" in meta["vl"]
    printed = json.loads(proc.stdout)
    assert printed["outputs"] == [str(out)] and printed["params"]["alpha"] == 0.5


@pytest.mark.slow
def test_sweep_alpha_end_to_end(tmp_path, tiny_models, ref_png):
    out = tmp_path / "alpha"
    proc = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a lighthouse", "--sweep", "alpha", "-o", str(out),
                   "--cell-size", "64", *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    assert "[6/6]" in proc.stderr and "Traceback" not in proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] is True and meta["status"] == "complete"
    assert meta["cells_total"] == 6 and meta["cells_ok"] == 6
    assert meta["vl_extractions"] == 1  # five alpha cells, one VL setting
    assert meta["cells"][0]["baseline"] and meta["cells"][0]["params"]["alpha"] == 0.0
    assert [c["params"]["alpha"] for c in meta["cells"]] == [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
    for cell in meta["cells"]:
        assert cell["params"]["shift"] == 3.0 and cell["status"] == "ok"
        png = (out / cell["file"]).read_bytes()
        assert read_png_metadata(png)["label"] == cell["label"]
        assert "timings" in cell and "stats" in cell
    assert meta["cells"][1]["vl"]["original_std"] > 0
    assert "masked_dimensions" in meta["cells"][1]
    with Image.open(out / "comparison_grid.png") as grid:
        # pad 4, the reference and the baseline side by side, then 5 cells of 64 px
        assert grid.width == 4 + 2 * 68 + 5 * 68
        assert grid.size == tuple(meta["grid_size"])
    assert sorted(p.name for p in out.glob("*.png")) == sorted([c["file"] for c in meta["cells"]]
                                                               + ["comparison_grid.png", "scores_chart.png"])


@pytest.mark.slow
def test_sweep_think_two_prompts_end_to_end(tmp_path, tiny_models, ref_png):
    out = tmp_path / "think"
    proc = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a cat", "-p", "a dog", "--sweep",
                   "think_comparison", "-o", str(out), "--cell-size", "48", "--quiet", "--json",
                   *TINY, *_models(tiny_models))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # --quiet
    summary = json.loads((out / "prompts_summary.json").read_text())
    assert summary["complete"] is True and [p["prompt"] for p in summary["prompts"]] == ["a cat", "a dog"]
    printed = json.loads(proc.stdout)
    assert len(printed["prompts"]) == 2
    for entry in summary["prompts"]:
        meta = json.loads((out / entry["dir"] / "metadata.json").read_text())
        assert meta["complete"] is True and meta["cells_total"] == 4  # 2 img2img baselines + think off/on
        assert meta["text_encodings"] == 2  # think off and on encoded separately
        assert [c["params"]["think"] for c in meta["cells"]] == [False, True, False, True]
        assert all(c["params"]["strength"] == 0.9 for c in meta["cells"])
        assert (out / entry["dir"] / "comparison_grid.png").is_file()


@pytest.mark.slow
def test_demo_mode_is_loud_even_when_quiet(tmp_path, tiny_models, ref_png):
    data = tmp_path / "xdg" / "zvl-bot"
    data.mkdir(parents=True)
    (data / "tiny-models").symlink_to(tiny_models.root, target_is_directory=True)  # already built: no rebuild
    out = tmp_path / "demo.png"
    proc = _engine(tmp_path, "stylize", "--demo", "--quiet", "-i", str(ref_png), "-p", "a cat", "-o", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "DEMO MODE" in proc.stderr and "NOISE" in proc.stderr
    assert read_png_metadata(out.read_bytes())["models"]["demo"] is True


@pytest.mark.slow
def test_ctrl_c_mid_sweep_leaves_an_incomplete_record(tmp_path, tiny_models, ref_png):
    import signal

    out = tmp_path / "int"
    cmd = [sys.executable, "-m", "engine", "sweep", "-i", str(ref_png), "-p", "a boat", "--alphas", "0.05:1:0.05",
           "-o", str(out), "--width", "64", "--height", "64", "--steps", "3", *_models(tiny_models)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if json.loads((out / "metadata.json").read_text())["cells_ok"] >= 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] is False and meta["status"] == "interrupted"
    assert 2 <= meta["cells_ok"] < meta["cells_total"] == 21
    assert (out / "comparison_grid.png").is_file()


@pytest.mark.slow
def test_cells_are_checked_before_anything_runs(tmp_path, tiny_models, ref_png):
    out = tmp_path / "layers"
    proc = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a cat", "--sweep", "layer", "-o", str(out),
                   *TINY, *_models(tiny_models))
    assert proc.returncode == 2
    assert "layer=-16" in _one_error_line(proc)
    assert not out.exists()  # the tiny VL model has 8 layers: refused before any folder or cell


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_sweep(tmp_path, tiny_models, ref_png):
    out = tmp_path / "again"
    first = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a cat", "--alphas", "0.3", "0.6", "-o", str(out),
                    "--quiet", *TINY, *_models(tiny_models))
    assert first.returncode == 0, first.stderr
    again = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a cat", "--alphas", "0.5", "-o", str(out),
                    "--quiet", *TINY, *_models(tiny_models))
    assert again.returncode == 2 and "--overwrite" in _one_error_line(again)
    third = _engine(tmp_path, "sweep", "-i", str(ref_png), "-p", "a cat", "--alphas", "0.5", "-o", str(out),
                    "--quiet", "--overwrite", *TINY, *_models(tiny_models))
    assert third.returncode == 0, third.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert sorted(p.name for p in out.glob("*.png")) == sorted([c["file"] for c in meta["cells"]]
                                                               + ["comparison_grid.png", "scores_chart.png"])
