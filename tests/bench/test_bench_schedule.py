"""bench/schedule.py runs (quick mode, as a subprocess), prints its figure last and writes finite numbers."""

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


def test_schedule_quick(tmp_path):
    out = tmp_path / "schedule.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "schedule.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("schedule extraction with / without the attention probe")
    data = json.loads(out.read_text())
    assert set(data["per_step_caption"]) == {"pool", "append_pool", "append_attention"}
    assert data["image_rows"] > 0 and math.isfinite(data["attention_over_plain"])
    assert float(lines[-1].rsplit(": ", 1)[1]) == pytest.approx(data["attention_over_plain"], abs=1e-3)
