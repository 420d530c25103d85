"""The two blend modes that change the caption's length: ``append`` (reference rows after the prompt) and
``replace`` (the seed's alpha = 1: the whole VL sequence as the caption). Pure functions on ``[L, D]`` tensors; the
dispatcher is :func:`engine.conditioning.blend.blend`.

Both must stay continuous as alpha → 0 although the DiT RMS-normalises every caption row, which undoes any scaling
of a row (so ``alpha * rows`` alone is an on/off switch, audit #20a). ``append`` therefore lets alpha choose *how
many* rows are appended (the Redux-community control): ``alpha·K`` rows, none near 0; ``replace`` lets alpha move the
caption's length and content together from the prompt (0) to the reference's sequence (1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from engine.conditioning.attention import top_rows
from engine.conditioning.normalize import match_rows
from engine.conditioning.sequence import (
    check_alpha,
    check_matrix,
    compute_dtype,
    pool_sequence,
    resample_linear,
)
from engine.limits import LIMITS
from engine.types import MAX_CAPTION_LEN

__all__ = ["append_count", "blend_append", "blend_replace", "pool_grid"]


def pool_grid(image: torch.Tensor, grid: tuple[int, int], count: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Area-pool the image rows ``[cols·rows, D]`` (raster order, ``grid = (cols, rows)``) in 2-D to at most
    ``count`` rows, on the ``kc × kr`` grid closest to the image's aspect (``kc·kr <= count``), raster order.

    Each output averages one rectangle of the image (exact fractional coverage, separably along the rows then the
    columns), so no pooled row mixes the right edge of one image row with the left edge of the next (the 1-D
    pooling's 16×1 strips, audit #20b). Returns ``(pooled [kr·kc, D], (kc, kr))``.
    """
    cols, rows = int(grid[0]), int(grid[1])
    if cols * rows != image.shape[0]:
        raise ValueError(f"image_grid {cols}x{rows} does not match the {image.shape[0]} image rows")
    kc, kr = _grid_for(cols, rows, max(1, int(count)))
    width = image.shape[1]
    by_rows = pool_sequence(image.reshape(rows, cols * width), kr).reshape(kr, cols, width)  # pool along y
    by_cols = pool_sequence(by_rows.transpose(0, 1).reshape(cols, kr * width), kc)  # then along x
    return by_cols.reshape(kc, kr, width).transpose(0, 1).reshape(kr * kc, width), (kc, kr)


