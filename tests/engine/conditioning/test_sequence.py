"""Tests for engine.conditioning.sequence: pool_sequence, resample_linear, fit_caption and mask_outliers, each against an
independent loop / numpy computation, plus the properties the docstrings promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.conditioning.sequence import fit_caption, mask_outliers, pool_sequence, resample_linear
from engine.types import MAX_CAPTION_LEN, FitMode
from tests.engine.refmath import ref_pool

FAST = settings(max_examples=25, deadline=None)
FIT_MODES = [m.value for m in FitMode]


def rand(seed: int, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# pool_sequence / resample_linear
# ---------------------------------------------------------------------------------------------------------------


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(1, 30), st.integers(1, 45), st.integers(1, 5))
def test_pool_sequence_matches_reference(seed, size, n, d):
    x = rand(seed, size, d)
    out = pool_sequence(x, n)
    assert out.shape == (n, d)
    np.testing.assert_allclose(out.numpy(), ref_pool(x.numpy(), n), rtol=1e-10, atol=1e-10)


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 40))
def test_pool_sequence_weights_every_row_equally(seed, size, n):
    # d(sum of outputs)/d(row j) is the row's total weight: n / L for every row, whichever window it falls in
    x = rand(seed, size, 3).requires_grad_(True)
    pool_sequence(x, n).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((size, 3), n / size), rtol=1e-12)


@pytest.mark.parametrize("size, n", [(1000, 10), (1024, 64), (12, 4), (7, 7), (5, 1)])
def test_pool_sequence_equals_adaptive_avg_pool_when_divisible(size, n):
    x = rand(size, size, 6)
    expected = F.adaptive_avg_pool1d(x.t().unsqueeze(0), n)[0].t()
    assert torch.allclose(pool_sequence(x, n), expected, atol=1e-12)


def test_pool_sequence_differs_from_adaptive_avg_pool_when_not_divisible():
    x = rand(1, 5, 1)
    expected = np.array([(x[0] + x[1] + 0.5 * x[2]) / 2.5, (0.5 * x[2] + x[3] + x[4]) / 2.5]).reshape(2, 1)
    np.testing.assert_allclose(pool_sequence(x, 2).numpy(), expected, rtol=1e-12)
    adaptive = F.adaptive_avg_pool1d(x.t().unsqueeze(0), 2)[0].t()  # windows [0,3) and [2,5): row 2 counted twice
    assert not torch.allclose(pool_sequence(x, 2), adaptive)


def test_pool_sequence_upsampling_repeats_rows():
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert torch.allclose(pool_sequence(x, 6).flatten(), torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]))
    assert torch.allclose(pool_sequence(x, 5).flatten(), torch.tensor([0.0, 1 / 3, 1.0, 5 / 3, 2.0]))


def test_pool_sequence_identity_constant_and_dtype():
    x = rand(2, 9, 4, dtype=torch.float32)
    assert torch.equal(pool_sequence(x, 9), x)
    const = torch.full((37, 3), 2.5)
    assert torch.allclose(pool_sequence(const, 11), torch.full((11, 3), 2.5))
    xb = x.to(torch.bfloat16)
    assert pool_sequence(xb, 4).dtype == torch.bfloat16


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 40), st.booleans())
def test_resample_linear_matches_reference(seed, size, n, align):
    x = rand(seed, size, 3)
    a = x.numpy()
    expected = np.zeros((n, 3))
    for i in range(n):
        if align:
            s = i * (size - 1) / (n - 1) if n > 1 else 0.0
        else:
            s = max((i + 0.5) * size / n - 0.5, 0.0)
        lo = min(int(math.floor(s)), size - 1)
        hi = min(lo + 1, size - 1)
        expected[i] = a[lo] + (s - lo) * (a[hi] - a[lo])
    np.testing.assert_allclose(resample_linear(x, n, align_corners=align).numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fn", [pool_sequence, resample_linear])
def test_resampling_argument_errors(fn):
    with pytest.raises(ValueError, match=r"^x "):
        fn(torch.randn(5), 3)
    with pytest.raises(ValueError, match=r"^x "):
        fn(torch.randn(0, 4), 3)
    for bad in (0, -1, 2.0, None):
        with pytest.raises(ValueError, match=r"^length "):
            fn(torch.randn(5, 4), bad)


# ---------------------------------------------------------------------------------------------------------------
# fit_caption
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", FIT_MODES)
def test_fit_caption_caps_at_1504(mode):
    emb = rand(3, 2000, 8, dtype=torch.float32)
    out = fit_caption(emb, mode=mode)
    assert out.shape == (MAX_CAPTION_LEN, 8) == (1504, 8)
    assert out.dtype == emb.dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", FIT_MODES)
@pytest.mark.parametrize("size", [1, 100, 1504])
def test_fit_caption_leaves_short_captions_alone(mode, size):
    emb = rand(4, size, 8, dtype=torch.float32)
    assert fit_caption(emb, mode=mode) is emb


def test_fit_caption_each_mode():
    emb = rand(5, 2000, 8)
    assert torch.equal(fit_caption(emb, mode="truncate"), emb[:1504])
    out = fit_caption(emb, mode="interpolate")  # align_corners=True: the end rows map onto each other
    assert torch.allclose(out[0], emb[0]) and torch.allclose(out[-1], emb[-1])
    assert torch.allclose(out, resample_linear(emb, 1504, align_corners=True))
    assert torch.allclose(fit_caption(emb, mode="pool"), pool_sequence(emb, 1504))
    assert torch.allclose(fit_caption(emb), pool_sequence(emb, 1504))  # default mode is pool
    assert fit_caption(emb, 10, FitMode.TRUNCATE).shape == (10, 8)


def ref_attention_pool(x: np.ndarray, n: int) -> np.ndarray:
    size = x.shape[0]

    def cos(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))

    importance = []
    for i in range(size):
        neighbours = [i + k for k in (-2, -1, 1, 2) if 0 <= i + k < size]
        importance.append(1 - sum(cos(x[i], x[j]) for j in neighbours) / len(neighbours))
    low = min(importance)
    scores = [s - low + 0.1 for s in importance]
    out = np.zeros((n, x.shape[1]))
    for r in range(n):
        members = [i for i in range(size) if math.floor(i * n / size) == r]
        weights = np.exp([scores[i] for i in members])
        weights /= weights.sum()
        out[r] = sum(w * x[i] for w, i in zip(weights, members))
    return out


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 40), st.data())
def test_attention_pool_matches_reference(seed, size, data):
    n = data.draw(st.integers(1, size - 1))
    x = rand(seed, size, 4) + 0.3
    out = fit_caption(x, n, "attention_pool")
    assert out.shape == (n, 4)
    np.testing.assert_allclose(out.numpy(), ref_attention_pool(x.numpy(), n), rtol=1e-9, atol=1e-9)


def test_attention_pool_averages_interior_similarities():
    # One odd row among identical rows. Averaged over the 4 neighbours, row 4 (cos 0 to all) has importance 1 and
    # its neighbours 3 and 5 have 1 - 3/4 = 0.25. The seed divided interior sums by 1, giving rows 3 and 5
    # 1 - 3 = -2 instead, a much sharper weighting towards row 4.
    x = torch.ones(9, 2, dtype=torch.float64)
    x[4] = torch.tensor([1.0, -1.0])  # orthogonal to [1, 1]
    out = fit_caption(x, 3, "attention_pool")
    # region 1 = rows 3, 4, 5; row 4 has importance 1 (cos 0 to all), rows 3 and 5 have 1 - 3/4 = 0.25
    w4 = math.exp(1.0) / (math.exp(1.0) + 2 * math.exp(0.25))
    expected = (1 - w4) * torch.tensor([1.0, 1.0], dtype=torch.float64) + w4 * x[4]
    assert torch.allclose(out[1], expected)
    assert torch.allclose(out[0], x[0])
    seed_w4 = math.exp(1.0) / (math.exp(1.0) + 2 * math.exp(-2.0))
    assert not torch.allclose(out[1], (1 - seed_w4) * x[0] + seed_w4 * x[4])


def test_fit_caption_errors():
    emb = torch.randn(20, 4)
    for bad in (0, -5, 1.5, None):
        with pytest.raises(ValueError, match=r"^max_len "):
            fit_caption(emb, bad)
    with pytest.raises(ValueError, match=r"^mode must be one of truncate, interpolate, pool, attention_pool"):
        fit_caption(emb, 10, "squash")
    with pytest.raises(ValueError, match=r"^emb "):
        fit_caption(torch.randn(20), 10)


# ---------------------------------------------------------------------------------------------------------------
# mask_outliers
# ---------------------------------------------------------------------------------------------------------------

HIGH, LOW = 1, 3


def outlier_case(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """[50, 6] with reference std 2 everywhere: column 1 has std ~100 (ratio ~50), column 3 ~0.02 (ratio ~0.01)."""
    emb = rand(6, 50, 6) * 2.0 + 5.0
    emb[:, HIGH] = rand(7, 50) * 100.0 + 30.0
    emb[:, LOW] = rand(8, 50) * 0.02 - 4.0
    return emb.to(dtype), torch.full((6,), 2.0)


@pytest.mark.parametrize(
    "direction, flagged", [("both", [HIGH, LOW]), ("high", [HIGH]), ("low", [LOW])]
)
def test_detection_both_directions_and_filter(direction, flagged):
    emb, ref = outlier_case()
    out, info = mask_outliers(emb, ref, 10.0, "scale", direction)
    assert info["masked_dimensions"] == flagged
    assert info["flagged_dimensions"] == flagged
    assert set(info["ratios"]) == set(flagged)
    for d in flagged:
        assert info["ratios"][d] == pytest.approx(float(emb[:, d].std()) / 2.0)
    assert info["mode"] == "scale" and info["threshold"] == 10.0 and info["direction"] == direction


def test_seed_documented_outlier_is_under_dispersed():
    # dim 396: Qwen3-4B reference std 927.6, VL image-token std 1.5 -> ratio ~0.0016. The seed's "> t" check
    # could never flag it; "low" / "both" do.
    emb = rand(9, 40, 2)
    emb[:, 0] *= 1.5 / float(emb[:, 0].std())
    ref = torch.tensor([927.6, 1.0])
    assert mask_outliers(emb, ref, 10.0, "zero", "high")[1]["masked_dimensions"] == []
    assert mask_outliers(emb, ref, 10.0, "zero", "both")[1]["masked_dimensions"] == [0]


@pytest.mark.parametrize("mode", ["zero", "clamp", "scale", "none"])
@pytest.mark.parametrize("direction", ["both", "high", "low"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_unflagged_columns_bit_identical(mode, direction, dtype):
    emb, ref = outlier_case(dtype)
    out, info = mask_outliers(emb, ref, 10.0, mode, direction)
    assert out.dtype == dtype and out.shape == emb.shape
    untouched = [d for d in range(6) if d not in info["masked_dimensions"]]
    assert torch.equal(out[:, untouched], emb[:, untouched])
    for d in info["masked_dimensions"]:
        assert not torch.equal(out[:, d], emb[:, d])


def test_zero_mode():
    emb, ref = outlier_case()
    out, _ = mask_outliers(emb, ref, 10.0, "zero")
    assert torch.equal(out[:, [HIGH, LOW]], torch.zeros(50, 2, dtype=emb.dtype))
    mean = torch.arange(6, dtype=torch.float64) * 10
    out, _ = mask_outliers(emb, ref, 10.0, "zero", reference_mean=mean)
    assert torch.equal(out[:, HIGH], torch.full((50,), 10.0, dtype=emb.dtype))
    assert torch.equal(out[:, LOW], torch.full((50,), 30.0, dtype=emb.dtype))


def test_clamp_bounds_high_outliers_to_the_band_and_leaves_low_ones():
    emb, ref = outlier_case()
    out, info = mask_outliers(emb, ref, 10.0, "clamp")
    mu = emb[:, HIGH].mean()
    col = out[:, HIGH]
    assert (col >= mu - 20.0 - 1e-9).all() and (col <= mu + 20.0 + 1e-9).all()
    inside = (emb[:, HIGH] - mu).abs() <= 20.0
    assert inside.any() and torch.equal(col[inside], emb[inside, HIGH])  # values inside the band are kept exactly
    assert torch.equal(out[:, LOW], emb[:, LOW])  # clipping cannot widen an under-dispersed column
    assert info["masked_dimensions"] == [HIGH]
    assert info["flagged_dimensions"] == [HIGH, LOW]


def test_scale_puts_std_on_the_band_edge_and_keeps_the_mean():
    emb, ref = outlier_case()
    out, _ = mask_outliers(emb, ref, 10.0, "scale")
    assert float(out[:, HIGH].std()) == pytest.approx(20.0)  # t * ref
    assert float(out[:, LOW].std()) == pytest.approx(0.2)  # ref / t
    for d in (HIGH, LOW):
        assert float(out[:, d].mean()) == pytest.approx(float(emb[:, d].mean()))
    # shape is kept: the rescaled column is an affine image of the original
    z = (emb[:, HIGH] - emb[:, HIGH].mean()) / emb[:, HIGH].std()
    assert torch.allclose((out[:, HIGH] - out[:, HIGH].mean()) / out[:, HIGH].std(), z)


def test_clamp_differs_from_scale():
    emb, ref = outlier_case()
    clamped, _ = mask_outliers(emb, ref, 10.0, "clamp", "high")
    scaled, _ = mask_outliers(emb, ref, 10.0, "scale", "high")
    assert not torch.allclose(clamped[:, HIGH], scaled[:, HIGH])
    assert float(clamped[:, HIGH].std()) != pytest.approx(float(scaled[:, HIGH].std()))


@FAST
@given(st.integers(0, 2**31 - 1), st.sampled_from(["zero", "clamp", "scale"]), st.sampled_from(["both", "high", "low"]),
       st.floats(1.5, 20.0))
def test_mask_outliers_matches_reference(seed, mode, direction, t):
    rng = np.random.default_rng(seed)
    size, d = int(rng.integers(2, 20)), int(rng.integers(1, 8))
    scales = 10.0 ** rng.uniform(-3, 3, size=d)
    a = rng.normal(size=(size, d)) * scales + rng.normal(size=d) * 5
    ref = 10.0 ** rng.uniform(-1, 1, size=d)
    out, info = mask_outliers(torch.from_numpy(a), torch.from_numpy(ref), t, mode, direction)

    expected = a.copy()
    masked = []
    for j in range(d):
        col = a[:, j]
        r = max(ref[j], 1e-6)
        ratio = col.std(ddof=1) / r
        is_high = ratio > t and direction in ("both", "high")
        is_low = ratio < 1 / t and direction in ("both", "low")
        if not (is_high or is_low):
            continue
        mu = col.mean()
        if mode == "zero":
            expected[:, j] = 0.0
        elif mode == "clamp":
            if not is_high:
                continue
            expected[:, j] = np.clip(col, mu - t * r, mu + t * r)
        else:
            target = t * r if is_high else r / t
            expected[:, j] = mu + (col - mu) * target / col.std(ddof=1)
        masked.append(j)
    assert info["masked_dimensions"] == masked
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_mask_outliers_edge_cases():
    emb, ref = outlier_case()
    out, info = mask_outliers(emb, ref, 10.0, "none")
    assert torch.equal(out, emb) and info["masked_dimensions"] == [] and info["ratios"] == {}
    out, info = mask_outliers(emb[:1], ref, 10.0, "zero")  # one row: no spread to measure, nothing flagged
    assert torch.equal(out, emb[:1]) and info["masked_dimensions"] == []
    const = emb.clone()
    const[:, 0] = 7.0  # std 0: a low outlier that scale cannot rescale
    out, info = mask_outliers(const, ref, 10.0, "scale", "low")
    assert 0 in info["flagged_dimensions"] and 0 not in info["masked_dimensions"]
    assert torch.equal(out[:, 0], const[:, 0])
    out, _ = mask_outliers(emb, ref.tolist(), 10.0, "scale")  # a list reference works too
    assert out.shape == emb.shape


def test_mask_outliers_errors_name_their_parameter():
    emb, ref = outlier_case()
    for bad in (1.0, 0.5, -3, float("nan"), float("inf"), "big"):
        with pytest.raises(ValueError, match=r"^threshold "):
            mask_outliers(emb, ref, bad)
    for bad_ref in (torch.ones(5), torch.ones(6, 1), torch.ones(1, 6), "std", torch.tensor([1.0, -1, 1, 1, 1, 1])):
        with pytest.raises(ValueError, match=r"^reference_std "):
            mask_outliers(emb, bad_ref)
    with pytest.raises(ValueError, match=r"^reference_mean "):
        mask_outliers(emb, ref, reference_mean=torch.zeros(7))
    with pytest.raises(ValueError, match=r"^mode must be one of none, zero, mean, clamp, scale"):
        mask_outliers(emb, ref, 10.0, "clip")
    with pytest.raises(ValueError, match=r"^direction must be one of both, high, low"):
        mask_outliers(emb, ref, 10.0, "zero", "up")
    with pytest.raises(ValueError, match=r"^emb "):
        mask_outliers(torch.randn(6), ref)
