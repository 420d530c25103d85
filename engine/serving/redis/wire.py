"""Jobs, references, progress events and results as Redis values (the one home of each encoding).

A job travels as JSON (its requests' records, each image — reference, further references, negative — by the
sha256 of its PNG; ``Job.context`` never leaves the bot: it holds interaction tokens). Images travel once per content under ``ref:<sha>``; PNG is lossless, so
the worker sees exactly the bot's pixels and computes the same cache keys. Results come back as PNG bytes plus one
JSON record, written by the worker under ``res:<id>:<sid>`` before its fenced finish.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from engine.serving.eta import StageEstimator
from engine.serving.events import EventKind, ProgressEvent
from engine.serving.queue import Job
from engine.types import StylizeRequest, StylizeResult

#: ProgressEvent fields carried in a stream entry, with their types (``job_id``, ``kind`` and ``at`` are not).
EVENT_FIELDS = {"position": int, "eta_s": float, "step": int, "total": int, "cell": int, "cells": int,
                "cells_done": int, "message": str, "seconds": float, "device": str}


def png_bytes(image: Image.Image) -> bytes:
    """Lossless bytes of ``image``."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_of(data: bytes) -> Image.Image:
    """The RGB image of PNG bytes made by :func:`png_bytes`."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _encoded(job: Job) -> dict[int, tuple[str, bytes]]:
    """``{id(image): (sha256, png)}`` of every distinct image object in the job's requests: the reference, the
    further references and the negative one (each image field of ``StylizeRequest``), each encoded once."""
    out: dict[int, tuple[str, bytes]] = {}
    for request in job.requests:
        for image in (request.reference, *request.references, request.negative_reference):
            if image is not None and id(image) not in out:
                data = png_bytes(image)
                out[id(image)] = (hashlib.sha256(data).hexdigest(), data)
    return out


def references_of(job: Job) -> dict[str, bytes]:
    """``{sha256: png}`` of the job's distinct images (by object, as the worker's identities are)."""
    return dict(_encoded(job).values())


def _request_refs(request: StylizeRequest, encoded: dict[int, tuple[str, bytes]]) -> dict[str, Any]:
    def sha(image: Image.Image | None) -> str | None:
        return None if image is None else encoded[id(image)][0]

    return {"reference": sha(request.reference), "references": [sha(image) for image in request.references],
            "negative_reference": sha(request.negative_reference)}


def _refs_entry(entry: Any) -> dict[str, Any]:
    """One request's image shas; a bare sha (or ``None``) is a payload queued before several references."""
    return entry if isinstance(entry, dict) else {"reference": entry}


def _shas(entry: Any) -> list[str]:
    refs = _refs_entry(entry)
    return [sha for sha in (refs.get("reference"), *refs.get("references", ()), refs.get("negative_reference"))
            if sha]


def job_payload(job: Job) -> bytes:
    """The job as JSON for the worker: requests by record, each image field by sha."""
    encoded = _encoded(job)
    return json.dumps({"id": job.id, "owner_id": job.owner_id, "guild_id": job.guild_id, "kind": job.kind,
                       "created_at": job.created_at, "priority": job.priority,
                       "requests": [r.record() for r in job.requests],
                       "refs": [_request_refs(r, encoded) for r in job.requests]}).encode()


def payload_refs(payload: bytes) -> list[str]:
    """The image shas a payload needs."""
    return sorted({sha for entry in json.loads(payload)["refs"] for sha in _shas(entry)})


def job_of(payload: bytes, references: dict[str, bytes]) -> Job:
    """The :class:`Job` of a payload; ``references`` maps sha -> PNG (``KeyError`` when one is missing). Requests
    sharing an image share one image object, as they did in the bot."""
    data = json.loads(payload)
    images = {sha: image_of(references[sha]) for sha in {s for entry in data["refs"] for s in _shas(entry)}}
    requests = []
    for record, entry in zip(data["requests"], data["refs"], strict=True):
        refs = _refs_entry(entry)
        reference, negative = refs.get("reference"), refs.get("negative_reference")
        requests.append(StylizeRequest.from_record(
            record, images[reference] if reference else None, tuple(images[s] for s in refs.get("references", ())),
            images[negative] if negative else None))
    return Job(owner_id=int(data["owner_id"]), requests=requests, guild_id=data["guild_id"], kind=data["kind"],
               id=data["id"], created_at=float(data["created_at"]), priority=int(data["priority"]))


