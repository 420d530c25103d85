"""Scoring a CLI sweep: every cell's scores as it finishes, then scores.csv and the chart beside the grid.

A scoring failure never fails a cell: the cell keeps its image and records ``score_error``; a chart failure is
recorded as ``scores.chart_error`` in metadata.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.cli._errors import one_line
from engine.files import atomic_write_bytes

__all__ = ["CHART_FILE", "CSV_FILE", "SweepScorer", "judge_of"]

CSV_FILE = "scores.csv"
CHART_FILE = "scores_chart.png"


def judge_of(pipe: Any) -> Any:
    """The Qwen3-VL judge over the pipeline's own VL extractor (``None`` for a pipeline without one)."""
    extractor = getattr(pipe, "vl_extractor", None)
    if extractor is None:
        return None
    from engine.scoring.judge import Judge

    return Judge.from_extractor(extractor)


@dataclass
class SweepScorer:
    """Scores cells against ``reference`` (and their prompt, with a ``judge``) and writes the sweep's score files."""

    reference: Any
    judge: Any = None
    seconds: list[float] = field(default_factory=list)

    def score_cell(self, entry: dict[str, Any], image: Any, request: Any) -> None:
        """Put the cell's ``scores`` (or its ``score_error``) into its metadata entry."""
        from engine.scoring.score import score_image

        t0 = time.perf_counter()
        try:
            entry["scores"] = score_image(image, self.reference, request.prompt, self.judge)
            entry.pop("score_error", None)
        except Exception as exc:  # noqa: BLE001 - a score failure must not fail the cell
            entry["scores"] = None
            entry["score_error"] = one_line(exc)
        self.seconds.append(time.perf_counter() - t0)
        entry["score_seconds"] = round(self.seconds[-1], 4)

    def write(self, folder: Any, cells: list[dict[str, Any]], axes: list[str], title: str) -> dict[str, Any]:
        """Write scores.csv and the chart; returns metadata.json's ``scores`` entry."""
        from engine.scoring.chart import ScoredCell, chart_png, scores_csv
        from engine.scoring.judge import QUESTIONS
        from engine.scoring.score import best_index

        scored = [ScoredCell(label=c["label"], axes=c["axes"], baseline=c["baseline"], scores=c.get("scores"))
                  for c in cells]
        best = best_index([c.scores for c in scored], [c.baseline for c in scored])
        info: dict[str, Any] = {"csv": None, "chart": None, "judged": self.judge is not None,
                                "questions": QUESTIONS if self.judge is not None else None,
                                "best": None if best is None else {"index": best, "label": scored[best].label},
                                "seconds_per_cell": round(sum(self.seconds) / len(self.seconds), 4)
                                if self.seconds else None}
        atomic_write_bytes(folder / CSV_FILE, scores_csv(scored, axes).encode("utf-8"))
        info["csv"] = CSV_FILE
        try:
            png, record = chart_png(scored, axes, title=title)
            atomic_write_bytes(folder / CHART_FILE, png)
            info.update(chart=CHART_FILE, chart_kind=record["kind"], chart_panels=record["panels"])
        except Exception as exc:  # noqa: BLE001 - a chart failure must not hide the cells' results
            info["chart_error"] = one_line(exc)
        return info
