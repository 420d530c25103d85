"""engine.generation.pipeline: StylePipeline end to end on the tiny models, stages, lifecycle, parameter errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.conditioning.blend import blend
from engine.conditioning.sequence import fit_caption
from engine.generation.zimage import Cancelled
from engine.generation.pipeline import StylePipeline
from engine.conditioning.text import ReferenceStats
from engine.types import BlendMode, Encoded, LayerWeight, StylizeRequest, VLResult
from tests.imagecheck import assert_different_image, assert_same_image

SMALL = dict(width=32, height=32, steps=2)


def _ref(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def pipe(tiny_models) -> StylePipeline:
    return StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")


def _bytes(img: Image.Image) -> bytes:
    return img.tobytes()


def test_txt2img_stylize(pipe):
    req = StylizeRequest(prompt="a red fox", seeds=(1, 2), **SMALL)
    res = pipe(req)
    assert len(res.images) == 2 and res.seeds == [1, 2]
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in res.images)
    assert res.vl is None and res.params["vl_applied"] is False and res.params["mode"] == "txt2img"
    assert res.params["shift"] == 3.0 and res.params["prompt"] == "a red fox" and res.params["reference"] is None
    assert res.params["caption_length"] == res.stats["caption_length"] == res.params["text_length"]
    assert res.stats["text_std"] == res.stats["blended_std"]
    for key in ("vl", "text", "blend", "denoise", "decode", "total"):
        assert key in res.timings
    again = pipe(req)
    assert [_bytes(i) for i in again.images] == [_bytes(i) for i in res.images]


def test_reference_stylize_equals_manual_path(pipe):
    ref = _ref()
    req = StylizeRequest(prompt="a red fox", reference=ref, alpha=0.5, blend_mode="pool", seeds=(3,), **SMALL)
    res = pipe(req)
    assert res.params["vl_applied"] and res.params["alpha_applied"] == 0.5
    assert res.vl is not None and res.vl["settings"]["hidden_layer"] == -6
    # the default normalisation is row_rms since issue 14 (was global 61): unit-RMS VL rows at extraction, and at
    # the blend the pooled rows get the median RMS of the prompt's content rows
    assert res.vl["settings"]["normalization"] == "row_rms"
    # by hand, through the public pieces
    text = pipe.text_encoder.encode(["a red fox"])[0]
    vl = pipe.vl_extractor.extract(ref, "a red fox", normalization="row_rms")
    torch.testing.assert_close(vl.embeddings.pow(2).mean(1), torch.ones(vl.embeddings.shape[0]))
    content = [row for row, keep in zip(text, pipe.text_encoder.content_mask("a red fox")) if keep]
    scale = float(torch.stack([r.pow(2).mean().sqrt() for r in content]).median())
    caption = fit_caption(blend(vl.embeddings, text, 0.5, BlendMode.POOL, row_scale=scale))
    den = pipe.generator.denoise(caption, seeds=[3], steps=2, width=32, height=32)
    manual = pipe.generator.decode(den.latents)
    assert _bytes(manual[0]) == _bytes(res.images[0])
    pure = pipe(req.replace(alpha=0.0))
    assert _bytes(pure.images[0]) != _bytes(res.images[0])


def test_two_stages_equal_one_call(pipe):
    req = StylizeRequest(prompt="a cat", reference=_ref(seed=1), alpha=0.3, seeds=(4,), **SMALL)
    pipe.check_inputs(req)
    vl = pipe.encode_reference(req)
    assert isinstance(vl, VLResult)
    text = pipe.encode_prompt(req)
    staged = pipe.generate(req, vl, text)
    whole = pipe(req)
    assert _bytes(staged.images[0]) == _bytes(whole.images[0])
    assert staged.params["caption_length"] == whole.params["caption_length"]
    # the two halves __call__ runs: encode() then generate(request, encoded)
    encoded = pipe.encode(req)
    assert isinstance(encoded, Encoded) and torch.equal(encoded.prompt_embeds, text)
    assert torch.equal(encoded.vl.embeddings, vl.embeddings) and encoded.neutral is None and encoded.negative is None
    halves = pipe.generate(req, encoded)
    assert _bytes(halves.images[0]) == _bytes(whole.images[0])
    # nothing fills in a missing stage: a request that needs its extraction says so
    with pytest.raises(ValueError, match="extraction"):
        pipe.generate(req, None, text)


def test_alpha_zero_skips_the_extraction(pipe):
    req = StylizeRequest(prompt="a cat", reference=_ref(), alpha=0.0, **SMALL)
    calls = []
    original = pipe.vl_extractor.extract
    pipe.vl_extractor.extract = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        assert pipe.encode_reference(req) is None
        res = pipe(req)
    finally:
        del pipe.vl_extractor.extract
    assert calls == [] and res.vl is None
    assert pipe.encode_reference(StylizeRequest(prompt="x")) is None


def test_img2img_stylize_is_deterministic(pipe):
    ref = _ref(80, 48)
    req = StylizeRequest(prompt="a cat", reference=ref, alpha=0.4, strength=0.9, seeds=(5, 6), width=48, height=32,
                         steps=3)
    a = pipe(req)
    b = pipe(req)
    assert a.params["mode"] == "img2img" and a.params["denoise_steps"] == 3 and a.params["init_image_size"] == [80, 48]
    assert a.params["start_sigma"] == pytest.approx(0.9, abs=1e-5)  # strength is the start noise level (issue 14)
    assert [_bytes(i) for i in a.images] == [_bytes(i) for i in b.images]
    assert a.images[0].size == (48, 32)
    single = pipe(req.replace(seeds=(6,)))
    assert_same_image(single.images[0], a.images[1])  # alone or second in a batch of two: the same image
    assert_different_image(single.images[0], a.images[0])
    txt = pipe(req.replace(strength=None))
    assert _bytes(txt.images[0]) != _bytes(a.images[0])


@pytest.mark.parametrize("mode", [m.value for m in BlendMode])
def test_every_blend_mode_runs(pipe, mode):
    req = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.3, blend_mode=mode, append_tokens=4, **SMALL)
    res = pipe(req)
    text_len, vl_len = res.params["text_length"], res.params["vl_length"]
    # append: round(0.3 * 4) = 1 row (issue 14: alpha picks the count); replace: from len(text) towards len(vl)
    expected = {"append": text_len + 1, "replace": text_len + round(0.3 * (vl_len - text_len))}.get(mode, text_len)
    assert res.params["caption_length"] == expected


def test_style_delta_uses_a_gray_neutral(pipe):
    req = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.3, blend_mode="style_delta", **SMALL)
    neutral = pipe.neutral_reference(req)
    # issue 14: row_rms is row-local (each row its own factor), so the reference and the gray image keep identical
    # rows identical; under global both would be extracted raw
    gray = pipe.vl_extractor.extract(Image.new("RGB", (96, 64), (128, 128, 128)), "a red fox", normalization="row_rms")
    assert req.replace(normalization="global").vl_settings()["normalization"] == "none"
    assert torch.equal(neutral.embeddings, gray.embeddings)
    assert pipe.neutral_reference(req) is neutral  # memoised


def test_multilayer_cfg_and_think(pipe):
    req = StylizeRequest(prompt="a red fox", reference=_ref(), hidden_layer=(LayerWeight(-6, 1), LayerWeight(-8, 1)),
                         guidance_scale=3.0, think=True, text_layer=-3, **SMALL)
    res = pipe(req)
    assert res.vl["settings"]["hidden_layer"] == [[-6, 0.5], [-8, 0.5]]
    assert res.params["negative_length"] == pipe.text_encoder.encode([""], layer=-3, think=True)[0].shape[0]
    assert res.params["text_length"] == len(pipe.text_encoder.token_ids("a red fox", think=True))


def test_per_dim_uses_memoised_reference_stats(tiny_models):
    p = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    req = StylizeRequest(prompt="a fox", reference=_ref(), normalization="per_dim", outlier_mode="scale", **SMALL)
    key = p.reference_stats_key(req)
    assert key is not None and p.reference_stats_key(req.replace(normalization="global", outlier_mode="none")) is None
    assert p.reference_stats_key(req.replace(alpha=0.0)) is None  # no extraction, no statistics
    vl = p.encode_reference(req)
    assert vl.settings["reference_stats"] == key
    stats = p.reference_stats_for(req)
    assert isinstance(stats, ReferenceStats) and stats.key == key
    assert p.reference_stats_for(req) is stats and p.reference_stats(-2) is stats  # computed once
    assert not p.loaded_components().get("dit")  # stage 1 never touched the DiT


def test_seeded_reference_stats_are_used_and_checked(tiny_models):
    donor = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    req = StylizeRequest(prompt="a fox", reference=_ref(), normalization="per_dim", **SMALL)
    stats = donor.reference_stats_for(req)
    p = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    key = p.reference_stats_key(req)
    with pytest.raises(ValueError, match="key"):
        p.seed_reference_stats("0" * 64, stats)
    flat = ReferenceStats(mean=stats.mean[None], std=stats.std[None], layer=stats.layer, num_prompts=1, num_tokens=1,
                          key=key)
    with pytest.raises(ValueError, match=r"\[D\]"):
        p.seed_reference_stats(key, flat)
    p.seed_reference_stats(key, stats)
    assert p.reference_stats_for(req) is stats
    assert p.loaded_components() == {}  # served from the memo: the text encoder never loaded


def test_progress_and_cancel(pipe):
    req = StylizeRequest(prompt="a fox", seeds=(1,), width=32, height=32, steps=3)
    steps: list[tuple[int, int]] = []
    pipe(req, progress=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    steps.clear()
    with pytest.raises(Cancelled):
        pipe(req, progress=lambda s, t: steps.append((s, t)), should_abort=lambda: len(steps) >= 1)
    assert steps == [(1, 3)]


def test_generate_batch_equals_single_calls(pipe):
    a = StylizeRequest(prompt="a fox", seeds=(1, 2), **SMALL)
    b = StylizeRequest(prompt="a cat", reference=_ref(), alpha=0.5, seeds=(3,), **SMALL)
    vls = [pipe.encode_reference(a), pipe.encode_reference(b)]
    out = pipe.generate_batch([a, b], vls, [pipe.encode_prompt(a), pipe.encode_prompt(b)])
    encoded = pipe.generate_batch([a, b], [pipe.encode(a), pipe.encode(b)])
    assert [_bytes(i) for r in encoded for i in r.images] == [_bytes(i) for r in out for i in r.images]
    assert [len(r.images) for r in out] == [2, 1]
    assert_same_image(out[0].images[1], pipe(a).images[1])
    assert_same_image(out[1].images[0], pipe(b).images[0])
    assert_different_image(out[0].images[0], out[0].images[1])  # the bounds tell two seeds apart
    with pytest.raises(ValueError, match="share width"):
        pipe.generate_batch([a, a.replace(width=48)], [None, None])


def test_lifecycle_lazy_load_unload(tiny_models):
    p = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    assert p.loaded_components() == {}
    p.load("text")
    assert p.loaded_components() == {"text": "cpu"}
    p.load("all")
    assert p.loaded_components() == {"text": "cpu", "dit": "cpu", "vl": "cpu"}
    req = StylizeRequest(prompt="a fox", reference=_ref(), **SMALL)
    first = p(req)
    p.unload("vl")
    assert "vl" not in p.loaded_components()
    p.unload("all")
    assert p.loaded_components() == {}
    again = p(req)  # reloads lazily
    assert _bytes(again.images[0]) == _bytes(first.images[0])
    assert set(p.loaded_components()) == {"text", "dit", "vl"}
    with pytest.raises(ValueError, match="component"):
        p.load("gpu")


def test_from_settings(tiny_models):
    settings = SimpleNamespace(zimage_path=tiny_models.zimage, vl_path=tiny_models.qwen3vl, device="cpu",
                               vl_device="cpu", text_device="cpu", dtype="float32", vl_max_image_tokens=16,
                               vl_auto_unload=True)
    p = StylePipeline.from_settings(settings)
    assert p.vl_max_image_tokens == 16 and p.vl_auto_unload and str(p.vl_device) == "cpu"
    vl = p.encode_reference(StylizeRequest(prompt="a fox", reference=_ref(256, 256), **SMALL))
    assert vl.settings["image_tokens"] <= 16
    assert "vl" not in p.loaded_components()  # auto-unloaded
    with pytest.raises(ValueError, match="zimage_path"):
        StylePipeline.from_settings(SimpleNamespace(zimage_path=None))


def test_text_only_pipeline_rejects_references(tiny_models):
    p = StylePipeline.from_pretrained(tiny_models.zimage, device="cpu", dtype="float32")
    p.check_inputs(StylizeRequest(prompt="a fox", **SMALL))
    with pytest.raises(ValueError, match="vl_path"):
        p.check_inputs(StylizeRequest(prompt="a fox", reference=_ref(), **SMALL))
    assert p.loaded_components() == {}


REF = _ref()


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(alpha=1.7), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(hidden_layer=-9), "hidden_layer"),
        (dict(hidden_layer=0), "hidden_layer"),
        (dict(hidden_layer=2), "hidden_layer"),
        (dict(hidden_layer=(LayerWeight(-12, 1.0),)), "hidden_layer"),
        (dict(text_layer=-5), "text_layer"),
        (dict(text_layer=0), "text_layer"),
        (dict(blend_mode="smear"), "blend_mode"),
        (dict(tokens="pixels"), "tokens"),
        (dict(normalization="zscore"), "normalization"),
        (dict(outlier_mode="drop"), "outlier_mode"),
        (dict(outlier_direction="up"), "outlier_direction"),
        (dict(outlier_threshold=0.5), "outlier_threshold"),
        (dict(target_std=0), "target_std"),
        (dict(fit_mode="squash"), "fit_mode"),
        (dict(append_tokens=0), "append_tokens"),
        (dict(width=100), "width"),
        (dict(height=8), "height"),
        (dict(width=0), "width"),
        (dict(width=4096), "width"),
        (dict(height=2064), "height"),
        (dict(steps=0), "steps"),
        (dict(steps=101), "steps"),
        (dict(seeds=()), "seeds"),
        (dict(seeds=(-3,)), "seeds"),
        (dict(strength=0.0), "strength"),
        (dict(strength=1.5), "strength"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(shift=0.0), "shift"),
        (dict(blend_mode="append", tokens="text"), "tokens"),
        (dict(reference="not an image"), "reference"),
        (dict(vl_text=5), "vl_text"),
    ],
)
def test_parameter_errors_name_the_parameter(pipe, changes, name):
    req = StylizeRequest(prompt="a fox", reference=REF, **SMALL).replace(**changes)
    with pytest.raises(ValueError, match=name):
        pipe.check_inputs(req)
    with pytest.raises(ValueError, match=name):
        pipe(req)


@pytest.mark.parametrize(
    "request_, name",
    [
        (StylizeRequest(prompt="   ", **SMALL), "prompt"),
        (StylizeRequest(prompt="a fox", strength=0.5, **SMALL), "strength"),
        (StylizeRequest(prompt="a fox", blend_mode="style_delta", **SMALL), "blend_mode"),
        (StylizeRequest(prompt="a fox", blend_mode="append", **SMALL), "blend_mode"),
    ],
)
def test_errors_without_reference(pipe, request_, name):
    with pytest.raises(ValueError, match=name):
        pipe.check_inputs(request_)


def test_empty_prompt_with_reference_is_fine(pipe):
    res = pipe(StylizeRequest(prompt="", reference=_ref(), alpha=1.0, **SMALL))
    assert res.params["vl_applied"] and res.vl["settings"]["vl_text"] is None


def test_compile_and_fp8_settings_reach_the_dit_on_every_build(tiny_models, monkeypatch):
    """``compile``/``fp8`` run ``engine.generation.accel.prepare`` (with its warm-up) when the DiT is built, and again after
    an unload + reload (a rebuilt transformer would otherwise silently lose them)."""
    from engine.generation import accel

    calls = []
    monkeypatch.setattr(accel, "prepare", lambda gen, **kw: calls.append((gen, kw)) or {"compile": kw["compile"]})
    settings = SimpleNamespace(zimage_path=tiny_models.zimage, vl_path=None, device="cpu", dtype="float32",
                               compile=True, fp8=False, width=64, height=48)
    p = StylePipeline.from_settings(settings)
    p.load("dit")
    assert len(calls) == 1 and calls[0][1] == {"compile": True, "fp8": False, "width": 64, "height": 48}
    assert p.generator.build_report == {"compile": True}
    p.unload("dit")
    p.load("dit")
    assert len(calls) == 2 and calls[1][0] is p.generator
    plain = StylePipeline.from_pretrained(tiny_models.zimage, device="cpu", dtype="float32")
    plain.load("dit")
    assert len(calls) == 2 and plain.generator.on_build is None  # both off: nothing runs


@pytest.mark.parametrize("size", [(1600, 16), (16, 1600), (100, 1)])
def test_the_thinnest_accepted_reference_reaches_the_dit(pipe, size):
    """100:1, the limit engine.media.images keeps, passes Qwen3-VL's real processor (it refuses 200:1) at the token budget
    and without it."""
    req = StylizeRequest(prompt="a fox", reference=_ref(*size), alpha=0.5, **SMALL)
    assert pipe(req).images[0].size == (32, 32)
    for budget in (4, 1024) if min(size) >= 16 else (1024,):  # the budget resize keeps the aspect; the processor
        # takes what comes out of it (a 1-pixel side is scaled up to the processor's minimum, whatever the budget)
        inputs, capped = pipe.vl_extractor.build_inputs(req.reference, "a fox", max_image_tokens=budget)
        assert int(inputs["image_grid_thw"].prod()) // 4 <= budget


def test_a_thinner_reference_is_refused_before_any_model_runs(pipe):
    req = StylizeRequest(prompt="a fox", reference=_ref(3000, 1), alpha=0.5, **SMALL)
    with pytest.raises(ValueError, match="3000x1 pixels, too thin to read"):
        pipe.check_inputs(req)
