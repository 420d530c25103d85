"""Images do not depend on the torch thread count beyond float32 reordering (tests/imagecheck.py's bounds).

The suite pins torch to one thread (tests/conftest.py: tiny models run ~20x slower on two threads of a loaded
2-core machine), so setting OMP_NUM_THREADS for a whole run does not reach torch in this process; this test runs
one request at one and at two threads instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.generation.pipeline import StylePipeline
from engine.types import StylizeRequest
from tests.imagecheck import assert_different_image, assert_same_image


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_one_and_two_threads_give_the_same_image(tiny_models, request):
    pipe = StylePipeline.from_pretrained(tiny_models.zimage, tiny_models.qwen3vl, device="cpu", dtype="float32")
    reference = Image.fromarray((np.random.RandomState(3).rand(48, 64, 3) * 255).astype("uint8"))
    req = StylizeRequest(prompt="a fox", reference=reference, alpha=0.5, seeds=(9, 10), width=32, height=32, steps=2)
    one = pipe(req).images
    request.getfixturevalue("two_threads")
    (two,) = pipe(req.replace(seeds=(9,))).images  # one image: two threads cost ~20x on tiny models
    assert_same_image(one[0], two)
    assert_different_image(one[0], one[1])
