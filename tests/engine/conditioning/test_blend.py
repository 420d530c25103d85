"""Tests for engine.conditioning.blend: every blend mode against an independent (numpy / loop) computation, the common
rules (alpha, lengths, dtypes, errors), and what each mode keeps of the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.conditioning import blend as blending
from engine.conditioning.blend import (
    blend,
    blend_adain,
    blend_adain_per_dim,
    blend_append,
    blend_interpolate,
    blend_linear,
    blend_pool,
    blend_style_delta,
    embedding_stats,
)
from engine.conditioning.sequence import pool_sequence, resample_linear
from engine.types import BlendMode
from tests.engine.refmath import ref_pool

ALL_MODES = [m.value for m in BlendMode]
FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------------------------------------------
# independent references (numpy, explicit loops; deliberately not the implementation's formulation)
# ---------------------------------------------------------------------------------------------------------------


def ref_resample(x: np.ndarray, n: int, align_corners: bool = False) -> np.ndarray:
    size = x.shape[0]
    out = np.zeros((n, x.shape[1]))
    for i in range(n):
        if align_corners:
            s = i * (size - 1) / (n - 1) if n > 1 else 0.0
        else:
            s = max((i + 0.5) * size / n - 0.5, 0.0)
        j0 = min(int(math.floor(s)), size - 1)
        j1 = min(j0 + 1, size - 1)
        f = s - j0
        out[i] = (1 - f) * x[j0] + f * x[j1]
    return out


def np_std(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1)) if v.size > 1 else 0.0


def rand(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


@st.composite
def pair(draw, max_lt: int = 8, max_lv: int = 40):
    seed = draw(st.integers(0, 2**31 - 1))
    lt = draw(st.integers(1, max_lt))
    lv = draw(st.integers(1, max_lv))
    d = draw(st.integers(2, 6))
    alpha = draw(st.floats(0.0, 1.0))
    gen = torch.Generator().manual_seed(seed)
    vl = rand(gen, lv, d, scale=3.0) + 1.0
    text = rand(gen, lt, d)
    return vl, text, alpha


def close(actual: torch.Tensor, expected: np.ndarray, tol: float = 1e-9) -> None:
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------------------
# common rules
# ---------------------------------------------------------------------------------------------------------------


def _call(mode: str, vl: torch.Tensor, text: torch.Tensor, alpha: float, **kw) -> torch.Tensor:
    if mode == "style_delta":
        kw.setdefault("neutral", torch.zeros_like(vl) + 0.5)
    if mode == "append":
        mask = torch.zeros(vl.shape[0], dtype=torch.bool)
        mask[2:-3] = True
        kw.setdefault("image_mask", mask)
    return blend(vl, text, alpha, mode, **kw)


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_length_and_dtype_follow_text(mode, dtype):
    gen = torch.Generator().manual_seed(1)
    vl = rand(gen, 300, 16, dtype=torch.float32)
    text = rand(gen, 11, 16, dtype=dtype)
    out = _call(mode, vl, text, 0.4, append_tokens=20)
    # append adds round(alpha * K) rows (issue 14: alpha picks the count); replace grows from len(text) to len(vl)
    expected_len = {"append": 11 + 8, "replace": 11 + round(0.4 * (300 - 11))}.get(mode, 11)
    assert out.shape == (expected_len, 16)
    assert out.dtype == dtype
    assert out.device == text.device
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("mode", ALL_MODES)
def test_alpha_zero_returns_text_exactly(mode):
    gen = torch.Generator().manual_seed(2)
    vl = rand(gen, 120, 8, dtype=torch.float32)
    text = rand(gen, 9, 8, dtype=torch.bfloat16)
    out = _call(mode, vl, text, 0.0)
    assert torch.equal(out, text)
    assert out.dtype == text.dtype


def test_modes_differ_from_each_other():
    gen = torch.Generator().manual_seed(3)
    vl, text = rand(gen, 100, 8), rand(gen, 7, 8)
    outs = {m: _call(m, vl, text, 0.5) for m in ALL_MODES if m not in ("append", "replace")}  # other lengths
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_enum_and_loose_strings_accepted():
    gen = torch.Generator().manual_seed(4)
    vl, text = rand(gen, 50, 4), rand(gen, 5, 4)
    a = blend(vl, text, 0.3, BlendMode.POOL)
    b = blend(vl, text, 0.3, " Pool ")
    assert torch.equal(a, b)
    assert torch.equal(a, blend_pool(vl, text, 0.3))
    assert torch.equal(blend(vl, text, 0.3), a)  # default mode is pool


def test_inputs_not_modified():
    gen = torch.Generator().manual_seed(5)
    vl, text = rand(gen, 60, 4), rand(gen, 6, 4)
    vl0, text0 = vl.clone(), text.clone()
    for mode in ALL_MODES:
        _call(mode, vl, text, 0.7)
    assert torch.equal(vl, vl0) and torch.equal(text, text0)


# ---------------------------------------------------------------------------------------------------------------
# formulas against independent references
# ---------------------------------------------------------------------------------------------------------------


@FAST
@given(pair())
def test_linear_matches_reference(args):
    vl, text, alpha = args
    v, t = vl.numpy(), text.numpy()
    expected = t.copy()
    for i in range(min(len(v), len(t))):
        expected[i] = alpha * v[i] + (1 - alpha) * t[i]
    close(blend_linear(vl, text, alpha), expected)


@FAST
@given(pair())
def test_interpolate_matches_reference(args):
    vl, text, alpha = args
    expected = alpha * ref_resample(vl.numpy(), len(text)) + (1 - alpha) * text.numpy()
    close(blend_interpolate(vl, text, alpha), expected, tol=1e-7)


@FAST
@given(pair())
def test_pool_matches_reference(args):
    vl, text, alpha = args
    expected = alpha * ref_pool(vl.numpy(), len(text)) + (1 - alpha) * text.numpy()
    close(blend_pool(vl, text, alpha), expected)


@FAST
@given(pair())
def test_adain_matches_reference(args):
    vl, text, alpha = args
    pooled = ref_pool(vl.numpy(), len(text))
    t = text.numpy()
    expected = np.empty_like(t)
    for i in range(len(t)):
        sd_t = max(np_std(t[i]), 1e-6)
        sd_v = max(np_std(pooled[i]), 1e-6)
        restyled = (t[i] - t[i].mean()) / sd_t * sd_v + pooled[i].mean()
        expected[i] = alpha * restyled + (1 - alpha) * t[i]
    close(blend_adain(vl, text, alpha), expected, tol=1e-8)


@FAST
@given(pair())
def test_adain_per_dim_matches_reference(args):
    vl, text, alpha = args
    v, t = vl.numpy(), text.numpy()
    expected = np.empty_like(t)
    for d in range(t.shape[1]):
        sd_t = max(np_std(t[:, d]), 1e-6)
        sd_v = max(np_std(v[:, d]), 1e-6)  # every VL row, not the first len(text)
        restyled = (t[:, d] - t[:, d].mean()) / sd_t * sd_v + v[:, d].mean()
        expected[:, d] = alpha * restyled + (1 - alpha) * t[:, d]
    close(blend_adain_per_dim(vl, text, alpha), expected, tol=1e-8)


@FAST
@given(pair(), st.integers(1, 40))
def test_style_delta_matches_reference(args, neutral_len):
    vl, text, alpha = args
    gen = torch.Generator().manual_seed(neutral_len)
    neutral = rand(gen, neutral_len, vl.shape[1])
    n = len(text)
    delta = ref_pool(vl.numpy(), n) - ref_pool(neutral.numpy(), n)
    sd = np_std(delta.ravel())
    delta = delta / max(sd, 1e-6) * np_std(text.numpy().ravel())
    expected = text.numpy() + alpha * delta
    close(blend_style_delta(vl, text, alpha, neutral), expected, tol=1e-8)
    close(blend(vl, text, alpha, "style_delta", neutral=neutral), expected, tol=1e-8)


@FAST
@given(pair(), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_append_matches_reference(args, k, mask_seed):
    vl, text, alpha = args
    rng = np.random.default_rng(mask_seed)
    mask = rng.random(len(vl)) < 0.6
    mask[rng.integers(len(vl))] = True
    image = vl.numpy()[mask]
    kk = min(k, len(image))
    out = blend_append(vl, text, alpha, mask.tolist(), append_tokens=k)
    kk = min(round(alpha * k), len(image))  # the documented count: round(alpha * K), at most the image's rows
    if kk == 0:  # issue 14: alpha chooses how many rows; none below alpha*K = 0.5, so continuous at alpha -> 0
        assert torch.equal(out, text)
        return
    assert out.shape == (len(text) + kk, vl.shape[1])
    assert torch.equal(out[: len(text)], text)  # the prompt rows are untouched, bit for bit
    # without an image grid the image is one row of patches: the 2-D pooling is the 1-D area pooling (no mixing
    # towards the prompt's mean row any more: alpha sets the count, the rows are the reference's own)
    close(out[len(text) :], ref_pool(image, kk))


def ref_pool_2d(image: np.ndarray, cols: int, rows: int, kc: int, kr: int) -> np.ndarray:
    """Exact 2-D area average of a raster ``[rows*cols, D]`` onto a ``kr x kc`` grid, with explicit fractions."""
    from fractions import Fraction

    grid = image.reshape(rows, cols, -1)
    out = np.zeros((kr, kc, image.shape[1]))
    for i in range(kr):
        y0, y1 = Fraction(i * rows, kr), Fraction((i + 1) * rows, kr)
        for j in range(kc):
            x0, x1 = Fraction(j * cols, kc), Fraction((j + 1) * cols, kc)
            for y in range(rows):
                for x in range(cols):
                    w = max(0, min(y1, y + 1) - max(y0, y)) * max(0, min(x1, x + 1) - max(x0, x))
                    out[i, j] += float(w) * grid[y, x]
            out[i, j] /= float((y1 - y0) * (x1 - x0))
    return out.reshape(kr * kc, -1)


@pytest.mark.parametrize(("cols", "rows", "k", "grid"), [(6, 4, 6, (3, 2)), (7, 3, 9, (4, 2)), (5, 5, 4, (2, 2)),
                                                          (8, 2, 4, (4, 1))])
def test_append_pools_in_2d_on_the_image_grid(cols, rows, k, grid):
    """Audit #20b: the appended rows are rectangles of the image (aspect kept), never strips that wrap a row edge."""
    gen = torch.Generator().manual_seed(cols * rows)
    text = rand(gen, 5, 3)
    image = rand(gen, cols * rows, 3)
    vl = torch.cat([rand(gen, 2, 3), image, rand(gen, 3, 3)])
    mask = [False] * 2 + [True] * (cols * rows) + [False] * 3
    out = blend_append(vl, text, 1.0, mask, append_tokens=k, image_grid=(cols, rows))
    kc, kr = grid
    assert out.shape[0] == 5 + kc * kr
    close(out[5:], ref_pool_2d(image.numpy(), cols, rows, kc, kr))


