"""Location of PTS Advisor's files: $PTSA_DATA_DIR, else the platform's user data folder."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir() -> Path:
    override = os.environ.get("PTSA_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("pts-advisor"))
