"""Cache keys and model identities keep the values stored entries were written under (computed with the formulas
before the cache/identity split; a change here turns every existing entry into a miss)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from engine.cache.keys import default_vl_key
from engine.cache.records import cache_key, ref_stats_cache_record, text_cache_record, vl_cache_record
from engine.models.identity import image_fingerprint, model_identity, text_model_identity
from engine.types import LayerWeight, StylizeRequest

VL = dict(image_fingerprint="ab" * 32, text="a fox", layers=-6, token_mode="full", normalization="global",
          target_std=61.0, outlier_mode="none", outlier_threshold=10.0, outlier_direction="both",
          image_token_budget=1024, model_identity="/models/qwen3vl#abc")


def _image() -> Image.Image:
    img = Image.new("RGB", (40, 24))
    img.putdata([(x * 6 % 256, y * 10 % 256, (x + y) % 256) for y in range(24) for x in range(40)])
    return img


def _zimage_folder(root: Path) -> Path:
    (root / "text_encoder").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    (root / "text_encoder" / "config.json").write_text('{"hidden_size": 16}')
    (root / "text_encoder" / "model.safetensors").write_bytes(b"\0" * 123)
    (root / "text_encoder" / "notes.txt").write_text("ignored")
    (root / "tokenizer" / "tokenizer.json").write_text('{"v": 1}')
    (root / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    return root.resolve()


def test_record_keys_are_unchanged() -> None:
    """VL, text and reference-statistics keys of fixed records."""
    assert cache_key(vl_cache_record(**VL)) == "9eed3ca12a9557b7b127990f8eb69b7e48090f2297fb6e92a1179189fb19cc61"
    mix = {**VL, "layers": [LayerWeight(-6, 2.0), (-8, 1.0)], "reference_stats": "cd" * 32, "dtype": "torch.float32",
           "image_token_budget": None}
    assert cache_key(vl_cache_record(**mix)) == "11a874969865bec3c11c11d6521ab730c63a2e66648c780eadc4f17413fcd22c"
    text = text_cache_record("a fox", -2, False, "m1", max_length=512, dtype="torch.bfloat16")
    assert cache_key(text) == "8d8cee77272bb2e95da9cb8624e3f01f1859a8980255118986c3bf7de3127ac0"
    stats = ref_stats_cache_record(model_identity="m1", layer=-2, prompts=["a", "b"], dtype="float32")
    assert cache_key(stats) == "f1896ddde8fe3907564918b73959334e08fcd9b713b058d934203b7015551339"


def test_image_and_default_vl_keys_are_unchanged() -> None:
    """The pixel fingerprint and the fallback VL key of a request."""
    img = _image()
    assert image_fingerprint(img) == "229036a0a0f4ffcaebfe2d7f24ab22b0c803a6002f5024587a874ef30593b323"
    request = StylizeRequest(prompt="a lighthouse", reference=img, alpha=0.3, hidden_layer=-3)
    assert default_vl_key(request) == "cd9516d1ef6b7f464d5376183a7255a1731730dc49d4328532c73b4fd97aa38e"


def test_model_identities_are_unchanged(tmp_path: Path) -> None:
    """Folder identities: the hash after the folder's path, for a folder and for a Z-Image text encoder."""
    root = _zimage_folder(tmp_path / "zimage")
    assert model_identity(root) == f"{root}#05155309218daf3aed5dd68283058be118a444867a7f156834407ef936203450"
    encoder = f"{root}/text_encoder#515bb5bad79ccc06c3366b9f2197fc3a1fd7314e3f45a430db301b7eb687c59f"
    assert model_identity(root / "text_encoder") == encoder
    assert text_model_identity(root) == (
        f"{encoder}+tokenizer#8cd38d7feb65eecee01a2ec05967e342272822b2b8f400547a83bc7b24260673")
