"""engine.generation.zimage: shift, seeds, batches, img2img determinism, CFG negative, progress, cancel, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from types import SimpleNamespace

from engine.generation.zimage import Cancelled, Generator
from engine.conditioning.text import TextEncoder
from engine.models.tiny import TINY_HIDDEN
from tests.imagecheck import MEAN_LEVELS, assert_different_image, assert_same_image, image_difference

SIZE = dict(width=32, height=48)


@pytest.fixture(scope="module")
def gen(tiny_models) -> Generator:
    return Generator.from_pretrained(tiny_models.zimage, "cpu", "float32")


@pytest.fixture(scope="module")
def text(tiny_models) -> TextEncoder:
    return TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32")


@pytest.fixture(scope="module")
def emb(text) -> torch.Tensor:
    return text.encode(["a red fox in the snow"])[0]


def _run(generator: Generator, prompt_embeds, **kwargs) -> SimpleNamespace:
    """denoise then decode: the images (in seed order) and the parameter record."""
    den = generator.denoise(prompt_embeds, **kwargs)
    return SimpleNamespace(images=generator.decode(den.latents), params=den.params)


@pytest.fixture(scope="module")
def ref() -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(40, 60, 3) * 255).astype("uint8"))


def _bytes(img: Image.Image) -> bytes:
    return img.tobytes()


def test_txt2img_matches_diffusers_and_is_deterministic(gen, emb, tiny_models):
    from diffusers import ZImagePipeline

    out = _run(gen, emb, seeds=[7], steps=2, **SIZE)
    assert len(out.images) == 1 and out.images[0].size == (32, 48) and out.images[0].mode == "RGB"
    again = _run(gen, emb, seeds=[7], steps=2, **SIZE)
    assert _bytes(out.images[0]) == _bytes(again.images[0])
    other = _run(gen, emb, seeds=[8], steps=2, **SIZE)
    assert _bytes(out.images[0]) != _bytes(other.images[0])
    # the same as diffusers' own pipeline called from the prompt at shift 3.0
    pipe = ZImagePipeline.from_pretrained(str(tiny_models.zimage), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    ref_img = pipe(prompt=["a red fox in the snow"], num_inference_steps=2, guidance_scale=0.0,
                   generator=torch.Generator("cpu").manual_seed(7), **SIZE).images[0]
    diff = np.abs(np.asarray(ref_img, dtype=int) - np.asarray(out.images[0], dtype=int)).max()
    assert diff <= 1


def test_shift_is_set_every_call(gen, emb):
    a = _run(gen, emb, seeds=[1], steps=3, shift=3.0, **SIZE)
    assert a.params["shift"] == 3.0
    assert a.params["sigmas"][:3] == pytest.approx([1.0, 3 * (2 / 3) / (1 + 2 * (2 / 3)), 3 * (1 / 3) / (1 + 2 / 3)])
    b = _run(gen, emb, seeds=[1], steps=3, shift=1.0, **SIZE)
    assert b.params["shift"] == 1.0 and b.params["sigmas"][:3] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert _bytes(a.images[0]) != _bytes(b.images[0])
    c = _run(gen, emb, seeds=[1], steps=3, **SIZE)  # default 3.0 again, not the last call's 1.0
    assert c.params["shift"] == 3.0 and _bytes(c.images[0]) == _bytes(a.images[0])


def test_batch_of_two_seeds_equals_two_single_runs(gen, emb):
    batch = _run(gen, emb, seeds=[11, 12], steps=2, **SIZE)
    one = _run(gen, emb, seeds=[11], steps=2, **SIZE)
    two = _run(gen, emb, seeds=[12], steps=2, **SIZE)
    assert batch.params["seeds"] == [11, 12] and batch.params["caption_lengths"] == [emb.shape[0]] * 2
    assert_same_image(batch.images[0], one.images[0])
    assert_same_image(batch.images[1], two.images[0])
    assert_different_image(one.images[0], two.images[0])


def test_batch_of_several_embeddings(gen, text, emb):
    other = text.encode(["Homer Simpson"])[0]
    out = _run(gen, [emb, other], seeds=[3, 3], steps=2, **SIZE)
    assert out.params["caption_lengths"] == [emb.shape[0], other.shape[0]]
    assert _bytes(out.images[0]) != _bytes(out.images[1])
    single = _run(gen, other, seeds=[3], steps=2, **SIZE)
    assert_same_image(single.images[0], out.images[1])  # its batch-mate's longer caption changes nothing
    with pytest.raises(ValueError, match="prompt_embeds"):
        _run(gen, [emb, other, emb], seeds=[1, 2], steps=2, **SIZE)


def test_img2img_is_deterministic_and_batch_consistent(gen, emb, ref):
    a = _run(gen, emb, seeds=[5], steps=4, image=ref, strength=0.5, **SIZE)
    b = _run(gen, emb, seeds=[5], steps=4, image=ref, strength=0.5, **SIZE)
    assert _bytes(a.images[0]) == _bytes(b.images[0])
    # every step runs (strength is the start noise level, issue 14; diffusers' rule ran 2 of 4 here)
    assert a.params["mode"] == "img2img" and a.params["denoise_steps"] == 4
    assert a.params["init_image_size"] == [60, 40] and a.images[0].size == (32, 48)
    c = _run(gen, emb, seeds=[6], steps=4, image=ref, strength=0.5, **SIZE)
    assert _bytes(a.images[0]) != _bytes(c.images[0])
    batch = _run(gen, emb, seeds=[5, 6], steps=4, image=ref, strength=0.5, **SIZE)
    assert_same_image(batch.images[0], a.images[0])
    assert_same_image(batch.images[1], c.images[0])
    t2i = _run(gen, emb, seeds=[5], steps=4, **SIZE)
    assert _bytes(t2i.images[0]) != _bytes(a.images[0])


def test_cfg_runs_with_the_given_negative(gen, text, emb):
    neg = text.encode([""])[0]
    out = _run(gen, emb, seeds=[1], steps=2, guidance_scale=4.0, negative_prompt_embeds=neg, **SIZE)
    assert out.params["cfg"] is True and out.params["negative_lengths"] == [neg.shape[0]]
    again = _run(gen, emb, seeds=[1], steps=2, guidance_scale=4.0, negative_prompt_embeds=[neg], **SIZE)
    assert _bytes(out.images[0]) == _bytes(again.images[0])
    plain = _run(gen, emb, seeds=[1], steps=2, guidance_scale=0.0, **SIZE)
    assert _bytes(out.images[0]) != _bytes(plain.images[0])


def test_cfg_needs_a_negative(gen, text, emb):
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        _run(gen, emb, seeds=[1], steps=1, guidance_scale=2.0, **SIZE)
    neg = text.encode([""])[0]
    assert _run(gen, emb, seeds=[1], steps=1, guidance_scale=2.0, negative_prompt_embeds=neg, **SIZE).params["cfg"]


def test_progress_called_once_per_step(gen, emb, ref):
    calls: list[tuple[int, int]] = []
    _run(gen, emb, seeds=[1], steps=3, progress=lambda s, t: calls.append((s, t)), **SIZE)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    _run(gen, emb, seeds=[1], steps=4, image=ref, strength=0.5, progress=lambda s, t: calls.append((s, t)), **SIZE)
    # img2img runs every step from the start noise level (issue 14; diffusers' rule ran 2 of 4 at 0.5)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_raises_and_stops(gen, emb):
    calls: list[int] = []
    with pytest.raises(Cancelled):
        _run(gen, emb, seeds=[1], steps=5, progress=lambda s, t: calls.append(s),
                     should_abort=lambda: len(calls) >= 2, **SIZE)
    assert calls == [1, 2]
    with pytest.raises(Cancelled):
        _run(gen, emb, seeds=[1], steps=5, progress=lambda s, t: calls.append(s), should_abort=lambda: True,
                     **SIZE)
    assert calls == [1, 2]  # aborted before the first step
    # the pipeline still works afterwards
    assert _run(gen, emb, seeds=[1], steps=1, **SIZE).images


def test_long_captions_are_fitted(gen):
    long = torch.randn(1600, TINY_HIDDEN)
    out = _run(gen, long, seeds=[1], steps=1, width=16, height=16)
    assert out.params["caption_lengths"] == [1504]


def test_bad_embeddings(gen):
    with pytest.raises(ValueError, match="prompt_embeds"):
        _run(gen, torch.randn(5, TINY_HIDDEN + 1), seeds=[1], steps=1, width=32, height=32)
    with pytest.raises(ValueError, match="prompt_embeds"):
        _run(gen, torch.full((5, TINY_HIDDEN), float("nan")), seeds=[1], steps=1, width=32, height=32)


def test_shares_modules_and_unloads(tiny_models, emb):
    g = Generator.from_pretrained(tiny_models.zimage, "cpu", "float32", lazy=True)
    assert not g.loaded
    a = _run(g, emb, seeds=[2], steps=1, width=32, height=32)
    assert g.pipe.transformer is g.img2img_pipe.transformer and g.pipe.vae is g.img2img_pipe.vae
    assert g.pipe.scheduler is g.img2img_pipe.scheduler
    g.unload()
    assert not g.loaded
    b = _run(g, emb, seeds=[2], steps=1, width=32, height=32)
    assert _bytes(a.images[0]) == _bytes(b.images[0])


def test_bf16_pipeline_runs_txt2img_and_img2img(tiny_models, emb, ref):
    g = Generator.from_pretrained(tiny_models.zimage, "cpu", "bfloat16")
    out = _run(g, emb, seeds=[1], steps=2, **SIZE)
    assert out.params["dtype"] == "bfloat16"
    i2i = _run(g, emb, seeds=[1], steps=2, image=ref, strength=0.8, **SIZE)
    again = _run(g, emb, seeds=[1], steps=2, image=ref, strength=0.8, **SIZE)
    assert _bytes(i2i.images[0]) == _bytes(again.images[0])


def _shifted(u: float, shift: float) -> float:
    """The scheduler's shift map, written out independently (FlowMatchEulerDiscreteScheduler, static shift)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


