"""engine.conditioning.text: Qwen3 prompt embeddings equal ZImagePipeline.encode_prompt; layer stop; think; reference stats."""

from __future__ import annotations

import pytest
import torch

from engine.conditioning.text import REFERENCE_PROMPTS, ReferenceStats, TextEncoder, check_layer, forward_to_layers
from engine.models.tiny import TINY_TEXT_LAYERS

PROMPTS = ["a red fox jumps over the lazy dog in the snow", "Homer Simpson", ""]


@pytest.fixture(scope="module")
def encoder(tiny_models) -> TextEncoder:
    return TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32")


@pytest.fixture(scope="module")
def pipeline_embeds(tiny_models):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(tiny_models.zimage), dtype=torch.float32)
    embeds, _ = pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)
    return embeds


def test_padded_batch_is_bit_identical_to_pipeline(encoder, pipeline_embeds):
    ours = encoder.encode(PROMPTS, pad_to_max_length=True)
    assert len(ours) == len(pipeline_embeds)
    for a, b in zip(ours, pipeline_embeds):
        assert a.dtype == torch.float32 and a.device.type == "cpu"
        assert torch.equal(a, b)


def test_default_unpadded_encoding_matches_pipeline(encoder, pipeline_embeds):
    ours = encoder.encode(PROMPTS)
    for a, b in zip(ours, pipeline_embeds):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # a prompt's embedding does not depend on its batch (up to float32 reordering: other batch shapes may take
    # other kernels, so exact equality is not promised across them)
    alone = encoder.encode([PROMPTS[1]])[0]
    torch.testing.assert_close(alone, ours[1], atol=1e-5, rtol=1e-5)


def test_layer_stop_runs_only_needed_layers(encoder):
    model = encoder.model
    ran: list[int] = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(model.layers)]
    try:
        encoder.encode(["a cat"], layer=-2)
        assert ran == list(range(TINY_TEXT_LAYERS - 1))
        ran.clear()
        encoder.encode(["a cat"], layer=-TINY_TEXT_LAYERS)
        assert ran == [0]
    finally:
        for h in handles:
            h.remove()
    assert len(model.layers) == TINY_TEXT_LAYERS  # restored


@pytest.mark.parametrize("layer", [-1, -2, -3, -TINY_TEXT_LAYERS])
def test_every_layer_equals_full_forward(encoder, layer):
    ids = torch.tensor([encoder.token_ids("portrait of an astronaut")])
    full = encoder.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
    assert torch.equal(encoder.encode(["portrait of an astronaut"], layer=layer)[0], full)


def test_think_adds_empty_think_block(encoder):
    plain = encoder.format_prompt("a cat")
    thought = encoder.format_prompt("a cat", think=True)
    assert "<think>" not in plain
    assert thought == plain + "<think>\n\n</think>\n\n"
    a = encoder.encode(["a cat"])[0]
    b = encoder.encode(["a cat"], think=True)[0]
    assert b.shape[0] > a.shape[0]
    torch.testing.assert_close(b[: a.shape[0]], a, atol=1e-6, rtol=0)  # causal: the shared prefix is unchanged


def test_truncates_at_max_sequence_length(tiny_models):
    enc = TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32", max_sequence_length=12)
    assert enc.encode(["word " * 50])[0].shape[0] == 12


@pytest.mark.parametrize("layer", [0, 1, -TINY_TEXT_LAYERS - 1, 2.5, "x"])
def test_bad_layer_names_layer(encoder, layer):
    with pytest.raises(ValueError, match="layer"):
        encoder.encode(["a"], layer=layer)
    with pytest.raises(ValueError, match="text_layer"):
        check_layer(layer, TINY_TEXT_LAYERS, "text_layer")


def test_reference_stats(encoder):
    stats = encoder.reference_stats()
    assert isinstance(stats, ReferenceStats)
    # content tokens only (issue 14, audit #11): the Qwen3 template is 3 tokens before the prompt
    # ("<|im_start|>user\n") and 5 after ("<|im_end|>\n<|im_start|>assistant\n"; 'assistant' is 3 tokens in the tiny
    # vocabulary, so 7 here), and position 0, the sink, is one of them
    tail = len(encoder.token_ids("")) - 3
    rows = torch.cat([e[3:e.shape[0] - tail] for e in encoder.encode(list(REFERENCE_PROMPTS), layer=-2)])
    assert stats.num_prompts == len(REFERENCE_PROMPTS) == 10
    assert stats.num_tokens == rows.shape[0]
    torch.testing.assert_close(stats.mean, rows.mean(0))
    torch.testing.assert_close(stats.std, rows.std(0))
    assert encoder.reference_stats() is stats  # memoised
    other = encoder.reference_stats(layer=-1)
    assert other.layer == -1 and other.key != stats.key
    again = ReferenceStats.from_parts(stats.tensors(), stats.metadata())
    assert torch.equal(again.std, stats.std) and again.key == stats.key


def test_content_mask_marks_the_prompt_tokens_only(encoder):
    """The prompt's own tokens: what tokenising it inside the template adds over the empty prompt."""
    for prompt in ("a cat", "Homer Simpson on a red sofa at dusk"):
        for think in (False, True):
            ids, mask = encoder.token_ids(prompt, think), encoder.content_mask(prompt, think)
            content = [i for i, m in zip(ids, mask) if m]
            assert len(ids) - len(content) == len(encoder.token_ids("", think))  # exactly the template is left
            assert encoder.tokenizer.decode(content).strip() == prompt and not mask[0]


def test_unload_and_lazy_reload(tiny_models):
    enc = TextEncoder.from_pretrained(tiny_models.zimage, "cpu", "float32", lazy=True)
    assert not enc.loaded
    a = enc.encode(["a cat"])[0]
    assert enc.loaded
    enc.unload()
    assert not enc.loaded
    assert torch.equal(enc.encode(["a cat"])[0], a)


def test_forward_to_layers_restores_layers_on_error(encoder):
    model = encoder.model
    hooks_before = [len(layer._forward_hooks) for layer in model.layers]

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        forward_to_layers(model, [-3], boom)
    assert len(model.layers) == TINY_TEXT_LAYERS
    assert [len(layer._forward_hooks) for layer in model.layers] == hooks_before
