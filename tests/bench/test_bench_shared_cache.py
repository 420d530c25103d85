"""bench/shared_cache.py runs (quick mode, as a subprocess, against a real redis-server) and prints its figure last;
the claims its figures rest on hold: both hits make no VL forward and equal the miss."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redisserver import require_redis_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_shared_cache_quick(tmp_path: Path) -> None:
    require_redis_server()
    out = tmp_path / "shared_cache.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "BENCH_QUICK": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "shared_cache.py"), "--json", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    figure = re.fullmatch(r"shared_cache speed-up \(full miss / shared hit, median of \d+\): (\S+)", lines[-1])
    assert figure is not None and math.isfinite(float(figure[1])) and float(figure[1]) > 0, lines[-1]
    assert "vl forwards on shared hit: 0" in lines and "vl forwards on local hit: 0" in lines
    results = json.loads(out.read_text())
    assert results["hits_equal_miss"] is True and results["vl_forwards"]["miss"] == [1] * results["rounds"]
    assert all(math.isfinite(results[k]["median_s"]) for k in ("miss", "shared_hit", "local_hit"))
