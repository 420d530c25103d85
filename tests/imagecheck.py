"""What "the same image" means across batch shapes, CPU kernels and thread counts.

The engine promises that an image depends on its seed and its request, not on what else shares its DiT batch: each
image gets its own CPU generator, so its starting noise is exactly the same alone or batched. It does *not* promise
bit-identical pixels: torch picks different kernels (and summation orders) for other batch shapes, CPU vendors
(Intel vs AMD) and thread counts, and float32 rounding then differs in the last bits. After 2-4 tiny-model steps and
the VAE those bits move a pixel by a level or two, where another seed moves it by ~40 on average (measured on the
tiny models: mean |difference| 39.9 between seeds 1 and 7, 0.0 between batch and single on one machine).

Comparisons of the *same* computation (same shapes, same process) stay exact; only comparisons across batch
shapes use these bounds.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Largest difference of one channel of one pixel, in 8-bit levels, allowed between "the same" image.
MAX_LEVELS = 8
#: Largest mean absolute difference over all pixels and channels, in 8-bit levels.
MEAN_LEVELS = 0.5


def image_difference(a: Image.Image, b: Image.Image) -> tuple[int, float]:
    """``(max, mean)`` absolute difference in 8-bit levels of two RGB images of one size."""
    assert a.size == b.size and a.mode == b.mode, (a.size, a.mode, b.size, b.mode)
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return int(diff.max()), float(diff.mean())


def assert_same_image(a: Image.Image, b: Image.Image) -> None:
    """``a`` and ``b`` are the same image up to floating-point reordering (see the module docstring)."""
    worst, mean = image_difference(a, b)
    assert worst <= MAX_LEVELS and mean <= MEAN_LEVELS, f"images differ: max {worst} levels, mean {mean:.3f}"


def assert_different_image(a: Image.Image, b: Image.Image) -> None:
    """``a`` and ``b`` differ by far more than reordering could explain (another seed, another request)."""
    _worst, mean = image_difference(a, b)
    assert mean > 10 * MEAN_LEVELS, f"images are nearly the same: mean difference {mean:.3f} levels"