def cost_hint(job: Job) -> str:
    """``"refs texts dit_units"``: what any process needs to estimate the job's stage costs with any worker's
    measured speeds (``StageEstimator.costs`` with unit prices, so the counting rule stays there)."""
    refs, units = StageEstimator(vl_s=1.0, text_s=0.0, dit_unit_s=1.0).costs(job)
    texts, _ = StageEstimator(vl_s=0.0, text_s=1.0, dit_unit_s=0.0).costs(job)
    return f"{refs:g} {texts:g} {units:g}"


def parse_hint(hint: bytes | str | None) -> tuple[float, float, float]:
    """The inverse of :func:`cost_hint` (zeros when absent)."""
    if not hint:
        return (0.0, 0.0, 0.0)
    text = hint.decode() if isinstance(hint, bytes) else hint
    refs, texts, units = (float(x) for x in text.split())
    return refs, texts, units


def event_fields(event: ProgressEvent) -> dict[str, str]:
    """A worker's event as stream fields."""
    out = {"kind": event.kind.value}
    for name in EVENT_FIELDS:
        value = getattr(event, name)
        if value is not None:
            out[name] = str(value)
    return out


def event_of(job_id: str, fields: dict[bytes, bytes]) -> ProgressEvent:
    """A stream entry (written by a script or a worker) as a :class:`ProgressEvent`."""
    text = {k.decode(): v.decode() for k, v in fields.items()}
    values: dict[str, Any] = {}
    for name, kind in EVENT_FIELDS.items():
        raw = text.get(name)
        if raw not in (None, ""):
            values[name] = kind(raw)
    return ProgressEvent(job_id, EventKind(text["kind"]), **values)


@dataclass
class DescriptionRecord:
    """A ``/describe`` result as the bot reads it (the fields and ``record()`` of
    ``engine.conditioning.describe.Description``, without importing torch into the bot)."""

    suggestions: list[str]
    new_tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = "finished"
    settings: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"suggestions": list(self.suggestions), "new_tokens": list(self.new_tokens),
                "seconds": round(self.seconds, 3), "stopped": self.stopped, "settings": dict(self.settings)}


def result_blobs(results: list[Any]) -> dict[str, bytes]:
    """The results of a job as hash fields: ``meta`` (one JSON record per result) and ``img:<i>:<j>`` PNGs."""
    meta: list[dict[str, Any] | None] = []
    blobs: dict[str, bytes] = {}
    for i, result in enumerate(results):
        if result is None:
            meta.append(None)
        elif isinstance(result, StylizeResult):
            meta.append({"images": len(result.images), "seeds": list(result.seeds), "params": result.params,
                         "timings": result.timings, "vl": result.vl, "stats": result.stats, "scores": result.scores})
            for j, image in enumerate(result.images):
                blobs[f"img:{i}:{j}"] = png_bytes(image)
        else:  # a Description
            meta.append({"description": result.record()})
    blobs["meta"] = json.dumps(meta, default=float).encode()
    return blobs


def results_of(blobs: dict[bytes, bytes]) -> list[Any]:
    """The inverse of :func:`result_blobs`."""
    if b"meta" not in blobs:
        return []
    out: list[Any] = []
    for i, rec in enumerate(json.loads(blobs[b"meta"])):
        if rec is None:
            out.append(None)
        elif "description" in rec:
            out.append(DescriptionRecord(**rec["description"]))
        else:
            images = [image_of(blobs[f"img:{i}:{j}".encode()]) for j in range(rec["images"])]
            out.append(StylizeResult(images, rec["seeds"], rec["params"], rec["timings"], rec["vl"], rec["stats"],
                                     rec["scores"]))
    return out


def json_dict(text: str | None) -> dict[str, Any]:
    """A JSON object stored as text (``{}`` when absent)."""
    return json.loads(text) if text else {}
