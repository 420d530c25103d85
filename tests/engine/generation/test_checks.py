"""engine.generation.checks: the one validation of a request, each error naming its parameter (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.generation.checks import check_request
from engine.types import StylizeRequest

REF = Image.fromarray((np.random.RandomState(0).rand(40, 60, 3) * 255).astype("uint8"))
BASE = StylizeRequest(prompt="a fox", seeds=(1,), steps=1, width=32, height=32)


def _check(request: StylizeRequest) -> None:
    check_request(request, text_layers=4, vl_layers=8)


def test_a_good_request_passes():
    _check(BASE)
    _check(BASE.replace(reference=REF, strength=0.5, guidance_scale=2.0))


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(width=30), "width"),
        (dict(height=40), "height"),
        (dict(width=0), "width"),
        (dict(steps=0), "steps"),
        (dict(guidance_scale=-1), "guidance_scale"),
        (dict(shift=0), "shift"),
        (dict(seeds=()), "seeds"),
        (dict(seeds=(-1,)), "seeds"),
        (dict(strength=0.5), "strength"),  # img2img without a reference
        (dict(fit_mode="squash"), "fit_mode"),
    ],
)
def test_errors_name_the_parameter(changes, name):
    with pytest.raises(ValueError, match=name):
        _check(BASE.replace(**changes))


@pytest.mark.parametrize("strength", [0, 1.5, -0.1])
def test_bad_strength(strength):
    with pytest.raises(ValueError, match="strength"):
        _check(BASE.replace(reference=REF, strength=strength))


def test_no_vl_model_refuses_a_reference():
    with pytest.raises(ValueError, match="vl_path"):
        check_request(BASE.replace(reference=REF), text_layers=4, vl_layers=None)
    check_request(BASE.replace(reference=REF, alpha=0.0), text_layers=4, vl_layers=None)