def test_append_keeps_the_text_under_the_caption_cap():
    """k <= 1504 - len(text): fit_caption never has to pool the prompt's rows."""
    text, vl = torch.randn(1500, 2, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    out = blend_append(vl, text, 1.0, [True] * 40, append_tokens=64)
    assert out.shape[0] == 1504 and torch.equal(out[:1500], text)


def test_replace_at_alpha_one_is_the_whole_vl_sequence():
    """replace (the seed's alpha = 1): the full VL sequence is the caption, area-pooled only above 1504 rows."""
    gen = torch.Generator().manual_seed(21)
    vl, text = rand(gen, 90, 4), rand(gen, 6, 4)
    close(blend(vl, text, 1.0, "replace"), vl.numpy())
    long = rand(gen, 1600, 2)
    close(blend(long, text[:, :2], 1.0, "replace"), ref_pool(long.numpy(), 1504))
    mid = blend(vl, text, 0.5, "replace")  # halfway: 6 + 42 rows, half pooled VL, half resampled text
    n = 6 + 42
    close(mid, 0.5 * ref_pool(vl.numpy(), n) + 0.5 * resample_linear(text, n).double().numpy())


# ---------------------------------------------------------------------------------------------------------------
# alpha == 1 per mode
# ---------------------------------------------------------------------------------------------------------------


def test_alpha_one_per_mode():
    gen = torch.Generator().manual_seed(6)
    vl, text = rand(gen, 90, 8, scale=4.0) + 2.0, rand(gen, 6, 8)
    assert torch.equal(blend_linear(vl, text, 1.0), vl[:6])  # len(text) rows, not the full VL (seed did that)
    assert torch.allclose(blend_interpolate(vl, text, 1.0), resample_linear(vl, 6))
    assert torch.allclose(blend_pool(vl, text, 1.0), pool_sequence(vl, 6))

    out = blend_adain(vl, text, 1.0)  # every row takes the pooled VL row's mean and std
    pooled = pool_sequence(vl, 6)
    assert torch.allclose(out.mean(dim=1), pooled.mean(dim=1))
    assert torch.allclose(out.std(dim=1), pooled.std(dim=1))

    out = blend_adain_per_dim(vl, text, 1.0)  # every dim takes VL's per-dim mean and std over ALL rows
    assert torch.allclose(out.mean(dim=0), vl.mean(dim=0))
    assert torch.allclose(out.std(dim=0), vl.std(dim=0))

    neutral = rand(gen, 90, 8)
    out = blend_style_delta(vl, text, 1.0, neutral)
    added = out - text
    assert torch.allclose(added.std(), text.std())  # the delta carries the text's full std

    mask = torch.zeros(90, dtype=torch.bool)
    mask[3:83] = True
    out = blend_append(vl, text, 1.0, mask, append_tokens=10)
    assert torch.allclose(out[6:], pool_sequence(vl[3:83], 10))


def test_linear_keeps_text_rows_when_vl_is_shorter():
    gen = torch.Generator().manual_seed(7)
    vl, text = rand(gen, 3, 4), rand(gen, 8, 4)
    out = blend_linear(vl, text, 1.0)
    assert out.shape == text.shape
    assert torch.equal(out[:3], vl)
    assert torch.equal(out[3:], text[3:])


def test_adain_per_dim_single_text_token_has_no_nan():
    gen = torch.Generator().manual_seed(8)
    vl, text = rand(gen, 40, 6), rand(gen, 1, 6)
    out = blend_adain_per_dim(vl, text, 1.0)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], vl.mean(dim=0))  # restyled single token = the VL per-dim mean
    out = blend_adain_per_dim(vl[:1], rand(gen, 5, 6), 0.5)  # one VL row: population std, no NaN
    assert torch.isfinite(out).all()


