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
    """VL, text and reference-statistics keys of fixed records.

    The VL and statistics values changed once, on purpose, in issue 14 (VL_RECORD_VERSION 2): the extraction's
    tensors changed (per-row layer mixing, masking after normalisation, content-token statistics) and the record
    became canonical, so every version-1 entry must miss. The text key is unchanged."""
    assert cache_key(vl_cache_record(**VL)) == "1ce0d8ca859c61b6a85568fa065c44aaf827deacc68e4a338edbc15a534057ce"
    mix = {**VL, "layers": [LayerWeight(-6, 2.0), (-8, 1.0)], "reference_stats": "cd" * 32, "dtype": "torch.float32",
           "image_token_budget": None}
    assert cache_key(vl_cache_record(**mix)) == "97798de9a58dc0f804b2ef9e48ef5c087e90907caa637d4877342a1d9e1f146e"
    text = text_cache_record("a fox", -2, False, "m1", max_length=512, dtype="torch.bfloat16")
    assert cache_key(text) == "8d8cee77272bb2e95da9cb8624e3f01f1859a8980255118986c3bf7de3127ac0"
    stats = ref_stats_cache_record(model_identity="m1", layer=-2, prompts=["a", "b"], dtype="float32")
    assert cache_key(stats) == "f9c55c6b2077c4bc4cc5155750ddf1b4dffb1ae28e140659da36ed93a6fad16b"


def test_image_and_default_vl_keys_are_unchanged() -> None:
    """The pixel fingerprint and the fallback VL key of a request (the key changed in issue 14 with the VL record
    version; see above)."""
    img = _image()
    assert image_fingerprint(img) == "229036a0a0f4ffcaebfe2d7f24ab22b0c803a6002f5024587a874ef30593b323"
    request = StylizeRequest(prompt="a lighthouse", reference=img, alpha=0.3, hidden_layer=-3)
    assert default_vl_key(request) == "e08fde0334737ff6972cbdd98f16a52835ae1ca5ccbd34acfdf3a960796b750e"


def test_model_identities_are_unchanged(tmp_path: Path) -> None:
    """Folder identities: the hash after the folder's path, for a folder and for a Z-Image text encoder."""
    root = _zimage_folder(tmp_path / "zimage")
    assert model_identity(root) == f"{root}#05155309218daf3aed5dd68283058be118a444867a7f156834407ef936203450"
    encoder = f"{root}/text_encoder#515bb5bad79ccc06c3366b9f2197fc3a1fd7314e3f45a430db301b7eb687c59f"
    assert model_identity(root / "text_encoder") == encoder
    assert text_model_identity(root) == (
        f"{encoder}+tokenizer#8cd38d7feb65eecee01a2ec05967e342272822b2b8f400547a83bc7b24260673")


def test_default_vl_key_takes_every_layer_form() -> None:
    """``hidden_layer`` as a list of LayerWeight raised TypeError (json could not dump LayerWeight); every spelling of
    one extraction is now one key (issue 14)."""
    img = _image()
    base = StylizeRequest(prompt="a lighthouse", reference=img, hidden_layer=-6)
    for layer in ([LayerWeight(-6, 1.0)], (LayerWeight(-6, 2.0),), [(-6, 1.0)]):
        assert default_vl_key(base.replace(hidden_layer=layer)) == default_vl_key(base)
    mix = base.replace(hidden_layer=[LayerWeight(-6, 1.0), LayerWeight(-8, 1.0)])
    assert default_vl_key(mix) == default_vl_key(base.replace(hidden_layer=(LayerWeight(-8, 3.0), LayerWeight(-6, 3.0))))
    assert default_vl_key(mix) != default_vl_key(base)
