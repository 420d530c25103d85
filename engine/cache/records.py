"""Embedding-cache key records: what each kind of entry depends on, and the key syntax.

:func:`cache_key` is the sha256 of a canonical JSON record of *everything that changes the tensor*, built by
:func:`vl_cache_record`, :func:`text_cache_record` or :func:`ref_stats_cache_record`. The seed's key hashed only the
image and a few options, so changing the layer mix, token mode, normalisation, target std, outlier masking, image
token budget or the model returned a stale tensor computed under other settings; every one of those is in the record
now. Images are keyed by their decoded pixels and models by their folder contents (:mod:`engine.models.identity`).

A leaf over :mod:`engine.types` (no torch, no I/O), so the text encoder can name its statistics' key and the cache
can check a key without importing a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from engine.types import (
    LayerWeight,
    Normalization,
    OutlierDirection,
    OutlierMode,
    TokenMode,
    applicable_vl_settings,
    canonical_layers,
)

__all__ = ["RECORD_VERSION", "VL_RECORD_VERSION", "cache_key", "canonical_json", "check_key", "is_cache_key", "ref_stats_cache_record",
           "text_cache_record", "vl_cache_record"]

#: Bump to invalidate every existing key (part of each record). 2 since issue 17: model identities are
#: content-only (no folder path, ``engine.models.identity``), so that machines share entries.
RECORD_VERSION = 2
#: VL extractions and reference statistics: 2 since issue 14 (canonical keys, per-row layer mixing, content-token
#: statistics, masking after normalisation: the tensors of version 1 are not those of version 2); 3 since issue 17
#: (path-free model identities, as ``RECORD_VERSION``).
VL_RECORD_VERSION = 3

_KEY_RE = re.compile(r"[0-9a-f]{64}")


def is_cache_key(key: Any) -> bool:
    """Whether ``key`` is a key the embedding cache accepts (64 lowercase hex characters, ``cache_key``'s form)."""
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


def check_key(key: Any) -> None:
    """Raise ``ValueError`` unless :func:`is_cache_key`."""
    if not is_cache_key(key):
        raise ValueError(f"cache key must be 64 lowercase hex characters (use cache_key()); got {key!r}")


def _canonical(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return _canonical(value.value, where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cache record field {where} must be finite; got {value!r}")
        return float(value) + 0.0  # -0.0 -> 0.0
    if isinstance(value, LayerWeight):
        return [int(value.layer), _canonical(float(value.weight), where)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cache record keys must be strings (at {where})")
        return {k: _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"cache records hold JSON values only; got {type(value).__name__} at {where}")


def canonical_json(record: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, floats as Python's shortest round-trip repr, enums as their values."""
    return json.dumps(_canonical(record, "record"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(record: Mapping[str, Any]) -> str:
    """sha256 hex of :func:`canonical_json` of ``record``."""
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


def vl_cache_record(
    *, image_fingerprint: str, text: str | None, layers: int | Sequence[LayerWeight | Sequence[float]],
    token_mode: TokenMode | str, normalization: Normalization | str, target_std: float,
    outlier_mode: OutlierMode | str, outlier_threshold: float, outlier_direction: OutlierDirection | str,
    image_token_budget: int | None, model_identity: str, reference_stats: str | None = None, dtype: str | None = None,
    think: bool = False, selection: str | None = None,
) -> dict[str, Any]:
    """The record of a Qwen3-VL extraction (:class:`~engine.types.VLResult`), canonical (issue 14):

    * ``layers`` through :func:`~engine.types.canonical_layers`: ``-6``, ``[LayerWeight(-6)]`` and ``[(-6, 2)]``
      are one key, and ``(2, 2)`` is ``(1, 1)``;
    * :func:`~engine.types.applicable_vl_settings`: ``target_std`` only under global/hybrid, the outlier threshold
      and direction only when masking is on;
    * ``text`` is what Qwen3-VL read with the image (``None`` for a prompt-free extraction,
      ``StylizeRequest.vl_settings``), ``think`` whether its template had the think block;
    * ``selection`` (``"attention"``: the entry also holds the prompt's attention per image row) only when set, so
      every other key is what it was before ``append_selection``.

    ``image_token_budget`` is the processor's token limit (``None``: its default); ``reference_stats`` the key of
    the statistics compared against; ``dtype`` the compute dtype.
    """
    if not isinstance(layers, int) and not layers:
        raise ValueError("layers must name at least one layer")
    return {
        "v": VL_RECORD_VERSION,
        "kind": "vl",
        "image": str(image_fingerprint),
        "text": None if text is None else str(text),
        "think": bool(think) and text is not None,
        "layers": canonical_layers(layers),
        "tokens": TokenMode.parse(token_mode, "token_mode").value,
        **applicable_vl_settings(normalization, target_std, outlier_mode, outlier_threshold, outlier_direction),
        "image_token_budget": None if image_token_budget is None else int(image_token_budget),
        "model": str(model_identity),
        "reference_stats": reference_stats,
        "dtype": dtype,
        **({"selection": str(selection)} if selection else {}),
    }


def text_cache_record(
    prompt: str,
    layer: int,
    think: bool,
    model_identity: str,
    *,
    max_length: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The record of a Qwen3 text-encoder prompt embedding (``layer`` as in ``StylizeRequest.text_layer``)."""
    return {
        "v": RECORD_VERSION,
        "kind": "text",
        "prompt": str(prompt),
        "layer": int(layer),
        "think": bool(think),
        "model": str(model_identity),
        "max_length": None if max_length is None else int(max_length),
        "dtype": dtype,
    }


def ref_stats_cache_record(
    *, model_identity: str, layer: int, prompts: Sequence[str], dtype: str | None = None
) -> dict[str, Any]:
    """The record of the reference statistics (per-dimension mean/std of the text encoder's hidden states over
    ``prompts`` at ``layer``) used by per-dimension normalisation and outlier masking."""
    return {
        "v": VL_RECORD_VERSION,  # v2: content tokens only (no template rows, no sink)
        "kind": "ref_stats",
        "model": str(model_identity),
        "layer": int(layer),
        "prompts": [str(p) for p in prompts],
        "dtype": dtype,
    }
