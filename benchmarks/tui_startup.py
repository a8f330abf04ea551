"""Time the TUI's start-up: importing it, the first screen taking keys, and the ranking shown.

Usage: python benchmarks/tui_startup.py --db PATH [--repeats N]
The import is timed in fresh interpreters; the screens with Textual's headless pilot. The
ranking runs in a worker thread, so the first screen takes keys before the table is filled;
"ranked" is when the table shows the ranking.
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


async def time_first_screen(db: Path) -> tuple[float, float]:
    """Return the seconds until the first screen is painted and takes keys, and until it shows the ranking."""
    from advisor.tui.app import PTSAdvisorApp

    started = time.perf_counter()
    app = PTSAdvisorApp(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        interactive = time.perf_counter() - started
        await app.workers.wait_for_complete()
        await pilot.pause()
        return interactive, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    imports = time_import(args.repeats)
    print(f"import advisor.tui.app: median {statistics.median(imports) * 1000:.0f} ms over {args.repeats} runs")
    times = [asyncio.run(time_first_screen(args.db)) for _ in range(args.repeats)]
    interactive = statistics.median(t[0] for t in times) * 1000
    ranked = statistics.median(t[1] for t in times) * 1000
    print(f"first screen ({args.db.name}), median of {args.repeats}: takes keys after {interactive:.0f} ms, "
          f"shows the ranking after {ranked:.0f} ms")


if __name__ == "__main__":
    main()