def test_adain_single_dimension_has_no_nan():
    gen = torch.Generator().manual_seed(9)
    out = blend_adain(rand(gen, 30, 1), rand(gen, 4, 1), 0.6)
    assert torch.isfinite(out).all()


def test_style_delta_with_identical_neutral_is_text():
    gen = torch.Generator().manual_seed(10)
    vl, text = rand(gen, 50, 4), rand(gen, 5, 4)
    assert torch.equal(blend_style_delta(vl, text, 0.8, vl.clone()), text)


# ---------------------------------------------------------------------------------------------------------------
# what each mode keeps of the reference
# ---------------------------------------------------------------------------------------------------------------


def _rows_read(mode: str, lv: int, lt: int, d: int = 4) -> set[int]:
    """The VL rows whose value influences the output (non-zero gradient)."""
    gen = torch.Generator().manual_seed(lv)
    vl = rand(gen, lv, d).requires_grad_(True)
    text = rand(gen, lt, d)
    out = _call(mode, vl, text, 0.5)
    weight = rand(gen, *out.shape)
    (out * weight).sum().backward()
    return set(torch.nonzero(vl.grad.abs().sum(dim=1) > 0).flatten().tolist())


def test_pool_uses_every_vl_position_linear_only_the_first():
    lv, lt = 1041, 11
    assert _rows_read("pool", lv, lt) == set(range(lv))
    assert _rows_read("linear", lv, lt) == set(range(lt))  # the seed's loss: chat prefix + top-left strip
    assert _rows_read("adain_per_dim", lv, lt) == set(range(lv))
    assert _rows_read("adain", lv, lt) == set(range(lv))
    assert _rows_read("style_delta", lv, lt) == set(range(lv))


