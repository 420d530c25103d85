"""The pipeline's steps for several references and a negative reference (``engine.multiref``).

* :func:`encode_more`: the extraction of each further reference and of the negative, each as its own one-reference
  request (``StylePipeline.encode_reference``), so each is exactly what that reference alone would give.
* :func:`blend_several`: the caption of several references, combined per blend mode by
  :mod:`engine.conditioning.multi` from the one-reference blends (``StylePipeline.blend``).
* :func:`negative_caption`: CFG's negative, the prompt with the negative reference blended in (same mode and alpha).

A request with one reference and no negative goes straight to ``StylePipeline.blend`` (its path of old).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.conditioning.multi import append_several, mean_caption
from engine.multiref import negative_request, normalized_weights, reference_requests
from engine.types import BlendMode, Encoded, StylizeRequest, VLResult

__all__ = ["blend_references", "blend_several", "encode_more", "negative_caption"]


def _is(request: StylizeRequest, mode: BlendMode) -> bool:
    return BlendMode.parse(request.blend_mode, "blend_mode") is mode


def encode_more(pipe: Any, request: StylizeRequest) -> tuple[tuple[VLResult, ...], VLResult | None]:
    """``(further references' extractions, the negative's)``: ``()`` and ``None`` for what the request lacks or at
    alpha 0; style_delta's neutral of each is made (memoised) too, so that blending needs no Qwen3-VL."""
    if float(request.alpha) <= 0:
        return (), None
    subs = reference_requests(request)[1:]
    negative = negative_request(request)
    if negative is not None:
        subs.append(negative)
    vls = [pipe.encode_reference(sub) for sub in subs]
    if _is(request, BlendMode.STYLE_DELTA):
        for sub in subs:
            pipe.neutral_reference(sub)
    if negative is not None:
        return tuple(vls[:-1]), vls[-1]
    return tuple(vls), None


def blend_several(pipe: Any, request: StylizeRequest, encoded: Encoded) -> torch.Tensor:
    """The blended caption of a request with further references (``encoded.vl`` and ``encoded.more``, one per
    reference): the prompt alone at alpha 0, else :mod:`engine.conditioning.multi`'s combination."""
    text = encoded.prompt_embeds
    if float(request.alpha) <= 0:
        return text
    vls = [encoded.vl, *encoded.more]
    if encoded.vl is None or len(encoded.more) != len(request.references):
        raise ValueError("the request needs every reference's extraction: pass encode(request)'s vl and more")
    weights = normalized_weights(request.weights, len(vls))
    if _is(request, BlendMode.APPEND):
        images = [(vl.embeddings[torch.tensor(vl.image_mask, dtype=torch.bool)], vl.settings.get("image_grid"))
                  for vl in vls]
        return append_several(images, text, float(request.alpha), weights, request.append_tokens,
                              row_scale=pipe.row_scale(request, text))
    used = [(sub, vl, w) for sub, vl, w in zip(reference_requests(request), vls, weights) if w > 0]
    captions = [pipe.blend(sub, text, vl, encoded.neutral if vl is encoded.vl else None) for sub, vl, _w in used]
    return mean_caption(captions, [w for _s, _v, w in used])


def blend_references(pipe: Any, request: StylizeRequest, encoded: Encoded, vl: VLResult | None) -> torch.Tensor:
    """The caption's blend (``vl``: ``encoded.vl``, or ``None`` at alpha 0): one reference through ``pipe.blend``,
    several through :func:`blend_several`."""
    if request.references:
        return blend_several(pipe, request, encoded)
    return pipe.blend(request, encoded.prompt_embeds, vl, encoded.neutral)


def negative_caption(pipe: Any, request: StylizeRequest, encoded: Encoded) -> torch.Tensor:
    """CFG's negative for a negative reference: its one-reference blend into the prompt, fitted under the cap."""
    negative = negative_request(request)
    if negative is None or encoded.negative_vl is None:
        raise ValueError("the request needs its negative reference's extraction: pass encode(request)'s negative_vl")
    return pipe.fit(request, pipe.blend(negative, encoded.prompt_embeds, encoded.negative_vl))
