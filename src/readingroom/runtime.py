"""The assembled core of one process: settings, database, blob store.

Edges (HTTP, DIMSE, CLI) receive a Runtime and call core functions with it;
nothing else holds global state, so tests can run several side by side.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from readingroom.archive.blobs import BlobStore, open_blob_store
from readingroom.config import Settings
from readingroom.db import Database


@dataclass(eq=False)  # identity: hashable, so per-runtime registries (the live hub) can key on it
class Runtime:
    """Everything a core function needs to touch storage."""

    settings: Settings
    db: Database
    blobs: BlobStore
    _cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, migrate: bool = True) -> Runtime:
        """Create the data dir, connect, and (by default) apply migrations."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        if migrate:
            db.upgrade()
        blobs = open_blob_store(settings.effective_storage_url)
        return cls(settings=settings, db=db, blobs=blobs)

    def cached(self, key: str, ttl: float, compute: Any) -> Any:
        """A small TTL cache for lookups that change rarely (sites, peers)."""
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit and hit[0] > now:
                return hit[1]
        value = compute()
        with self._cache_lock:
            self._cache[key] = (now + ttl, value)
        return value

    def invalidate(self, prefix: str = "") -> None:
        """Drop cached lookups (after an admin change)."""
        with self._cache_lock:
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]

    def close(self) -> None:
        self.db.dispose()
