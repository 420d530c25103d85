"""bench/scoring.py runs (quick mode, as a subprocess), prints its figure last and writes finite numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_scoring_quick(tmp_path):
    out = tmp_path / "scoring.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scoring.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("scoring seconds per scored cell (weight-free 128px + 2 judge questions")
    assert float(lines[-1].rsplit(": ", 1)[1]) > 0
    assert "P(yes)+P(no) <= 1: True" in lines
    data = json.loads(out.read_text())
    assert set(data["weight_free"]) == {"color_distance", "texture_distance", "clipped_share", "noise_sigma"}
    assert set(data["judge"]) == {"prompt_adherence", "style_similarity"}
    parts = data["weight_free_sum_s"] + data["judge_sum_s"]
    assert math.isfinite(parts) and data["per_cell_s"] == pytest.approx(parts, abs=1e-4)
