"""The score chart and scores.csv from synthetic scored cells: layout, one panel per score, the best cell."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from engine.scoring.chart import PANEL_PX, ScoredCell, chart_png, chart_size, scores_csv
from engine.scoring.score import SCORE_NAMES, balance, best_index


def _scores(adh: float, sty: float, extra: float = 1.0) -> dict[str, float]:
    return {"prompt_adherence": adh, "style_similarity": sty, "color_distance": extra, "texture_distance": extra / 2,
            "clipped_share": 0.01, "noise_sigma": 2.0}


def _alpha_cells() -> list[ScoredCell]:
    cells = [ScoredCell("baseline", {"alpha": 0.0}, True, _scores(0.99, 0.9))]  # best product, but a baseline
    for alpha, adh, sty in ((0.2, 0.9, 0.3), (0.5, 0.7, 0.6), (0.8, 0.3, 0.9)):
        cells.append(ScoredCell(f"alpha={alpha}", {"alpha": alpha}, False, _scores(adh, sty, 10 * alpha)))
    return cells


def _png_record(png: bytes) -> tuple[tuple[int, int], dict]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size, json.loads(im.text["zvl-chart"])


def test_best_cell_is_the_largest_product_among_vl_cells():
    cells = _alpha_cells()
    products = [c.scores["prompt_adherence"] * c.scores["style_similarity"] for c in cells]
    assert best_index([c.scores for c in cells], [c.baseline for c in cells]) == 2  # 0.42 > 0.27 = 0.27
    assert products.index(max(products)) == 0  # without the baseline rule the baseline would win
    assert best_index([c.scores for c in cells]) == 0
    assert best_index([None, {"color_distance": 1.0}]) is None
    assert balance({"prompt_adherence": 0.5, "style_similarity": float("nan")}) is None


def test_one_d_chart_has_a_panel_per_score_with_the_swept_values():
    cells = _alpha_cells()
    png, record = chart_png(cells, ["alpha"], title="Prompt: a fox")
    size, stored = _png_record(png)
    assert size == chart_size(6) == (3 * PANEL_PX[0], 2 * PANEL_PX[1])
    assert stored == json.loads(json.dumps(record))
    assert stored["kind"] == "line" and stored["panels"] == list(SCORE_NAMES)
    assert stored["best"] == 2 and stored["best_label"] == "alpha=0.5"
    for name in SCORE_NAMES:  # one series per panel: the VL cells at their alpha, in order
        assert stored["series"][name] == [[c.axes["alpha"], c.scores[name]] for c in cells[1:]]


def test_two_d_chart_is_a_heat_map_per_score():
    cells = [ScoredCell(f"a{a} l{layer}", {"alpha": a, "layer": layer}, False,
                        {"color_distance": a * 10 + layer, "noise_sigma": 1.0})
             for a in (0.3, 0.6) for layer in (-2, -6, -8)]
    png, record = chart_png(cells, ["alpha", "layer"])
    size, stored = _png_record(png)
    assert stored["kind"] == "heatmap" and stored["panels"] == ["color_distance", "noise_sigma"]
    assert size == chart_size(2) == (2 * PANEL_PX[0], PANEL_PX[1])
    # [row, column, value]: rows are alphas, columns layers, in plan order
    assert stored["series"]["color_distance"] == [[r, c, (0.3, 0.6)[r] * 10 + (-2, -6, -8)[c]]
                                                  for r in range(2) for c in range(3)]
    assert stored["best"] is None  # no judged scores: nothing to balance


def test_three_axes_chart_per_cell_and_no_scores_refused():
    cells = [ScoredCell(str(i), {"a": i, "b": i, "c": i}, False, {"noise_sigma": float(i)}) for i in range(3)]
    _png, record = chart_png(cells, ["a", "b", "c"])
    assert record["kind"] == "cells" and record["series"]["noise_sigma"] == [[0, 0.0], [1, 1.0], [2, 2.0]]
    with pytest.raises(ValueError, match="no cell has a score"):
        chart_png([ScoredCell("x", {}, False, None)], [])


def test_scores_csv_has_a_row_per_cell_and_marks_the_best():
    cells = _alpha_cells() + [ScoredCell("failed", {"alpha": 1.0}, False, None)]
    rows = list(csv.DictReader(io.StringIO(scores_csv(cells, ["alpha"]))))
    assert [r["label"] for r in rows] == [c.label for c in cells]
    assert [r["best"] for r in rows] == ["0", "0", "1", "0", "0"]
    assert float(rows[2]["balance"]) == pytest.approx(0.7 * 0.6)
    assert float(rows[1]["color_distance"]) == pytest.approx(2.0) and rows[4]["color_distance"] == ""
    assert rows[0]["baseline"] == "1" and rows[3]["alpha"] == "0.8"
