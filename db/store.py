"""The DuckDB store: one file, ordered migrations, columnar inserts."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import platformdirs

from db.errors import (
    DatabaseError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    InvalidRowsError,
    SchemaTooNewError,
)
from db.migrations import MIGRATIONS

log = logging.getLogger(__name__)

SCHEMA_VERSION = len(MIGRATIONS)
# A bench holds the write lock only while it ingests a shard, so a reader waits this long for it.
READ_WAIT_SECONDS = 3.0
JOB_STATUSES = ("finished", "failed")
PROVENANCES = ("measured", "published", "predicted")
APP_NAME = "pts-advisor"


def default_db_path() -> Path:
    """Return the database path: $PTSA_DB if set, else results.duckdb in the data folder.

    The data folder is $PTSA_DATA_DIR if set, else the platform's user data folder.
    """
    override = os.environ.get("PTSA_DB")
    if override:
        return Path(override)
    folder = os.environ.get("PTSA_DATA_DIR") or platformdirs.user_data_dir(APP_NAME)
    return Path(folder) / "results.duckdb"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Store:
    """A connection to one PTS Advisor database file.

    Open it with `Store.open(path)`; it creates the file and applies pending migrations when
    opened for writing. DuckDB allows one writing process per file, so keep write sessions short.
    """

    def __init__(self, path: Path, connection: duckdb.DuckDBPyConnection, read_only: bool):
        self.path = path
        self.read_only = read_only
        self._con = connection
        self._in_transaction = False

    # -- opening and closing --------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, read_only: bool = False,
             wait_seconds: float | None = None) -> Store:
        """Open the database; a read-only open waits up to READ_WAIT_SECONDS for a writer's short lock."""
        wait = wait_seconds
        if wait is None:
            wait = READ_WAIT_SECONDS if read_only else 0.0
        deadline = time.monotonic() + wait
        while True:
            try:
                return cls._open_once(path, read_only)
            except DatabaseLockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    @classmethod
    def _open_once(cls, path: str | os.PathLike[str] | None, read_only: bool) -> Store:
        db_path = Path(path) if path is not None else default_db_path()
        if read_only and not db_path.exists():
            raise DatabaseNotFoundError(
                "database not found: {path}. Run `ptsa demo` or `ptsa bench` to create it, "
                "or pass --db with the path of an existing database.",
                path=db_path,
            )
        if db_path.exists() and db_path.is_dir():
            raise DatabaseError("database path is a directory: {path}. Pass --db with a file path.", path=db_path)
        if not read_only:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        created = not db_path.exists()
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" in message.lower():
                raise DatabaseLockedError(
                    "database is locked by another process: {path}. Wait for that process "
                    "(a running bench or TUI) to finish, or pass --db with another file. ({reason})",
                    path=db_path,
                    reason=message,
                ) from exc
            raise DatabaseError(
                "cannot open database {path}: {reason}. The file may be damaged or not a "
                "DuckDB database; move it away or pass --db with another path.",
                path=db_path,
                reason=message,
            ) from exc
        except duckdb.Error as exc:
            raise DatabaseError(
                "cannot open database {path}: {reason}. Move the file away or pass --db with "
                "another path.",
                path=db_path,
                reason=str(exc),
            ) from exc

        store = cls(db_path, con, read_only)
        try:
            store._check_and_migrate()
        except Exception:
            con.close()
            if created and db_path.exists():
                # Leave nothing half-written behind when the very first migration failed.
                db_path.unlink()
            raise
        return store

    def close(self) -> None:
        self._con.close()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, for this package's bulk operations (`db.transfer`)."""
        return self._con

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        exists = self._con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
        ).fetchone()[0]
        if not exists:
            return 0
        row = self._con.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _check_and_migrate(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise SchemaTooNewError(
                "database {path} has schema version {current}, but this PTS Advisor "
                "reads up to version {supported}. Upgrade pts-advisor, or pass --db with "
                "another file.",
                path=self.path,
                current=current,
                supported=SCHEMA_VERSION,
            )
        if current == SCHEMA_VERSION:
            return
        if self.read_only:
            raise DatabaseError(
                "database {path} has schema version {current} and needs migration to "
                "{supported}; open it once for writing (for example `ptsa bench`) first.",
                path=self.path,
                current=current,
                supported=SCHEMA_VERSION,
            )
        if current == 0:
            others = [row[0] for row in self._con.execute(
                "SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall()]
            if others:
                raise DatabaseError(
                    "{path} is a DuckDB database but not a PTS Advisor one: it has the tables "
                    "{tables} and no schema version. Pass --db with another file.",
                    path=self.path,
                    tables=", ".join(others[:5]) + (" …" if len(others) > 5 else ""),
                )
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
            )
        if current > 0:
            # One line on stderr: even a reading command such as `ptsa recommend` changes the file here.
            log.warning("migrating %s from schema version %d to %d", self.path, current, SCHEMA_VERSION)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            log.info("migrating %s to schema version %d", self.path, version)
            with self.transaction():
                for statement in MIGRATIONS[version - 1]:
                    self._con.execute(statement)
                self._con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _now()])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one transaction: all of its writes land, or none do.

        Nested blocks join the outermost transaction, so several inserts can land together.
        """
        if self._in_transaction:
            yield
            return
        self._con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        else:
            self._con.execute("COMMIT")
        finally:
            self._in_transaction = False

    def columns(self, table: str) -> list[str]:
        rows = self._con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return [r[0] for r in rows]

    # -- writing ---------------------------------------------------------------------------

    def upsert_environment(self, env_key: str, profile: Mapping[str, Any]) -> None:
        self._require_writable()
        self._con.execute(
            """
            INSERT INTO environments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (env_key) DO NOTHING
            """,
            [
                env_key,
                profile.get("cpu_model"),
                profile.get("cpu_count"),
                profile.get("device", "cpu"),
                profile.get("os"),
                profile.get("python_version"),
                profile.get("torch_version"),
                profile.get("timm_version"),
                profile.get("num_threads"),
                json.dumps(dict(profile), sort_keys=True),
                _now(),
            ],
        )

    def upsert_model(self, row: Mapping[str, Any]) -> None:
        self.upsert_models([row])

    def upsert_models(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert model rows, updating the given columns of models already stored."""
        self._require_writable()
        if not rows:
            return
        columns = self.columns("models")
        now = _now()
        names = list(dict.fromkeys(name for row in rows for name in row)) + ["updated_at"]
        unknown = set(names) - set(columns)
        if unknown:
            raise InvalidRowsError("unknown models columns: {columns}", columns=sorted(unknown))
        batch = {n: np.array([row.get(n) for row in rows], dtype=object) for n in names[:-1]}
        batch["updated_at"] = np.array([now] * len(rows), dtype=object)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "model_key")
        self._con.register("_models_batch", batch)
        try:
            self._con.execute(
                f"INSERT INTO models ({', '.join(names)}) SELECT {', '.join(names)} FROM _models_batch "
                f"ON CONFLICT (model_key) DO UPDATE SET {updates}"
            )
        finally:
            self._con.unregister("_models_batch")

    def start_run(
        self,
        run_id: str,
        command: str,
        config: Mapping[str, Any],
        env_key: str | None,
        product_version: str,
    ) -> None:
        self._require_writable()
        self._con.execute(
            "INSERT INTO runs (run_id, command, status, env_key, product_version, config_json, "
            "started_at) VALUES (?, ?, 'running', ?, ?, ?, ?)",
            [run_id, command, env_key, product_version, json.dumps(dict(config), sort_keys=True), _now()],
        )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        self._require_writable()
        self._con.execute(
            "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?",
            [status, error, _now(), run_id],
        )

    def insert_results(self, columns: Mapping[str, Sequence[Any]]) -> int:
        """Insert result rows given column-wise, in one statement and one transaction.

        `columns` maps column names to equal-length sequences. `created_at` is filled in when
        absent. Returns the number of rows inserted; on any error nothing is inserted.
        """
        bad = sorted({p for p in columns.get("provenance", []) if p not in PROVENANCES})
        if bad:
            raise InvalidRowsError(
                "invalid provenance {values}; use one of {choices}", values=bad, choices=list(PROVENANCES)
            )
        return self._insert_columns("results", columns)

    def insert_latency(self, columns: Mapping[str, Sequence[Any]]) -> int:
        """Insert latency rows given column-wise, like `insert_results`."""
        return self._insert_columns("latency", columns)

    def upsert_job(self, row: Mapping[str, Any]) -> None:
        """Record a job's latest outcome (a `jobs` row), replacing an earlier attempt's."""
        self._require_writable()
        if row.get("status") not in JOB_STATUSES:
            raise InvalidRowsError("invalid job status {value!r}; use one of {choices}", value=row.get("status"),
                                   choices=list(JOB_STATUSES))
        names = list(row)
        self._con.execute(
            f"INSERT OR REPLACE INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )

    def delete_job_rows(self, job_key: str) -> int:
        """Delete the result and latency rows of one job (before a rerun's rows replace them); return the result count."""
        self._require_writable()
        with self.transaction():
            count = self._con.execute("SELECT count(*) FROM results WHERE job_key = ?", [job_key]).fetchone()[0]
            self._con.execute("DELETE FROM latency WHERE job_key = ?", [job_key])
            self._con.execute("DELETE FROM results WHERE job_key = ?", [job_key])
        return int(count)

    def insert_fit(self, row: Mapping[str, Any]) -> None:
        """Record one fitted regressor (a `regressor_fits` row)."""
        self._insert_columns("regressor_fits", {name: [value] for name, value in row.items()})

    def upsert_architectures(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert architecture feature rows, replacing rows with the same key; returns the count."""
        self._require_writable()
        if not rows:
            return 0
        names = list(rows[0])
        unknown = sorted(set(names) - set(self.columns("architectures")))
        if unknown:
            raise InvalidRowsError("unknown architectures columns: {columns}", columns=unknown)
        placeholders = ", ".join("?" for _ in names)
        with self.transaction():
            self._con.executemany(
                f"INSERT OR REPLACE INTO architectures ({', '.join(names)}) VALUES ({placeholders})",
                [[row[name] for name in names] for row in rows],
            )
        return len(rows)

    def delete_latency(self, provenance: str, run_id_prefix: str) -> None:
        """Delete the latency rows of one provenance whose run id starts with the prefix."""
        self._require_writable()
        self._con.execute(
            "DELETE FROM latency WHERE provenance = ? AND starts_with(run_id, ?)", [provenance, run_id_prefix]
        )

    def delete_results(self, provenance: str, run_id_prefix: str) -> None:
        """Delete the results of one provenance whose run id starts with the prefix."""
        self._require_writable()
        self._con.execute(
            "DELETE FROM results WHERE provenance = ? AND starts_with(run_id, ?)", [provenance, run_id_prefix]
        )

    def _insert_columns(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        self._require_writable()
        known = self.columns(table)
        unknown = sorted(set(columns) - set(known))
        if unknown:
            raise InvalidRowsError(
                "unknown {table} columns: {columns}; known columns: {known}", table=table, columns=unknown, known=known
            )
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidRowsError("{table} columns have unequal lengths: {lengths}", table=table, lengths=lengths)
        n_rows = next(iter(lengths.values()), 0)
        if n_rows == 0:
            return 0

        batch = {name: np.array(list(values), dtype=object) for name, values in columns.items()}
        if "created_at" not in batch:
            batch["created_at"] = np.array([_now()] * n_rows, dtype=object)
        names = list(batch)
        view = f"_{table}_batch"
        self._con.register(view, batch)
        try:
            with self.transaction():
                self._con.execute(
                    f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(names)} FROM {view}"
                )
        except duckdb.ConstraintException as exc:
            raise InvalidRowsError("{table} rows rejected by the schema: {reason}", table=table, reason=str(exc)) from exc
        finally:
            self._con.unregister(view)
        return n_rows

    def _require_writable(self) -> None:
        if self.read_only:
            raise DatabaseError("database {path} was opened read-only; open it for writing.", path=self.path)

    # -- reading ---------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read query and return the rows as dictionaries; named parameters ($name) take a mapping."""
        cursor = self._con.execute(sql, dict(params) if isinstance(params, Mapping) else list(params or []))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def query_columns(self, sql: str, params: Mapping[str, Any] | None = None) -> dict[str, list[Any]]:
        """Run a read query and return its columns as lists, which is much faster than rows for large results."""
        arrays = self._con.execute(sql, dict(params or {})).fetchnumpy()
        return {name: values.tolist() for name, values in arrays.items()}

    def count(self, table: str) -> int:
        if table not in {"results", "runs", "models", "environments", "latency", "architectures", "regressor_fits", "jobs"}:
            raise ValueError(f"unknown table {table!r}")
        return int(self._con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
