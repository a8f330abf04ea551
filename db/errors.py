"""Errors raised by the store. Each message names the database path and what to do next."""


class DatabaseError(Exception):
    """Base class for every store error; the CLI turns it into a message and exit code 2."""


class DatabaseNotFoundError(DatabaseError):
    """The database file does not exist and the caller asked for read-only access."""


class DatabaseLockedError(DatabaseError):
    """Another process holds the write lock on the database file."""


class SchemaTooNewError(DatabaseError):
    """The file was written by a newer PTS Advisor whose schema this version cannot read."""


class InvalidRowsError(DatabaseError):
    """Rows passed to an insert have unknown columns, unequal lengths or invalid values."""
