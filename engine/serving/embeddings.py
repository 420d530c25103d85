"""The encode stage's view of the embedding cache: VL extractions, prompt embeddings and reference statistics.

A cache failure is never a job failure: every read that fails, or finds an entry that is not what its kind should
be, is a miss (logged), and every failed write is logged and forgotten. Counters say how often each kind was served
by the cache and how often it had to be computed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from engine.cache.records import is_cache_key
from engine.conditioning.text import ReferenceStats
from engine.serving.protocols import EmbeddingStore

if TYPE_CHECKING:  # pragma: no cover - typing only
    from engine.types import VLResult

log = logging.getLogger(__name__)


class EncodeCache:
    """Typed, failure-proof access to an :class:`EmbeddingStore` (``store=None``: every lookup misses)."""

    def __init__(self, store: EmbeddingStore | None) -> None:
        self.store = store

    @property
    def enabled(self) -> bool:
        """Whether there is a cache at all."""
        return self.store is not None

    async def get_vl(self, key: str) -> VLResult | None:
        """The cached extraction, or ``None``."""
        if self.store is None:
            return None
        try:
            return await self.store.get_vl(key)
        except Exception:
            log.warning("embedding cache read failed for %s; extracting instead", key[:12], exc_info=True)
            return None

    async def put_vl(self, key: str, vl: VLResult) -> None:
        """Store an extraction."""
        if self.store is None:
            return
        try:
            await self.store.put_vl(key, vl)
        except Exception:
            log.warning("embedding cache write failed for %s", key[:12], exc_info=True)

    async def get_text(self, key: str) -> torch.Tensor | None:
        """The cached prompt embedding ``[L, D]``, or ``None`` (an entry of another shape is deleted)."""
        found = await self._get(key, "text")
        if found is None:
            return None
        tensors, meta = found
        emb = tensors.get("embedding")
        if emb is not None and emb.ndim == 2 and list(emb.shape) == list(meta.get("shape", ())):
            return emb
        log.warning("embedding cache entry %s is not a text embedding; encoding instead", key[:12])
        try:
            await self.store.delete(key)  # type: ignore[union-attr]
        except Exception:  # pragma: no cover - the cache logs its own failures
            pass
        return None

    async def put_text(self, key: str, emb: Any) -> None:
        """Store a prompt embedding."""
        if self.store is None or not isinstance(emb, torch.Tensor):
            return
        await self._put(key, {"embedding": emb}, {"shape": list(emb.shape)}, "text")

    async def get_refstats(self, key: str) -> ReferenceStats | None:
        """The cached reference statistics stored under ``key``, or ``None`` (also for a key the cache refuses)."""
        if not is_cache_key(key):
            return None
        found = await self._get(key, "refstats")
        if found is None:
            return None
        tensors, meta = found
        try:
            stats = ReferenceStats.from_parts(tensors, meta)
            if stats.key != key or stats.mean.ndim != 1 or stats.mean.shape != stats.std.shape:
                raise ValueError("not the statistics of this key")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("embedding cache entry %s is not usable reference statistics (%s); computing them",
                        key[:12], exc)
            return None
        return stats

    async def put_refstats(self, key: str, stats: ReferenceStats) -> None:
        """Store reference statistics (nothing for a key the cache refuses)."""
        if is_cache_key(key):
            await self._put(key, stats.tensors(), stats.metadata(), "refstats")

    async def _get(self, key: str, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if self.store is None:
            return None
        try:
            return await self.store.get(key)
        except Exception:
            log.warning("embedding cache read failed for %s %s; computing instead", kind, key[:12], exc_info=True)
            return None

    async def _put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any], kind: str) -> None:
        try:
            await self.store.put(key, tensors, meta, kind=kind)  # type: ignore[union-attr]
        except Exception:
            log.warning("embedding cache write failed for %s %s", kind, key[:12], exc_info=True)
