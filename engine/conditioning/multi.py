"""Several weighted references in one caption: how each blend mode combines them. Pure functions on ``[L, D]``.

With references ``1..n``, weights ``w_k`` and ``ŵ_k = w_k / Σw`` (``engine.multiref.normalized_weights``), and
``blend_k`` the caption the mode makes from reference ``k`` alone (:func:`engine.conditioning.blend.blend`):

============== ========================================================= ==============================================
mode           several references                                        why
============== ========================================================= ==============================================
linear,        ``Σ ŵ_k · blend_k``: the weighted mean of the one-reference these lerp ``a·m(vl_k) + (1−a)·text`` with
interpolate,   captions, i.e. ``a · Σ ŵ_k·m(vl_k) + (1−a) · text``       ``m`` the mode's row selection, row-normalised
pool                                                                     (``row_rms``): the mean of the references'
                                                                         normalised rows takes the VL share
adain,         ``Σ ŵ_k · blend_k``                                       AdaIN is affine in the statistics: (without
adain_per_dim                                                            row_scale) the mean of the restyles is the
                                                                         restyle with the ŵ-mean shift and scale
style_delta    ``Σ ŵ_k · blend_k`` = ``text + a · Σ ŵ_k · δ_k``          each δ against the gray image of its own size
replace        ``Σ ŵ_k · resample(blend_k, n)``, ``n`` the heaviest      the captions' lengths depend on each
               reference's caption length                                reference's sequence length
append         the prompt, then ``round(a·K)`` rows in all, split by     rows are not averaged: each reference keeps
               weight (largest remainder), each reference's share 2-D    its own summary tokens, the heavier one more,
               pooled from its own image rows, in reference order        within the same count and 1504-row cap
============== ========================================================= ==============================================

Means of rows that point different ways are shorter than each: with dissimilar references the averaged VL rows of
the interpolating modes have a somewhat lower RMS than ``row_scale``, so the VL share of a row is somewhat below
alpha. One reference (``n == 1``) is never routed here: its caption is the one-reference blend itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.conditioning.append import append_count, pool_grid
from engine.conditioning.normalize import match_rows
from engine.conditioning.sequence import check_alpha, check_matrix, compute_dtype, resample_linear

__all__ = ["append_several", "mean_caption", "split_count"]


def _check_weights(weights: Sequence[float], count: int) -> list[float]:
    if len(weights) != count or count == 0:
        raise ValueError(f"weights: one weight per reference; got {len(weights)} for {count}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be >= 0 and not all 0")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def mean_caption(captions: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``Σ ŵ_k · captions[k]`` (float32 or wider, cast back to the first caption's dtype). Captions of different
    lengths (``replace``) are first linearly resampled to the length of the heaviest one (the first of ties)."""
    shares = _check_weights(weights, len(captions))
    heaviest = max(range(len(shares)), key=lambda k: (shares[k], -k))
    first = check_matrix(captions[heaviest], "captions")
    length, dtype = first.shape[0], compute_dtype(first.dtype)
    out = torch.zeros(length, first.shape[1], dtype=dtype, device=first.device)
    for caption, share in zip(captions, shares):
        caption = check_matrix(caption, "captions").to(device=first.device, dtype=dtype)
        if caption.shape[0] != length:
            caption = resample_linear(caption, length)
        out += share * caption
    return out.to(first.dtype)


def split_count(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """``total`` rows split in proportion to ``weights`` (largest remainder, ties to the earlier reference), no
    reference over its ``caps[k]`` rows; what a capped reference cannot take goes to the others by the same rule."""
    counts = [0] * len(weights)
    left = min(int(total), sum(int(c) for c in caps))
    while left > 0:
        open_ = [k for k, w in enumerate(weights) if w > 0 and counts[k] < caps[k]]
        if not open_:
            break
        mass = sum(weights[k] for k in open_)
        exact = {k: left * weights[k] / mass for k in open_}
        give = {k: min(int(exact[k]), caps[k] - counts[k]) for k in open_}
        rest = left - sum(give.values())
        for k in sorted(open_, key=lambda k: (-(exact[k] - int(exact[k])), k)):
            if rest > 0 and counts[k] + give[k] < caps[k]:
                give[k] += 1
                rest -= 1
        if not any(give.values()):
            break
        for k, g in give.items():
            counts[k] += g
        left -= sum(give.values())
    return counts


def append_several(images: Sequence[tuple[torch.Tensor, tuple[int, int] | None]], text: torch.Tensor, alpha: float,
                   weights: Sequence[float], append_tokens: int, *, row_scale: float | None = None) -> torch.Tensor:
    """``append`` with several references: ``images[k] = (image rows [R_k, D], (cols, rows) or None)``; the prompt
    rows bit-exact, then each reference's share of ``append_count(alpha, K, ...)`` rows (:func:`split_count`),
    2-D area-pooled from its own rows, scaled to ``row_scale`` when given."""
    text = check_matrix(text, "text")
    a, shares = check_alpha(alpha), _check_weights(weights, len(images))
    rows = [check_matrix(image, "images") for image, _grid in images]
    total = append_count(a, append_tokens, text.shape[0], sum(r.shape[0] for r in rows))
    counts = split_count(total, shares, [r.shape[0] for r in rows])
    parts = [text]
    for (_image, grid), image, count in zip(images, rows, counts):
        if count == 0:
            continue
        image = image.to(device=text.device, dtype=compute_dtype(text.dtype))
        pooled, _ = pool_grid(image, tuple(grid) if grid else (image.shape[0], 1), count)
        if row_scale is not None:
            pooled = match_rows(pooled, row_scale)
        parts.append(pooled.to(text.dtype))
    return torch.cat(parts, dim=0) if len(parts) > 1 else text.clone()