def test_interpolate_reads_only_sampled_positions():
    lv, lt = 1041, 11
    read = _rows_read("interpolate", lv, lt)
    assert len(read) <= 2 * lt  # ~2 of every ~95 tokens
    centres = [(i + 0.5) * lv / lt - 0.5 for i in range(lt)]
    assert all(min(abs(j - c) for c in centres) < 1 for j in read)
    assert max(read) < lv - 40  # the prompt-text rows at the end of the VL sequence are never read


def test_perturbing_one_far_vl_position():
    gen = torch.Generator().manual_seed(11)
    vl, text = rand(gen, 1041, 8), rand(gen, 11, 8)
    bumped = vl.clone()
    bumped[700] += 5.0  # far beyond len(text), between interpolate's sample points
    assert torch.equal(blend_linear(bumped, text, 0.5), blend_linear(vl, text, 0.5))
    assert torch.equal(blend_interpolate(bumped, text, 0.5), blend_interpolate(vl, text, 0.5))
    assert not torch.equal(blend_pool(bumped, text, 0.5), blend_pool(vl, text, 0.5))
    for j in (0, 520, 1040):
        b = vl.clone()
        b[j] -= 3.0
        assert not torch.equal(blend_pool(b, text, 0.5), blend_pool(vl, text, 0.5)), j


