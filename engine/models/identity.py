"""The one home of content identities: a model folder's, a Z-Image text encoder's, and a decoded image's.

These strings go into the embedding cache's keys (``engine.cache.records``), so their formulas must not change
without bumping ``engine.cache.records.RECORD_VERSION`` and ``VL_RECORD_VERSION``: a changed formula silently turns
every stored entry into a miss, and the bump makes that a recorded decision (the stability tests pin the values).
They hold no folder path (issue 17): identical weights mounted at different places on two machines have one
identity, so the machines share cache entries (``engine.cache.shared``). Pure stdlib hashing; PIL is only a type here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a third-party type only, no project module
    from PIL import Image

__all__ = ["IDENTITY_FILES", "PAGE_BYTES", "WEIGHT_SAMPLES", "image_fingerprint", "model_identity",
           "text_model_identity"]

#: Files whose contents change what a model computes (configs, processor, tokenizer, chat template).
IDENTITY_FILES = frozenset(
    {"model_index.json", "config.json", "generation_config.json", "preprocessor_config.json",
     "processor_config.json", "video_preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
     "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja", "vocab.json",
     "merges.txt"}
)  # fmt: skip
#: Pages of each weight file that its identity reads (see :func:`model_identity`): 256 x 4 KiB = 1 MiB per file.
WEIGHT_SAMPLES = 256
PAGE_BYTES = 4096


def model_identity(model_dir: str | Path) -> str:
    """``"sha256:<hex>"`` of what the folder computes, never where it is: the contents of the config, processor,
    tokenizer and chat-template files, and the names, sizes and :data:`WEIGHT_SAMPLES` sampled pages of the weight
    files, in the folder and its direct subfolders (paths relative to it).

    Path-free since issue 17: machines mount one model at different places and must share cache entries. The path
    used to tell apart two folders whose weights have the same names and sizes (a fine-tune of the same
    architecture); the sampled pages do that now, without reading gigabytes (about 1 MiB per weight file).
    """
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
            digest.update(f"{rel}\0size={path.stat().st_size}\0pages={_sampled_pages(path)}\n".encode())
    if not has_config:
        raise ValueError(f"model_dir {root} has no config.json or model_index.json; is it a model folder?")
    return f"sha256:{digest.hexdigest()}"


def _sampled_pages(path: Path) -> str:
    """sha256 of :data:`WEIGHT_SAMPLES` pages of :data:`PAGE_BYTES` at evenly spaced offsets, first and last
    included (the whole file when it is smaller): a fine-tune rewrites most tensors, so it changes sampled pages."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= WEIGHT_SAMPLES * PAGE_BYTES:
            digest.update(f.read())
        else:
            last = size - PAGE_BYTES
            for i in range(WEIGHT_SAMPLES):
                f.seek(last * i // (WEIGHT_SAMPLES - 1))
                digest.update(f.read(PAGE_BYTES))
    return digest.hexdigest()


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
