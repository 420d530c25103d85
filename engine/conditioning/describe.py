"""``/describe``: Qwen3-VL writes short prompt suggestions for a reference image (Midjourney's ``/describe``).

The same Qwen3-VL the extractor uses: :class:`~engine.conditioning.vision.VLExtractor` loads the full
``Qwen3VLForConditionalGeneration`` (LM head included) from the local folder with ``from_pretrained``, and
extraction only ever runs its base model; here its ``generate`` runs, so describing costs no second copy of the
weights. Decoding is greedy (``do_sample=False``: the same image gives the same suggestions), so one instruction
would give one text: each suggestion gets its own instruction (:data:`ANGLES`: subject, style, light, composition,
...), and the ``n`` instructions run as ONE left-padded batch over the same capped image.

Bounds: ``max_new_tokens`` per suggestion (default :data:`DEFAULT_MAX_NEW_TOKENS`, at most
:data:`MAX_NEW_TOKENS_LIMIT`), a wall-clock ``max_time_s`` (``generate``'s own ``max_time``: whatever was written by
then is kept) and ``should_abort`` (the worker's cancel / job-timeout flag, checked between tokens). On the tiny
random models the text is noise; the code path is the real one.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

__all__ = ["ANGLES", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_SUGGESTIONS", "Description", "clean_suggestion",
           "describe_image"]

#: Suggestions /describe shows.
DEFAULT_SUGGESTIONS = 4
#: Tokens each suggestion may take (a short prompt is 15-30 tokens).
DEFAULT_MAX_NEW_TOKENS = 48
#: The most a caller may ask for.
MAX_NEW_TOKENS_LIMIT = 256
#: Wall-clock bound of one describe call (seconds).
DEFAULT_MAX_TIME_S = 60.0
#: Longest suggestion kept, in characters (a /stylize prompt must fit Discord's option limit comfortably).
MAX_SUGGESTION_CHARS = 300

_ASK = "Write one short prompt (under 30 words) for an image generator that would recreate this image, focusing on "
_ONLY = ". Reply with the prompt only, no quotes."
#: One instruction per suggestion, in the order shown.
ANGLES: tuple[str, ...] = tuple(_ASK + focus + _ONLY for focus in (
    "its subject and setting",
    "its art style, medium and technique",
    "its colours, lighting and mood",
    "its composition, framing and point of view",
    "its textures and fine details",
    "the era or art movement it recalls",
    "what makes it distinctive",
    "a different subject drawn in exactly this style",
))

ShouldAbort = Callable[[], bool]


@dataclass(frozen=True)
class Description:
    """What :func:`describe_image` wrote: the suggestions in :data:`ANGLES` order and how it went."""

    suggestions: list[str]
    new_tokens: list[int]  #: tokens generated per suggestion (before cleaning)
    seconds: float
    stopped: str  #: ``finished`` (every suggestion ended or hit max_new_tokens), ``timeout`` or ``aborted``
    settings: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-ready (what the CLI prints and the bot stores)."""
        return {"suggestions": list(self.suggestions), "new_tokens": list(self.new_tokens),
                "seconds": round(self.seconds, 3), "stopped": self.stopped, "settings": dict(self.settings)}


class _Abort:
    """A ``generate`` stopping criterion: every sequence is done once ``should_abort()`` is true."""

    def __init__(self, should_abort: ShouldAbort) -> None:
        self.should_abort, self.fired = should_abort, False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.fired = self.fired or bool(self.should_abort())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


_NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.):]|prompt\s*\d*\s*:)\s*", re.IGNORECASE)


def clean_suggestion(text: str, limit: int = MAX_SUGGESTION_CHARS) -> str:
    """One line fit to show and to use as a prompt: control and format characters removed, whitespace collapsed,
    a leading list marker and surrounding quotes dropped, cut at ``limit`` characters (on a word when one is near)."""
    kept = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in str(text))
    line = " ".join(kept.split())
    line = _NUMBERING.sub("", line).strip().strip("\"'“”‘’`").strip()
    if len(line) > limit:
        cut = line[:limit]
        space = cut.rfind(" ")
        line = (cut[:space] if space > limit * 0.6 else cut).rstrip(" ,;:") + "…"
    return line


