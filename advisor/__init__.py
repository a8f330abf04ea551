"""Advisor: recommendations from stored evidence, the `ptsa` CLI, and the TUI in `advisor.tui`."""
