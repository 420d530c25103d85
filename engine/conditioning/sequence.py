"""Shape and per-dimension tools for ``[L, D]`` embedding sequences: resampling, caption fitting, outlier masking.

These are the functions that change one sequence on its own (its length, or some of its columns); the functions
that mix two sequences live in :mod:`engine.conditioning.blend`, which imports its checks from here. Pure tensor
functions: no models, no I/O, no global state.

* :func:`pool_sequence` - anti-aliased (area) average pooling along the sequence axis, to any length.
* :func:`resample_linear` - 1-D linear resampling (``F.interpolate(mode="linear")`` semantics).
* :func:`fit_caption` - bring a caption over the DiT's limit (:data:`engine.types.MAX_CAPTION_LEN`) under it.
* :func:`mask_outliers` - find dimensions whose spread leaves the band ``[ref/t, ref*t]`` and fix them.

Computation runs in float32 (float64 for float64 inputs) and results are cast back to the input's dtype, so a
bfloat16 sequence is not pooled with bfloat16 accumulators.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F

from engine.types import MAX_CAPTION_LEN, FitMode, OutlierDirection, OutlierMode

__all__ = ["STD_EPS", "check_int", "check_matrix", "compute_dtype", "fit_caption", "mask_outliers", "pool_sequence",
           "resample_linear", "safe_std"]

#: Floor for a standard deviation used as a divisor (the seed's value).
STD_EPS = 1e-6


# --------------------------------------------------------------------------------------------------------------
# validation helpers (shared with engine.conditioning.blend)
# --------------------------------------------------------------------------------------------------------------


def check_matrix(x: Any, name: str) -> torch.Tensor:
    """``x`` must be a non-empty, floating-point, 2-D ``[L, D]`` tensor; raise a ``ValueError`` naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a 2-D [L, D] torch.Tensor; got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D [L, D] tensor; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got {x.dtype}")
    return x


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a float in ``[0, 1]`` (``ValueError`` naming ``alpha``): the rule of every blend mode."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be between 0 and 1; got {alpha!r}") from None
    if math.isnan(a) or not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha!r}")
    return a


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` must be an integer (not a bool) ``>= minimum``; raise a ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return n


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def safe_std(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased std, or the population std (0 for one sample) when there is a single sample: never NaN."""
    n = x.numel() if dim is None else x.shape[dim]
    correction = 1 if n >= 2 else 0
    if dim is None:
        return torch.std(x, correction=correction)
    return torch.std(x, dim=dim, correction=correction, keepdim=keepdim)


def _segment_weighted_sum(
    x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor, n: int
) -> torch.Tensor:
    """``out[i] = sum_k weight[k] * x[src[k]]`` over the ``k`` with ``dst[k] == i``; ``dst`` sorted ascending.

    Deterministic (no atomics, unlike ``index_add_`` on CUDA): the terms of each output are laid out in slots and
    summed slot by slot, so memory stays at ``n * D`` per slot.
    """
    counts = torch.bincount(dst, minlength=n)
    width = int(counts.max().item())
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(dst.numel(), device=dst.device) - start[dst]
    idx = torch.zeros(n, width, dtype=torch.long, device=x.device)
    wmat = torch.zeros(n, width, dtype=x.dtype, device=x.device)
    idx[dst, slot] = src
    wmat[dst, slot] = weight.to(x.dtype)
    out = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device)
    for k in range(width):
        out += x[idx[:, k]] * wmat[:, k : k + 1]
    return out


# --------------------------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------------------------


def pool_sequence(x: torch.Tensor, length: int) -> torch.Tensor:
    """Anti-aliased (area) average pooling of ``x [L, D]`` along the sequence axis to ``[length, D]``.

    The ``L`` source rows are laid end to end on ``[0, L)`` (row ``j`` covers ``[j, j+1)``) and cut into ``length``
    equal windows ``[i*L/length, (i+1)*L/length)``. Output ``i`` is the average of ``x`` over its window, each row
    weighted by how much of the window it covers (a box filter with exact fractional coverage)::

        out[i] = (length / L) * sum_j overlap([j, j+1), window_i) * x[j]

    Properties:

    * Every source row contributes, with the same total weight ``length / L`` summed over the outputs: a row lies
      in one window, or straddles the edge of two. Nothing is skipped (compare :func:`resample_linear`).
    * When ``L`` is a multiple of ``length`` this is exactly ``F.adaptive_avg_pool1d``. Otherwise it differs from
      ``adaptive_avg_pool1d``, whose windows are whole rows (``floor``/``ceil`` edges), so a straddling row counts
      fully in both neighbours and the rows are not weighted equally.
    * ``length > L`` (upsampling) uses the same formula: each window is shorter than a row, so the result repeats
      rows (nearest-neighbour), and a window straddling a row edge is the coverage-weighted mix of the two rows.
      No new information is invented.
    * ``length == L`` returns a copy of ``x``.

    Output dtype and device are ``x``'s. Raises ``ValueError`` naming ``x`` or ``length``.
    """
    x = check_matrix(x, "x")
    n = check_int(length, "length", 1)
    size = x.shape[0]
    if n == size:
        return x.clone()
    work = x.to(compute_dtype(x.dtype))
    dev = x.device
    # Work in units of 1/(L*n): source edges at j*n, window edges at i*L. Every piece between two consecutive
    # edges lies in one source row and one window; its weight is its length over the window's length L.
    edges = torch.cat([torch.arange(size + 1, device=dev) * n, torch.arange(n + 1, device=dev) * size])
    edges = torch.unique(edges, sorted=True)
    lo, hi = edges[:-1], edges[1:]
    src = lo // n
    dst = lo // size
    weight = (hi - lo).to(torch.float64) / size
    return _segment_weighted_sum(work, src, dst, weight, n).to(x.dtype)


def resample_linear(x: torch.Tensor, length: int, *, align_corners: bool = False) -> torch.Tensor:
    """1-D linear resampling of ``x [L, D]`` along the sequence axis to ``[length, D]``.

    Exactly ``F.interpolate(x.T[None], size=length, mode="linear", align_corners=align_corners)``:

    * ``align_corners=False`` (the seed's VL blend): output ``i`` reads the source coordinate
      ``s = max(0, (i + 0.5) * L / length - 0.5)``, i.e. ``(1 - f) * x[floor(s)] + f * x[floor(s) + 1]`` with
      ``f = s - floor(s)`` (the upper neighbour clipped to ``L - 1``).
    * ``align_corners=True`` (the seed's long-prompt path): ``s = i * (L - 1) / (length - 1)``, so the first and
      last rows map onto each other.

    Downsampling has **no anti-aliasing**: each output reads at most two adjacent source rows, so at most
    ``2 * length`` of the ``L`` rows influence the result and the rest are ignored (1041 -> 11 reads ~22 rows,
    about 2 of every 95). Use :func:`pool_sequence` to keep every row. Output dtype and device are ``x``'s.
    """
    x = check_matrix(x, "x")
    n = check_int(length, "length", 1)
    work = x.to(compute_dtype(x.dtype)).t().unsqueeze(0)
    out = F.interpolate(work, size=n, mode="linear", align_corners=bool(align_corners))
    return out[0].t().contiguous().to(x.dtype)


# --------------------------------------------------------------------------------------------------------------
# caption fitting
# --------------------------------------------------------------------------------------------------------------


def _attention_pool(x: torch.Tensor, n: int) -> torch.Tensor:
    size = x.shape[0]
    unit = F.normalize(x, dim=1)  # an all-zero row stays zero: cosine 0 with everything
    sims = torch.zeros(size, dtype=x.dtype, device=x.device)
    count = torch.zeros(size, dtype=x.dtype, device=x.device)
    for k in (1, 2):
        if size > k:
            cos = (unit[:-k] * unit[k:]).sum(dim=1)  # cos(x[i], x[i+k])
            sims[:-k] += cos
            count[:-k] += 1
            sims[k:] += cos
            count[k:] += 1
    importance = 1.0 - sims / count  # size > n >= 1, so every row has at least one neighbour
    scores = importance - importance.min() + 0.1
    region = (torch.arange(size, device=x.device) * n) // size  # contiguous, none empty because size > n
    rows = torch.arange(size, device=x.device)
    expo = torch.exp(scores - scores.max())  # scores lie in [0.1, 2.1]; the shift is for form's sake
    denom = _segment_weighted_sum(expo.unsqueeze(1), rows, region, torch.ones_like(expo), n)[:, 0]
    return _segment_weighted_sum(x, rows, region, expo / denom[region], n)


def fit_caption(
    emb: torch.Tensor, max_len: int = MAX_CAPTION_LEN, mode: FitMode | str = FitMode.POOL
) -> torch.Tensor:
    """Bring a caption embedding ``emb [L, D]`` under the DiT's length limit ``max_len``.

    The Z-Image DiT pads a caption to a multiple of 32 and indexes a 1536-entry RoPE table, so 1504 positions is
    the most it accepts (:data:`engine.types.MAX_CAPTION_LEN`). If ``L <= max_len``, ``emb`` itself is returned
    unchanged. Otherwise the result has exactly ``max_len`` rows, by ``mode``:

    * ``truncate``: the first ``max_len`` rows (a copy); everything after them is lost.
    * ``interpolate``: :func:`resample_linear` with ``align_corners=True``, as the seed's long-prompt path did (its
      VL blend used ``False``). Reads at most two rows per output, so for ``L`` much above ``max_len`` it skips rows.
    * ``pool`` (default, the same as ``StylizeRequest.fit_mode``): :func:`pool_sequence`, every row averaged in.
      The seed used ``adaptive_avg_pool1d`` (whole-row windows); area pooling weights every row equally.
    * ``attention_pool``: each row's importance is ``1 - mean cos(x[i], x[j])`` over its neighbours ``j`` at
      offsets -2, -1, +1, +2 that exist (rows at the ends have 2 or 3). The seed summed the 4 similarities and
      divided by a count that was 1 for interior rows, so interior rows were never averaged; we average over the
      neighbours present, so a row similar to its context scores low. Scores are shifted so the minimum is 0.1,
      row ``i`` goes to region ``floor(i * max_len / L)`` (``max_len`` contiguous, non-empty regions), and each
      region's output is the softmax(score)-weighted sum of its rows. Every row contributes.

    Output dtype and device are ``emb``'s. Raises ``ValueError`` naming ``emb``, ``max_len`` or ``mode``.
    """
    emb = check_matrix(emb, "emb")
    n = check_int(max_len, "max_len", 1)
    fit = FitMode.parse(mode, "mode")
    if emb.shape[0] <= n:
        return emb
    if fit is FitMode.TRUNCATE:
        return emb[:n].clone()
    if fit is FitMode.INTERPOLATE:
        return resample_linear(emb, n, align_corners=True)
    if fit is FitMode.POOL:
        return pool_sequence(emb, n)
    return _attention_pool(emb.to(compute_dtype(emb.dtype)), n).to(emb.dtype)


# --------------------------------------------------------------------------------------------------------------
# outlier masking
# --------------------------------------------------------------------------------------------------------------


def _check_reference(ref: Any, name: str, width: int, device: torch.device) -> torch.Tensor:
    if not isinstance(ref, torch.Tensor):
        try:
            ref = torch.as_tensor(ref, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a [D] tensor of {width} numbers; got {type(ref).__name__}") from None
    if ref.dim() != 1 or ref.shape[0] != width:
        raise ValueError(f"{name} must have shape [D] = [{width}] to match emb; got {tuple(ref.shape)}")
    ref = ref.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(ref).all()):
        raise ValueError(f"{name} must be finite")
    return ref


def mask_outliers(
    emb: torch.Tensor,
    reference_std: torch.Tensor,
    threshold: float = 10.0,
    mode: OutlierMode | str = OutlierMode.ZERO,
    direction: OutlierDirection | str = OutlierDirection.BOTH,
    *,
    reference_mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Find the dimensions of ``emb [L, D]`` whose spread is far from a reference's, and neutralise them.

    Detection is :func:`_flag_outliers`; the treatments are :func:`_zero_columns`, :func:`_clamp_columns` and
    :func:`_scale_columns` (``none``: nothing is detected or changed). Columns not changed are bit-for-bit those of
    ``emb``; the result is always a new tensor of ``emb``'s dtype.

    Returns ``(masked, info)``; ``info`` holds ``masked_dimensions`` (sorted ints: the columns the mode changed),
    ``ratios`` (``{dim: ratio}`` for those), ``flagged_dimensions`` (every flagged column, including low outliers
    that ``clamp`` leaves), ``mode``, ``threshold`` and ``direction``. Raises ``ValueError`` naming ``emb``,
    ``reference_std`` (shape must be ``[D]``), ``reference_mean``, ``threshold`` (finite, > 1), ``mode`` or
    ``direction``.
    """
    emb, ref_std, ref_mean, t = _check_outlier_inputs(emb, reference_std, reference_mean, threshold, mode)
    how, which = OutlierMode.parse(mode, "mode"), OutlierDirection.parse(direction, "direction")
    out = emb.clone()
    info: dict[str, Any] = {"masked_dimensions": [], "ratios": {}, "flagged_dimensions": [], "mode": how.value,
                            "threshold": t, "direction": which.value}
    if how is OutlierMode.NONE or emb.shape[0] < 2:
        return out, info
    work, ref = emb.to(torch.float64), ref_std.clamp(min=STD_EPS)
    ratio, high, low = _flag_outliers(work, ref, t, which)
    info["flagged_dimensions"] = [int(d) for d in torch.nonzero(high | low).flatten().tolist()]
    if how in (OutlierMode.ZERO, OutlierMode.MEAN):
        changed = _zero_columns(out, high | low, ref_mean)
    elif how is OutlierMode.CLAMP:
        changed = _clamp_columns(out, work, high, t * ref)
    else:  # SCALE
        changed = _scale_columns(out, work, high, low, ref, t)
    info["masked_dimensions"] = dims = [int(d) for d in torch.nonzero(changed).flatten().tolist()]
    info["ratios"] = {d: float(ratio[d]) for d in dims}
    return out, info


def _check_outlier_inputs(emb: Any, reference_std: Any, reference_mean: Any, threshold: Any, mode: Any = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """``(emb, reference_std, reference_mean, threshold)`` checked and converted (references as float64)."""
    emb = check_matrix(emb, "emb")
    width = emb.shape[1]
    ref_std = _check_reference(reference_std, "reference_std", width, emb.device)
    if bool((ref_std < 0).any()):
        raise ValueError("reference_std must be non-negative")
    ref_mean = None
    if reference_mean is None and OutlierMode.parse(mode or "none", "mode") is OutlierMode.MEAN:
        raise ValueError("reference_mean is required for mode mean (the reference's per-dimension content mean)")
    if reference_mean is not None:
        ref_mean = _check_reference(reference_mean, "reference_mean", width, emb.device)
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number greater than 1; got {threshold!r}") from None
    if not math.isfinite(t) or t <= 1.0:
        raise ValueError(f"threshold must be a number greater than 1; got {threshold!r}")
    return emb, ref_std, ref_mean, t


def _flag_outliers(work: torch.Tensor, ref: torch.Tensor, t: float, which: OutlierDirection
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ratio, high, low)`` over the columns of ``work [L >= 2, D]`` (float64).

    ``ratio_d = std_d / max(reference_std_d, 1e-6)`` (``ref`` is already floored), with ``std_d`` the unbiased std
    of column ``d`` over the ``L`` positions. With ``t = threshold``, column ``d`` is flagged

    * ``high`` (over-dispersed) when ``ratio_d > t``,
    * ``low`` (under-dispersed) when ``ratio_d < 1/t``,

    and ``which`` picks which of the two are looked for (``both`` by default). The seed only tested ``> t``, yet
    the outliers its docs named (dim 396 at 617x, dim 4 at 42x) were reference/VL ratios, i.e. *under*-dispersed VL
    columns, which its detector could never flag; ``low`` and ``both`` fix that. With a single position no spread
    can be measured, so the caller flags nothing.
    """
    ratio = work.std(dim=0) / ref  # unbiased, L >= 2
    none = torch.zeros(work.shape[1], dtype=torch.bool, device=work.device)
    high = ratio > t if which in (OutlierDirection.BOTH, OutlierDirection.HIGH) else none
    low = ratio < 1.0 / t if which in (OutlierDirection.BOTH, OutlierDirection.LOW) else none
    return ratio, high, low


def _zero_columns(out: torch.Tensor, flagged: torch.Tensor, ref_mean: torch.Tensor | None) -> torch.Tensor:
    """``zero``: each flagged column of ``out`` (in place) becomes 0, or ``reference_mean_d`` when
    ``reference_mean`` is given (the reference's typical value, which is what a text-encoder embedding holds
    there; ``reference_mean`` is used by nothing else). Returns the changed columns."""
    if bool(flagged.any()):
        width = out.shape[1]
        fill = torch.zeros(width, dtype=torch.float64, device=out.device) if ref_mean is None else ref_mean
        out[:, flagged] = fill[flagged].to(out.dtype).expand(out.shape[0], -1)
    return flagged


def _clamp_columns(out: torch.Tensor, work: torch.Tensor, high: torch.Tensor, half_band: torch.Tensor
                   ) -> torch.Tensor:
    """``clamp``: each value of a high outlier column is bounded to the band ``[mu_d - t*r_d, mu_d + t*r_d]``
    (``mu_d`` the column's mean, ``r_d = max(reference_std_d, 1e-6)``; ``half_band = t*r``); values inside stay
    bit-exact. A low outlier already lies well inside its band and clipping cannot widen a column, so ``clamp``
    leaves low outliers unchanged (use ``scale`` or ``zero`` for them). The seed's ``clamp`` was a rescale identical
    to its ``scale``; this one clips instead. Writes into ``out``; returns the changed columns."""
    if bool(high.any()):
        cols = work[:, high]
        mu = cols.mean(dim=0)
        half = half_band[high]
        clipped = torch.minimum(torch.maximum(cols, mu - half), mu + half)
        # write back only values that moved, so values inside the band stay bit-exact
        moved = clipped != cols
        block = out[:, high]
        block[moved] = clipped[moved].to(out.dtype)
        out[:, high] = block
    return high


def _scale_columns(out: torch.Tensor, work: torch.Tensor, high: torch.Tensor, low: torch.Tensor,
                   ref: torch.Tensor, t: float) -> torch.Tensor:
    """``scale``: each flagged column is rescaled about its mean, ``mu_d + (x - mu_d) * target / std_d``, so its
    std sits exactly on the band's edge: ``target = t*r_d`` for high outliers, ``r_d/t`` for low ones. The mean is
    kept (the seed scaled the mean too). A constant column (std 0) cannot be rescaled and is left as it is. Writes
    into ``out``; returns the changed columns."""
    std = work.std(dim=0)
    changed = (high | low) & (std > 0)
    if bool(changed.any()):
        cols = work[:, changed]
        mu = cols.mean(dim=0)
        target = torch.where(high[changed], t * ref[changed], ref[changed] / t)
        out[:, changed] = (mu + (cols - mu) * (target / std[changed])).to(out.dtype)
    return changed
