"""Several references and a negative reference through StylePipeline on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.generation.pipeline import StylePipeline
from engine.multiref import NEGATIVE_GUIDANCE, with_negative, with_references
from engine.types import StylizeRequest
from tests.imagecheck import MAX_LEVELS, MEAN_LEVELS, image_difference

SMALL = dict(width=32, height=32, steps=2, seeds=(3,))


def _ref(seed: int, w: int = 96, h: int = 64) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


A, B = _ref(0), _ref(1, 64, 96)


@pytest.fixture(scope="module")
def pipe(tiny_models) -> StylePipeline:
    return StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")


def _blended(pipe: StylePipeline, request: StylizeRequest) -> torch.Tensor:
    pipe.check_inputs(request)
    return pipe.caption(request, pipe.encode(request)).blended


@pytest.mark.parametrize("mode", ["pool", "interpolate", "linear", "adain_per_dim", "style_delta"])
def test_two_references_2_to_1_move_toward_the_heavier(pipe, mode):
    base = StylizeRequest(prompt="a red fox", alpha=0.6, blend_mode=mode, **SMALL)
    only_a, only_b = _blended(pipe, base.replace(reference=A)), _blended(pipe, base.replace(reference=B))
    both = _blended(pipe, with_references(base, [A, B], (2, 1)))
    assert not torch.allclose(both, only_a) and not torch.allclose(both, only_b)
    # the blend is the 2:1 point between the two one-reference captions: a third of the way from A to B
    to_a, to_b = (both - only_a).norm(), (both - only_b).norm()
    assert float(to_a / to_b) == pytest.approx(0.5, rel=1e-4)
    torch.testing.assert_close(both, only_a + (only_b - only_a) / 3, atol=1e-5, rtol=1e-5)
    reverse = _blended(pipe, with_references(base, [A, B], (1, 2)))
    assert float((reverse - only_a).norm() / (reverse - only_b).norm()) == pytest.approx(2.0, rel=1e-4)


def test_pool_against_the_formula(pipe):
    """``a · (⅔ m_A + ⅓ m_B) + (1 − a) · text`` with m the pooled rows scaled to the prompt's content RMS."""
    base = StylizeRequest(prompt="a red fox", alpha=0.6, blend_mode="pool", **SMALL)
    request = with_references(base, [A, B], (2, 1))
    text = pipe.encode_prompt(request)
    mask = pipe.text_encoder.content_mask("a red fox")
    target = float(torch.stack([r.pow(2).mean().sqrt() for r, keep in zip(text, mask) if keep]).median())

    def m(image: Image.Image) -> torch.Tensor:
        rows = pipe.encode_reference(base.replace(reference=image)).embeddings
        chunks = torch.tensor_split(torch.arange(rows.shape[0]), text.shape[0])  # equal areas when it divides
        pooled = torch.stack([rows[c].mean(0) for c in chunks]) if rows.shape[0] % text.shape[0] == 0 else None
        from engine.conditioning.sequence import pool_sequence

        pooled = pool_sequence(rows, text.shape[0]) if pooled is None else pooled
        return pooled * (target / pooled.pow(2).mean(1, keepdim=True).sqrt())

    expected = 0.6 * (2 / 3 * m(A) + 1 / 3 * m(B)) + 0.4 * text
    torch.testing.assert_close(_blended(pipe, request), expected, atol=1e-4, rtol=1e-4)


def test_append_gives_the_heavier_reference_more_rows(pipe):
    base = StylizeRequest(prompt="a red fox", alpha=0.75, blend_mode="append", append_tokens=8, **SMALL)
    text_len = pipe.encode_prompt(base).shape[0]
    both = _blended(pipe, with_references(base, [A, B], (2, 1)))
    assert both.shape[0] == text_len + 6  # round(0.75 · 8) rows in all, as with one reference
    # A's 4 rows are what A alone appends with 4 rows; B's 2 what B alone appends with 2
    only_a = _blended(pipe, base.replace(reference=A, alpha=0.5))
    only_b = _blended(pipe, base.replace(reference=B, alpha=0.25))
    torch.testing.assert_close(both[text_len:text_len + 4], only_a[text_len:])
    torch.testing.assert_close(both[text_len + 4:], only_b[text_len:])


def test_one_reference_is_the_path_of_old(pipe):
    request = StylizeRequest(prompt="a red fox", reference=A, alpha=0.5, **SMALL)
    old, weighted = pipe(request), pipe(request.replace(weights=(3.0,)))
    assert old.images[0].tobytes() == weighted.images[0].tobytes()
    assert old.params["reference_set"][0]["weight"] == 1.0 and old.params["negative"] is None


def _changed(a: Image.Image, b: Image.Image) -> None:
    """Far beyond what float reordering explains (``tests.imagecheck``'s bounds). The tiny random models move an
    image only a few levels for any conditioning (alpha 0 → 0.6 moves these ~2.4 levels on average), so the bar is
    the reordering bound, not ``assert_different_image``'s "another seed"."""
    worst, mean = image_difference(a, b)
    assert worst > 2 * MAX_LEVELS and mean > 4 * MEAN_LEVELS, (worst, mean)


def test_a_negative_reference_changes_the_image_and_records_the_cfg_scale(pipe):
    red, blue = Image.new("RGB", (96, 64), (220, 30, 30)), Image.new("RGB", (64, 96), (20, 40, 230))
    base = StylizeRequest(prompt="a red fox", reference=red, alpha=0.6, **SMALL)
    negative = with_negative(base, blue)
    cfg_only = base.replace(guidance_scale=NEGATIVE_GUIDANCE)  # CFG with the empty prompt as its negative
    plain, with_neg, with_cfg = pipe(base), pipe(negative), pipe(cfg_only)
    _changed(plain.images[0], with_neg.images[0])
    _changed(with_cfg.images[0], with_neg.images[0])  # the negative is the blue reference, not ""
    assert with_neg.params["guidance_scale"] == 2.0 and plain.params["guidance_scale"] == 0.0
    assert with_neg.params["negative"]["size"] == [64, 96] and len(with_neg.params["negative"]["pixel_sha256"]) == 64
    caption = pipe.caption(negative, pipe.encode(negative))
    # the negative caption is the prompt with B blended in: as long as the prompt for pool, and not the prompt
    assert caption.negative.shape == caption.prompt_embeds.shape
    assert not torch.allclose(caption.negative, caption.prompt_embeds)
    b_alone = pipe.caption(base.replace(reference=blue), pipe.encode(base.replace(reference=blue))).caption
    torch.testing.assert_close(caption.negative, b_alone)
