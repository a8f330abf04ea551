"""Errors raised by the store. Each message names the database path and what to do next.

`TranslatableError` is the base of every error a user sees, in all three layers: its message is
an English template with named fields, so the CLI and the TUI can show it in the user's language
without this layer knowing about languages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TranslatableError(Exception):
    """An error whose message is an English template with named fields.

    `str(error)` is the message in English. The first argument of the constructor is also the
    catalog key: `make catalog-template` extracts the first argument of every error class, and
    `localized(translate)` fills the translated template with the same fields.
    """

    def __init__(self, template: str, /, **fields: Any) -> None:
        self.template = template
        self.fields = fields
        super().__init__(template.format(**fields) if fields else template)

    def localized(self, translate: Callable[[str], str]) -> str:
        """Return the message through `translate` (a gettext function), in English if that fails."""
        text = translate(self.template)
        if not self.fields:
            return text
        try:
            return text.format(**self.fields)
        except (KeyError, IndexError, ValueError):  # a broken translation: fall back to English
            return str(self)


class DatabaseError(TranslatableError):
    """Base class for every store error; the CLI turns it into a message and exit code 2."""


class DatabaseNotFoundError(DatabaseError):
    """The database file does not exist and the caller asked for read-only access."""


class DatabaseLockedError(DatabaseError):
    """Another process holds the write lock on the database file."""


class SchemaTooNewError(DatabaseError):
    """The file was written by a newer PTS Advisor whose schema this version cannot read."""


class InvalidRowsError(DatabaseError):
    """Rows passed to an insert have unknown columns, unequal lengths or invalid values."""
