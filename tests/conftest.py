"""Shared fixtures: one torch thread, offline Hugging Face, and tiny model folders built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models on a 2-core machine: one intra-op thread made generation ~30x faster than two.
torch.set_num_threads(1)


@dataclass(frozen=True)
class TinyModels:
    root: Path
    zimage: Path
    qwen3vl: Path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny random Z-Image and Qwen3-VL folders in the real HF layout (built once, a few seconds)."""
    from engine.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    paths = make_tiny(root)
    return TinyModels(root=root, zimage=paths["zimage"], qwen3vl=paths["qwen3vl"])
