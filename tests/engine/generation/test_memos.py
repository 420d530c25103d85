"""The pipeline's memos (CFG's negative, style_delta's neutral) go with the model they were made by."""

from __future__ import annotations

import torch
from PIL import Image

from engine.generation.pipeline import StylePipeline
from engine.types import StylizeRequest


def _request(**kw) -> StylizeRequest:
    return StylizeRequest(prompt="a red fox", width=64, height=64, steps=2, **kw)


def test_negative_is_memoised_until_the_text_encoder_is_unloaded(tiny_models):
    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu")
    request = _request(guidance_scale=2.0)
    assert not pipe.has_negative(request)
    first = pipe.negative_embedding(request)
    assert pipe.has_negative(request)
    assert pipe.negative_embedding(request) is first  # memoised: the same tensor, no second encode
    assert not pipe.has_negative(_request(guidance_scale=2.0, text_layer=-3))  # another layer is another negative
    pipe.unload("dit")
    assert pipe.has_negative(request)  # unloading another model keeps it
    pipe.unload("text")
    assert not pipe.has_negative(request)  # a reload may bring new weights: the memo went with the encoder
    torch.testing.assert_close(pipe.negative_embedding(request), first)  # same weights: the same embedding again


def test_neutral_is_forgotten_with_qwen3vl(tiny_models):
    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu")
    request = _request(reference=Image.new("RGB", (64, 48), (200, 30, 30)), alpha=0.5, blend_mode="style_delta")
    first = pipe.neutral_reference(request)
    assert pipe.neutral_reference(request) is first
    pipe.unload("vl")
    again = pipe.neutral_reference(request)
    assert again is not first
    torch.testing.assert_close(again.embeddings, first.embeddings)
