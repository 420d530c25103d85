"""The VL judge on the tiny models, through the real processor and model: questions, template, read-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.conditioning.vision import VLExtractor
from engine.scoring.judge import ANSWERS, QUESTIONS, Judge, question_for


@pytest.fixture(scope="module")
def extractor(tiny_models) -> VLExtractor:
    return VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", "float32")


@pytest.fixture(scope="module")
def judge(extractor) -> Judge:
    return Judge.from_extractor(extractor)


def _image(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def test_questions_are_the_documented_ones():
    assert question_for("prompt_adherence", "a  red\nfox") == "Does this image show: a red fox? Answer Yes or No."
    assert question_for("style_similarity") == "Are these two images in the same artistic style? Answer Yes or No."
    assert set(QUESTIONS) == {"prompt_adherence", "style_similarity"}
    with pytest.raises(ValueError, match="needs a prompt"):
        question_for("prompt_adherence", "  ")


def test_the_question_is_in_the_chat_template_after_the_images(judge):
    text = judge.prompt_text(question_for("style_similarity"), 2)
    span = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text.startswith("<|im_start|>user\n" + span + span + QUESTIONS["style_similarity"])
    assert text.endswith("<|im_start|>assistant\n")  # the next token is the answer's first token


def test_answer_ids_are_the_first_tokens_of_yes_and_no(judge, extractor):
    tok = extractor.processor.tokenizer
    for word, token_id in zip(ANSWERS, judge.answer_ids, strict=True):
        assert tok.decode([token_id]) and word.startswith(tok.decode([token_id]))
    assert judge.answer_ids[0] != judge.answer_ids[1]


def test_probabilities_match_an_independent_one_token_generation(judge, extractor):
    """P(Yes)/P(No) equal the softmax of the first generated token's logits from ``generate`` (greedy, one token)
    on the same inputs: the read-out is at the answer position, over the whole vocabulary."""
    image, question = _image(1), question_for("prompt_adherence", "a red fox in the snow")
    answer = judge.ask(question, [image])
    assert 0.0 <= answer.p_yes <= 1.0 and 0.0 <= answer.p_no <= 1.0
    assert answer.p_yes + answer.p_no <= 1.0
    inputs = extractor.processor(text=[answer.text], images=[extractor.cap_image(image, judge.max_image_tokens)],
                                 return_tensors="pt")
    decoded = extractor.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Does this image show: a red fox in the snow? Answer Yes or No." in decoded
    with torch.no_grad():
        out = extractor.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True)
    probs = torch.softmax(out.scores[0][0].float(), dim=-1)
    assert answer.p_yes == pytest.approx(float(probs[judge.answer_ids[0]]), rel=1e-4, abs=1e-7)
    assert answer.p_no == pytest.approx(float(probs[judge.answer_ids[1]]), rel=1e-4, abs=1e-7)


def test_style_similarity_sends_both_images_in_one_message(judge):
    ref, img = _image(2), _image(3, (64, 96))
    answer = judge.ask(question_for("style_similarity"), [ref, img])
    assert answer.text.count("<|vision_start|>") == 2
    assert judge.style_similarity(img, ref) == pytest.approx(answer.p_yes)
    # the order is part of the question: reference first (swapping the images is a different input)
    assert 0.0 <= judge.style_similarity(ref, img) <= 1.0


def test_scores_apply_only_with_their_inputs(judge):
    img = _image(4)
    assert set(judge.scores(img, None, "a cat")) == {"prompt_adherence"}
    assert set(judge.scores(img, _image(5), None)) == {"style_similarity"}
    assert judge.scores(img, None, "") == {}


def test_the_judge_follows_an_extractor_that_unloads_and_reloads(tiny_models):
    ex = VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", "float32", lazy=True)
    judge = Judge.from_extractor(ex)
    assert not ex.loaded  # building the judge loads nothing
    first = judge.ask(question_for("style_similarity"), [_image(6), _image(7)])
    ex.unload()
    assert not ex.loaded  # the judge kept no reference that would hold the old weights
    again = judge.ask(question_for("style_similarity"), [_image(6), _image(7)])
    assert ex.load_count == 2 and judge.model is ex.model
    assert again.p_yes == pytest.approx(first.p_yes, rel=1e-5)  # same folder, same weights
