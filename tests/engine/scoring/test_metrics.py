"""The weight-free scores on synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage.color import rgb2lab

from engine.scoring.metrics import clipped_share, color_distance, noise_sigma, texture_distance, weight_free_scores


def _scene(size: int = 192) -> Image.Image:
    """A colourful image with structure at many scales: gradients, stripes and seeded fine grain."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(7)
    grain = rng.random((size, size))
    r = 0.5 + 0.4 * np.sin(12 * np.pi * x) * y
    g = 0.3 + 0.5 * x + 0.1 * (grain - 0.5)
    b = 0.6 - 0.4 * y + 0.15 * np.sin(40 * np.pi * (x + y))
    rgb = np.clip(np.stack([r, g, b], axis=2), 0.02, 0.98)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _recolour(image: Image.Image, t: float, towards=(255, 0, 140)) -> Image.Image:
    return Image.blend(image, Image.new("RGB", image.size, towards), t)


def test_identical_images_score_zero():
    img = _scene()
    assert color_distance(img, img.copy()) == 0.0
    assert texture_distance(img, img.copy()) == 0.0


def test_colour_distance_ignores_where_colours_are():
    img = _scene(64)  # under the analysis size: no downscaling, the pixel set is exactly permuted
    pixels = np.asarray(img).reshape(-1, 3)
    shuffled = np.random.default_rng(1).permutation(pixels).reshape(64, 64, 3)
    assert color_distance(Image.fromarray(shuffled), img) == pytest.approx(0.0, abs=1e-9)


def test_stronger_recolouring_is_a_larger_colour_distance():
    img = _scene()
    distances = [color_distance(_recolour(img, t), img) for t in (0.1, 0.3, 0.6, 0.9)]
    assert distances[0] > 0
    assert distances == sorted(distances) and len(set(distances)) == 4


def test_colour_distance_of_two_solid_colours_is_bounded_by_delta_e():
    """Two one-colour images: each projection moves a point mass by |d·Δ|, so the mean lies in (0, ΔE76]."""
    a, b = (200, 40, 40), (40, 90, 200)
    delta_e = np.linalg.norm(rgb2lab(np.array([[a]]) / 255.0) - rgb2lab(np.array([[b]]) / 255.0))
    d = color_distance(Image.new("RGB", (32, 32), a), Image.new("RGB", (48, 40), b))
    assert delta_e / 4 < d <= delta_e + 1e-9
    assert d == pytest.approx(color_distance(Image.new("RGB", (8, 8), b), Image.new("RGB", (8, 8), a)))


def test_blur_is_a_texture_change_that_grows_with_the_blur():
    img = _scene()
    distances = [texture_distance(img.filter(ImageFilter.GaussianBlur(r)), img) for r in (0.7, 1.5, 3.0)]
    assert distances[0] > 0.05
    assert distances == sorted(distances)
    # a uniform brightness change keeps the (power-normalised) spectrum: far less than any blur
    brighter = Image.eval(img, lambda v: min(255, int(v * 0.8) + 20))
    assert texture_distance(brighter, img) < distances[0] / 4


def test_clipped_share_counts_pixels_with_a_channel_at_the_ends():
    arr = np.full((10, 20, 3), 128, dtype=np.uint8)
    arr[0, :5, 0] = 255  # 5 pixels blown in red
    arr[3, :10] = 0  # 10 pixels black
    assert clipped_share(Image.fromarray(arr)) == pytest.approx(15 / 200)
    over = Image.eval(_scene(), lambda v: min(255, 2 * v))  # an over-driven image: large areas at 255
    assert clipped_share(over) > clipped_share(_scene()) + 0.2


def test_noise_sigma_reads_the_added_noise_level():
    rng = np.random.default_rng(3)
    flat = np.full((256, 256), 128.0)
    for sigma in (4.0, 12.0):
        noisy = np.clip(flat + rng.normal(0, sigma, flat.shape), 0, 255).astype(np.uint8)
        estimate = noise_sigma(Image.fromarray(np.stack([noisy] * 3, axis=2)))
        assert estimate == pytest.approx(sigma, rel=0.1)
    y, x = np.mgrid[0:256, 0:256]
    smooth = Image.fromarray(np.stack([(x / 255 * 200).astype(np.uint8)] * 3, axis=2))
    assert noise_sigma(smooth) < 1.0


def test_weight_free_scores_without_a_reference_skip_the_distances():
    img = _scene(64)
    assert set(weight_free_scores(img, None)) == {"clipped_share", "noise_sigma"}
    assert set(weight_free_scores(img, img)) == {"color_distance", "texture_distance", "clipped_share",
                                                 "noise_sigma"}


def test_wasserstein_1d_equals_scipys_for_unequal_sample_sizes():
    from scipy.stats import wasserstein_distance

    from engine.scoring.metrics import wasserstein_1d

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(301, 4)), rng.gamma(2.0, size=(157, 4))
    expected = [wasserstein_distance(a[:, k], b[:, k]) for k in range(4)]
    assert wasserstein_1d(a, b) == pytest.approx(expected, rel=1e-9)
    assert wasserstein_1d(a, a.copy()) == pytest.approx([0.0] * 4, abs=1e-12)
