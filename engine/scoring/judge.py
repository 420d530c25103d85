"""Scores judged by the Qwen3-VL model the bot already loads: VQAScore-style P("Yes"), one forward pass each.

VQAScore (Lin et al., 2024) asks a vision-language model a yes/no question about an image and reads the probability
of the answer "Yes" at the first answer position: no sampling, no text generation, deterministic. Both questions
live here and only here (:data:`QUESTIONS`):

* ``prompt_adherence`` — one image: ``Does this image show: {prompt}? Answer Yes or No.``
* ``style_similarity`` — the reference, then the generated image, in one user message:
  ``Are these two images in the same artistic style? Answer Yes or No.``

The message is the model's own chat template with ``add_generation_prompt=True``, so the next token is the first
token of the assistant's answer; P("Yes") is the softmax probability (over the whole vocabulary, in float32) of
the first token of ``Yes``; P("No") likewise (reported by :meth:`Judge.ask`, so a caller can see how much mass
the two answers take). No extra weights: the judge is the same ``Qwen3VLForConditionalGeneration`` (with its LM
head) that the VL extractor loads, through its processor; images are capped to :data:`JUDGE_IMAGE_TOKENS` image
tokens each, as judging needs far less detail than style extraction.

With the tiny random models of ``--demo`` and the tests, these probabilities are noise: they show the plumbing,
not a judgement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

__all__ = ["ANSWERS", "JUDGE_IMAGE_TOKENS", "QUESTIONS", "Answer", "Judge", "question_for"]

#: The questions, by score name. ``{prompt}`` is replaced by the prompt (whitespace collapsed).
QUESTIONS: dict[str, str] = {
    "prompt_adherence": "Does this image show: {prompt}? Answer Yes or No.",
    "style_similarity": "Are these two images in the same artistic style? Answer Yes or No.",
}
#: The answer words whose first tokens are read.
ANSWERS = ("Yes", "No")
#: Image tokens per judged image (32 px per token side: 256 tokens ≈ 512² px).
JUDGE_IMAGE_TOKENS = 256


def question_for(score: str, prompt: str | None = None) -> str:
    """The question text of ``score`` (``prompt_adherence`` needs the prompt)."""
    if score not in QUESTIONS:
        raise ValueError(f"score must be one of {', '.join(QUESTIONS)}; got {score!r}")
    if score == "prompt_adherence":
        text = " ".join(str(prompt or "").split())
        if not text:
            raise ValueError("prompt_adherence needs a prompt")
        return QUESTIONS[score].format(prompt=text)
    return QUESTIONS[score]


@dataclass(frozen=True)
class Answer:
    """One question's read-out: P(first token of "Yes"), P(first token of "No"), and the prompt as the model saw it."""

    p_yes: float
    p_no: float
    text: str


class Judge:
    """Yes/no questions to a loaded Qwen3-VL model. Build with :meth:`from_extractor` (the model the bot holds)."""

    def __init__(self, model: Any, processor: Any, *, device: Any, cap_image: Any = None,
                 max_image_tokens: int = JUDGE_IMAGE_TOKENS, extractor: Any = None) -> None:
        self._model = model
        self._extractor = extractor
        self.processor = processor
        self.device = device
        self.max_image_tokens = max_image_tokens
        self._cap = cap_image
        self.answer_ids = tuple(self._first_token(word) for word in ANSWERS)
        if self.answer_ids[0] == self.answer_ids[1]:
            raise ValueError("the tokenizer starts 'Yes' and 'No' with the same token; P(Yes) cannot be read")

    @classmethod
    def from_extractor(cls, extractor: Any, max_image_tokens: int = JUDGE_IMAGE_TOKENS) -> Judge:
        """The judge over a ``VLExtractor``'s model and processor (an unloaded model loads at the first question);
        images are capped with the extractor's own ``cap_image``, so the judge sees what the processor's bounds
        allow. Call it from the thread that extracts (the worker's VL thread): the judge takes no lock of its own."""
        budget = max(max_image_tokens, _processor_minimum_tokens(extractor))
        return cls(None, extractor.processor, device=extractor.device, cap_image=extractor.cap_image,
                   max_image_tokens=budget, extractor=extractor)

    @property
    def model(self) -> Any:
        """The model, asked of the extractor at every use: an extractor that unloads (``vl_auto_unload``) and reloads
        its model must not leave this judge holding the old copy in memory."""
        return self._extractor.model if self._extractor is not None else self._model

    def _first_token(self, word: str) -> int:
        ids = self.processor.tokenizer.encode(word, add_special_tokens=False)
        if not ids:
            raise ValueError(f"the tokenizer gives no token for {word!r}")
        return int(ids[0])

    def prompt_text(self, question: str, n_images: int) -> str:
        """The chat-template text of one user message: ``n_images`` images, then the question."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def ask(self, question: str, images: list[Image.Image]) -> Answer:
        """One forward pass; the answer probabilities at the first answer position."""
        import torch

        text = self.prompt_text(question, len(images))
        images = [self._prepare(img) for img in images]
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        probs = torch.softmax(out.logits[0, -1].to(torch.float32), dim=-1)
        return Answer(p_yes=float(probs[self.answer_ids[0]]), p_no=float(probs[self.answer_ids[1]]), text=text)

    def _prepare(self, image: Image.Image) -> Image.Image:
        img = image if image.mode == "RGB" else image.convert("RGB")
        return self._cap(img, self.max_image_tokens) if self._cap is not None else img

    def prompt_adherence(self, image: Image.Image, prompt: str) -> float:
        """P("Yes") to :data:`QUESTIONS` ``["prompt_adherence"]`` about ``image``."""
        return self.ask(question_for("prompt_adherence", prompt), [image]).p_yes

    def style_similarity(self, image: Image.Image, reference: Image.Image) -> float:
        """P("Yes") to :data:`QUESTIONS` ``["style_similarity"]`` with the reference first, then ``image``."""
        return self.ask(question_for("style_similarity"), [reference, image]).p_yes

    def scores(self, image: Image.Image, reference: Image.Image | None, prompt: str | None) -> dict[str, float]:
        """The judge scores that apply: adherence with a prompt, similarity with a reference."""
        out: dict[str, float] = {}
        if prompt and prompt.strip():
            out["prompt_adherence"] = self.prompt_adherence(image, prompt)
        if reference is not None:
            out["style_similarity"] = self.style_similarity(image, reference)
        return out


def _processor_minimum_tokens(extractor: Any) -> int:
    """The fewest tokens the extractor's processor gives any image (a smaller cap could not be met)."""
    from engine.models.loading import processor_pixel_bounds

    factor, lo, _hi = processor_pixel_bounds(extractor.processor.image_processor)
    return max(1, -(-(lo or 0) // (factor * factor)))
