"""Opening the database for a read while a bench may be writing to it.

A bench holds DuckDB's write lock only for the short transaction that ingests a result shard,
so a read that meets the lock waits a moment and tries again before it reports anything.
"""

from __future__ import annotations

from pathlib import Path

from db import Store

LOCK_WAIT_SECONDS = 3.0  # longer than an ingest transaction; short enough to report a stuck writer


def open_for_reading(path: Path, wait_seconds: float = LOCK_WAIT_SECONDS) -> Store:
    """Open `path` read-only, retrying while a writer holds the lock; raises DatabaseLockedError after that."""
    return Store.open(path, read_only=True, wait_seconds=wait_seconds)
