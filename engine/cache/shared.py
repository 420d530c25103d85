"""The two-tier embedding cache (issue 17): each worker's local :class:`~engine.cache.store.EmbeddingCache` (L1)
in front of one Redis that every worker shares (L2, :class:`~engine.cache.redis_tier.RedisTier`), so a reference
extracted on one machine is a hit on every other. Keys are the same on every machine because model identities hold
no folder path (:mod:`engine.models.identity`).

* **get**: L1; on a miss L2, whose entry is verified (checksum, key, and for a VL entry the checks L1 makes,
  :func:`~engine.cache.store.vl_from_entry`), written to L1, and returned. A refused L2 entry is a miss.
* **put**: L1, then L2 (the same checksummed bytes L1 writes), best effort.
* **delete**: both tiers (the encode stage deletes an entry that is not what its kind should be).

L2 never fails a job: it steps aside while its Redis is down or slow (see :mod:`engine.cache.redis_tier`).
:class:`TieredCache` has the surface of ``EmbeddingCache`` that the worker and the bot use (``EmbeddingStore``,
``recover``, ``stats``, ``clear``, ``aclose``), so neither knows which one it holds. :func:`build_embedding_store`
is the one place that picks: the bot's in-process worker and ``engine serve`` both call it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from engine.cache import files
from engine.cache.store import EmbeddingCache, vl_entry, vl_from_entry

if TYPE_CHECKING:  # third-party and sibling types only
    import torch

    from engine.cache.redis_tier import RedisTier
    from engine.types import VLResult

__all__ = ["TieredCache", "build_embedding_store"]

log = logging.getLogger(__name__)


class _CacheSettings(Protocol):
    cache_redis_url: str | None


def build_embedding_store(settings: _CacheSettings, local: EmbeddingCache) -> EmbeddingCache | TieredCache:
    """The embedding store a worker uses: ``local`` as it is, or under the shared Redis tier when
    ``settings.cache_redis_url`` (``ZVL_CACHE_REDIS_URL``) is set. Imports redis only then; connects lazily (a Redis
    that is down at start is the same as one that goes down later: local only until it is back). A URL that redis
    cannot parse (a port that is no number) is logged as an error and leaves the local cache alone: the tier is
    best effort, so its misconfiguration costs cache hits, never the bot."""
    if not settings.cache_redis_url:
        return local
    from engine.cache.redis_tier import RedisTier

    try:
        shared = RedisTier(settings.cache_redis_url)
    except ValueError as exc:
        log.error("cache_redis_url (ZVL_CACHE_REDIS_URL) is not a usable Redis URL (%s); local cache only", exc)
        return local
    return TieredCache(local, shared)


class TieredCache:
    """``local`` (L1) over ``shared`` (L2); see the module docstring."""

    def __init__(self, local: EmbeddingCache, shared: RedisTier) -> None:
        self.local = local
        self.shared = shared

    async def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(tensors, meta)`` from L1, else from L2 (then kept in L1), else ``None``."""
        found = await self.local.get(key)
        if found is not None:
            return found
        entry = await self.shared.fetch(key)
        if entry is None:
            return None
        await self.local.put(key, entry.tensors, entry.meta, kind=entry.kind)
        return entry.tensors, entry.meta

    async def get_vl(self, key: str) -> VLResult | None:
        """A cached extraction from L1, else from L2 (checked as L1 checks its entries, then kept in L1)."""
        vl = await self.local.get_vl(key)
        if vl is not None:
            return vl
        entry = await self.shared.fetch(key)
        if entry is None:
            return None
        try:
            if entry.kind != "vl":
                raise ValueError(f"an entry of kind {entry.kind!r}, not a VL extraction")
            vl = vl_from_entry(entry.tensors, entry.meta)
        except ValueError as exc:
            await self.shared.refuse(key, str(exc))
            return None
        await self.local.put(key, entry.tensors, entry.meta, kind="vl")
        return vl

    async def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *,
                  kind: str = "tensor") -> None:
        """Store in L1, then in L2 (skipped while L2 is unavailable, so a down Redis costs no serialisation)."""
        await self.local.put(key, tensors, meta, kind=kind)
        if self.shared.available:
            data, checksum = await asyncio.to_thread(files.serialize, tensors, files.entry_header(key, kind, meta))
            await self.shared.store(key, data, checksum)

    async def put_vl(self, key: str, vl: VLResult) -> None:
        """Store an extraction in both tiers (:func:`~engine.cache.store.vl_entry`'s form)."""
        await self.put(key, *vl_entry(vl), kind="vl")

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from both tiers; ``True`` when either held it."""
        local = await self.local.delete(key)
        return await self.shared.drop(key) or local

    async def recover(self, *, adopt_orphans: bool = False) -> dict[str, int]:
        """L1's crash recovery (L2 needs none: Redis writes are whole values)."""
        return await self.local.recover(adopt_orphans=adopt_orphans)

    async def stats(self) -> dict[str, Any]:
        """L1's statistics, plus L2's counters under ``"shared"``."""
        return {**await self.local.stats(), "shared": self.shared.stats()}

    async def clear(self) -> int:
        """Clear L1 only: L2 belongs to every worker, and its LRU and TTL age out what no one asks for."""
        return await self.local.clear()

    async def aclose(self) -> None:
        """Close L2's connections."""
        await self.shared.aclose()
