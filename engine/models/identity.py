"""The one home of content identities: a model folder's, a Z-Image text encoder's, and a decoded image's.

These strings go into the embedding cache's keys (``engine.cache.records``), so their formulas must not change
without bumping ``engine.cache.records.RECORD_VERSION``: a changed formula silently turns every stored entry into a
miss. Pure stdlib hashing; PIL is only a type here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a third-party type only, no project module
    from PIL import Image

__all__ = ["IDENTITY_FILES", "image_fingerprint", "model_identity", "text_model_identity"]

#: Files whose contents change what a model computes (configs, processor, tokenizer, chat template).
IDENTITY_FILES = frozenset(
    {"model_index.json", "config.json", "generation_config.json", "preprocessor_config.json",
     "processor_config.json", "video_preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
     "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja", "vocab.json",
     "merges.txt"}
)  # fmt: skip


def model_identity(model_dir: str | Path) -> str:
    """``"<resolved folder>#<sha256>"``: the hash covers the contents of the config, processor, tokenizer and
    chat-template files and the names and sizes of the weight files, in the folder and its direct subfolders."""
    root = Path(model_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"model_dir must be a model folder; {root} is not a directory")
    digest = hashlib.sha256()
    has_config = False
    for path in sorted([*root.iterdir(), *root.glob("*/*")]):
        rel = path.relative_to(root).as_posix()
        if path.name in IDENTITY_FILES and path.is_file():
            has_config = has_config or path.name in ("config.json", "model_index.json")
            digest.update(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        elif path.suffix in (".safetensors", ".bin") and path.is_file():
            digest.update(f"{rel}\0size={path.stat().st_size}\n".encode())
    if not has_config:
        raise ValueError(f"model_dir {root} has no config.json or model_index.json; is it a model folder?")
    return f"{root}#{digest.hexdigest()}"


def text_model_identity(zimage_dir: str | Path) -> str:
    """The identity of a Z-Image folder's text encoder as the embedding cache records it:
    :func:`model_identity` of ``text_encoder/`` plus a hash of the files of ``tokenizer/`` (both change what the
    encoder outputs). Reads and hashes the files (tens of ms for Qwen3's tokenizer): memoise it."""
    root = Path(zimage_dir)
    digest = hashlib.sha256()
    tok = root / "tokenizer"
    for path in sorted(tok.iterdir()) if tok.is_dir() else []:
        if path.is_file():
            digest.update(f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return f"{model_identity(root / 'text_encoder')}+tokenizer#{digest.hexdigest()}"


def image_fingerprint(image: Image.Image) -> str:
    """sha256 over the decoded pixels: mode, size and raw bytes after conversion to RGB (what the VL model sees).

    Two files that decode to the same pixels (PNG, BMP, lossless WebP) share a fingerprint. CPU work of a few ms
    per megapixel; call it from a thread in async code.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"zvl-image-v1:RGB:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()
