"""engine.conditioning.describe: suggestion cleaning, argument checks, and the bounds of a real tiny generate."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.conditioning.describe import ANGLES, clean_suggestion, describe_image, line_break_tokens
from engine.conditioning.vision import VLExtractor


@pytest.fixture(scope="module")
def extractor(tiny_models):
    return VLExtractor.from_pretrained(tiny_models.qwen3vl, "cpu", torch.float32)


IMAGE = Image.new("RGB", (64, 48), (200, 40, 40))


@pytest.mark.parametrize(("raw", "clean"), [
    ("  a fox\n\nin the  snow ", "a fox in the snow"),
    ("1. a watercolor fox", "a watercolor fox"),
    ("- \"oil painting of a cat\"", "oil painting of a cat"),
    ("Prompt 2: “a neon city”", "a neon city"),
    ("tab\there\x00\u202e", "tab here"),
    ("", ""),
])
def test_clean_suggestion(raw, clean):
    assert clean_suggestion(raw) == clean


def test_long_suggestions_are_cut_on_a_word():
    text = " ".join(["word"] * 100)  # 499 characters
    out = clean_suggestion(text, limit=50)
    assert len(out) <= 51 and out.endswith("…") and out[:-1].split() == ["word"] * len(out[:-1].split())


@pytest.mark.parametrize(("kwargs", "needle"), [({"n": 0}, "n must be an integer from 1 to 8"),
                                                ({"n": len(ANGLES) + 1}, "n must be"),
                                                ({"n": True}, "n must be"),
                                                ({"max_new_tokens": 0}, "max_new_tokens must be"),
                                                ({"max_new_tokens": 257}, "max_new_tokens must be"),
                                                ({"max_time_s": 0}, "max_time_s must be")])
def test_bad_arguments_name_themselves(extractor, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        describe_image(extractor, IMAGE, **kwargs)


def test_four_one_line_suggestions_within_the_token_bound(extractor):
    out = describe_image(extractor, IMAGE, max_new_tokens=7)
    assert len(out.suggestions) == 4 and all("\n" not in s for s in out.suggestions)
    assert len(out.new_tokens) == 4 and all(1 <= n <= 7 for n in out.new_tokens)
    assert out.stopped == "finished" and out.settings["greedy"] is True
    assert out.record()["suggestions"] == out.suggestions


def test_line_breaks_are_never_generated(extractor):
    """Suppressed tokens are the ones holding a line break: every one of them decodes to text with one, and none
    appears in a generation long enough to have chosen one (the tiny model's greedy favourite is ``\\n``)."""
    tokenizer = extractor.processor.tokenizer
    banned = line_break_tokens(tokenizer)
    assert banned and all("\n" in tokenizer.decode([i]) or "\r" in tokenizer.decode([i]) for i in banned)
    assert tokenizer.convert_tokens_to_ids("\u010a") in banned  # byte-level "\n"
    out = describe_image(extractor, IMAGE, n=2, max_new_tokens=12)
    assert all("\n" not in s for s in out.suggestions)


def test_an_abort_stops_every_row_after_one_token(extractor):
    out = describe_image(extractor, IMAGE, max_new_tokens=40, should_abort=lambda: True)
    assert out.stopped == "aborted" and out.new_tokens == [1, 1, 1, 1]


def test_the_time_bound_stops_generation(extractor):
    out = describe_image(extractor, IMAGE, max_new_tokens=200, max_time_s=1e-6)
    assert out.stopped == "timeout" and max(out.new_tokens) < 200
