"""What the pipeline's encoders make once and reuse: CFG's negative (the empty prompt) and style_delta's neutral
(the extraction of a mid-gray image). Each memo goes with the model that made it (:meth:`EncoderMemos.forget`): a
reload may bring new weights into the same folder."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
from PIL import Image

from engine.types import StylizeRequest, VLResult

__all__ = ["EncoderMemos", "NEUTRAL_GRAY", "NEUTRALS_KEPT"]

#: style_delta's neutral reference: a mid-gray image of the reference's size (as the seed's test_style_delta.py).
NEUTRAL_GRAY = (128, 128, 128)
#: Neutral extractions kept (one per reference size and VL settings; each is a full extraction's rows).
NEUTRALS_KEPT = 8


class EncoderMemos:
    """Thread-safe memos of the negative embedding and the neutral extraction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._negatives: dict[tuple[int, bool], torch.Tensor] = {}
        self._neutrals: OrderedDict[tuple, VLResult] = OrderedDict()

    @staticmethod
    def _negative_key(request: StylizeRequest) -> tuple[int, bool]:
        return int(request.text_layer), bool(request.think)

    def has_negative(self, request: StylizeRequest) -> bool:
        """Whether the request's negative is memoised (it then needs no text encoder)."""
        with self._lock:
            return self._negative_key(request) in self._negatives

    def negative(self, request: StylizeRequest, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The request's negative: memoised, else ``encode()`` (outside the lock: it runs the text encoder)."""
        key = self._negative_key(request)
        with self._lock:
            hit = self._negatives.get(key)
        if hit is None:
            made = encode()
            with self._lock:
                hit = self._negatives.setdefault(key, made)
        return hit

    def neutral(self, request: StylizeRequest, extract: Callable[[Image.Image], VLResult]) -> VLResult:
        """The neutral extraction for the request: memoised per reference size and VL settings (what it depends
        on: :meth:`StylizeRequest.vl_identity` with the size standing for the gray image), else ``extract(gray)``."""
        if request.reference is None:
            raise ValueError("blend_mode style_delta needs a reference image")
        key = (tuple(request.reference.size), *request.vl_identity()[1:])
        with self._lock:
            hit = self._neutrals.get(key)
            if hit is not None:
                self._neutrals.move_to_end(key)
                return hit
        result = extract(Image.new("RGB", request.reference.size, NEUTRAL_GRAY))
        with self._lock:
            self._neutrals[key] = result
            while len(self._neutrals) > NEUTRALS_KEPT:
                self._neutrals.popitem(last=False)
        return result

    def forget(self, component: str) -> None:
        """Drop what ``component`` (``text``, ``vl`` or ``all``) made."""
        with self._lock:
            if component in ("text", "all"):
                self._negatives.clear()
            if component in ("vl", "all"):
                self._neutrals.clear()
