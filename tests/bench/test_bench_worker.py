"""The worker benches run (quick mode, as subprocesses) and print their main figure last, so they do not rot.

Figures are not asserted: this is a shared 2-core machine; the benches themselves state their targets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def run_bench(name: str, tmp_path: Path) -> list[str]:
    env = dict(os.environ, BENCH_QUICK="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               ZVL_BENCH_TINY=str(tmp_path / "tiny"))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, proc.stderr
    return lines


def test_stage_overlap_bench_quick(tmp_path):
    lines = run_bench("stage_overlap.py", tmp_path)
    assert any(line.startswith("measured stage times:") for line in lines)  # the stage times come first
    last = lines[-1]
    m = re.search(r"overlapped/sequential throughput ratio (\d+\.\d+) \(target >= 1\.6\)$", last)
    assert m and float(m.group(1)) > 0, last


def test_loop_lag_bench_quick(tmp_path):
    lines = run_bench("loop_lag.py", tmp_path)
    last = lines[-1]
    m = re.search(r"p50 (\d+\.\d) ms, p99 (\d+\.\d) ms \(target p99 <= 50 ms\)$", last)
    assert m and float(m.group(1)) <= float(m.group(2)), last
