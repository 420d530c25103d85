"""Scores of a generated image against its reference and prompt (see README "Scores").

* :mod:`~engine.scoring.metrics` — weight-free: colour distance (sliced Wasserstein in CIELAB), texture distance
  (radial power spectra), clipped-pixel share, noise sigma. numpy / scipy / scikit-image, no model.
* :mod:`~engine.scoring.judge` — judged by the loaded Qwen3-VL: VQAScore-style P("Yes") to the two questions in
  :data:`~engine.scoring.judge.QUESTIONS` (prompt adherence, style similarity).
* :mod:`~engine.scoring.score` — every score in one order, and the best-cell rule (adherence × similarity).
* :mod:`~engine.scoring.chart` — a sweep's scores as a chart PNG and scores.csv.

Importing this package imports no torch (the judge imports it when it runs).
"""
