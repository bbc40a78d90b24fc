"""A bounded in-memory cache of embeddings, keyed by (model, modality, content digest).

Shared by every route: a text, or an image's bytes once fetched or decoded from base64, that
was embedded before by the same model is not embedded again (zero-shot label prompts, /rank
candidates, a catalogue re-indexed). Least recently used entries go first once the byte budget
is spent. Thread-safe: lookups come from the event loop, digests from the preprocessing pool.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

import torch

from clipserve.metrics import Metrics

# What an entry costs beyond its vector's bytes: the key tuple, its digest, the dict slot and
# the tensor object (measured: 100k 512-d rows took 2,668 B each in RSS, 2,048 of them data).
ENTRY_OVERHEAD = 640


class Cached(NamedTuple):
    """What the cache holds for an item: its embedding, and the tokens its text used (0 for an
    image), which /v1/embeddings reports as usage."""

    vector: torch.Tensor
    tokens: int = 0


class CacheKey(NamedTuple):
    """Where a vector came from: the model's spec, the modality, and a digest of the content."""

    model: str
    modality: str
    digest: bytes


def digest(content: bytes) -> bytes:
    """128-bit BLAKE2b of the content: collisions are not a practical concern, and it hashes
    at ~1 GB/s, so a large image costs far less to key than to decode."""
    return hashlib.blake2b(content, digest_size=16).digest()


class EmbeddingCache:
    """LRU over embedding rows, bounded in bytes; a budget of 0 stores nothing."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max(0, max_bytes)
        self._entries: OrderedDict[CacheKey, Cached] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._metrics = metrics
        metrics.cache_capacity.set(self.max_bytes)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes(self) -> int:
        """Bytes the entries take, overhead included."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Cached | None:
        """The cached entry, or None (counted as a hit or a miss)."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        counter = self._metrics.cache_misses if entry is None else self._metrics.cache_hits
        counter.labels(key.model, key.modality).inc()
        return entry

    def put(self, key: CacheKey, vector: torch.Tensor, tokens: int = 0) -> None:
        """Store a copy of the row (a view would keep its whole batch's output alive)."""
        size = _size(vector)
        if size > self.max_bytes:
            return
        entry = Cached(vector.detach().clone(), tokens)
        evicted = 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _size(old.vector)
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= _size(dropped.vector)
                evicted += 1
            used = self._bytes
        if evicted:
            self._metrics.cache_evictions.inc(evicted)
        self._metrics.cache_bytes.set(used)


def _size(vector: torch.Tensor) -> int:
    return vector.numel() * vector.element_size() + ENTRY_OVERHEAD
