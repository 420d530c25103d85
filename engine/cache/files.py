"""The embedding cache's checksummed safetensors files (all blocking: the cache calls them in threads).

One file per entry, named ``<key[:2]>/<key>-<checksum[:16]>.safetensors`` under the cache root (:func:`entry_path`),
written with :func:`engine.files.atomic_write_bytes`. The index row records the file's sha256, verified on every
read by :func:`read_verified`; a missing, truncated or corrupt file raises :class:`UnusableFile`, never returns a
wrong tensor. The file header repeats the key, kind and metadata, so :func:`read_orphan` can rebuild a row for a
file whose row was lost. torch and safetensors are imported lazily so that importing the cache stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.files import atomic_write_bytes

if TYPE_CHECKING:  # a third-party type only, no project module
    import torch

__all__ = ["DecodedEntry", "OrphanFile", "UnusableFile", "decode", "entry_header", "entry_path", "file_size",
           "read_orphan", "read_verified", "scan", "serialize", "unlink", "write"]

_FILE_RE = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{16})\.safetensors$")


class UnusableFile(Exception):
    """A cache file that cannot be trusted: missing, unreadable, truncated, or not matching its checksum."""


@dataclass(frozen=True)
class OrphanFile:
    """What a complete entry file's header says about itself (see :func:`read_orphan`)."""

    key: str
    kind: str
    bytes: int
    checksum: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class DecodedEntry:
    """An entry read back from its bytes (see :func:`decode`)."""

    key: str
    kind: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def entry_header(key: str, kind: str, meta: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata of an entry: its key, kind and JSON metadata (what :func:`read_orphan` and
    :func:`decode` read back, so that the bytes describe themselves wherever they travel)."""
    return {"zvl.key": key, "zvl.kind": kind, "zvl.meta": json.dumps(dict(meta), sort_keys=True, allow_nan=False)}


def entry_path(key: str, checksum: str) -> str:
    """The file of entry ``key`` with content ``checksum``, relative to the cache root."""
    return f"{key[:2]}/{key}-{checksum[:16]}.safetensors"


def serialize(tensors: Mapping[str, torch.Tensor], header: dict[str, str]) -> tuple[bytes, str]:
    """``(safetensors bytes, sha256)`` of CPU, contiguous copies of ``tensors`` with ``header`` as metadata."""
    import torch
    from safetensors.torch import save

    if not tensors:
        raise ValueError("tensors must hold at least one tensor")
    prepared = {}
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensors must map names to torch.Tensor; got {name!r}: {type(tensor).__name__}")
        prepared[name] = tensor.detach().to("cpu").contiguous().clone()  # clone: no shared storage
    data = save(prepared, metadata=header)
    return data, hashlib.sha256(data).hexdigest()


def _load(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        raise UnusableFile(f"not a valid safetensors file ({exc})") from exc


def read_verified(path: Path, checksum: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` when its sha256 is ``checksum``; :class:`UnusableFile` otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnusableFile("file missing") from None
    except OSError as exc:
        raise UnusableFile(f"unreadable ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != checksum:
        raise UnusableFile(f"checksum mismatch ({len(data)} bytes)")
    return _load(data)


def write(path: Path, data: bytes) -> None:
    """Write an entry file atomically (a reader sees no file or the whole file)."""
    atomic_write_bytes(path, data)


def unlink(path: Path) -> None:
    """Remove ``path`` if it exists."""
    path.unlink(missing_ok=True)


def file_size(path: Path) -> int | None:
    """The size of ``path`` in bytes, or ``None`` when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def scan(root: Path) -> tuple[list[str], list[str]]:
    """``(entry files, temporary files)`` under ``root``, as paths relative to it."""
    if not root.is_dir():
        return [], []
    files, temps = [], []
    for path in root.glob("*/*"):
        rel = path.relative_to(root).as_posix()
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temps.append(rel)
        elif _FILE_RE.match(path.name):
            files.append(rel)
    return sorted(files), sorted(temps)


def _header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (``ValueError``/``struct.error`` when they are not safetensors)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    if not isinstance(header, dict):
        raise ValueError("safetensors metadata is not a mapping")
    return header


def decode(data: bytes, checksum: str) -> DecodedEntry:
    """The entry held by ``data`` (bytes of :func:`serialize` under an :func:`entry_header`) when its sha256 is
    ``checksum``; :class:`UnusableFile` when it is not, or when the bytes are not such an entry."""
    if hashlib.sha256(data).hexdigest() != checksum:
        raise UnusableFile(f"checksum mismatch ({len(data)} bytes)")
    try:
        header = _header(data)
        meta = json.loads(header["zvl.meta"])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a mapping")
        return DecodedEntry(str(header["zvl.key"]), str(header.get("zvl.kind", "tensor")), meta, _load(data))
    except (KeyError, ValueError, struct.error) as exc:
        raise UnusableFile(f"not a cache entry ({exc})") from exc


def read_orphan(root: Path, rel: str) -> OrphanFile | None:
    """The header of a complete entry file whose name matches its key and checksum (``None`` when not usable)."""
    match = _FILE_RE.match(Path(rel).name)
    try:
        data = (root / rel).read_bytes()
        header = _header(data)
        meta = json.loads(header.get("zvl.meta", "{}"))
        _load(data)
    except (OSError, ValueError, AttributeError, struct.error, UnusableFile):
        return None
    checksum = hashlib.sha256(data).hexdigest()
    if match is None or header.get("zvl.key") != match.group(1) or not checksum.startswith(match.group(2)):
        return None
    return OrphanFile(match.group(1), header.get("zvl.kind", "tensor"), len(data), checksum, meta)
