"""The worker's view of several references and a negative reference (``engine.multiref``).

Each further reference and the negative is a one-reference request of its own (``engine.multiref``), with its own VL
cache key (``engine.cache.keys.pipeline_vl_key``): the encode stage fetches or extracts it like any cell's reference,
so a reference sent once alone and once among others is extracted once. The DiT stage then hands the pipeline an
:class:`~engine.types.Encoded` that carries them all (``more``, ``negative_vl``). A cell with one reference and no
negative has no entry here and takes the worker's path of old.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.cache.keys import pipeline_vl_key
from engine.multiref import has_several, negative_request, reference_requests
from engine.types import BlendMode, Encoded, StylizeRequest

__all__ = ["MoreKeys", "encoded_for", "extractions", "more_keys", "more_neutrals"]


@dataclass
class MoreKeys:
    """One cell's further references and negative: their VL keys, and the one-reference request behind each key."""

    further: list[str] = field(default_factory=list)
    negative: str | None = None
    requests: dict[str, StylizeRequest] = field(default_factory=dict)


def more_keys(models: Any, requests: list[StylizeRequest]) -> dict[int, MoreKeys]:
    """Per cell with further references or a negative (and alpha above 0): their keys under the pipeline of
    ``models`` (``serving.lifecycle.Models``). Runs in the VL thread."""
    pipe, identities = models.pipe(), models.identities
    out: dict[int, MoreKeys] = {}
    for i, request in enumerate(requests):
        if not has_several(request) or float(request.alpha) <= 0:
            continue
        keys = MoreKeys()
        for sub in reference_requests(request)[1:]:
            key = pipeline_vl_key(pipe, sub, identities)
            keys.further.append(key)
            keys.requests.setdefault(key, sub)
        negative = negative_request(request)
        if negative is not None:
            keys.negative = pipeline_vl_key(pipe, negative, identities)
            keys.requests.setdefault(keys.negative, negative)
        out[i] = keys
    return out


def extractions(vl_keys: list[str | None], requests: list[StylizeRequest], more: dict[int, MoreKeys]
                ) -> dict[str, tuple[int, StylizeRequest]]:
    """Each distinct VL key of a job, in order (the cells' first references, then the further and negative ones),
    with the cell it serves and the one-reference request to extract it from."""
    wanted: dict[str, tuple[int, StylizeRequest]] = {}
    for i, key in enumerate(vl_keys):
        if key is not None:
            wanted.setdefault(key, (i, requests[i]))
    for i, keys in more.items():
        for key, request in keys.requests.items():
            wanted.setdefault(key, (i, request))
    return wanted


def more_neutrals(pipe: Any, requests: list[StylizeRequest], more: dict[int, MoreKeys]) -> None:
    """style_delta's neutral of every further and negative reference, made in the VL thread (the pipeline memoises
    them, so the DiT thread's blend finds them)."""
    for i, keys in more.items():
        if BlendMode.parse(requests[i].blend_mode, "blend_mode") is BlendMode.STYLE_DELTA:
            for sub in keys.requests.values():
                pipe.neutral_reference(sub)


def encoded_for(keys: MoreKeys, vls: dict[str, Any], vl: Any, text: Any, neutral: Any = None) -> Encoded:
    """What the DiT stage hands the pipeline for a cell with ``keys``: its prompt, every extraction, the neutral."""
    return Encoded(text, vl, neutral, more=tuple(vls[k] for k in keys.further),
                   negative_vl=vls[keys.negative] if keys.negative is not None else None)
