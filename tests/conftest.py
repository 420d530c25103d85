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
    from engine.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    paths = make_tiny(root)
    return TinyModels(root=root, zimage=paths["zimage"], qwen3vl=paths["qwen3vl"])


@pytest.fixture(scope="session")
def vl_with_real_minimum(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-VL folder with Qwen3-VL-4B's real processor bounds (its hub ``preprocessor_config.json``:
    ``size.shortest_edge`` 65536 pixels, so every image gets at least 64 tokens of 32×32 px)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("vl-real-minimum") / "qwen3vl"
    shutil.copytree(tiny_models.qwen3vl, folder)
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["size"] = {"shortest_edge": 65536, "longest_edge": 16777216}
    config_path.write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture
def settings_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Settings read in isolation: no ZVL_ variable from the machine leaks in, .env is looked up in an empty folder
    (the current directory), and the default data folder is under ``tmp_path``."""
    for key in [k for k in os.environ if k.startswith("ZVL_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A fresh real ``redis-server`` on a unix socket (skipped, saying why, when the package is missing).

    The folder comes from ``tmp_path_factory`` with a short name: a unix socket path must stay under 108 bytes.
    """
    from tests.redisserver import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