@pytest.mark.parametrize("strength", [0.05, 0.3, 0.5, 0.7, 8 / 9, 0.9, 0.95, 0.99])
def test_every_strength_below_one_keeps_the_reference_at_9_steps(gen, emb, ref, strength):
    """Issue 14 / audit #28: at 9 steps diffusers' rule started every strength above 8/9 (0.9 included) from pure
    noise, so two references gave exactly the same image. Strength is now the start noise level: the reference keeps
    a share 1 - s of the start latent at any step count."""
    other = Image.fromarray((np.random.RandomState(1).rand(40, 60, 3) * 255).astype("uint8"))
    da = gen.denoise(emb, seeds=[3], steps=9, image=ref, strength=strength, **SIZE)
    db = gen.denoise(emb, seeds=[3], steps=9, image=other, strength=strength, **SIZE)
    # the old rule gave a latent difference of exactly 0.0 here; float reordering is ~1e-7
    assert float((da.latents - db.latents).abs().mean()) > 1e-4
    if strength <= 0.9:  # above 0.9 the reference's 1-s share moves the 8-bit pixels by less than a level
        assert image_difference(gen.decode(da.latents)[0], gen.decode(db.latents)[0])[1] > MEAN_LEVELS
    assert da.params["start_sigma"] == pytest.approx(strength, abs=1e-5)  # the noise level actually started from
    assert da.params["sigmas"][0] == pytest.approx(strength, abs=1e-5) and da.params["sigmas"][-1] == 0.0
    assert da.params["denoise_steps"] == 9 and da.params["strength"] == strength


def test_strength_one_is_the_default_schedule(gen, emb, ref):
    """s = 1 starts at sigma 1 on the default Z-Image schedule linspace(1, 1/n, n) shifted by 3."""
    out = _run(gen, emb, seeds=[3], steps=9, image=ref, strength=1.0, **SIZE)
    expected = [_shifted(1 - k / 9, 3.0) for k in range(9)] + [0.0]
    assert out.params["sigmas"] == pytest.approx(expected, abs=1e-5)
    assert out.params["start_sigma"] == 1.0
