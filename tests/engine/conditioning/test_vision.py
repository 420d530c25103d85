"""engine.conditioning.vision: layer stop, equality with the full forward, token modes, image budget, normalisation, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.conditioning.text import ReferenceStats, TextEncoder
from engine.models.tiny import TINY_HIDDEN, TINY_VL_LAYERS
from engine.types import LayerWeight, PositionKind, VLResult
from engine.conditioning.tokens import budget_grid, parse_layers, processor_grid
from engine.conditioning.vision import VLExtractor

PROMPT = "Homer Simpson"


def _image(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def vl(tiny_models) -> VLExtractor:
    return VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", "float32")


@pytest.fixture(scope="module")
def stats(tiny_models) -> ReferenceStats:
    return TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32").reference_stats()


def _full_hidden(ex: VLExtractor, image, text):
    inputs, _ = ex.build_inputs(image, text)
    with torch.no_grad():
        return ex.model(**inputs, output_hidden_states=True).hidden_states


def _count_layers(ex: VLExtractor):
    ran: list[int] = []
    layers = ex.model.model.language_model.layers
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    return ran, handles


def test_forward_stops_at_layer_minus_6(vl):
    ran, handles = _count_layers(vl)
    lm_head_calls: list[int] = []
    h2 = vl.model.lm_head.register_forward_hook(lambda *a: lm_head_calls.append(1))
    try:
        res = vl.extract(_image(), PROMPT, hidden_layer=-6)
    finally:
        for h in handles + [h2]:
            h.remove()
    assert ran == [0, 1, 2]  # 8 layers, -6 = output of layer 8-6 = 2: layers 0..2 run, 3 of 8
    assert res.settings["layers_run"] == 3
    assert lm_head_calls == []
    assert len(vl.model.model.language_model.layers) == TINY_VL_LAYERS  # restored


@pytest.mark.parametrize("layer", [-1, -2, -6, -8])
def test_layer_equals_full_forward_hidden_state(vl, layer):
    img = _image()
    full = _full_hidden(vl, img, PROMPT)
    res = vl.extract(img, PROMPT, hidden_layer=layer, scale_to_text=False)
    assert res.embeddings.dtype == torch.float32 and res.embeddings.device.type == "cpu"
    assert torch.equal(res.embeddings, full[layer][0].float())
    assert res.scale_factor == 1.0


def test_default_dtype_equals_full_forward(tiny_models):
    ex = VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu")  # auto: bf16 where the CPU has it, else float32
    img = _image()
    full = _full_hidden(ex, img, PROMPT)
    res = ex.extract(img, PROMPT, scale_to_text=False)
    assert res.embeddings.dtype == torch.float32
    assert torch.equal(res.embeddings, full[-6][0].float())
    assert res.settings["dtype"] == str(ex.dtype).replace("torch.", "")


def test_multi_layer_mix_is_one_forward(vl):
    img = _image()
    full = _full_hidden(vl, img, PROMPT)
    ran, handles = _count_layers(vl)
    try:
        res = vl.extract(img, PROMPT, hidden_layer=(LayerWeight(-6, 3.0), LayerWeight(-8, 1.0)), scale_to_text=False)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1, 2]  # one pass, to the deepest requested layer
    # issue 14 (audit #21): each layer at the same per-row scale before weighting, the weighted mean RMS restored:
    # m_i = (0.75|a_i| + 0.25|b_i|) * (0.75 a_i/|a_i| + 0.25 b_i/|b_i|), |.| the row RMS
    a, b = full[-6][0].double(), full[-8][0].double()
    ra, rb = a.pow(2).mean(1, keepdim=True).sqrt(), b.pow(2).mean(1, keepdim=True).sqrt()
    expected = ((0.75 * ra + 0.25 * rb) * (0.75 * a / ra + 0.25 * b / rb)).float()
    torch.testing.assert_close(res.embeddings, expected, atol=1e-6, rtol=1e-5)
    # with equal weights every mixed row is equally close in angle to both layers' rows, however different their
    # scales (a raw mean leans towards the larger layer: the tiny -6 rows are ~2x the -8 rows)
    equal = vl.extract(img, PROMPT, hidden_layer=[(-6, 1), (-8, 1)], scale_to_text=False).embeddings.double()
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(equal, a, dim=1), cos(equal, b, dim=1), atol=1e-5, rtol=1e-5)
    raw = 0.5 * a + 0.5 * b
    assert float((cos(raw, a, dim=1) - cos(raw, b, dim=1)).abs().max()) > 1e-2
    assert res.settings["hidden_layer"] == [[-6, 0.75], [-8, 0.25]]
    pairs = vl.extract(img, PROMPT, hidden_layer=[(-6, 3), (-8, 1)], scale_to_text=False)
    assert torch.equal(pairs.embeddings, res.embeddings)


def test_parse_layers():
    assert parse_layers(-6, 8) == [(-6, 1.0)]
    assert parse_layers([(-2, 1), (-2, 1), (-4, 2)], 8) == [(-2, 0.5), (-4, 0.5)]
    with pytest.raises(ValueError, match="hidden_layer weights"):
        parse_layers([LayerWeight(-2, 0.0)], 8)
    with pytest.raises(ValueError, match="hidden_layer weights"):
        parse_layers([LayerWeight(-2, -1.0)], 8)


@pytest.mark.parametrize("layer", [0, 1, 3, -TINY_VL_LAYERS - 1, [LayerWeight(-9)], "abc", 1.5])
def test_bad_layer_names_hidden_layer_and_range(vl, layer):
    with pytest.raises(ValueError, match=r"hidden_layer.*-8 and -1|hidden_layer must be"):
        vl.extract(_image(), PROMPT, hidden_layer=layer)


def test_bad_choices(vl):
    with pytest.raises(ValueError, match="tokens must be one of"):
        vl.extract(_image(), PROMPT, tokens="pixels")
    with pytest.raises(ValueError, match="normalization must be one of"):
        vl.extract(_image(), PROMPT, normalization="zscore")
    with pytest.raises(ValueError, match="target_std"):
        vl.extract(_image(), PROMPT, target_std=0)
    with pytest.raises(ValueError, match="outlier_mode"):
        vl.extract(_image(), PROMPT, outlier_mode="remove")
    with pytest.raises(ValueError, match="image"):
        vl.extract("not an image", PROMPT)


def test_token_modes_positions_kinds_span(vl):
    img = _image(96, 64)  # 3x2 grid -> 6 image tokens
    full = vl.extract(img, PROMPT, scale_to_text=False)
    kinds = full.kinds
    n = kinds.count("image")
    assert n == 6 and full.settings["image_tokens"] == 6 and full.settings["image_grid"] == [3, 2]
    # <|im_start|> user \n <|vision_start|> [6 image] <|vision_end|> ...
    assert kinds[:4] == ["marker", "text", "text", "marker"]
    assert full.image_span == (4, 10) and kinds[4:10] == ["image"] * 6 and kinds[10] == "marker"
    assert full.image_mask == [k == "image" for k in kinds]
    e = full.embeddings

    text = vl.extract(img, PROMPT, tokens="text", scale_to_text=False)
    assert text.image_span is None and "image" not in text.kinds
    assert torch.equal(text.embeddings, torch.cat([e[:3], e[11:]]))

    image = vl.extract(img, PROMPT, tokens="image", scale_to_text=False)
    assert image.image_span == (1, 7) and image.kinds == ["marker"] + ["image"] * 6 + ["marker"]
    assert torch.equal(image.embeddings, e[3:11])

    bare = vl.extract(img, PROMPT, tokens="image_no_markers", scale_to_text=False)
    assert bare.image_span == (0, 6) and bare.kinds == ["image"] * 6
    assert torch.equal(bare.embeddings, e[4:10])
    assert set(full.kinds) == {k.value for k in PositionKind}


def test_text_tokens_line_up_with_the_qwen3_prompt(vl, tiny_models):
    te = TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32", lazy=True)
    for prompt in [PROMPT, "a red fox jumps over the lazy dog"]:
        assert vl.token_ids(_image(), prompt, "text") == te.token_ids(prompt)
        assert vl.extract(_image(), prompt, tokens="text").embeddings.shape[0] == len(te.token_ids(prompt))


def test_image_token_budget_caps_before_the_processor(vl):
    res = vl.extract(_image(2048, 1024), PROMPT, max_image_tokens=64)
    n = res.kinds.count("image")
    assert n <= 64 and n == res.settings["image_tokens"]
    cols, rows = res.settings["image_grid"]
    assert cols * rows == n
    assert abs(cols / rows - 2.0) / 2.0 < 0.15  # aspect kept
    w, h = res.settings["image_size"]
    assert w % 32 == 0 and h % 32 == 0 and abs(w / h - 2.0) < 0.3
    assert res.settings["original_size"] == [2048, 1024] and res.settings["max_image_tokens"] == 64
    # an image inside the budget is not resized
    small = vl.extract(_image(96, 64), PROMPT, max_image_tokens=64)
    assert small.settings["image_size"] == [96, 64]


def test_budget_helpers():
    assert processor_grid(96, 64) == (3, 2)
    assert processor_grid(1000, 1000) == (31, 31)
    for w, h, budget in [(2048, 1024, 64), (1024, 1024, 1024), (4000, 3000, 1024), (5000, 100, 256), (300, 7000, 50)]:
        c, r = budget_grid(w, h, budget)
        assert 1 <= c * r <= budget
        if c > 1 and r > 1:
            assert abs(math.log((c / r) / (w / h))) < 0.25
    assert budget_grid(1024, 1024, 1024) == (32, 32)


def test_row_rms_is_the_default_and_keeps_each_rows_direction(vl):
    """Issue 14: unit-RMS rows (the blend scales them to the prompt's content rows), directions of the raw rows."""
    res = vl.extract(_image(), PROMPT)
    raw = vl.extract(_image(), PROMPT, normalization="none").embeddings.double()
    assert res.settings["normalization"] == "row_rms"
    out = res.embeddings.double()
    torch.testing.assert_close(out.pow(2).mean(1), torch.ones(out.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    rms = raw.pow(2).mean(1, keepdim=True).sqrt()
    torch.testing.assert_close(out, raw / rms, atol=1e-5, rtol=1e-5)
    assert res.scale_factor == pytest.approx(1.0 / float(rms.median()), rel=1e-5)


def test_global_normalisation_hits_target_std(vl):
    for target in (61.0, 10.0):
        res = vl.extract(_image(), PROMPT, target_std=target, normalization="global")
        assert res.scaled_std == pytest.approx(target, rel=1e-4)
        assert float(res.embeddings.std()) == pytest.approx(target, rel=1e-4)
        assert res.scale_factor == pytest.approx(target / res.original_std, rel=1e-6)
    raw = vl.extract(_image(), PROMPT, normalization="none")
    assert raw.scale_factor == 1.0 and raw.scaled_std == raw.original_std


def test_per_dim_and_hybrid(vl, stats):
    with pytest.raises(ValueError, match="reference_stats"):
        vl.extract(_image(), PROMPT, normalization="per_dim")
    raw = vl.extract(_image(), PROMPT, scale_to_text=False).embeddings
    res = vl.extract(_image(), PROMPT, normalization="per_dim", reference_stats=stats)
    z = (res.embeddings - stats.mean) / stats.std
    assert float(z.abs().max()) <= 3.0 + 1e-4  # clipped at 3 sigma
    # unclipped entries keep their z-score
    zr = (raw - raw.mean(0)) / raw.std(0)
    inside = zr.abs() < 3
    torch.testing.assert_close(z[inside], zr[inside], atol=1e-3, rtol=1e-3)
    hyb = vl.extract(_image(), PROMPT, normalization="hybrid", reference_stats=stats, target_std=20.0)
    glob = vl.extract(_image(), PROMPT, normalization="global", target_std=20.0)
    torch.testing.assert_close(hyb.embeddings, 0.5 * res.embeddings + 0.5 * glob.embeddings, atol=1e-5, rtol=1e-5)


def test_per_dim_single_position_has_no_nan(vl, stats):
    res = vl.extract(_image(32, 32), PROMPT, tokens="image_no_markers", normalization="per_dim",
                     reference_stats=stats)
    assert res.embeddings.shape[0] == 1
    assert torch.isfinite(res.embeddings).all()
    assert torch.equal(res.embeddings[0], stats.mean)


def test_outlier_masking_in_extract(vl):
    with pytest.raises(ValueError, match="reference_stats"):
        vl.extract(_image(), PROMPT, outlier_mode="zero")
    raw = vl.extract(_image(), PROMPT, scale_to_text=False)
    img_rows = raw.embeddings[raw.image_span[0]:raw.image_span[1]]
    spread = img_rows.std(0)
    ref_std = spread.clone()
    ref_std[[3, 7]] = spread[[3, 7]] / 50.0  # dims 3 and 7 look 50x over-dispersed
    fake = ReferenceStats(mean=torch.zeros(TINY_HIDDEN), std=ref_std, layer=-2, num_prompts=1, num_tokens=1, key="t")
    res = vl.extract(_image(), PROMPT, outlier_mode="zero", outlier_direction="high", reference_stats=fake,
                     scale_to_text=False)
    assert res.masked_dimensions == [3, 7]
    # issue 14: detection runs in the normalised units, against the reference brought to the rows' scale:
    # ref * c, c = RMS(image rows) / sqrt(mean(ref_std^2 + ref_mean^2)); the ratio is 50 / c
    c = float(img_rows.pow(2).mean().sqrt() / ref_std.pow(2).mean().sqrt())
    assert res.masked_ratios[3] == pytest.approx(50.0 / c, rel=1e-3)
    s, e = res.image_span
    assert torch.all(res.embeddings[s:e, [3, 7]] == 0)
    # only the raw image rows are masked: markers and text untouched
    assert torch.equal(res.embeddings[:s], raw.embeddings[:s]) and torch.equal(res.embeddings[e:], raw.embeddings[e:])
    assert res.settings["outlier_mode"] == "zero" and res.settings["reference_stats"] == "t"
    # masking runs after selection and normalisation (issue 14), and a global factor changes no decision
    sel = vl.extract(_image(), PROMPT, outlier_mode="zero", outlier_direction="high", reference_stats=fake,
                     tokens="image_no_markers", normalization="global")
    assert sel.masked_dimensions == [3, 7] and torch.all(sel.embeddings[:, [3, 7]] == 0)
    assert sel.masked_ratios[3] == pytest.approx(res.masked_ratios[3], rel=1e-4)
    keep = [d for d in range(TINY_HIDDEN) if d not in (3, 7)]
    factor = 61.0 / float(img_rows.std())  # the global factor of the unmasked selection
    torch.testing.assert_close(sel.embeddings[:, keep], img_rows[:, keep] * factor, atol=1e-4, rtol=1e-4)
    # mean: the flagged columns become the reference's (scaled) content mean
    fake_mean = ReferenceStats(mean=torch.full((TINY_HIDDEN,), 0.01), std=ref_std, layer=-2, num_prompts=1,
                               num_tokens=1, key="t")
    filled = vl.extract(_image(), PROMPT, outlier_mode="mean", outlier_direction="high", reference_stats=fake_mean,
                        scale_to_text=False)
    c_mean = float(img_rows.pow(2).mean().sqrt() / (ref_std.pow(2) + 0.01 ** 2).mean().sqrt())
    s2, e2 = filled.image_span
    torch.testing.assert_close(filled.embeddings[s2:e2, 3], torch.full((e2 - s2,), 0.01 * c_mean))


def test_settings_and_metadata_round_trip(vl):
    res = vl.extract(_image(), PROMPT, hidden_layer=-6, tokens="full")
    for key in ("hidden_layer", "tokens", "normalization", "target_std", "outlier_mode", "outlier_threshold",
                "outlier_direction", "max_image_tokens", "image_size", "vl_text"):
        assert key in res.settings
    assert res.settings["vl_text"] == PROMPT
    again = VLResult.from_metadata(res.embeddings, res.metadata())
    assert again.kinds == res.kinds and again.image_span == res.image_span


def test_unload_lazy_reload_and_auto_unload(tiny_models):
    ex = VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", "float32", lazy=True)
    assert not ex.loaded
    a = ex.extract(_image(), PROMPT)
    assert ex.loaded and ex.load_count == 1
    ex.unload()
    assert not ex.loaded
    b = ex.extract(_image(), PROMPT)
    assert ex.loaded and ex.load_count == 2
    assert torch.equal(a.embeddings, b.embeddings)
    auto = VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", "float32", auto_unload=True)
    c = auto.extract(_image(), PROMPT)
    assert not auto.loaded
    assert torch.equal(c.embeddings, a.embeddings)
    auto.extract(_image(), PROMPT)
    assert not auto.loaded and auto.load_count == 2
