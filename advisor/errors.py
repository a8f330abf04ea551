"""Errors of the advisor core that the CLI reports with exit code 2.

Kept apart from `advisor.robustness`, which imports scikit-learn (about a second), so the CLI
and the TUI start without it.
"""

from db.errors import TranslatableError


class RegressorError(TranslatableError, ValueError):
    """The regressor cannot be fitted or loaded; the message names the fix."""


class ReportError(TranslatableError, ValueError):
    """The report cannot be written where it was asked for."""
