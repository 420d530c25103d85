"""append_selection=attention: the attention mass against transformers' own eager attention weights, the top-k
selection on a known answer, and the blend / pipeline / cache-key behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.conditioning.attention import prompt_positions, top_rows
from engine.conditioning.blend import blend
from engine.generation.pipeline import StylePipeline
from engine.types import BlendMode, PositionKind, StylizeRequest

SMALL = dict(width=32, height=32, steps=2)


def _ref(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(64, 96, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def pipe(tiny_models) -> StylePipeline:
    return StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")


def test_top_rows_keeps_the_rows_of_most_mass_in_their_order():
    image = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 3)  # row j holds j
    mass = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.8, 0.05])
    assert top_rows(image, mass, 3)[:, 0].tolist() == [1.0, 3.0, 6.0]  # 0.9, 0.8, 0.5, in raster order
    assert top_rows(image, mass, 0).shape == (0, 3)
    ties = torch.tensor([0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert top_rows(image, ties, 2)[:, 0].tolist() == [0.0, 1.0]  # ties: the earlier rows
    with pytest.raises(ValueError, match="one value per image row"):
        top_rows(image, mass[:4], 2)


def test_prompt_positions_are_the_user_text_only():
    T, M, I = PositionKind.TEXT.value, PositionKind.MARKER.value, PositionKind.IMAGE.value
    #        <im_start> user \n <v_start> img img <v_end> a   fox  <im_end> \n  <im_start> assistant \n
    kinds = [M, T, T, M, I, I, M, T, T, M, T, M, T, T]
    assert prompt_positions(kinds, 6) == [7, 8]
    assert prompt_positions(kinds, None) == []


def test_append_with_attention_appends_chosen_rows_not_pools():
    torch.manual_seed(0)
    text, image = torch.randn(5, 8), torch.randn(12, 8)
    vl = torch.cat([torch.randn(2, 8), image, torch.randn(3, 8)])
    mask = torch.tensor([False] * 2 + [True] * 12 + [False] * 3)
    mass = torch.rand(12)
    out = blend(vl, text, 0.5, BlendMode.APPEND, image_mask=mask, append_tokens=8, image_grid=(4, 3),
                row_weights=mass)
    pooled = blend(vl, text, 0.5, BlendMode.APPEND, image_mask=mask, append_tokens=8, image_grid=(4, 3))
    expected_rows = sorted(torch.argsort(mass, descending=True)[:4].tolist())  # k = round(0.5 · 8)
    assert torch.equal(out[:5], text) and out.shape[0] == 5 + 4
    torch.testing.assert_close(out[5:], image[expected_rows])
    assert pooled.shape == out.shape and not torch.allclose(out[5:], pooled[5:])  # pooling: 2x2 area means


def test_mass_equals_transformers_eager_attention(pipe, tiny_models):
    from transformers import Qwen3VLForConditionalGeneration

    ref, prompt, layer = _ref(), "a red fox in the snow", -2
    vl = pipe.vl_extractor.extract(ref, prompt, hidden_layer=layer, attention=True)
    eager = Qwen3VLForConditionalGeneration.from_pretrained(str(tiny_models.qwen3vl), attn_implementation="eager",
                                                            dtype=torch.float32).eval()
    inputs, _ = pipe.vl_extractor.build_inputs(ref, prompt)
    with torch.no_grad():
        out = eager.model(**inputs, output_attentions=True, use_cache=False)
    ids = inputs["input_ids"][0].tolist()
    image_id = eager.config.image_token_id
    special = set(pipe.vl_extractor.processor.tokenizer.all_special_ids) | {image_id}
    keys = [p for p, i in enumerate(ids) if i == image_id]
    queries = []  # the prompt: the ordinary tokens after <|vision_end|> up to the next special token
    for p in range(keys[-1] + 2, len(ids)):
        if ids[p] in special:
            break
        queries.append(p)
    assert len(queries) >= 3
    weights = out.attentions[len(out.attentions) + layer]  # decoder layer L - 2 produces hidden_states[-2]
    expected = weights[0][:, queries][:, :, keys].mean(dim=(0, 1))
    assert vl.attention is not None and vl.attention.shape == (len(keys),)
    torch.testing.assert_close(vl.attention, expected, atol=1e-5, rtol=1e-4)


def test_pipeline_attention_selection_keeps_the_count_and_keys_the_prompt(pipe):
    base = StylizeRequest(prompt="a red fox", reference=_ref(), alpha=0.5, blend_mode="append", append_tokens=8,
                          append_selection="attention", hidden_layer=-2, **SMALL)
    encoded = pipe.encode(base)
    caption = pipe.caption(base, encoded)
    pooled = pipe.caption(base.replace(append_selection="pool"), pipe.encode(base.replace(append_selection="pool")))
    text_rows = encoded.prompt_embeds.shape[0]
    assert caption.blended.shape[0] == text_rows + 4  # round(0.5 · 8), exactly
    image = encoded.vl.embeddings[torch.tensor(encoded.vl.image_mask)]
    chosen = sorted(torch.argsort(encoded.vl.attention, descending=True)[:4].tolist())
    scale = pipe.row_scale(base, encoded.prompt_embeds)
    rms = image[chosen].pow(2).mean(1, keepdim=True).sqrt()
    torch.testing.assert_close(caption.blended[text_rows:], image[chosen] / rms * scale, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(caption.blended[text_rows:text_rows + 2], pooled.blended[text_rows:text_rows + 2])
    # pooling's extraction is prompt-free; attention's key records the prompt, and another prompt ranks anew
    assert base.replace(append_selection="pool").vl_settings()["text"] is None
    assert base.vl_settings()["text"] == "a red fox" and base.vl_settings()["selection"] == "attention"
    other = pipe.encode_reference(base.replace(prompt="blue sky above"))
    torch.testing.assert_close(other.embeddings[torch.tensor(other.image_mask)], image, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other.attention, encoded.vl.attention)
    result = pipe.generate(base, encoded)
    assert result.params["append_selection"] == "attention"


def test_attention_needs_a_prompt(pipe):
    request = StylizeRequest(prompt="", reference=_ref(), blend_mode="append", append_selection="attention")
    with pytest.raises(ValueError, match="append_selection attention .* needs a prompt"):
        pipe.check_inputs(request)
