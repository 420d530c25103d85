"""style_schedule end to end: the caption the tiny DiT actually reads at each step is the blend at α(k).

The expected captions come from the constant path (one caption, as before schedules) and the formulas of
``engine.conditioning.schedule`` written out here, never from the schedule code itself.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from engine.generation.pipeline import StylePipeline
from engine.types import StylizeRequest

SMALL = dict(width=32, height=32, steps=4)


def _ref(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(64, 96, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def pipe(tiny_models) -> StylePipeline:
    return StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")


@contextmanager
def dit_captions(pipe: StylePipeline):
    """Every DiT forward's caption list (``cap_feats``: one tensor per image, then CFG's negatives)."""
    seen: list[list[torch.Tensor]] = []
    transformer = pipe.generator.pipe.transformer
    handle = transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append([c.detach().clone() for c in (args[2] if len(args) > 2
                                                                           else kwargs["cap_feats"])]),
        with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _constant_caption(pipe: StylePipeline, request: StylizeRequest, alpha: float) -> torch.Tensor:
    """The caption the constant path gives at ``alpha`` (today's one-caption behaviour)."""
    constant = request.replace(alpha=alpha, style_schedule="constant")
    return pipe.caption(constant, pipe.encode(constant)).caption


def test_constant_is_todays_single_caption_and_image(pipe):
    request = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.5, seeds=(1,), **SMALL)
    expected = _constant_caption(pipe, request, 0.5)
    with dit_captions(pipe) as seen:
        result = pipe(request)
    assert len(seen) == SMALL["steps"]
    for step in seen:
        assert torch.equal(step[0], expected)
    assert result.params["style_schedule"] == "constant" and result.params["style_alphas"] is None
    # the explicit "constant" and a record without the field (an older job row) run the same request
    old_record = {k: v for k, v in request.record().items() if k != "style_schedule"}
    assert StylizeRequest.from_record(old_record, request.reference) == request


@pytest.mark.parametrize("schedule, alphas", [
    ("ramp", [0.0, 0.2, 0.4, 0.6]),  # a·k/(n-1)
    ("ramp_down", [0.6, 0.4, 0.2, 0.0]),
    ("early", [0.6, 0.6, 0.0, 0.0]),  # k < n/2
    ("late", [0.0, 0.0, 0.6, 0.6]),
])
def test_pool_caption_at_each_step_is_the_interpolation_at_alpha_k(pipe, schedule, alphas):
    request = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.6, style_schedule=schedule, seeds=(2,),
                             **SMALL)
    text = pipe.encode_prompt(request)
    full = _constant_caption(pipe, request, 0.6)
    with dit_captions(pipe) as seen:
        result = pipe(request)
    assert len(seen) == len(alphas)
    for step, alpha_k in zip(seen, alphas):
        # pool is affine in alpha: the caption at α(k) lies on the line from the text (0) to the full caption (α)
        torch.testing.assert_close(step[0], text + (alpha_k / 0.6) * (full - text), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[0], _constant_caption(pipe, request, alpha_k), atol=1e-6, rtol=1e-6)
    assert result.params["style_alphas"] == pytest.approx(alphas)


def test_append_row_count_follows_alpha_k(pipe):
    request = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=1.0, blend_mode="append", append_tokens=6,
                             style_schedule="ramp", seeds=(3,), **SMALL)
    text_rows = pipe.encode_prompt(request).shape[0]
    with dit_captions(pipe) as seen:
        pipe(request)
    # ramp over 4 steps at alpha 1 with K = 6: round(6·k/3) rows appended = 0, 2, 4, 6
    assert [step[0].shape[0] - text_rows for step in seen] == [0, 2, 4, 6]
    for step, alpha_k in zip(seen, [0.0, 1 / 3, 2 / 3, 1.0]):
        torch.testing.assert_close(step[0], _constant_caption(pipe, request, alpha_k))


def test_cfg_negative_stays_and_batch_mixes_schedules(pipe):
    ramp = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.6, style_schedule="ramp",
                          guidance_scale=2.0, seeds=(4,), **SMALL)
    constant = ramp.replace(prompt="a blue bird", style_schedule="constant", seeds=(5,))
    negative = pipe.negative_embedding(ramp)
    with dit_captions(pipe) as seen:
        pipe.generate_batch([ramp, constant], [pipe.encode(ramp), pipe.encode(constant)])
    assert len(seen) == 4 and all(len(step) == 4 for step in seen)  # 2 images, then their 2 negatives
    fixed = _constant_caption(pipe, constant, 0.6)
    for step, alpha_k in zip(seen, [0.0, 0.2, 0.4, 0.6]):
        torch.testing.assert_close(step[0], _constant_caption(pipe, ramp, alpha_k), atol=1e-6, rtol=1e-6)
        assert torch.equal(step[1], fixed)
        assert torch.equal(step[2], negative) and torch.equal(step[3], negative)


def test_img2img_schedules_every_step_it_runs(pipe):
    request = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.6, style_schedule="late", strength=0.5,
                             seeds=(6,), **SMALL)
    with dit_captions(pipe) as seen:
        result = pipe(request)
    # strength is the start noise level: all 4 steps run, and late's second half has the reference
    assert len(seen) == 4 and result.params["denoise_steps"] == 4
    text = _constant_caption(pipe, request, 0.0)
    full = _constant_caption(pipe, request, 0.6)
    assert [torch.equal(s[0], text) for s in seen] == [True, True, False, False]
    assert all(torch.equal(s[0], full) for s in seen[2:])


def test_a_schedule_applies_to_several_references_too(pipe):
    """With two references the caption of step k is the two-reference blend at α(k), not one reference's."""
    from engine.multiref import with_references

    base = StylizeRequest(prompt="a red fox", alpha=0.6, style_schedule="late", seeds=(7,), **SMALL)
    request = with_references(base, [_ref(0), _ref(1)], (2, 1))
    with dit_captions(pipe) as seen:
        pipe(request)
    text = _constant_caption(pipe, request, 0.0)
    both = _constant_caption(pipe, request, 0.6)
    only_first = _constant_caption(pipe, base.replace(reference=_ref(0)), 0.6)
    assert [torch.equal(s[0], text) for s in seen] == [True, True, False, False]
    for step in seen[2:]:
        torch.testing.assert_close(step[0], both, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(step[0], only_first, atol=1e-4)
