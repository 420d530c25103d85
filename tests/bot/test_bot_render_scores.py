"""A scored sweep's final message: the chart beside the grid (within the upload limit), the best cell named."""

from __future__ import annotations

import io
import json

from PIL import Image

from bot.jobs import render_result
from engine.scoring.chart import chart_size
from engine.serving.queue import Job, JobOutcome, JobStatus
from engine.sweep.plan import plan_sweep
from engine.types import StylizeRequest, StylizeResult

LIMIT = 8 << 20


def _job_and_outcome(scored: bool) -> tuple[Job, JobOutcome]:
    ref = Image.new("RGB", (32, 32), (0, 0, 200))
    base = StylizeRequest(prompt="a red fox", reference=ref, seeds=(7,), steps=1, width=32, height=32)
    plan = plan_sweep(base, None, {"alphas": [0.2, 0.5, 0.8]}, max_cells=16)
    # adherence falls and similarity rises with alpha: products 0.18, 0.2475, 0.16 -> alpha 0.5 is the best;
    # the baseline's product (0.95 x 0.3) is larger but a baseline is not a VL setting
    judged = [(0.95, 0.3), (0.9, 0.2), (0.55, 0.45), (0.2, 0.8)]
    results = []
    for cell, (adh, sty) in zip(plan.cells, judged, strict=True):
        scores = {"prompt_adherence": adh, "style_similarity": sty, "color_distance": 5.0} if scored else {}
        results.append(StylizeResult([Image.new("RGB", (32, 32), (90, 0, 0))], [7], cell.request.record(),
                                     scores=scores))
    job = Job(owner_id=1, requests=[c.request for c in plan.cells], kind="sweep", id="ab" * 16,
              context={"plan": plan, "params": {"prompt": "a red fox", "resolved": {}}})
    return job, JobOutcome(job.id, JobStatus.DONE, results=results, timings={"total": 1.0})


async def test_scored_sweep_attaches_the_chart_and_names_the_best_cell():
    job, outcome = _job_and_outcome(scored=True)
    out = await render_result(job, outcome, LIMIT)
    names = [name for name, _ in out.uploads]
    assert names[0].startswith("zvl-sweep-") and names[1] == "zvl-scores-abababab.png" and names[2] == "cells.json"
    with Image.open(io.BytesIO(out.uploads[1][1])) as chart:
        assert chart.size == chart_size(3)
        assert json.loads(chart.text["zvl-chart"])["panels"] == ["prompt_adherence", "style_similarity",
                                                                 "color_distance"]
    lines = out.content.splitlines()
    assert len(lines) == 2 and "**alpha=0.5**" in lines[1] and "0.55 × 0.45" in lines[1]
    cells = json.loads(out.uploads[2][1])["cells"]
    assert cells[2]["scores"]["prompt_adherence"] == 0.55


async def test_chart_over_the_upload_limit_is_left_out_and_unscored_sweeps_have_none():
    job, outcome = _job_and_outcome(scored=True)
    out = await render_result(job, outcome, 20_000)  # the grid shrinks to fit; a chart cannot
    assert all(len(data) <= 20_000 for _, data in out.uploads)
    assert not any(name.startswith("zvl-scores-") for name, _ in out.uploads)
    assert "Best balance" in out.content  # the line needs no file
    job, outcome = _job_and_outcome(scored=False)
    out = await render_result(job, outcome, LIMIT)
    assert not any(name.startswith("zvl-scores-") for name, _ in out.uploads)
    assert "Best balance" not in out.content
