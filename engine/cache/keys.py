"""Embedding-cache keys of a job's requests under a pipeline: the VL extraction and the prompt embedding.

Every setting that changes a tensor is in its key (``engine.cache.records``); the worker computes them in its VL thread.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.cache.records import VL_RECORD_VERSION, cache_key, canonical_json, text_cache_record, vl_cache_record
from engine.conditioning.text import MAX_SEQUENCE_LENGTH
from engine.models.identity import image_fingerprint, model_identity, text_model_identity
from engine.types import StylizeRequest

__all__ = ["default_vl_key", "pipeline_text_key", "pipeline_vl_key"]


def default_vl_key(request: StylizeRequest) -> str | None:
    """A content key for the request's VL extraction: the reference's pixels plus
    :meth:`~engine.types.StylizeRequest.vl_settings` (canonical: any layer-list form works, the prompt is absent
    for prompt-free extractions), or ``None`` without a reference. Computed in the VL thread (hashing a 1024²
    image takes a few ms)."""
    ref = request.reference
    if ref is None:
        return None
    h = hashlib.sha256()
    h.update(canonical_json({"v": VL_RECORD_VERSION, **request.vl_settings()}).encode())
    h.update(f"{ref.mode}:{ref.size[0]}x{ref.size[1]}".encode())
    h.update(ref.tobytes())
    return h.hexdigest()


def pipeline_vl_key(pipe: Any, request: StylizeRequest, identities: dict[tuple[int, str], str] | None = None
                    ) -> str:
    """The embedding cache's key (``engine.cache.records.vl_cache_record``) of the request's extraction under
    ``pipe``: the reference's pixels, :meth:`~engine.types.StylizeRequest.vl_settings`, the image-token budget, the
    Qwen3-VL folder's identity, the reference statistics it is compared against and the compute dtype. Falls back
    to :func:`default_vl_key` for a pipeline without a ``vl_path`` (fakes). ``identities`` memoises the folder
    hash. Runs in the VL thread."""
    vl_path = getattr(pipe, "vl_path", None)
    if vl_path is None or request.reference is None:
        key = default_vl_key(request)
        assert key is not None, "a VL key needs a reference"
        return key
    memo = identities if identities is not None else {}
    ident = memo.get((id(pipe), str(vl_path)))
    if ident is None:
        ident = memo[(id(pipe), str(vl_path))] = model_identity(vl_path)
    stats = pipe.text_encoder.stats_key(request.text_layer) if request.uses_reference_stats else None
    dtype = None
    dtype_for, device = getattr(pipe, "dtype_for", None), getattr(pipe, "vl_device", None)
    if dtype_for is not None and device is not None:
        dtype = str(dtype_for(device))
    s = request.vl_settings()
    record = vl_cache_record(
        image_fingerprint=image_fingerprint(request.reference), text=s["text"], think=s["think"],
        layers=s["layers"], token_mode=s["tokens"], normalization=s["normalization"],
        target_std=s.get("target_std", 0.0), outlier_mode=s["outlier_mode"],
        outlier_threshold=s.get("outlier_threshold", 0.0), outlier_direction=s.get("outlier_direction", "both"),
        image_token_budget=getattr(pipe, "vl_max_image_tokens", None), model_identity=ident, reference_stats=stats,
        dtype=dtype, selection=s.get("selection"))
    return cache_key(record)


def pipeline_text_key(pipe: Any, request: StylizeRequest, identities: dict[tuple[int, str], str] | None = None
                      ) -> str:
    """The embedding cache's key (``engine.cache.records.text_cache_record``) of the request's prompt embedding under
    ``pipe``: prompt, ``text_layer``, ``think``, the identity of the Z-Image folder's text encoder and tokenizer
    (``engine.models.identity.text_model_identity``), the token budget and the compute dtype. A pipeline without a
    ``zimage_path`` (fakes) is identified by its class. ``identities`` memoises the folder hash. Runs in the VL
    thread; loads no model."""
    zimage = getattr(pipe, "zimage_path", None)
    max_length = dtype = None
    if zimage is None:
        ident = f"pipeline:{type(pipe).__module__}.{type(pipe).__qualname__}"
    else:
        memo = identities if identities is not None else {}
        ident = memo.get((id(pipe), f"text:{zimage}"))
        if ident is None:
            ident = memo[(id(pipe), f"text:{zimage}")] = text_model_identity(zimage)
        # the encoder's own budget when it exists (not created here), else the default
        max_length = int(getattr(pipe, "text_max_length", MAX_SEQUENCE_LENGTH))
        dtype_for, device = getattr(pipe, "dtype_for", None), getattr(pipe, "text_device", None)
        if dtype_for is not None and device is not None:
            dtype = str(dtype_for(device))
    return cache_key(text_cache_record(request.prompt, request.text_layer, request.think, ident,
                                       max_length=max_length, dtype=dtype))

