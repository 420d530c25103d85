"""Embedding cache: content keys, atomic safetensors files, a byte budget with LRU eviction.

**Keys.** :func:`cache_key` is the sha256 of a canonical JSON record of *everything that changes the tensor*, built
by :func:`vl_cache_record`, :func:`text_cache_record` or :func:`ref_stats_cache_record`. The seed's key hashed only
the image and a few options, so changing the layer mix, token mode, normalisation, target std, outlier masking,
image token budget or the model returned a stale tensor computed under other settings; every one of those is in
the record now. Images are keyed by their decoded pixels (:func:`image_fingerprint`), so a PNG and a lossless
re-encode of the same picture share entries; models by :func:`model_identity` (folder + config/tokenizer hashes).

**Files.** One safetensors file per entry, named ``<key[:2]>/<key>-<checksum[:16]>.safetensors`` under the root,
written atomically (temporary file in the same folder, fsync, ``os.replace``, fsync of the folder). The index row
is written only once the file is durable, and records the file's sha256, verified on every read. A missing,
truncated or corrupt file is a miss that drops the row (counted as ``corrupt``), never a crash or a wrong tensor.
The file header repeats the key, kind and metadata, so :meth:`EmbeddingCache.recover` can adopt orphans.

**Index.** Rows live behind the :class:`CacheIndex` protocol: :class:`MemoryCacheIndex` here (CLI, tests) and
``bot.store.cache_index.SqliteCacheIndex`` in the bot. The engine imports neither aiosqlite nor the bot.

**Concurrency.** Reads and writes of one key are serialised by a per-key ``asyncio.Lock``; across processes the
content-addressed file names and ``os.replace`` make any interleaving end with a row that points at a complete file
matching its checksum (a losing writer's file becomes an orphan that :meth:`~EmbeddingCache.recover` removes).
File I/O and hashing run in ``asyncio.to_thread``. torch, safetensors and PIL are imported lazily so that importing
this module (for :class:`CacheEntry`) stays cheap.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import os
import re
import struct
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.types import LayerWeight, Normalization, OutlierDirection, OutlierMode, TokenMode, VLResult

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

#: Bump to invalidate every existing key (part of each record).
RECORD_VERSION = 1

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_RE = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{16})\.safetensors$")
_IDENTITY_FILES = frozenset(
    {"model_index.json", "config.json", "generation_config.json", "preprocessor_config.json",
     "processor_config.json", "video_preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
     "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja", "vocab.json",
     "merges.txt"}
)  # fmt: skip


# --- keys -------------------------------------------------------------------------------------------------------


def _canonical(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return _canonical(value.value, where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cache record field {where} must be finite; got {value!r}")
        return float(value) + 0.0  # -0.0 -> 0.0
    if isinstance(value, LayerWeight):
        return [int(value.layer), _canonical(float(value.weight), where)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cache record keys must be strings (at {where})")
        return {k: _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"cache records hold JSON values only; got {type(value).__name__} at {where}")


def canonical_json(record: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, floats as Python's shortest round-trip repr, enums as their values."""
    return json.dumps(_canonical(record, "record"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(record: Mapping[str, Any]) -> str:
    """sha256 hex of :func:`canonical_json` of ``record``."""
    return hashlib.sha256(canonical_json(record).encode("utf-8")).hexdigest()


def image_fingerprint(image: Image.Image) -> str:
    """sha256 over the decoded pixels: mode, size and raw bytes after conversion to RGB (what the VL model sees).

    Two files that decode to the same pixels (PNG, BMP, lossless WebP) share a fingerprint. CPU work of a few ms
    per megapixel; call it from a thread in async code.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"zvl-image-v1:RGB:{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


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
        if path.name in _IDENTITY_FILES and path.is_file():
            has_config = has_config or path.name in ("config.json", "model_index.json")
            digest.update(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        elif path.suffix in (".safetensors", ".bin") and path.is_file():
            digest.update(f"{rel}\0size={path.stat().st_size}\n".encode())
    if not has_config:
        raise ValueError(f"model_dir {root} has no config.json or model_index.json; is it a model folder?")
    return f"{root}#{digest.hexdigest()}"


def _layers(layers: int | Sequence[LayerWeight | Sequence[float]]) -> int | list[list[float]]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        return int(layers)
    out = []
    for item in layers:
        layer, weight = (item.layer, item.weight) if isinstance(item, LayerWeight) else item
        out.append([int(layer), float(weight)])
    if not out:
        raise ValueError("layers must name at least one layer")
    return out


def vl_cache_record(
    *,
    image_fingerprint: str,
    text: str,
    layers: int | Sequence[LayerWeight | Sequence[float]],
    token_mode: TokenMode | str,
    normalization: Normalization | str,
    target_std: float,
    outlier_mode: OutlierMode | str,
    outlier_threshold: float,
    outlier_direction: OutlierDirection | str,
    image_token_budget: int | None,
    model_identity: str,
    reference_stats: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The record of a Qwen3-VL extraction (:class:`VLResult`).

    ``layers`` is one layer (``-6``) or ``[LayerWeight | (layer, weight), ...]``; ``image_token_budget`` the
    processor's pixel/token limit (``None``: the processor default); ``reference_stats`` the cache key (or another
    stable id) of the reference statistics that per-dimension normalisation or outlier masking compared against;
    ``dtype`` the compute dtype. Settings that do not matter under the chosen mode are kept anyway: an unneeded
    miss costs one extraction, a wrong hit costs a wrong image.
    """
    return {
        "v": RECORD_VERSION,
        "kind": "vl",
        "image": str(image_fingerprint),
        "text": str(text),
        "layers": _layers(layers),
        "tokens": TokenMode.parse(token_mode, "token_mode").value,
        "normalization": Normalization.parse(normalization, "normalization").value,
        "target_std": float(target_std),
        "outlier_mode": OutlierMode.parse(outlier_mode, "outlier_mode").value,
        "outlier_threshold": float(outlier_threshold),
        "outlier_direction": OutlierDirection.parse(outlier_direction, "outlier_direction").value,
        "image_token_budget": None if image_token_budget is None else int(image_token_budget),
        "model": str(model_identity),
        "reference_stats": reference_stats,
        "dtype": dtype,
    }


def text_cache_record(
    prompt: str,
    layer: int,
    think: bool,
    model_identity: str,
    *,
    max_length: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The record of a Qwen3 text-encoder prompt embedding (``layer`` as in ``StylizeRequest.text_layer``)."""
    return {
        "v": RECORD_VERSION,
        "kind": "text",
        "prompt": str(prompt),
        "layer": int(layer),
        "think": bool(think),
        "model": str(model_identity),
        "max_length": None if max_length is None else int(max_length),
        "dtype": dtype,
    }


def ref_stats_cache_record(
    *, model_identity: str, layer: int, prompts: Sequence[str], dtype: str | None = None
) -> dict[str, Any]:
    """The record of the reference statistics (per-dimension mean/std of the text encoder's hidden states over
    ``prompts`` at ``layer``) used by per-dimension normalisation and outlier masking."""
    return {
        "v": RECORD_VERSION,
        "kind": "ref_stats",
        "model": str(model_identity),
        "layer": int(layer),
        "prompts": [str(p) for p in prompts],
        "dtype": dtype,
    }


# --- index ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    """One index row. ``path`` is relative to the cache root; times are unix seconds."""

    key: str
    kind: str
    path: str
    bytes: int
    checksum: str
    meta: dict[str, Any]
    created_at: float
    last_used_at: float
    hits: int = 0


class CacheIndex(Protocol):
    """Where cache rows live. Implementations: :class:`MemoryCacheIndex`, ``bot.store.cache_index.SqliteCacheIndex``."""

    async def get(self, key: str) -> CacheEntry | None: ...

    async def upsert(self, entry: CacheEntry) -> None:
        """Insert or replace the row of ``entry.key``."""

    async def touch(self, key: str, at: float) -> None:
        """Record a hit: ``last_used_at = at``, ``hits += 1`` (no-op for an unknown key)."""

    async def delete(self, key: str, checksum: str | None = None) -> bool:
        """Delete the row; with ``checksum``, only if the row still has it. ``True`` when a row went."""

    async def total_bytes(self) -> int: ...

    async def count(self) -> int: ...

    async def lru_victims(self, bytes_to_free: int, keep: str | None = None) -> list[CacheEntry]:
        """Least recently used first (ties by key), as few as free at least ``bytes_to_free``; never ``keep``."""

    async def all_entries(self) -> list[CacheEntry]: ...

    async def all_keys(self) -> list[str]: ...

    async def clear(self) -> None: ...


class MemoryCacheIndex:
    """A dict-backed :class:`CacheIndex` (per process: use it with a root of its own, and ``recover(adopt_orphans=
    True)`` at start to pick up files from earlier runs)."""

    def __init__(self) -> None:
        self._rows: dict[str, CacheEntry] = {}

    async def get(self, key: str) -> CacheEntry | None:
        return self._rows.get(key)

    async def upsert(self, entry: CacheEntry) -> None:
        self._rows[entry.key] = entry

    async def touch(self, key: str, at: float) -> None:
        if key in self._rows:
            row = self._rows[key]
            self._rows[key] = replace(row, last_used_at=at, hits=row.hits + 1)

    async def delete(self, key: str, checksum: str | None = None) -> bool:
        row = self._rows.get(key)
        if row is None or (checksum is not None and row.checksum != checksum):
            return False
        del self._rows[key]
        return True

    async def total_bytes(self) -> int:
        return sum(row.bytes for row in self._rows.values())

    async def count(self) -> int:
        return len(self._rows)

    async def lru_victims(self, bytes_to_free: int, keep: str | None = None) -> list[CacheEntry]:
        victims, freed = [], 0
        for row in sorted(self._rows.values(), key=lambda r: (r.last_used_at, r.key)):
            if freed >= bytes_to_free:
                break
            if row.key != keep:
                victims.append(row)
                freed += row.bytes
        return victims

    async def all_entries(self) -> list[CacheEntry]:
        return list(self._rows.values())

    async def all_keys(self) -> list[str]:
        return list(self._rows)

    async def clear(self) -> None:
        self._rows.clear()


# --- files (run in threads) -------------------------------------------------------------------------------------


class _Unusable(Exception):
    """A cache file that cannot be trusted: missing, unreadable, truncated, or not matching its checksum."""


def _serialize(tensors: Mapping[str, torch.Tensor], header: dict[str, str]) -> tuple[bytes, str]:
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
        raise _Unusable(f"not a valid safetensors file ({exc})") from exc


def _read_verified(path: Path, checksum: str) -> dict[str, torch.Tensor]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Unusable("file missing") from None
    except OSError as exc:
        raise _Unusable(f"unreadable ({exc})") from exc
    if hashlib.sha256(data).hexdigest() != checksum:
        raise _Unusable(f"checksum mismatch ({len(data)} bytes)")
    return _load(data)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _scan(root: Path) -> tuple[list[str], list[str]]:
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


def _adopt(root: Path, rel: str, now: float) -> CacheEntry | None:
    """An index row for a complete orphan file whose header names its key (``None`` when it is not usable)."""
    match = _FILE_RE.match(Path(rel).name)
    try:
        data = (root / rel).read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
        meta = json.loads(header.get("zvl.meta", "{}"))
        _load(data)
    except (OSError, ValueError, AttributeError, struct.error, _Unusable):
        return None
    checksum = hashlib.sha256(data).hexdigest()
    if match is None or header.get("zvl.key") != match.group(1) or not checksum.startswith(match.group(2)):
        return None
    return CacheEntry(match.group(1), header.get("zvl.kind", "tensor"), rel, len(data), checksum, meta, now, now)


# --- the cache --------------------------------------------------------------------------------------------------


class EmbeddingCache:
    """Tensors by key under ``root``, indexed by ``index``, kept under ``max_bytes`` by evicting the least recently
    used entries (``max_bytes=0`` turns storing off; lookups then always miss). Counters (``hits``, ``misses``,
    ``evictions``, ``corrupt``) are per process; see :meth:`stats`.

    Call :meth:`recover` once at start-up, before the first :meth:`get`/:meth:`put`.
    """

    def __init__(
        self, root: Path, index: CacheIndex, max_bytes: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a whole number of bytes >= 0 (0 stores nothing); got {max_bytes!r}")
        self.root = Path(root)
        self.index = index
        self.max_bytes = max_bytes
        self.hits = self.misses = self.evictions = self.corrupt = 0
        self._clock = clock
        self._last_time = 0.0
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._evict_lock = asyncio.Lock()

    async def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(tensors, meta)`` for ``key`` (CPU tensors, a copy of the metadata), or ``None`` on a miss.

        A file that is missing or does not match its checksum is a miss: the row and the file are dropped.
        """
        _check_key(key)
        async with self._lock(key):
            entry = await self.index.get(key)
            if entry is None:
                self.misses += 1
                return None
            try:
                tensors = await asyncio.to_thread(_read_verified, self.root / entry.path, entry.checksum)
            except _Unusable as exc:
                self.misses += 1
                await self._drop(entry, str(exc))
                return None
            await self.index.touch(key, self._now())
            self.hits += 1
            return tensors, copy.deepcopy(entry.meta)

    async def put(
        self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *, kind: str = "tensor"
    ) -> None:
        """Store ``tensors`` (saved contiguous, on the CPU) with JSON-safe ``meta`` under ``key``, then evict down
        to the budget. Nothing is stored when the entry alone exceeds ``max_bytes`` or the file cannot be written
        (disk full, permissions: logged, not raised, since a cache failure must not fail a job).
        """
        _check_key(key)
        meta_json = json.dumps(dict(meta), sort_keys=True, allow_nan=False)
        header = {"zvl.key": key, "zvl.kind": kind, "zvl.meta": meta_json}
        data, checksum = await asyncio.to_thread(_serialize, tensors, header)
        if len(data) > self.max_bytes:
            log.info("cache entry %s (%d bytes) exceeds the budget of %d bytes; not stored", key[:12], len(data),
                     self.max_bytes)  # fmt: skip
            return
        rel = f"{key[:2]}/{key}-{checksum[:16]}.safetensors"
        async with self._lock(key):
            previous = await self.index.get(key)
            try:
                await asyncio.to_thread(_atomic_write, self.root / rel, data)
            except OSError as exc:
                log.warning("cache write of %s failed: %s", key[:12], exc)
                return
            now = self._now()
            entry = CacheEntry(key, kind, rel, len(data), checksum, json.loads(meta_json), now, now)
            await self.index.upsert(entry)  # only now that the file is durable
            if previous is not None and previous.path != rel:
                await asyncio.to_thread(_unlink, self.root / previous.path)
        await self._evict(keep=key)

    async def get_vl(self, key: str) -> VLResult | None:
        """A cached :class:`VLResult` (see :meth:`put_vl`), or ``None``."""
        found = await self.get(key)
        if found is None:
            return None
        tensors, meta = found
        embeddings = tensors.get("embeddings")
        try:
            if embeddings is None or list(embeddings.shape) != list(meta["shape"]):
                raise ValueError("embeddings missing or not of the recorded shape")
            return VLResult.from_metadata(embeddings, meta)
        except (KeyError, TypeError, ValueError) as exc:
            entry = await self.index.get(key)
            if entry is not None:
                await self._drop(entry, f"not a VL entry ({exc})")
            return None

    async def put_vl(self, key: str, result: VLResult) -> None:
        """Store ``result``: its embeddings as float32 under the name ``"embeddings"``, the rest as metadata."""
        import torch

        embeddings = result.embeddings.detach().to("cpu", torch.float32).contiguous()
        await self.put(key, {"embeddings": embeddings}, result.metadata(), kind="vl")

    async def delete(self, key: str) -> bool:
        """Remove one entry; ``False`` when there was none."""
        async with self._lock(key):
            entry = await self.index.get(key)
            if entry is None:
                return False
            await self.index.delete(key)
            await asyncio.to_thread(_unlink, self.root / entry.path)
            return True

    async def stats(self) -> dict[str, int]:
        """``entries``, ``bytes``, ``max_bytes`` and this process's ``hits``, ``misses``, ``evictions``, ``corrupt``."""
        return {
            "entries": await self.index.count(),
            "bytes": await self.index.total_bytes(),
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "corrupt": self.corrupt,
        }

    async def clear(self) -> int:
        """Remove every entry and file; returns the number of entries that were indexed."""
        async with self._evict_lock:
            count = await self.index.count()
            await self.index.clear()
            files, temps = await asyncio.to_thread(_scan, self.root)
            for rel in files + temps:
                await asyncio.to_thread(_unlink, self.root / rel)
        return count

    async def recover(self, *, adopt_orphans: bool = False) -> dict[str, int]:
        """Make the index and the files agree after a crash; returns what it did.

        Rows whose file is missing or of the wrong size are dropped (``dropped_rows``; also counted as
        ``corrupt``). Temporary files of interrupted writes are removed (``removed_temp``). Entry files without
        a row (killed between the file write and the index write, or a replaced version) are removed
        (``removed_files``), or, with ``adopt_orphans``, indexed again when complete and not shadowed by a row
        (``adopted``). Finally the budget is enforced. Run it before other cache calls: a write in flight in
        another process sharing the root would lose its file.
        """
        report = dict.fromkeys(("dropped_rows", "removed_files", "removed_temp", "adopted"), 0)
        async with self._evict_lock:
            indexed: set[str] = set()
            for entry in await self.index.all_entries():
                if await asyncio.to_thread(_file_size, self.root / entry.path) == entry.bytes:
                    indexed.add(entry.path)
                    continue
                await self._drop(entry, "file missing or of the wrong size at recovery")
                report["dropped_rows"] += 1
            keys = set(await self.index.all_keys())
            files, temps = await asyncio.to_thread(_scan, self.root)
            for rel in temps:
                await asyncio.to_thread(_unlink, self.root / rel)
                report["removed_temp"] += 1
            for rel in files:
                if rel in indexed:
                    continue
                adopted = await asyncio.to_thread(_adopt, self.root, rel, self._now()) if adopt_orphans else None
                if adopted is not None and adopted.key not in keys:
                    await self.index.upsert(adopted)
                    keys.add(adopted.key)
                    report["adopted"] += 1
                else:
                    await asyncio.to_thread(_unlink, self.root / rel)
                    report["removed_files"] += 1
        await self._evict(keep=None)
        if any(report.values()):
            log.info("cache recovery: %s", ", ".join(f"{k}={v}" for k, v in report.items()))
        return report

    # --- internals

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _now(self) -> float:
        """The clock, made strictly increasing within this process (LRU order must not tie or run backwards)."""
        self._last_time = max(self._clock(), self._last_time + 1e-6)
        return self._last_time

    async def _drop(self, entry: CacheEntry, reason: str) -> None:
        log.warning("cache entry %s dropped: %s", entry.key[:12], reason)
        self.corrupt += 1
        await self.index.delete(entry.key, checksum=entry.checksum)
        await asyncio.to_thread(_unlink, self.root / entry.path)

    async def _evict(self, keep: str | None) -> None:
        async with self._evict_lock:
            excess = await self.index.total_bytes() - self.max_bytes
            if excess <= 0:
                return
            for victim in await self.index.lru_victims(excess, keep=keep):
                async with self._lock(victim.key):
                    if await self.index.delete(victim.key, checksum=victim.checksum):
                        await asyncio.to_thread(_unlink, self.root / victim.path)
                        self.evictions += 1


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"cache key must be 64 lowercase hex characters (use cache_key()); got {key!r}")
