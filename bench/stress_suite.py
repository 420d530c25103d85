"""Run the whole test suite on a deliberately loaded machine, to find tests that pass only on an idle one.

    python bench/stress_suite.py [--busy N] [--omp-threads N] [-- PYTEST_ARGS...]

``--busy N`` (default 2) starts N processes that spin (``while True: pass``) for as long as the suite runs: on a
2-core machine that halves or thirds the CPU every test gets, so anything that relies on timing luck shows up.
``--omp-threads N`` runs the suite with ``OMP_NUM_THREADS=N`` instead of ``./zvl test``'s default of 1 (other
kernels, other summation orders). The spinners are stopped however the suite ends (they are our own children, in
their own process group). Prints pytest's closing line and the wall time; exits with the suite's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


def _spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True) for _ in range(count)]


def _stop(spinners: list[subprocess.Popen]) -> None:
    for proc in spinners:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=2, help="spinning processes beside the suite (default 2)")
    parser.add_argument("--omp-threads", type=int, help="OMP_NUM_THREADS for the suite (default: ./zvl test's 1)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to ./zvl test (after --)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    spinners = _spinners(args.busy)
    t0 = time.monotonic()
    try:
        proc = subprocess.run([str(ROOT / "zvl"), "test", "-q", *args.pytest_args], cwd=ROOT, env=env,
                              capture_output=True, text=True)
    finally:
        _stop(spinners)
    took = time.monotonic() - t0
    closing = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print("\n".join(failures))
    if proc.returncode:  # the first failure's report, for a run nobody watched
        report = proc.stdout.split("= FAILURES =", 1)[-1] if "= FAILURES =" in proc.stdout else proc.stdout
        print(report.split("= ERRORS =", 1)[-1][-6000:])
    print(f"busy={args.busy} omp_threads={env.get('OMP_NUM_THREADS', '1 (zvl default)')} cores={os.cpu_count()}: "
          f"{closing[-1] if closing else 'no closing line'} in {took:.0f} s")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