def test_append_uses_only_image_rows():
    gen = torch.Generator().manual_seed(12)
    vl, text = rand(gen, 40, 4), rand(gen, 5, 4)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[4:30] = True
    base = blend_append(vl, text, 0.7, mask, append_tokens=8)
    outside = vl.clone()
    outside[[0, 3, 30, 39]] += 10.0
    assert torch.equal(blend_append(outside, text, 0.7, mask, append_tokens=8), base)
    inside = vl.clone()
    inside[17] += 10.0
    assert not torch.equal(blend_append(inside, text, 0.7, mask, append_tokens=8), base)


def test_append_fewer_image_rows_than_append_tokens():
    gen = torch.Generator().manual_seed(13)
    vl, text = rand(gen, 10, 4), rand(gen, 5, 4)
    mask = [False, True, True, True, False, False, False, False, False, False]
    out = blend(vl, text, 1.0, "append", image_mask=mask, append_tokens=64)
    assert out.shape == (5 + 3, 4)
    close(out[5:], vl[1:4].double().numpy())  # one row of 3 patches pooled to 3: the patches themselves


# ---------------------------------------------------------------------------------------------------------------
# errors name their parameter
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [-0.01, 1.0001, 7, float("nan"), float("inf"), "lots", None])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_bad_alpha(mode, alpha):
    vl, text = torch.randn(20, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"^alpha must be between 0 and 1; got"):
        _call(mode, vl, text, alpha)


def test_unknown_mode_names_blend_mode_and_allowed_values():
    with pytest.raises(ValueError, match="blend_mode") as err:
        blend(torch.randn(20, 4), torch.randn(3, 4), 0.3, "slerp")
    for m in ALL_MODES:
        assert m in str(err.value)
    assert "slerp" in str(err.value)


@pytest.mark.parametrize(
    "vl, text, name",
    [
        (torch.randn(20), torch.randn(3, 4), "vl"),
        (torch.randn(0, 4), torch.randn(3, 4), "vl"),
        (torch.randn(20, 0), torch.randn(3, 0), "text"),
        (torch.randn(20, 4), torch.randn(4), "text"),
        (torch.randn(20, 4), torch.randn(0, 4), "text"),
        (torch.randn(2, 20, 4), torch.randn(3, 4), "vl"),
        ([[1.0, 2.0]], torch.randn(3, 2), "vl"),
        (torch.randn(20, 4), torch.ones(3, 4, dtype=torch.long), "text"),
        (torch.randn(20, 5), torch.randn(3, 4), "vl and text"),
    ],
)
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_bad_tensors_name_the_argument(vl, text, name, mode, alpha):
    kw = {}
    if mode == "style_delta":
        kw["neutral"] = torch.randn(20, 4)
    if mode == "append":
        kw["image_mask"] = [True] * 20
    with pytest.raises(ValueError, match=rf"^{name} "):
        blend(vl, text, alpha, mode, **kw)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_style_delta_needs_neutral(alpha):
    vl, text = torch.randn(20, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"^neutral "):
        blend(vl, text, alpha, "style_delta")
    with pytest.raises(ValueError, match=r"^neutral "):
        blend(vl, text, alpha, "style_delta", neutral=torch.randn(20, 3))
    with pytest.raises(ValueError, match=r"^neutral "):
        blend(vl, text, alpha, "style_delta", neutral=torch.randn(20))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize(
    "mask",
    [None, [], torch.zeros(20, dtype=torch.bool), [False] * 20, torch.ones(19, dtype=torch.bool), torch.ones(20)],
)
def test_append_needs_an_image_mask(alpha, mask):
    with pytest.raises(ValueError, match=r"^image_mask "):
        blend(torch.randn(20, 4), torch.randn(3, 4), alpha, "append", image_mask=mask)


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "8"])
def test_append_tokens_must_be_positive_int(k):
    with pytest.raises(ValueError, match=r"^append_tokens "):
        blend(torch.randn(20, 4), torch.randn(3, 4), 0.5, "append", image_mask=[True] * 20, append_tokens=k)


