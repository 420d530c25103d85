"""Sweeps scored by the worker: after the DiT stage, in the VL thread, while the DiT takes the next job."""

from __future__ import annotations

import asyncio
import threading

import pytest
from PIL import Image

import engine.serving.stages as stages
from engine.scoring.score import SCORE_NAMES
from engine.serving.protocols import WorkerConfig
from engine.serving.queue import Job, JobStatus
from engine.serving.worker import EngineWorker
from engine.types import StylizeRequest
from tests.engine.serving.support import USERS, blocker, mkjob, req, settings, wait_for, wait_thread_event
from tests.fakes import FakePipeline

pytestmark = pytest.mark.timeout(60)

WEIGHT_FREE = ["color_distance", "texture_distance", "clipped_share", "noise_sigma"]


def _sweep(label: str) -> Job:
    """Two VL cells and a txt2img baseline without a reference of its own."""
    cells = [req(label, alpha=0.3), req(label, alpha=0.7), req(label, reference=None, alpha=0.0)]
    return Job(owner_id=USERS["A"], requests=cells, id=label, kind="sweep")


async def test_scoring_runs_in_the_vl_thread_while_the_dit_takes_the_next_job(make_worker, monkeypatch):
    pipe = FakePipeline()
    release_dit, release_scores, scoring = blocker(pipe, "dit", "S1"), threading.Event(), threading.Event()
    threads: list[str] = []

    def held_scoring(*args):
        threads.append(threading.current_thread().name)
        scoring.set()
        assert release_scores.wait(30)
        return real(*args)

    real = stages.score_results
    monkeypatch.setattr(stages, "score_results", held_scoring)
    w = await make_worker(pipe)
    await w.submit(_sweep("S1"))
    await w.submit(mkjob("B1", reference=2))
    await wait_for(lambda: ("text", "B1") in pipe.log, "B1 encoded")  # B1 waits in the hand-off
    release_dit.set()
    await wait_thread_event(scoring)
    # S1's scores are held in the VL thread: the DiT has gone on and finished B1 all the same
    assert (await w.wait("B1")).status is JobStatus.DONE
    assert [r.job_id for r in (await w.status()).running] == ["S1"]  # still running: not ended before its scores
    assert ("dit_end", "S1") in pipe.log and ("dit_end", "B1") in pipe.log
    release_scores.set()
    sweep = await w.wait("S1")
    assert sweep.status is JobStatus.DONE
    assert threads and set(threads) <= pipe.threads["vl"] and not set(threads) & pipe.threads["dit"]
    assert "score" in sweep.timings


async def test_every_cell_gets_the_weight_free_scores_against_the_jobs_reference(make_worker):
    w = await make_worker(FakePipeline())  # no vl_extractor: no judge
    await w.submit(_sweep("S2"))
    await w.submit(mkjob("B2"))
    sweep, single = await w.wait("S2"), await w.wait("B2")
    assert sweep.status is JobStatus.DONE
    for result in sweep.results:  # the baseline too: scored against the sweep's reference
        assert list(result.scores) == WEIGHT_FREE
    assert single.results[0].scores == {}  # one-cell jobs are not scored


async def test_scoring_can_be_turned_off(make_worker):
    w = await make_worker(FakePipeline(), score_sweeps=False)
    await w.submit(_sweep("S3"))
    sweep = await w.wait("S3")
    assert sweep.status is JobStatus.DONE and all(r.scores == {} for r in sweep.results)
    assert "score" not in sweep.timings


async def test_real_tiny_pipeline_judges_the_cells(tiny_models):
    from engine.generation.pipeline import StylePipeline

    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu")
    w = EngineWorker(pipe, config=WorkerConfig.from_settings(settings(cpu_threads=1)))
    await w.start()
    try:
        reference = Image.new("RGB", (96, 64), (200, 40, 40))
        base = StylizeRequest(prompt="a cat", reference=reference, steps=1, width=32, height=32)
        await w.submit(Job(owner_id=1, requests=[base.replace(alpha=a) for a in (0.2, 0.8)], id="s", kind="sweep"))
        outcome = await w.wait("s")
        assert outcome.status is JobStatus.DONE, outcome.error
        for result in outcome.results:
            assert list(result.scores) == list(SCORE_NAMES)
            assert 0 <= result.scores["prompt_adherence"] <= 1 and 0 <= result.scores["style_similarity"] <= 1
    finally:
        await w.stop()


async def test_a_slow_scoring_does_not_time_the_finished_sweep_out(make_worker, monkeypatch):
    """The job timeout is the generation's clock: it stops when the images are made."""
    release, scoring = threading.Event(), threading.Event()
    real = stages.score_results

    def slow(*args):
        scoring.set()
        assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(stages, "score_results", slow)
    w = await make_worker(FakePipeline(), settings=settings(job_timeout_s=2.0))
    await w.submit(_sweep("S4"))
    await wait_thread_event(scoring)
    await asyncio.sleep(2.5)  # past the job timeout while scoring (waiting for the clock, not synchronising)
    assert [r.job_id for r in (await w.status()).running] == ["S4"]
    release.set()
    outcome = await w.wait("S4")
    assert outcome.status is JobStatus.DONE and all(r.scores for r in outcome.results)
