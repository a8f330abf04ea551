"""Move results between machines as Parquet: `ptsa db export` and `ptsa db import`.

An export is a folder with one Parquet file per table and a `manifest.json` naming the schema
version, the product version and the row count of each file. It carries the results with their
provenance, the runs and jobs that made them, the models, the architectures, the timings and
the hardware profiles (`environments`) they were measured on. Regressor fits are left out: their
model files live in each machine's data folder.

Importing is idempotent: a row whose key is already in the database is left as it is, so the
same export imported twice adds nothing the second time. A measured result of a job the
database already contains is left out, and so are published rows, which every installation
imports itself. A job that failed here but finished
in the export becomes finished. The whole import is one transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb

from db.errors import DatabaseError
from db.store import SCHEMA_VERSION, Store

FORMAT = "ptsa-parquet-export"
# Each exported table and the columns that identify a row, in an order that keeps references
# valid (environments and models before the results that name them).
TABLES: dict[str, tuple[str, ...]] = {
    "environments": ("env_key",),
    "models": ("model_key",),
    "architectures": ("architecture", "num_classes", "in_chans", "input_size", "timm_version", "feature_version"),
    "runs": ("run_id",),
    "jobs": ("job_key",),
    "results": ("result_id",),
    "latency": ("latency_id",),
}


class TransferError(DatabaseError):
    """An export folder is missing, incomplete, from a newer version, or cannot be written."""


def export_parquet(store: Store, out: Path, product_version: str) -> dict[str, int]:
    """Write every exported table to `out` (a new folder); return the row count of each.

    The files are written into a temporary folder beside `out`, which is renamed at the end, so
    an interrupted export leaves no half-written folder under the name asked for.
    """
    out = Path(out)
    if out.exists():
        raise TransferError("export folder {path} already exists; pass a new folder with --out.", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = {}
        for table in TABLES:
            target = staging / f"{table}.parquet"
            store.connection.execute(f"COPY (SELECT * FROM {table}) TO '{_sql_path(target)}' (FORMAT parquet)")
            counts[table] = store.count(table)
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "product_version": product_version,
                    "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "source_database": store.path.name, "rows": counts}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; an export is shared like any folder
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def read_manifest(folder: Path) -> dict[str, Any]:
    """Return an export's manifest; raises TransferError saying what is wrong with the folder."""
    path = Path(folder) / "manifest.json"
    if Path(folder).exists() and not Path(folder).is_dir():
        raise TransferError("{path} is a file; pass the folder `ptsa db export` wrote, which holds manifest.json "
                            "and one .parquet file per table.", path=folder)
    if not Path(folder).is_dir():
        raise TransferError("export folder {path} not found; pass the folder `ptsa db export` wrote.", path=folder)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TransferError("cannot read {path}: {reason}; the folder is not a complete PTS Advisor export.",
                            path=path, reason=str(exc)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TransferError("{path} is not a PTS Advisor export manifest.", path=path)
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TransferError("{path} has no valid schema version (found {version!r}); export the database again.",
                            path=path, version=version)
    if version > SCHEMA_VERSION:
        raise TransferError(
            "the export in {path} has schema version {version}, newer than this PTS Advisor reads ({ours}); "
            "upgrade PTS Advisor here, then import it.", path=folder, version=version, ours=SCHEMA_VERSION)
    for table in TABLES:
        if not (Path(folder) / f"{table}.parquet").is_file():
            raise TransferError("the export in {path} lacks {table}.parquet; export it again.", path=folder,
                                table=table)
    rows = manifest.get("rows")
    if not isinstance(rows, dict) or any(not isinstance(rows.get(table), int) for table in TABLES):
        raise TransferError("{path} does not give the row count of every table; export the database again.",
                            path=path)
    return manifest


def check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Read every Parquet file of an export once; raise TransferError for a broken or incomplete one."""
    with duckdb.connect(":memory:") as con:
        for table in TABLES:
            _check_file(con, Path(folder) / f"{table}.parquet", manifest["rows"][table])


def _check_file(con: duckdb.DuckDBPyConnection, path: Path, expected: int) -> None:
    try:
        count = con.execute(f"SELECT count(*) FROM read_parquet('{_sql_path(path)}')").fetchone()[0]
    except duckdb.Error as exc:
        raise TransferError("cannot read {file}: {reason}; the file is damaged or only partly copied. Export "
                            "the database again, or copy the folder again.", file=path,
                            reason=str(exc).splitlines()[0]) from exc
    if count != expected:
        raise TransferError("{file} holds {found} rows but the manifest says {expected}; the folder was altered "
                            "or only partly copied. Copy or export it again.", file=path, found=count,
                            expected=expected)


def import_parquet(store: Store, folder: Path) -> dict[str, int]:
    """Add the rows of an export that the database does not hold yet; return the rows added per table."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_files(folder, manifest)
    added: dict[str, int] = {}
    con = store.connection
    with store.transaction():
        for table, key in TABLES.items():
            source = f"read_parquet('{_sql_path(folder / f'{table}.parquet')}')"
            ours = set(store.columns(table))
            theirs = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
            unknown = sorted(set(theirs) - ours)
            if unknown:
                raise TransferError(
                    "{table}.parquet in {path} has columns this database lacks ({columns}); upgrade PTS Advisor "
                    "or open the database once with it to migrate, then import again.",
                    table=table, path=folder, columns=", ".join(unknown))
            match = " AND ".join(f"t.{c} IS NOT DISTINCT FROM s.{c}" for c in key)
            before = store.count(table)
            if table == "jobs":
                # A job that failed here but finished there is finished.
                con.execute(f"DELETE FROM jobs t WHERE t.status = 'failed' AND EXISTS "
                            f"(SELECT 1 FROM {source} s WHERE s.status = 'finished' AND {match})")
                before = store.count(table)
            extra = ""
            if table in ("results", "latency"):
                # Published rows ship with every PTS Advisor, each copy under its own ids: keep the
                # local copy. A measured row of a job this database already contains is the same job.
                extra = (f" AND s.provenance IS DISTINCT FROM 'published' AND (s.job_key IS NULL OR NOT EXISTS "
                         f"(SELECT 1 FROM {table} t WHERE t.job_key = s.job_key))") if "job_key" in theirs else \
                    " AND s.provenance IS DISTINCT FROM 'published'"
            con.execute(f"INSERT INTO {table} BY NAME SELECT s.* FROM {source} s "
                        f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match}){extra}")
            added[table] = store.count(table) - before
    added["_schema_version"] = manifest["schema_version"]
    return added


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
