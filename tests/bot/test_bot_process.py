"""`python -m bot --demo` as a real process against the fake Discord: it connects, syncs, answers a command, and
stops cleanly on SIGTERM (exit 0, database closed, token never printed)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.bot.harness import png
from tests.fakediscord import FakeDiscord

def _pipeline_has_stats_api() -> bool:
    from engine.generation.pipeline import StylePipeline

    return hasattr(StylePipeline, "reference_stats_key")


pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]
needs_stats_api = pytest.mark.skipif(not _pipeline_has_stats_api(),
                                     reason="needs the pipeline's reference_stats_key API (merged separately)")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.process-test-token-value-0123456789"


@needs_stats_api
async def test_demo_process_serves_and_stops_cleanly(tmp_path: Path) -> None:
    async with FakeDiscord(heartbeat_interval_ms=1000, token=TOKEN) as fake:
        fake.add_guild("Process Guild")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZVL_")}
        env.update(fake.env, ZVL_DISCORD_TOKEN=TOKEN, ZVL_DATA_DIR=str(tmp_path / "data"), ZVL_WIDTH="64",
                   ZVL_HEIGHT="64", ZVL_STEPS="2", ZVL_DEVICE="cpu", ZVL_VL_DEVICE="cpu", ZVL_COOLDOWN_S="0",
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "--demo", cwd=tmp_path, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await fake.wait_connected(timeout=120)
            await fake.wait_synced(timeout=30)
            rec = await fake.dispatch_slash("stylize", {"image": fake.add_attachment(png(), "r.png", "image/png"),
                                                        "prompt": "noise"})
            assert (await rec.wait_ack(3)).type == 5
            await rec.wait_until(lambda r: any(f.filename.startswith("zvl-") for f in r.files), timeout=120)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = (out + err).decode()
    assert proc.returncode == 0, text[-3000:]
    assert "DEMO MODE" in text and "services closed" in text
    assert TOKEN not in text and "Traceback" not in text
