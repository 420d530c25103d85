"""The real bot process: a /sweep result carries the score chart beside the grid and names the best cell."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from engine.scoring.score import SCORE_NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(240)]


async def test_sweep_result_has_the_score_chart_and_the_best_cell(space) -> None:
    user = space.member("scorer")
    rec = await space.slash("sweep", {"image": space.ref(), "alphas": "0.3,0.7", "seed": 5, "prompt": "a scored grid"},
                            user)
    await rec.wait_ack(3)
    await rec.wait_until(lambda r: any(f.filename == "cells.json" for f in r.files), timeout=120)
    final = next(r for r in rec.accepted if any(f.filename == "cells.json" for f in r.files))
    names = [f.filename for f in final.files]
    assert names[0].startswith("zvl-sweep-") and names[1].startswith("zvl-scores-") and names[2] == "cells.json"
    chart = final.files[1]
    with Image.open(io.BytesIO(chart.data)) as im:
        record = json.loads(im.text["zvl-chart"])
    assert record["panels"] == list(SCORE_NAMES) and record["kind"] == "line"  # the tiny VL model judges too
    cells = json.loads(final.files[2].data)["cells"]
    assert all(set(c["scores"]) == set(SCORE_NAMES) for c in cells)  # cells.json sorts its keys
    best = max(cells[1:], key=lambda c: c["scores"]["prompt_adherence"] * c["scores"]["style_similarity"])
    content = final.content or ""
    assert f"Best balance (prompt adherence × style similarity): **{best['label']}**" in content
