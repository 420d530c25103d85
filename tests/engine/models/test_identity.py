"""Model identities are content-only (issue 17): one model mounted at two places has one identity, so two machines
share embedding-cache keys; anything that changes what the model computes gives another identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.cache.keys import pipeline_text_key, pipeline_vl_key
from engine.generation.pipeline import StylePipeline
from engine.models.identity import PAGE_BYTES, WEIGHT_SAMPLES, model_identity, text_model_identity
from engine.types import StylizeRequest
from tests.engine.cache.test_key_stability import _image


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_one_model_at_two_paths_has_one_identity(tiny_models, tmp_path: Path) -> None:
    """The tiny Qwen3-VL and Z-Image folders copied to two unrelated places: same identity, and the identity
    names neither place."""
    a = _copy(tiny_models.qwen3vl, tmp_path / "machine-a" / "weights" / "vl")
    b = _copy(tiny_models.qwen3vl, tmp_path / "mnt" / "b")
    assert model_identity(a) == model_identity(b) == model_identity(tiny_models.qwen3vl)
    assert "machine-a" not in model_identity(a) and str(tiny_models.root) not in model_identity(a)
    za = _copy(tiny_models.zimage, tmp_path / "za")
    zb = _copy(tiny_models.zimage, tmp_path / "deep" / "zb")
    assert text_model_identity(za) == text_model_identity(zb)


def test_two_paths_give_the_same_cache_keys(tiny_models, tmp_path: Path) -> None:
    """What the cache sees: two pipelines over copies at different paths compute the same VL and text keys."""
    pipes = [StylePipeline.from_pretrained(_copy(tiny_models.zimage, tmp_path / f"z{i}"),
                                           _copy(tiny_models.qwen3vl, tmp_path / f"v{i}"), device="cpu")
             for i in range(2)]
    request = StylizeRequest(prompt="a lighthouse", reference=_image(), alpha=0.3)
    assert pipeline_vl_key(pipes[0], request) == pipeline_vl_key(pipes[1], request)
    assert pipeline_text_key(pipes[0], request) == pipeline_text_key(pipes[1], request)


def test_a_changed_config_gives_another_identity(tiny_models, tmp_path: Path) -> None:
    folder = _copy(tiny_models.qwen3vl, tmp_path / "vl")
    before = model_identity(folder)
    config = json.loads((folder / "config.json").read_text())
    config["zvl_test_marker"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    assert model_identity(folder) != before


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 64}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_same_sized_weights_with_other_bytes_give_another_identity(tmp_path: Path) -> None:
    """A fine-tune has the names, sizes and configs of its base; its weight bytes differ. Once the folder path is
    gone, only the sampled pages tell the two apart: a change in any sampled page changes the identity (a small file
    is read whole; a large one at 256 evenly spaced pages, first and last included)."""
    small = bytes(1000)
    assert model_identity(_model(tmp_path / "s1", small)) != model_identity(_model(tmp_path / "s2", b"\1" + small[1:]))
    size = WEIGHT_SAMPLES * PAGE_BYTES * 3  # larger than what is sampled: the pages are 3 pages apart
    base = bytes(size)
    ident = model_identity(_model(tmp_path / "base", base))
    page_101 = (size - PAGE_BYTES) * 100 // (WEIGHT_SAMPLES - 1)  # evenly spaced from 0 to size - PAGE_BYTES
    for offset in (0, page_101 + PAGE_BYTES // 2, size - 1):  # inside the first, the 101st and the last page
        tuned = bytearray(base)
        tuned[offset] = 1
        assert model_identity(_model(tmp_path / f"tuned{offset}", bytes(tuned))) != ident, offset
    assert model_identity(_model(tmp_path / "copy", base)) == ident
