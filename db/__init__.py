"""DuckDB store for PTS Advisor: results, runs, models and environments, with provenance.

This package imports nothing else from PTS Advisor, so any layer (and tools without torch) can
read and write the store.
"""

from db.errors import (
    DatabaseError,
    DatabaseLockedError,
    DatabaseNotFoundError,
    InvalidRowsError,
    SchemaTooNewError,
    TranslatableError,
)
from db.store import PROVENANCES, SCHEMA_VERSION, Store, default_db_path

__all__ = [
    "PROVENANCES",
    "SCHEMA_VERSION",
    "DatabaseError",
    "DatabaseLockedError",
    "DatabaseNotFoundError",
    "InvalidRowsError",
    "SchemaTooNewError",
    "Store",
    "TranslatableError",
    "default_db_path",
]