def _check(n: int, max_new_tokens: int, max_time_s: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(ANGLES):
        raise ValueError(f"n must be an integer from 1 to {len(ANGLES)}; got {n!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise ValueError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}; got {max_new_tokens!r}")
    if not isinstance(max_time_s, (int, float)) or isinstance(max_time_s, bool) or not max_time_s > 0:
        raise ValueError(f"max_time_s must be a number of seconds above 0; got {max_time_s!r}")


def _inputs(extractor: Any, image: Image.Image, n: int) -> tuple[Any, Image.Image]:
    """The batch: the capped image once per instruction, left-padded so every row's new tokens start together."""
    img = extractor.cap_image(image)
    processor = extractor.processor
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                           {"type": "text", "text": angle}]}],
                                             tokenize=False, add_generation_prompt=True) for angle in ANGLES[:n]]
    inputs = processor(text=prompts, images=[img] * n, return_tensors="pt", padding=True, padding_side="left")
    return inputs, img


_LINE_BREAKS: dict[int, list[int]] = {}


def line_break_tokens(tokenizer: Any) -> list[int]:
    """Ids of the tokens whose text holds a line break (a suggestion is one line: they are suppressed, so a model
    that would start a list or a second paragraph writes on, or ends). Computed once per tokenizer."""
    key = id(tokenizer)
    if key not in _LINE_BREAKS:
        special = set(tokenizer.all_special_ids)
        _LINE_BREAKS[key] = [i for i in range(len(tokenizer)) if i not in special
                             and any(c in tokenizer.decode([i]) for c in "\n\r\u2028\u2029")]
    return _LINE_BREAKS[key]


def _end_ids(tokenizer: Any) -> list[int]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return [i for i in dict.fromkeys((end, tokenizer.eos_token_id)) if isinstance(i, int) and i >= 0]


def _generation_config(tokenizer: Any, max_new_tokens: int, max_time_s: float) -> Any:
    """Greedy, bounded, one line, ending at ``<|im_end|>`` (the model folder's sampling defaults are not used)."""
    from transformers import GenerationConfig

    eos = _end_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, max_time=float(max_time_s),
                            eos_token_id=eos or None, pad_token_id=pad,
                            suppress_tokens=line_break_tokens(tokenizer) or None)


def describe_image(extractor: Any, image: Image.Image, *, n: int = DEFAULT_SUGGESTIONS,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, max_time_s: float = DEFAULT_MAX_TIME_S,
                   should_abort: ShouldAbort | None = None) -> Description:
    """``n`` prompt suggestions for ``image`` from ``extractor``'s Qwen3-VL (a
    :class:`~engine.conditioning.vision.VLExtractor`; its model loads on first use). ``ValueError`` names a bad
    argument. Runs in the caller's thread (the worker's VL thread, which is also what serialises it with
    extractions)."""
    _check(n, max_new_tokens, max_time_s)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image must be a PIL image; got {type(image).__name__}")
    t0 = time.monotonic()
    model = extractor.model
    inputs, img = _inputs(extractor, image, n)
    tokenizer = extractor.processor.tokenizer
    abort = _Abort(should_abort or (lambda: False))
    from transformers import StoppingCriteriaList

    with torch.inference_mode():
        out = model.generate(**inputs.to(extractor.device), generation_config=_generation_config(
            tokenizer, max_new_tokens, max_time_s), stopping_criteria=StoppingCriteriaList([abort]))
    new = out[:, inputs["input_ids"].shape[1]:].cpu()
    ends = set(_end_ids(tokenizer))
    counts = [_length(row.tolist(), ends) for row in new]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    seconds = time.monotonic() - t0
    stopped = "aborted" if abort.fired else ("timeout" if seconds >= max_time_s else "finished")
    settings = {"n": n, "max_new_tokens": max_new_tokens, "max_time_s": float(max_time_s), "greedy": True,
                "image_size": list(img.size), "model": str(extractor.path)}
    return Description([clean_suggestion(t) for t in texts], counts, seconds, stopped, settings)


def _length(ids: list[int], ends: set[int]) -> int:
    """Tokens a row generated: up to and including its first end token (a finished row is padded after it)."""
    for i, token in enumerate(ids):
        if token in ends:
            return i + 1
    return len(ids)
