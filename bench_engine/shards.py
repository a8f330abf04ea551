"""Result shards: how a bench worker hands one job's rows to the process that owns the database.

A worker never opens the DuckDB file. For each finished (or failed) job it writes one shard, a
JSON file, into the run's shard folder: first under a temporary name, flushed to disk, then
renamed to `<job key>.json`. A rename within one folder is atomic, so a reader sees either no
shard or a whole one, whatever moment the worker is killed at.

The ingester (`ingest_shards`) moves shards into the database, each in one transaction that
also records the job, then deletes the shard. A job already recorded as finished by the same run
is not inserted again, so a crash between the commit and the delete duplicates nothing. A shard
of a `--force` run (its job record says `replace`) replaces the job's stored rows in the same
transaction; if that rerun failed, the stored measurement is kept. A shard that
cannot be read, or whose checksum or contents are wrong, is moved to `quarantine/` beside a
note saying why, and is never ingested.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db import Store
from db.store import JOB_STATUSES

log = logging.getLogger(__name__)

FORMAT = "ptsa-result-shard"
VERSION = 1
QUARANTINE = "quarantine"


class ShardError(ValueError):
    """A shard file is unreadable, truncated, altered, or contains rows that do not fit the schema."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def write_shard(folder: Path, job_key: str, body: Mapping[str, Any]) -> Path:
    """Write one job's shard atomically into `folder`; return its path.

    `body` contains `job` (the job row: key, run, model, status, error, spec) and, for a finished
    job, `model` (the models row), `results` and `latency` (column-wise, as the store inserts them).
    """
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(_canonical(body)).hexdigest(),
               "body": body}
    final = folder / f"{job_key}.json"
    temporary = folder / f".{job_key}.{os.getpid()}.tmp"
    with temporary.open("wb") as stream:
        stream.write(_canonical(payload))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, final)
    _sync_folder(folder)
    return final


def write_shard_bytes(folder: Path, name: str, data: bytes) -> Path:
    """Write a shard another machine produced (a Ray node), atomically, under its own name.

    The name must be a plain `<job key>.json`; the contents are checked when ingested.
    """
    if Path(name).name != name or not name.endswith(".json") or name.startswith("."):
        raise ShardError(f"refusing shard name {name!r}: expected <job key>.json")
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.{os.getpid()}.tmp"
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    final = folder / name
    os.replace(temporary, final)
    _sync_folder(folder)
    return final


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a rename to disk (where the platform allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_shard(path: Path) -> dict[str, Any]:
    """Return a shard's body; raises ShardError saying what is wrong with it."""
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ShardError(f"{path.name} is not a PTS Advisor result shard")
    if payload.get("version") != VERSION:
        raise ShardError(f"{path.name} has shard version {payload.get('version')!r}; this version reads {VERSION}")
    body = payload.get("body")
    if not isinstance(body, dict) or hashlib.sha256(_canonical(body)).hexdigest() != payload.get("sha256"):
        raise ShardError(f"{path.name} fails its checksum: it was altered or only partly written")
    job = body.get("job")
    if not isinstance(job, dict) or job.get("status") not in JOB_STATUSES or not job.get("job_key"):
        raise ShardError(f"{path.name} has no valid job record")
    if path.stem != job["job_key"]:
        raise ShardError(f"{path.name} contains job {job['job_key']}, not the job its name says")
    if job["status"] == "finished":
        results = body.get("results")
        if not isinstance(results, dict) or not results.get("result_id"):
            raise ShardError(f"{path.name} is a finished job without result rows")
        lengths = {len(values) for values in results.values()}
        if len(lengths) != 1:
            raise ShardError(f"{path.name} has result columns of unequal length")
    return body


def pending_shards(folder: Path) -> list[Path]:
    """Return the complete shards in `folder`, oldest first, without the temporary files of a killed writer."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad shard out of the way, with a note beside it; return its new path."""
    target_folder = path.parent / QUARANTINE
    target_folder.mkdir(exist_ok=True)
    target = target_folder / path.name
    os.replace(path, target)
    target.with_suffix(".reason.txt").write_text(reason + "\n", encoding="utf-8")
    return target


@dataclass
class IngestReport:
    """The outcome of one pass of the ingester."""

    finished: list[str] = field(default_factory=list)  # job keys inserted
    replaced: list[str] = field(default_factory=list)  # job keys whose stored rows a forced rerun replaced
    failed: list[str] = field(default_factory=list)  # job keys recorded as failed
    failed_kept: list[tuple[str, str]] = field(default_factory=list)  # (label, error) of forced reruns that failed
    duplicates: list[str] = field(default_factory=list)  # shards of jobs already stored, deleted
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    results: int = 0  # result rows inserted


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def ingest_shards(store: Store, folder: Path) -> IngestReport:
    """Move every complete shard of `folder` into the database, one transaction per shard."""
    report = IngestReport()
    for path in pending_shards(folder):
        try:
            body = read_shard(path)
        except ShardError as exc:
            quarantine(path, str(exc))
            report.quarantined.append((path.name, str(exc)))
            log.info("quarantined shard %s: %s", path.name, exc)
            continue
        job = body["job"]
        key = job["job_key"]
        previous = store.query("SELECT run_id, status, attempts FROM jobs WHERE job_key = ?", [key])
        stored = bool(previous) and previous[0]["status"] == "finished"
        if stored and (not job.get("replace") or previous[0]["run_id"] == job["run_id"]):
            path.unlink()  # ingested before a crash, or a second copy, so the stored row is kept
            report.duplicates.append(key)
            continue
        if stored and job["status"] == "failed":  # a forced rerun failed: keep the measurement we have
            path.unlink()
            report.failed_kept.append((job.get("label") or key, job.get("error") or ""))
            continue
        attempts = (previous[0]["attempts"] if previous else 0) + 1
        row = {"job_key": key, "run_id": job["run_id"], "model_key": job["model_key"], "label": job.get("label"),
               "spec_json": json.dumps(job.get("spec", {}), sort_keys=True), "status": job["status"],
               "error": job.get("error"), "attempts": attempts, "result_count": 0, "updated_at": _now()}
        try:
            with store.transaction():
                if job["status"] == "finished":
                    if store.delete_job_rows(key):  # a forced rerun, or a retry after a partial import
                        report.replaced.append(key)
                    if body.get("model"):
                        store.upsert_model(body["model"])
                    report.results += store.insert_results(body["results"])
                    if body.get("latency"):
                        store.insert_latency(body["latency"])
                    row["result_count"] = len(body["results"]["result_id"])
                store.upsert_job(row)
        except Exception as exc:  # rows that do not fit the schema: keep the database as it was
            if _is_database_failure(exc):
                raise
            quarantine(path, f"rows rejected by the database: {exc}")
            report.quarantined.append((path.name, str(exc)))
            log.info("quarantined shard %s: rows rejected by the database: %s", path.name, exc)
            continue
        path.unlink()
        (report.finished if job["status"] == "finished" else report.failed).append(key)
    return report


def _is_database_failure(exc: Exception) -> bool:
    """True for errors of the database itself (I/O, lock), which must stop the ingester."""
    import duckdb

    return isinstance(exc, (duckdb.IOException, duckdb.InternalException, OSError))
