"""``bench/load_discord.py --quick`` as a subprocess: its own fake Discord and bot process, nothing lost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_load_quick(tmp_path: Path, tiny_models) -> None:
    out = tmp_path / "load.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "load_discord.py"), "--quick", "--json", str(out),
                           "--models", str(tiny_models.root)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    detail = f"stdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, detail
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"load_discord ack p99 ms \(quick, 5 users x 2 requests, .*; lost 0\): (\d+\.\d)", last)
    assert match, detail
    results = json.loads(out.read_text())
    assert results["lost"] == 0 and results["duplicates"] == 0 and results["failed_jobs"] == 0, results["outcomes"]
    assert results["outcomes"] == {"delivered": 10}, results["outcomes"]
    assert results["ack_ms"]["n"] == 10 and results["ack_ms"]["max"] < 3000
    assert float(match.group(1)) == pytest.approx(results["ack_ms"]["p99"], abs=0.06)
    assert results["loop_lag_ms"]["load"]["n"] > 0 and results["bot_exit_status"] == 0
    assert results["admin_status"]["Queue"].startswith("0 queued")
