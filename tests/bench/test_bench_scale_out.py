"""bench/scale_out.py runs (quick mode, as a subprocess, on a real redis-server) and prints its figures last.

Figures are not asserted against their targets: this is a shared 2-core machine; the bench states them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redisserver import require_redis_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_scale_out_bench_quick():
    require_redis_server()
    env = dict(os.environ, BENCH_QUICK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_out.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert any(re.search(r"the queue adds -?\d+\.\d ms per job \(target <= 5\)$", line) for line in lines), lines
    m = re.search(r"^scale_out throughput ratio N=2 vs 1 \(target >= 1\.8\): (\d+\.\d\d)$", lines[-1])
    assert m and float(m.group(1)) > 0, lines[-1]
