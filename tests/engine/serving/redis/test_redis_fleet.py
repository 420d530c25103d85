"""ETAs over several workers' measured speeds, the optional import of redis, and the user's line for an outage."""

from __future__ import annotations

import subprocess
import sys

from engine.serving.queue import QueueUnavailable
from engine.serving.redis.fleet import WorkerInfo, queued_etas
from tests.engine.serving.redis.procs import ROOT


def worker(name: str, *, vl_s: float, dit_unit_s: float, dit_free_in: float = 0.0, paused: bool = False) -> WorkerInfo:
    return WorkerInfo(name, "cuda:0", {}, [], 0.0, paused, False, None,
                      {"vl_s": vl_s, "text_s": 0.0, "dit_s_per_1024px_step": dit_unit_s}, 0.0, dit_free_in)


def test_eta_uses_each_workers_own_speed():
    fast, slow = worker("fast", vl_s=1.0, dit_unit_s=1.0), worker("slow", vl_s=1.0, dit_unit_s=3.0)
    hint = b"1 1 2"  # one reference, one prompt, 2 DiT units
    # job 1 -> fast (both free at 0; ties go to the first): DiT 1..3; fast's encode frees at 1.
    # job 2 -> slow (free at 0): DiT 1..7.  job 3 -> fast (encode free at 1): encode 1..2, DiT max(2, 3)..5.
    assert queued_etas([hint, hint, hint], [fast, slow]) == [3.0, 7.0, 5.0]


def test_eta_skips_paused_workers_and_counts_work_in_hand():
    busy = worker("busy", vl_s=1.0, dit_unit_s=1.0, dit_free_in=10.0)
    paused = worker("paused", vl_s=0.1, dit_unit_s=0.1, paused=True)
    assert queued_etas([b"1 0 2"], [busy, paused]) == [12.0]  # waits for busy's DiT, never for the paused one


def test_import_engine_and_the_embedded_bot_do_not_import_redis():
    code = ("import sys, engine, engine.serving.worker, bot.services; "
            "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if m.startswith('redis'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_outage_reaches_the_user_as_one_line():
    from bot.errors import user_message

    assert user_message(QueueUnavailable()) == "The queue is unavailable, try again shortly"
