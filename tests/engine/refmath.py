"""Independent reference computations shared by the blending and masking tests (deliberately not the
implementation's formulation: explicit loops, exact fractions)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def ref_pool(x: np.ndarray, n: int) -> np.ndarray:
    """Exact area average: output i averages x over [i*L/n, (i+1)*L/n), rows weighted by overlap."""
    size = x.shape[0]
    out = np.zeros((n, x.shape[1]))
    for i in range(n):
        a, b = Fraction(i * size, n), Fraction((i + 1) * size, n)
        for j in range(size):
            overlap = min(b, Fraction(j + 1)) - max(a, Fraction(j))
            if overlap > 0:
                out[i] += float(overlap) * x[j]
        out[i] /= float(b - a)
    return out
