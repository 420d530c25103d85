"""The wire form of a job: every image field of every request comes back with the same pixels (PNG is lossless)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from engine.serving.queue import Job
from engine.serving.redis import wire
from engine.types import StylizeRequest


def _image(seed: int, w: int = 24, h: int = 16) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _same_pixels(a: Image.Image | None, b: Image.Image | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _round_trip(job: Job) -> Job:
    payload = wire.job_payload(job)
    blobs = wire.references_of(job)
    assert sorted(blobs) == wire.payload_refs(payload)  # the worker fetches exactly what the bot uploaded
    return wire.job_of(payload, blobs)


def test_several_references_and_a_negative_survive_the_wire():
    a, b, c, neg = _image(0), _image(1, 16, 24), _image(2), _image(3)
    request = StylizeRequest(prompt="a harbour", reference=a, references=(b, c), weights=(2.0, 1.0, 1.0),
                             negative_reference=neg, guidance_scale=2.0, seeds=(1,))
    plain = StylizeRequest(prompt="a cat", reference=a, seeds=(2,))  # shares the first image with the first request
    back = _round_trip(Job(owner_id=7, requests=[request, plain], guild_id=9))
    got, got_plain = back.requests
    assert _same_pixels(got.reference, a) and _same_pixels(got.negative_reference, neg)
    assert len(got.references) == 2 and all(map(_same_pixels, got.references, (b, c)))
    assert got.weights == (2.0, 1.0, 1.0) and got.guidance_scale == 2.0
    assert got_plain.references == () and got_plain.negative_reference is None
    assert got_plain.reference is got.reference  # one image object per content, as in the bot
    assert len(wire.references_of(back)) == 4  # a, b, c, neg: the shared image travels once


def test_a_payload_queued_before_several_references_still_loads():
    ref = _image(4)
    job = Job(owner_id=1, requests=[StylizeRequest(prompt="old", reference=ref, seeds=(3,)),
                                    StylizeRequest(prompt="no image", seeds=(4,))], guild_id=None)
    data = json.loads(wire.job_payload(job))
    data["refs"] = [entry["reference"] for entry in data["refs"]]  # the earlier form: one bare sha (or null) each
    old = json.dumps(data).encode()
    back = wire.job_of(old, wire.references_of(job))
    assert wire.payload_refs(old) == sorted(wire.references_of(job))
    assert _same_pixels(back.requests[0].reference, ref) and back.requests[1].reference is None
