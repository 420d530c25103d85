"""Several weighted references and a negative reference in one request: the data rules (no torch).

* A request holds up to :data:`MAX_REFERENCES` references: ``StylizeRequest.reference`` and then
  ``references``, with ``weights`` (one per reference, ``reference`` first; ``()`` means equal). Weights are
  relative: :func:`normalized_weights` divides by their sum. How each blend mode combines the references is
  :mod:`engine.conditioning.multi`.
* Each reference is extracted on its own, as a one-reference request (:func:`reference_requests`): Qwen3-VL's
  extraction assumes one vision span per sequence, and each reference gets its own embedding-cache entry, the very
  entry a one-reference request with that image uses.
* ``negative_reference`` is what the image should move away from: CFG's negative caption is the prompt with the
  negative reference blended in (same mode and alpha) instead of the empty prompt, so the difference CFG amplifies
  is the style alone. :func:`with_negative` turns CFG on at :data:`NEGATIVE_GUIDANCE` when the request had it off;
  CFG costs a second DiT pass per step.
* A request with one reference and no negative is exactly the request of old: every path above is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.models.identity import image_fingerprint

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

    from engine.types import StylizeRequest

__all__ = ["MAX_REFERENCES", "NEGATIVE_GUIDANCE", "check_references", "has_several", "negative_request",
           "normalized_weights", "parse_weights", "reference_params", "reference_requests", "with_negative",
           "with_references"]

#: References in one request, the first included (Midjourney's --sref takes several; four keep a job's
#: extractions, each a full Qwen3-VL forward on a cache miss, bounded).
MAX_REFERENCES = 4

#: CFG scale a negative reference turns on when the request had CFG off (Turbo's 0). Z-Image's CFG step is
#: ``pred = pos + s·(pos − neg)``; both captions hold the same prompt, so ``pos − neg`` is the style difference only,
#: and 2 pushes twice that difference away from the negative: clearly visible, yet far below the diffusers default
#: of 5 meant for undistilled models (a distilled Turbo step overshoots and burns colours at such scales).
NEGATIVE_GUIDANCE = 2.0


def parse_weights(values: str | Sequence[Any], count: int, option: str = "weights") -> tuple[float, ...]:
    """``"2,1"``, ``"2 1"`` or ``[2, 1]`` for ``count`` references → ``(2.0, 1.0)``; empty → ``()`` (equal).

    ``ValueError`` naming ``option``: not a number, negative, all zero, or more weights than references. Fewer
    weights than references: the missing ones are 1."""
    items = values.replace(",", " ").split() if isinstance(values, str) else list(values)
    if not items:
        return ()
    weights = []
    for item in items:
        try:
            w = float(item)
        except (TypeError, ValueError):
            w = math.nan
        if not math.isfinite(w):
            raise ValueError(f"{option}: “{str(item)[:12]}” is not a number (weights are numbers such as 2 and 1)")
        if w < 0:
            raise ValueError(f"{option}: a weight must not be negative; got {w:g}")
        weights.append(w)
    if len(weights) > count:
        raise ValueError(f"{option}: {len(weights)} weight{'s' * (len(weights) != 1)} for {count} "
                         f"reference{'s' * (count != 1)}; give at most one weight per reference")
    weights += [1.0] * (count - len(weights))
    if sum(weights) <= 0:
        raise ValueError(f"{option}: the weights must not all be 0")
    return tuple(weights)


def normalized_weights(weights: Sequence[float], count: int) -> list[float]:
    """The weights of ``count`` references divided by their sum (``()``: equal)."""
    raw = [float(w) for w in weights] if weights else [1.0] * count
    total = sum(raw)
    return [w / total for w in raw]


def all_references(request: StylizeRequest) -> list[Image.Image]:
    """Every reference of the request, ``reference`` first (none without one)."""
    return ([request.reference] if request.reference is not None else []) + list(request.references)


def has_several(request: StylizeRequest) -> bool:
    """Whether the request goes beyond one reference: further references or a negative reference."""
    return bool(request.references) or request.negative_reference is not None


def _single(request: StylizeRequest, image: Image.Image) -> StylizeRequest:
    return request.replace(reference=image, references=(), weights=(), negative_reference=None)


def reference_requests(request: StylizeRequest) -> list[StylizeRequest]:
    """The one-reference request of each reference (``reference`` first), each for its own extraction."""
    return [_single(request, image) for image in all_references(request)]


def negative_request(request: StylizeRequest) -> StylizeRequest | None:
    """The one-reference request whose extraction is the negative's (``None`` without a negative)."""
    if request.negative_reference is None:
        return None
    return _single(request, request.negative_reference).replace(strength=None)


def with_references(request: StylizeRequest, images: Sequence[Image.Image], weights: Sequence[float] = ()
                    ) -> StylizeRequest:
    """``request`` with ``images`` as its references (the first becomes ``reference``) and ``weights``."""
    images = list(images)
    return request.replace(reference=images[0] if images else None, references=tuple(images[1:]),
                           weights=tuple(float(w) for w in weights))


def with_negative(request: StylizeRequest, image: Image.Image | None, guidance_scale: float | None = None
                  ) -> StylizeRequest:
    """``request`` with ``image`` as its negative reference and CFG on: ``guidance_scale`` when given, else the
    request's own when above 0, else :data:`NEGATIVE_GUIDANCE`. ``image=None``: the request unchanged."""
    if image is None:
        return request
    scale = guidance_scale if guidance_scale is not None else (
        request.guidance_scale if float(request.guidance_scale) > 0 else NEGATIVE_GUIDANCE)
    return request.replace(negative_reference=image, guidance_scale=float(scale))


def check_references(request: StylizeRequest, check_image: Any) -> None:
    """``ValueError`` naming the parameter for a bad set of references (``check_image(image)`` checks one image's
    type and shape: the same check as ``reference``'s)."""
    images = all_references(request)
    if request.references and request.reference is None:
        raise ValueError("references need a first reference (reference) before them")
    if len(images) > MAX_REFERENCES:
        raise ValueError(f"references: at most {MAX_REFERENCES} references in one request; got {len(images)}")
    for image in request.references:
        check_image(image, "references")
    if request.weights:
        parse_weights(list(request.weights), len(images))
        if len(request.weights) != len(images):
            raise ValueError(f"weights: one weight per reference; got {len(request.weights)} for {len(images)}")
    negative = request.negative_reference
    if negative is None:
        return
    check_image(negative, "negative_reference")
    if float(request.alpha) <= 0:
        raise ValueError("negative_reference needs alpha above 0 (the negative is the prompt with that reference "
                         "blended in at the request's alpha)")
    if float(request.guidance_scale) <= 0:
        raise ValueError("negative_reference needs guidance_scale above 0 (it is CFG's negative caption)")


def reference_params(request: StylizeRequest) -> dict[str, Any]:
    """What a result records about its references: each one's pixel fingerprint (sha256 of the decoded RGB), size
    and normalised weight, and the negative's fingerprint and size (``None`` without one)."""
    images = all_references(request)
    weights = normalized_weights(request.weights, len(images)) if images else []
    negative = request.negative_reference
    return {
        "reference_set": [{"pixel_sha256": image_fingerprint(image), "size": list(image.size), "weight": round(w, 6)}
                          for image, w in zip(images, weights)],
        "negative": None if negative is None else {"pixel_sha256": image_fingerprint(negative),
                                                   "size": list(negative.size)},
    }
