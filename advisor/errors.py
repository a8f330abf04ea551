"""Errors of the advisor core that the CLI reports with exit code 2.

Kept apart from `advisor.robustness`, which imports scikit-learn (about a second), so the CLI
and the TUI start without it.
"""


class RegressorError(ValueError):
    """The regressor cannot be fitted or loaded; the message names the fix."""


class ReportError(ValueError):
    """The report cannot be written where it was asked for."""
