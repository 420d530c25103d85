"""Normalising Qwen3-VL hidden states towards the text encoder's scale, and the row scale of the blend.

The fact behind the default (audit p4): Z-Image's caption embedder is ``RMSNorm → Linear``, so the DiT reads only
the *direction* of each caption row, never its scale. Any single factor applied to VL rows therefore changes only the
effective share of VL in a blended row,

    share_i = a·|v_i| / (a·|v_i| + (1 - a)·|t_i|)        (out_i = a·v_i + (1 - a)·t_i),

and the seed's ``global`` factor (one std over every selected row → 61) drifts with the prompt's length, the image
budget and the token mode, so the same alpha meant different strengths (on the tiny models alpha was an on/off
switch: VL rows at RMS 64 against text rows at 0.03).

``row_rms`` (the default) removes the drift in two steps:

1. at extraction, each VL row is scaled to unit RMS (:func:`unit_rows`): row-local, so it is independent of the
   prompt and of the other rows (which is what lets ``append`` and the image token modes be extracted once per
   reference);
2. at the blend, each VL row the DiT will read (pooled, resampled, appended, ...) is scaled to the median RMS of the
   prompt's *content* rows (:func:`content_rms`: the prompt's own tokens, no chat template, no first-token sink),
   so ``|v_i| = median |t_j|`` and the share of a typical row is exactly ``a`` whatever the prompt, budget or token
   mode.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.types import Normalization

__all__ = ["PER_DIM_CLIP", "content_rms", "match_rows", "mix_layers", "normalize",
           "reference_scale", "row_rms", "std_all", "unit_rows"]

#: Per-dimension z-scores are clipped at this many standard deviations (``per_dim`` / ``hybrid``).
PER_DIM_CLIP = 3.0
_EPS = 1e-6


def std_all(x: torch.Tensor) -> float:
    """Unbiased std over all elements (0 for a single element)."""
    if x.numel() < 2:
        return 0.0
    return float(x.std())


def row_rms(x: torch.Tensor) -> torch.Tensor:
    """``[L]``: the root mean square of each row of ``x [L, D]`` (what the DiT's caption RMSNorm divides by)."""
    return x.pow(2).mean(dim=1).sqrt()


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` scaled to RMS 1 (an all-zero row stays zero)."""
    rms = row_rms(x).unsqueeze(1)
    return torch.where(rms > 0, x / rms.clamp(min=1e-30), x)


def match_rows(x: torch.Tensor, target: float) -> torch.Tensor:
    """Each row of ``x`` scaled to RMS ``target`` (directions kept; an all-zero row stays zero)."""
    return unit_rows(x) * float(target)


def content_rms(text: torch.Tensor, content_mask: Any = None) -> float:
    """The median row RMS of the prompt's content rows (the row scale ``row_rms`` matches VL rows to).

    ``content_mask`` ``[L]`` bool marks the prompt's own tokens (``TextEncoder.content_mask``); without one, every
    row but the first (the attention sink) counts. The median ignores the few massive-activation rows.
    """
    rms = row_rms(text.to(torch.float32))
    if content_mask is not None:
        mask = torch.as_tensor(content_mask, dtype=torch.bool, device=rms.device)
        if mask.shape == rms.shape and bool(mask.any()):
            return float(rms[mask].median())
    return float((rms[1:] if rms.shape[0] > 1 else rms).median())


def mix_layers(layers: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """A weighted mix of several layers' ``[L, D]`` states in which each layer counts by its weight, not its scale.

    Deeper layers have larger residual norms (row RMS 0.050 vs 0.028 for -6 vs -8 on the tiny model, audit #21), so
    a raw weighted mean is dominated by the largest layer. Each layer's rows are brought to unit RMS first, and the
    mix is scaled back to the weighted mean of the layers' row RMS, ``m_i = (Σ w_l |h_li|) · Σ w_l ĥ_li``; with two
    equal weights every mixed row is equally close (in angle) to both layers' rows. Weights sum to 1.
    """
    target = sum(w * row_rms(h) for h, w in layers)
    direction = sum(w * unit_rows(h) for h, w in layers)
    return direction * target.unsqueeze(1)


def normalize(x: torch.Tensor, mode: Normalization, target_std: float, reference_stats: Any = None
              ) -> tuple[torch.Tensor, float]:
    """Rescale ``x [L, D]`` (float32) by ``mode``; returns ``(result, scale_factor)``.

    ``scale_factor`` is the multiplier for ``global``; for ``row_rms`` the factor of the median row; for
    ``per_dim``/``hybrid`` (no single multiplier exists) the ratio of the result's std to the input's.
    """
    orig = std_all(x)
    if mode is Normalization.NONE:
        return x, 1.0
    if mode is Normalization.ROW_RMS:
        median = float(row_rms(x).median()) if x.shape[0] else 0.0
        return unit_rows(x), (1.0 / median if median > 0 else 1.0)

    def global_scaled() -> tuple[torch.Tensor, float]:
        if orig <= 0:
            return x.clone(), 1.0
        factor = float(target_std) / orig
        return x * factor, factor

    def per_dim_scaled() -> torch.Tensor:
        ref_mean = reference_stats.mean.to(torch.float32).reshape(-1)
        ref_std = reference_stats.std.to(torch.float32).reshape(-1)
        mean = x.mean(dim=0, keepdim=True)
        if x.shape[0] >= 2:
            std = x.std(dim=0, keepdim=True).clamp(min=_EPS)
            z = ((x - mean) / std).clamp(-PER_DIM_CLIP, PER_DIM_CLIP)
        else:
            z = torch.zeros_like(x)
        return z * ref_std + ref_mean

    if mode is Normalization.GLOBAL:
        return global_scaled()
    if mode is Normalization.PER_DIM:
        out = per_dim_scaled()
    else:  # HYBRID
        out = 0.5 * per_dim_scaled() + 0.5 * global_scaled()[0]
    return out, (std_all(out) / orig if orig > 0 else 1.0)


def reference_scale(rows: torch.Tensor, reference_stats: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's per-dimension ``(std, mean)`` brought to the scale of ``rows`` (outlier masking runs after
    normalisation, in the normalised units): both times ``RMS(rows) / RMS(reference)``, where the reference's RMS is
    ``sqrt(mean_d(std_d² + mean_d²))``. So detection compares shapes of spread, not units: a global factor or
    unit-RMS rows change no decision."""
    std = reference_stats.std.to(torch.float32).reshape(-1)
    mean = reference_stats.mean.to(torch.float32).reshape(-1)
    ref_rms = float((std.pow(2) + mean.pow(2)).mean().sqrt())
    own = float(rows.to(torch.float32).pow(2).mean().sqrt())
    c = own / ref_rms if ref_rms > 0 else 1.0
    return std * c, mean * c