def test_other_modes_ignore_append_arguments():
    gen = torch.Generator().manual_seed(14)
    vl, text = rand(gen, 30, 4), rand(gen, 3, 4)
    assert torch.equal(blend(vl, text, 0.5, "pool", image_mask=None, append_tokens=0), blend_pool(vl, text, 0.5))


# ---------------------------------------------------------------------------------------------------------------
# stats and exports
# ---------------------------------------------------------------------------------------------------------------


def test_embedding_stats_matches_numpy():
    gen = torch.Generator().manual_seed(15)
    x = rand(gen, 13, 7, dtype=torch.float32, scale=5.0)
    a = x.double().numpy()
    stats = embedding_stats(x)
    assert stats["length"] == 13 and stats["dim"] == 7
    assert stats["std"] == pytest.approx(np.std(a, ddof=1), rel=1e-5)
    assert stats["mean"] == pytest.approx(a.mean(), rel=1e-5, abs=1e-6)
    assert stats["min"] == pytest.approx(a.min())
    assert stats["max"] == pytest.approx(a.max())
    assert all(isinstance(v, float) for k, v in stats.items() if k not in ("length", "dim"))
    assert embedding_stats(torch.tensor([[3.0]]))["std"] == 0.0
    with pytest.raises(ValueError, match=r"^x "):
        embedding_stats(torch.randn(5))


def test_sequence_helpers_have_one_import_path():
    from engine.conditioning import sequence

    for name in ("pool_sequence", "resample_linear", "fit_caption", "mask_outliers", "check_matrix", "compute_dtype"):
        assert name in sequence.__all__ and callable(getattr(sequence, name))
        assert name not in blending.__all__  # engine.conditioning.sequence is their one home


def test_append_alpha_changes_row_direction_so_it_survives_rms_norm():
    """The DiT RMS-normalises caption rows: alpha must change the appended rows' direction, not just their scale."""
    gen = torch.Generator().manual_seed(11)
    vl, text = rand(gen, 40, 16, scale=3.0), rand(gen, 5, 16)
    mask = [True] * 40

    def rms_normed(x):
        return x / x.pow(2).mean(dim=1, keepdim=True).sqrt()

    low = rms_normed(blend_append(vl, text, 0.2, mask, append_tokens=4)[5:])
    high = rms_normed(blend_append(vl, text, 0.8, mask, append_tokens=4)[5:])
    assert (low - high).abs().max() > 0.1


@pytest.mark.parametrize("bad", [0, 1025, 1504, "x", 2.5])
def test_append_tokens_has_one_bound(bad):
    """Issue 14: the blend, check_inputs and the settings all use engine.limits' one bound (check_inputs allowed 1504
    while the settings allowed 1024)."""
    from engine.generation.checks import check_request
    from engine.types import StylizeRequest

    vl, text = torch.randn(20, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"^append_tokens must be (a whole number )?between 1 and 1024"):
        blend(vl, text, 0.5, "append", image_mask=[True] * 20, append_tokens=bad)
    with pytest.raises(ValueError, match=r"^append_tokens must be (a whole number )?between 1 and 1024"):
        check_request(StylizeRequest(prompt="x", append_tokens=bad), text_layers=8, vl_layers=8)
