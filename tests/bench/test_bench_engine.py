"""The engine benchmarks run (tiny, fast modes, as subprocesses) and print their figure last, with finite numbers.

Performance targets are not asserted here (they are measured, and recorded in BENCHMARKS.md); what is asserted is
that each script still runs against the current engine, prints its one-line figure last, writes finite numbers,
and that the correctness claims the figures rest on still hold (identical images, no VL forward on a cache hit,
the layer count of the stopped forward).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
FIGURE = re.compile(r"^(?P<name>[a-z_]+) (?P<what>.+): (?P<value>\S+)$")

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(ROOT))
    env.pop("BENCH_QUICK", None)
    env.update(extra)
    return env


def _run(args: list[str], *, timeout: float = 240, **env: str) -> list[str]:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{args} printed nothing; stderr:\n{proc.stderr[-2000:]}"
    return lines


def _figure(line: str, name: str) -> float:
    m = FIGURE.match(line)
    assert m is not None, f"last line is not '<name> <what>: <number>': {line!r}"
    assert m["name"] == name, line
    value = float(m["value"])
    assert math.isfinite(value), line
    return value


def _finite_numbers(obj, where: str = "json") -> None:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        assert math.isfinite(obj), f"{where} is not finite: {obj!r}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{where}[{i}]")


def test_engine_overhead_quick(tmp_path):
    out = tmp_path / "overhead.json"
    lines = _run([str(BENCH / "engine_overhead.py"), "--quick", "--json", str(out)])
    ratio = _figure(lines[-1], "engine_overhead")
    assert ratio > 0 and "(engine/raw, median of 3 interleaved)" in lines[-1]
    assert any(line.startswith("identical images (engine vs raw, seed 7): True") for line in lines), lines
    data = json.loads(out.read_text())
    _finite_numbers(data)
    assert data["identical_images"] is True and data["machine"]["commit"]
    assert data["engine"]["n"] == data["raw"]["n"] == 3


def test_cache_quick(tmp_path):
    out = tmp_path / "cache.json"
    lines = _run([str(BENCH / "cache.py"), "--json", str(out)], BENCH_QUICK="1")
    assert _figure(lines[-1], "cache") > 0
    assert "vl forwards on hit: 0" in lines and "vl forwards on miss: 1" in lines, lines
    # issue 14: a new prompt with a known reference runs no VL forward for the prompt-free settings
    assert "vl forwards on new prompt: 0" in lines, lines
    assert "vl forwards on new prompt, known reference (tokens=full): 1" in lines, lines
    data = json.loads(out.read_text())
    _finite_numbers(data)
    assert data["hit_equals_miss"] is True and set(data["vl_forwards_on_hit"]) == {0}


def test_vl_layer_stop_quick(tmp_path):
    out = tmp_path / "vl.json"
    lines = _run([str(BENCH / "vl_layer_stop.py"), "--quick", "--json", str(out)])
    assert _figure(lines[-1], "vl_layer_stop") > 0
    assert any(line.startswith("decoder layers executed: 3 of 8 at layer -6") for line in lines), lines
    data = json.loads(out.read_text())
    _finite_numbers(data)
    assert data["layers_run_stop"] == 3 and data["layers_run_full"] == 8 and data["identical_hidden_states"]


def test_gpu_full_tiny(tmp_path):
    lines = _run([str(BENCH / "gpu_full.py"), str(tmp_path)], timeout=420, TINY="1")
    assert _figure(lines[-1], "gpu_full") > 0 and "engine/raw ratio" in lines[-1]
    data = json.loads((tmp_path / "gpu_full.json").read_text())
    _finite_numbers(data)
    assert not [k for k in data if k.endswith("_error")], {k: v for k, v in data.items() if k.endswith("_error")}
    for section in ("env", "build_dit", "engine_vs_raw", "vl_gpu", "vl_cpu", "captions", "stylize_cpu_encoders",
                    "compiled", "fp8"):
        assert section in data["sections"], section
    assert data["engine_vs_raw"]["identical_images"] is True
    assert data["compiled"]["first_request_new_graphs"] == 0  # the start-up warm-up covered the request's shapes
    if data.get("torchao") is None:
        assert any(line.startswith("fp8 skipped: torchao") for line in lines)
    for line in data["summary"]:
        _figure(line, "gpu_full")


# ------------------------------------------------------------------------------------------------ engine.generation.accel
def test_accel_fp8_filter_and_availability():
    from engine.generation import accel

    lin = torch.nn.Linear(32, 64)
    assert accel.fp8_filter(lin, "layers.0.attention.to_q")
    assert not accel.fp8_filter(lin, "noise_refiner.0.attention.to_q")
    assert not accel.fp8_filter(lin, "context_refiner.1.feed_forward.w1")
    assert not accel.fp8_filter(torch.nn.Linear(30, 64), "layers.0.feed_forward.w1")
    assert not accel.fp8_filter(torch.nn.LayerNorm(32), "layers.0.norm")
    reason = accel.fp8_unavailable_reason("cpu")
    assert isinstance(reason, str) and ("torchao" in reason or "CUDA" in reason)


def test_accel_prepare_off_and_fp8_skip(tiny_models):
    from engine.generation import accel
    from engine.generation.zimage import Generator

    gen = Generator.from_pretrained(tiny_models.zimage, "cpu", "float32")
    assert accel.prepare(gen) == {"fp8": False, "compile": False, "skipped": [], "errors": []}
    report = accel.prepare(gen, fp8=True)  # CPU: skipped with a reason, the Generator keeps working
    assert report["fp8"] is False and report["skipped"] and report["skipped"][0].startswith("fp8: ")
    with pytest.raises(accel.AccelUnavailable):
        accel.prepare(gen, fp8=True, strict=True)
    gen.denoise(torch.randn(8, gen.caption_dim), width=32, height=32, steps=1)
