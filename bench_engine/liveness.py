"""Tell a live bench run from one that was killed, and tidy up after the dead ones.

Several benches may write to one database in turns (each holds it only while it ingests), so a
`runs` row marked 'running' may belong to a live process. Each run therefore holds an exclusive
`flock` on `<run id>.lock` in the shard folder for its whole life. The kernel drops that lock
when the process dies, however it dies, so the next bench can mark the run as interrupted and
remove the files it left (its worker manifests and, when no run is alive, temporary shards).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from db import Store

try:
    import fcntl
except ImportError:  # NOTE: no flock on Windows: runs there are never recognised as dead.
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

INTERRUPTED = ("interrupted: the bench process ended before the run finished (killed, or the machine "
               "stopped). Its finished jobs are stored; run the same command again to resume.")


class RunLock:
    """An exclusive lock on `<folder>/<run id>.lock`, held while the run is alive."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path = folder / f"{run_id}.lock"
        self._stream: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Locked under a temporary name, then renamed: a lock file seen under its real name is
        # always held by its owner, so `is_alive` cannot catch one between its creation and lock.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._stream = temporary.open("w", encoding="utf-8")
        self._stream.write(f"{os.getpid()}\n")
        self._stream.flush()
        if fcntl is not None:
            fcntl.flock(self._stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(temporary, self.path)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self.path.unlink(missing_ok=True)
            self._stream.close()  # closing releases the lock
            self._stream = None


def is_alive(folder: Path, run_id: str) -> bool:
    """True while the process of `run_id` holds its lock; False when it died or never made one."""
    return _held(folder / f"{run_id}.lock")


def _held(path: Path) -> bool:
    """True while some process holds the flock on `path`."""
    if fcntl is None:
        return True
    try:
        stream = path.open("r+", encoding="utf-8")
    except FileNotFoundError:
        return False
    with stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
        return False


def close_dead_runs(store: Store, folder: Path) -> list[str]:
    """Mark every 'running' run whose process is gone as failed (interrupted); return their ids.

    Also removes what those runs left in the shard folder: their lock files and worker
    manifests, and the temporary shard files of killed writers when no run is alive. Shards
    themselves stay: the caller ingests them.
    """
    running = [row["run_id"] for row in store.query("SELECT run_id FROM runs WHERE status = 'running'")]
    dead = [run_id for run_id in running if not is_alive(folder, run_id)]
    for run_id in dead:
        store.finish_run(run_id, "failed", INTERRUPTED)
        (folder / f"{run_id}.lock").unlink(missing_ok=True)
        for manifest in folder.glob(f"{run_id}-*.manifest"):
            manifest.unlink(missing_ok=True)
        log.info("run %s had stopped without finishing; marked as interrupted", run_id)
    if folder.is_dir():
        for lock in folder.glob("*.lock"):  # runs killed before they recorded themselves
            if lock.stem not in running and not is_alive(folder, lock.stem):
                lock.unlink(missing_ok=True)
        if len(dead) == len(running):
            for temporary in folder.glob(".*.tmp"):
                if ".lock." not in temporary.name or not _held(temporary):  # a starting run's lock is held
                    temporary.unlink(missing_ok=True)
    return dead
