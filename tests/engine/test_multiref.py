"""engine.multiref: weights parsing, the checks of a set of references, the record round trip (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.generation.checks import check_request
from engine.multiref import (
    NEGATIVE_GUIDANCE,
    negative_request,
    normalized_weights,
    parse_weights,
    reference_params,
    reference_requests,
    with_negative,
    with_references,
)
from engine.types import StylizeRequest


def _img(seed: int, w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


A, B, C, D, E = (_img(i) for i in range(5))
BASE = StylizeRequest(prompt="a fox", seeds=(1,), steps=1, width=32, height=32, alpha=0.4)


def _check(request: StylizeRequest) -> None:
    check_request(request, text_layers=4, vl_layers=8)


@pytest.mark.parametrize("text, count, expected", [
    ("2,1", 2, (2.0, 1.0)), ("2 1", 2, (2.0, 1.0)), (" 0.5 , 1.5 ", 2, (0.5, 1.5)), ([3, 1, 0], 3, (3.0, 1.0, 0.0)),
    ("2", 3, (2.0, 1.0, 1.0)), ("", 2, ()), ([], 1, ()),
])
def test_parse_weights(text, count, expected):
    assert parse_weights(text, count) == expected


@pytest.mark.parametrize("text, count, words", [
    ("2,x", 2, "not a number"), ("-1,2", 2, "negative"), ("0,0", 2, "all be 0"), ("1,2,3", 2, "3 weights for 2"),
    ("nan", 1, "not a number"), ("inf,1", 2, "not a number"),
])
def test_bad_weights_name_the_option(text, count, words):
    with pytest.raises(ValueError) as err:
        parse_weights(text, count, option="--weights")
    assert str(err.value).startswith("--weights:") and words in str(err.value)


def test_normalized_weights_sum_to_one():
    assert normalized_weights((2, 1), 2) == pytest.approx([2 / 3, 1 / 3])
    assert normalized_weights((), 3) == pytest.approx([1 / 3] * 3)


def test_reference_requests_are_one_reference_each():
    request = with_negative(with_references(BASE, [A, B, C], (2, 1, 1)), D)
    subs = reference_requests(request)
    assert [s.reference for s in subs] == [A, B, C]
    assert all(s.references == () and s.weights == () and s.negative_reference is None for s in subs)
    # the same settings as a request with that one reference: hence the same cache key
    assert subs[1].vl_settings() == BASE.replace(reference=B).vl_settings()
    neg = negative_request(request)
    assert neg is not None and neg.reference is D and neg.references == ()


def test_a_negative_turns_cfg_on_with_the_default_scale():
    assert BASE.guidance_scale == 0.0
    assert with_negative(BASE, A).guidance_scale == NEGATIVE_GUIDANCE == 2.0
    assert with_negative(BASE.replace(guidance_scale=3.5), A).guidance_scale == 3.5
    assert with_negative(BASE, A, guidance_scale=1.5).guidance_scale == 1.5
    assert with_negative(BASE, None) is BASE


def test_good_sets_pass_the_checks():
    _check(with_references(BASE, [A, B, C, D], (1, 2, 0, 1)))
    _check(with_negative(with_references(BASE, [A, B]), C))
    _check(with_negative(BASE, C))  # a negative without a positive reference
    _check(BASE.replace(reference=A, weights=(3.0,)))


@pytest.mark.parametrize("request_, words", [
    (with_references(BASE, [A, B, C, D, E]), "at most 4 references"),
    (BASE.replace(references=(B,)), "first reference"),
    (with_references(BASE, [A, B], (1, 1, 1)), "weights"),
    (with_references(BASE, [A, B], (0, 0)), "all be 0"),
    (with_references(BASE, [A, B], (-1, 2)), "negative"),
    (with_references(BASE, [A, "b.png"]), "references must be a PIL image"),
    (with_negative(BASE.replace(alpha=0.0), A), "negative_reference needs alpha"),
    (BASE.replace(negative_reference=A), "negative_reference needs guidance_scale"),
])
def test_bad_sets_are_refused_naming_the_parameter(request_, words):
    with pytest.raises(ValueError, match=words):
        _check(request_)


def test_record_round_trip_with_the_new_fields():
    request = with_negative(with_references(BASE, [A, B, C], (2, 1, 0.5)), D)
    record = json.loads(json.dumps(request.record()))  # what a job row stores
    assert record["references"] == [[40, 30], [40, 30]] and record["weights"] == [2.0, 1.0, 0.5]
    assert record["negative_reference"] == [40, 30] and record["guidance_scale"] == 2.0
    back = StylizeRequest.from_record(record, A, references=(B, C), negative_reference=D)
    assert back == request
    assert back.record() == record


def test_an_old_record_without_the_new_fields_still_loads():
    old = BASE.replace(reference=A).record()
    for key in ("references", "weights", "negative_reference"):
        old.pop(key)
    back = StylizeRequest.from_record(old, A)
    assert back.references == () and back.weights == () and back.negative_reference is None
    assert back == BASE.replace(reference=A)


def test_reference_params_list_every_reference():
    request = with_negative(with_references(BASE, [A, B], (2, 1)), C)
    params = reference_params(request)
    assert [p["weight"] for p in params["reference_set"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert [p["size"] for p in params["reference_set"]] == [[40, 30], [40, 30]]
    shas = [p["pixel_sha256"] for p in params["reference_set"]] + [params["negative"]["pixel_sha256"]]
    assert len(set(shas)) == 3 and all(len(s) == 64 for s in shas)
    assert reference_params(BASE) == {"reference_set": [], "negative": None}
