"""Time the TUI's start-up: importing it, and reaching the first painted screen.

Usage: python benchmarks/tui_startup.py --db PATH [--repeats N]
The import is timed in fresh interpreters; the first screen with Textual's headless pilot.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path


def time_import(repeats: int) -> list[float]:
    code = "import time; t = time.perf_counter(); import advisor.tui.app; print(time.perf_counter() - t)"
    return [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(repeats)]


async def time_first_screen(db: Path) -> float:
    from advisor.tui.app import PTSAdvisorApp

    started = time.perf_counter()
    app = PTSAdvisorApp(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    imports = time_import(args.repeats)
    print(f"import advisor.tui.app: median {statistics.median(imports) * 1000:.0f} ms over {args.repeats} runs")
    first = [asyncio.run(time_first_screen(args.db)) for _ in range(args.repeats)]
    print(f"first screen ({args.db.name}): median {statistics.median(first) * 1000:.0f} ms over {args.repeats} runs")


if __name__ == "__main__":
    main()