def _grid_for(cols: int, rows: int, count: int) -> tuple[int, int]:
    """``(kc, kr)`` with ``kc <= cols``, ``kr <= rows``, ``kc·kr <= count``, aspect closest to ``cols/rows`` (ties: more
    cells)."""
    aspect, best = cols / rows, (math.inf, 0, 1, 1)
    for kr in range(1, min(rows, count) + 1):
        kc = min(cols, count // kr)
        key = (round(abs(math.log((kc / kr) / aspect)), 9), -(kc * kr), kc, kr)
        best = min(best, key)
    return best[2], best[3]


def append_count(alpha: float, append_tokens: int, text_length: int, image_rows: int) -> int:
    """How many rows ``append`` adds: ``round(alpha · K)``, ``K = append_tokens``, never more than the image has
    nor than fit after the prompt under the DiT's 1504-row cap (so ``fit_caption`` never pools the text rows)."""
    return max(0, min(round(float(alpha) * int(append_tokens)), int(image_rows), MAX_CAPTION_LEN - int(text_length)))


def _check_image_mask(image_mask: Any, length: int, device: torch.device) -> torch.Tensor:
    if image_mask is None:
        raise ValueError(
            "image_mask is required for blend_mode append (a [L_vl] bool mask of the image rows of vl); got None"
        )
    try:
        mask = torch.as_tensor(image_mask, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"image_mask must be a [L_vl] bool mask; got {type(image_mask).__name__}") from None
    if mask.dtype != torch.bool:
        raise ValueError(f"image_mask must be a bool mask; got dtype {mask.dtype}")
    if mask.dim() != 1 or mask.shape[0] != length:
        raise ValueError(f"image_mask must have shape [L_vl] = [{length}]; got {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("image_mask selects no image rows: a reference without image tokens cannot be appended")
    return mask


def blend_append(vl: torch.Tensor, text: torch.Tensor, alpha: float, image_mask: torch.Tensor | Sequence[bool] | None,
                 append_tokens: int = 64, *, image_grid: tuple[int, int] | None = None,
                 row_scale: float | None = None, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``append`` (the FLUX-Redux / Midjourney ``--sref`` idea): reference rows after the untouched prompt.

    ::

        image = vl[image_mask]                         # the image-patch rows, raster order
        k     = append_count(alpha, append_tokens, ...) # round(alpha·K), capped
        out   = concat(text, pool_grid(image, image_grid, k))

    The text rows are bit-exact; the appended rows are 2-D area pools of the image (``image_grid = (cols, rows)``,
    ``VLResult.settings["image_grid"]``; without one the image is taken as one row of patches), at most ``k`` on the
    grid closest to the image's aspect. Alpha sets the count, so ``alpha → 0`` appends nothing (``alpha·K < 0.5``
    gives exactly the text) and the reference's share grows with alpha; ``row_scale`` (``row_rms`` normalisation)
    gives the appended rows the prompt's content-row RMS. The rows depend on the image alone: one extraction serves
    every prompt. ``row_weights`` (``[n_image]``, ``append_selection=attention``: the prompt's attention mass per image
    row) appends instead the ``k`` image rows of most weight, in raster order (:func:`~engine.conditioning.attention.
    top_rows`). ``ValueError`` naming ``image_mask`` or ``append_tokens``.
    """
    text = check_matrix(text, "text")
    vl = check_matrix(vl, "vl").to(device=text.device, dtype=compute_dtype(text.dtype))
    a, k_max = check_alpha(alpha), LIMITS["append_tokens"].check(append_tokens)  # the one bound (engine.limits)
    mask = _check_image_mask(image_mask, vl.shape[0], vl.device)
    image = vl[mask]
    k = append_count(a, k_max, text.shape[0], image.shape[0])
    if k == 0:
        return text.clone()
    grid = tuple(image_grid) if image_grid is not None else (image.shape[0], 1)
    pooled = pool_grid(image, grid, k)[0] if row_weights is None else top_rows(image, row_weights, k)
    if row_scale is not None:
        pooled = match_rows(pooled, row_scale)
    return torch.cat([text, pooled.to(text.dtype)], dim=0)


def blend_replace(vl: torch.Tensor, text: torch.Tensor, alpha: float, *, row_scale: float | None = None
                  ) -> torch.Tensor:
    """``replace`` (the seed's alpha = 1: the whole VL sequence as the caption, "reconstructs the scene").

    With ``L_v = min(len(vl), 1504)`` and ``n = len(text) + round(alpha · (L_v - len(text)))``::

        out = alpha · pool_sequence(vl, n) + (1 - alpha) · resample_linear(text, n)

    At ``alpha = 1`` the caption is the VL sequence itself (area-pooled under the 1504-row cap when longer); as
    alpha falls the caption shrinks towards the prompt's length and its rows towards the prompt's, and
    ``alpha = 0`` is the text exactly. ``row_scale`` gives the VL rows the prompt's content-row RMS.
    """
    text = check_matrix(text, "text")
    dtype = compute_dtype(text.dtype)
    vl = check_matrix(vl, "vl").to(device=text.device, dtype=dtype)
    a = check_alpha(alpha)
    if a == 0.0:
        return text.clone()
    full = min(vl.shape[0], MAX_CAPTION_LEN)
    n = text.shape[0] + round(a * (full - text.shape[0]))
    pooled = pool_sequence(vl, n)
    if row_scale is not None:
        pooled = match_rows(pooled, row_scale)
    out = a * pooled + (1.0 - a) * resample_linear(text.to(dtype), n)
    return out.to(text.dtype)
