"""Cache keys and model identities keep the values stored entries were written under (computed with the formulas
before the cache/identity split; a change here turns every existing entry into a miss)."""

from __future__ import annotations

import hashlib
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

    The values changed on purpose twice. In issue 14 (VL_RECORD_VERSION 2) the extraction's tensors changed
    (per-row layer mixing, masking after normalisation, content-token statistics) and the record became canonical,
    so every version-1 entry must miss. In issue 17 (RECORD_VERSION 2, VL_RECORD_VERSION 3) model identities lost
    the folder path, so every key changed with its version."""
    assert cache_key(vl_cache_record(**VL)) == "dad147a476bce98077e9ab884a0e4efaf78b0a64d3c8c5a59360dfefde628aea"
    mix = {**VL, "layers": [LayerWeight(-6, 2.0), (-8, 1.0)], "reference_stats": "cd" * 32, "dtype": "torch.float32",
           "image_token_budget": None}
    assert cache_key(vl_cache_record(**mix)) == "c25d4f2a14cd291a0b4da5e21c71ac6e77aed551d056e0cb1f145f36d39dff17"
    text = text_cache_record("a fox", -2, False, "m1", max_length=512, dtype="torch.bfloat16")
    assert cache_key(text) == "0855cab2094389abf5bb4b91413ceb2975f30d32b3a9df3510e6d289b2ef44cd"
    stats = ref_stats_cache_record(model_identity="m1", layer=-2, prompts=["a", "b"], dtype="float32")
    assert cache_key(stats) == "b95d81324833222b70eb31be7c7b48ca872a2edfad3119d13635ed742a5631d8"


def test_image_and_default_vl_keys_are_unchanged() -> None:
    """The pixel fingerprint and the fallback VL key of a request (the key changed in issues 14 and 17 with the VL
    record version; see above)."""
    img = _image()
    assert image_fingerprint(img) == "229036a0a0f4ffcaebfe2d7f24ab22b0c803a6002f5024587a874ef30593b323"
    request = StylizeRequest(prompt="a lighthouse", reference=img, alpha=0.3, hidden_layer=-3)
    assert default_vl_key(request) == "baaaf3246509b35691fd23332a3243a2555987ae7ce253003578f8b306361450"


def test_model_identities_are_unchanged(tmp_path: Path) -> None:
    """Folder identities hold no path (issue 17). The text encoder's is recomputed here from the documented formula
    (each identity file's sha256, each weight file's size and the sha256 of its sampled pages, which is the whole
    file below 1 MiB; ``notes.txt`` is no identity file); the rest are pinned."""
    root = _zimage_folder(tmp_path / "zimage")
    assert model_identity(root) == "sha256:4949ec27e3b6b48ddfc0d80597953597ef469ae2f04daa1306b25d3ef86d9696"
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    config = (root / "text_encoder" / "config.json").read_bytes()
    formula = f"config.json\0{sha(config)}\nmodel.safetensors\0size=123\0pages={sha(bytes(123))}\n"
    encoder = f"sha256:{sha(formula.encode())}"
    assert encoder == "sha256:93b93fdfb0fa3f20762f8efd76b6fdc673e101049ff84eb17c2ece68891331fd"
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
