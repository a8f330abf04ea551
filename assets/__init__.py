"""Data files PTS Advisor needs at run time, found through importlib.resources.

They ship inside the wheel, so a non-editable install finds them too.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def read_json(name: str) -> Any:
    """Return the parsed contents of the JSON asset `name` (for example 'quickstart.json')."""
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))
