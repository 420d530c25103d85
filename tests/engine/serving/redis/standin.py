"""Stand-in pipelines for worker processes in the Redis tests (``engine serve --pipeline MODULE:CALLABLE``).

The tests are about the queue, so the stages cost a fixed time instead of running models: ``ZVL_STANDIN_STEP_S``
seconds per DiT step of the one fake pipeline of the suite (tests/fakes.py).
"""

from __future__ import annotations

import os

from tests.fakes import FakePipeline


def fixed_cost() -> FakePipeline:
    return FakePipeline(step_s=float(os.environ.get("ZVL_STANDIN_STEP_S", "0.02")))
