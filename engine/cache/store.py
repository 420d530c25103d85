"""Embedding cache: tensors by content key in atomic safetensors files, a byte budget with LRU eviction.

**Keys** are built by :mod:`engine.cache.records` (every setting that changes a tensor is in its record) and
:mod:`engine.cache.keys` (a request's keys under a pipeline). **Files** are :mod:`engine.cache.files`: one
checksummed safetensors file per entry, written atomically. The index row is written only once the file is durable,
and records the file's sha256, verified on every read. A missing, truncated or corrupt file is a miss that drops the
row (counted as ``corrupt``), never a crash or a wrong tensor.

**Index.** Rows live behind the :class:`CacheIndex` protocol: :class:`MemoryCacheIndex` here (CLI, tests) and
``bot.store.cache_index.SqliteCacheIndex`` in the bot. The engine imports neither aiosqlite nor the bot.

**Concurrency.** Reads and writes of one key are serialised by a per-key ``asyncio.Lock``; across processes the
content-addressed file names and ``os.replace`` make any interleaving end with a row that points at a complete file
matching its checksum (a losing writer's file becomes an orphan that :meth:`~EmbeddingCache.recover` removes).
File I/O and hashing run in ``asyncio.to_thread``. torch and safetensors are imported lazily so that importing
this module (for :class:`CacheEntry`) stays cheap.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.cache import files
from engine.cache.records import check_key
from engine.types import VLResult

if TYPE_CHECKING:  # a third-party type only, no project module
    import torch

__all__ = ["CacheEntry", "CacheIndex", "EmbeddingCache", "MemoryCacheIndex", "vl_entry", "vl_from_entry"]

log = logging.getLogger(__name__)


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


# --- the cache --------------------------------------------------------------------------------------------------


def vl_entry(result: VLResult) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a VL entry: the embeddings as float32 under the name ``"embeddings"`` (and
    append_selection=attention's ranking under ``"attention"``), the rest of ``result`` as metadata."""
    import torch

    tensors = {"embeddings": result.embeddings.detach().to("cpu", torch.float32).contiguous()}
    if result.attention is not None:
        tensors["attention"] = result.attention.detach().to("cpu", torch.float32).contiguous()
    return tensors, result.metadata()


def vl_from_entry(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> VLResult:
    """The :class:`VLResult` of a VL entry (:func:`vl_entry`'s form); ``ValueError`` when it is not one."""
    embeddings = tensors.get("embeddings")
    try:
        if embeddings is None or list(embeddings.shape) != list(meta["shape"]):
            raise ValueError("embeddings missing or not of the recorded shape")
        result = VLResult.from_metadata(embeddings, dict(meta))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a VL entry ({exc})") from exc
    result.attention = tensors.get("attention")
    return result


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
        check_key(key)
        async with self._lock(key):
            entry = await self.index.get(key)
            if entry is None:
                self.misses += 1
                return None
            try:
                tensors = await asyncio.to_thread(files.read_verified, self.root / entry.path, entry.checksum)
            except files.UnusableFile as exc:
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
        check_key(key)
        header = files.entry_header(key, kind, meta)
        data, checksum = await asyncio.to_thread(files.serialize, tensors, header)
        if len(data) > self.max_bytes:
            log.info("cache entry %s (%d bytes) exceeds the budget of %d bytes; not stored", key[:12], len(data),
                     self.max_bytes)  # fmt: skip
            return
        rel = files.entry_path(key, checksum)
        async with self._lock(key):
            previous = await self.index.get(key)
            try:
                await asyncio.to_thread(files.write, self.root / rel, data)
            except OSError as exc:
                log.warning("cache write of %s failed: %s", key[:12], exc)
                return
            now = self._now()
            entry = CacheEntry(key, kind, rel, len(data), checksum, json.loads(header["zvl.meta"]), now, now)
            await self.index.upsert(entry)  # only now that the file is durable
            if previous is not None and previous.path != rel:
                await asyncio.to_thread(files.unlink, self.root / previous.path)
        await self._evict(keep=key)

    async def get_vl(self, key: str) -> VLResult | None:
        """A cached :class:`VLResult` (see :meth:`put_vl`), or ``None``."""
        found = await self.get(key)
        if found is None:
            return None
        try:
            return vl_from_entry(*found)
        except ValueError as exc:
            entry = await self.index.get(key)
            if entry is not None:
                await self._drop(entry, str(exc))
            return None

    async def put_vl(self, key: str, result: VLResult) -> None:
        """Store ``result`` in :func:`vl_entry`'s form."""
        await self.put(key, *vl_entry(result), kind="vl")

    async def delete(self, key: str) -> bool:
        """Remove one entry; ``False`` when there was none."""
        async with self._lock(key):
            entry = await self.index.get(key)
            if entry is None:
                return False
            await self.index.delete(key)
            await asyncio.to_thread(files.unlink, self.root / entry.path)
            return True

    async def aclose(self) -> None:
        """Nothing to release (each file is closed after its access); the shared tier's counterpart closes Redis."""

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
            entry_files, temps = await asyncio.to_thread(files.scan, self.root)
            for rel in entry_files + temps:
                await asyncio.to_thread(files.unlink, self.root / rel)
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
                if await asyncio.to_thread(files.file_size, self.root / entry.path) == entry.bytes:
                    indexed.add(entry.path)
                    continue
                await self._drop(entry, "file missing or of the wrong size at recovery")
                report["dropped_rows"] += 1
            keys = set(await self.index.all_keys())
            entry_files, temps = await asyncio.to_thread(files.scan, self.root)
            for rel in temps:
                await asyncio.to_thread(files.unlink, self.root / rel)
                report["removed_temp"] += 1
            for rel in entry_files:
                if rel in indexed:
                    continue
                adopted = await self._adoptable(rel) if adopt_orphans else None
                if adopted is not None and adopted.key not in keys:
                    await self.index.upsert(adopted)
                    keys.add(adopted.key)
                    report["adopted"] += 1
                else:
                    await asyncio.to_thread(files.unlink, self.root / rel)
                    report["removed_files"] += 1
        await self._evict(keep=None)
        if any(report.values()):
            log.info("cache recovery: %s", ", ".join(f"{k}={v}" for k, v in report.items()))
        return report

    # --- internals

    async def _adoptable(self, rel: str) -> CacheEntry | None:
        """An index row for the orphan file ``rel`` when it is complete and names its key, else ``None``."""
        now = self._now()  # taken before the read, as for every scanned file
        orphan = await asyncio.to_thread(files.read_orphan, self.root, rel)
        if orphan is None:
            return None
        return CacheEntry(orphan.key, orphan.kind, rel, orphan.bytes, orphan.checksum, orphan.meta, now, now)

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
        await asyncio.to_thread(files.unlink, self.root / entry.path)

    async def _evict(self, keep: str | None) -> None:
        async with self._evict_lock:
            excess = await self.index.total_bytes() - self.max_bytes
            if excess <= 0:
                return
            for victim in await self.index.lru_victims(excess, keep=keep):
                async with self._lock(victim.key):
                    if await self.index.delete(victim.key, checksum=victim.checksum):
                        await asyncio.to_thread(files.unlink, self.root / victim.path)
                        self.evictions += 1

