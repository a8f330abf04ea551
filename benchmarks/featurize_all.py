"""Time the featurisation of every architecture timm lists, without weights.

Usage: python benchmarks/featurize_all.py [--limit N]

Builds each architecture on the meta device and runs one meta forward pass
(`bench_engine.features.featurize`), then prints how many succeeded, the wall time, the
reasons for failures and the architectures that took over 3 s. `ptsa features --all` does the
same and stores the rows.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402

from bench_engine.errors import InvalidConfigError  # noqa: E402
from bench_engine.features import featurize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="featurise only the first N architectures")
    args = parser.parse_args()
    names = timm.list_models()[: args.limit]
    failures: collections.Counter[str] = collections.Counter()
    slow = []
    started = time.perf_counter()
    for name in names:
        begin = time.perf_counter()
        try:
            featurize(name)
        except InvalidConfigError as exc:
            failures[str(exc).split(": ", 1)[-1][:120]] += 1
        if (seconds := time.perf_counter() - begin) > 3:
            slow.append(f"{name} {seconds:.1f} s")
    total = time.perf_counter() - started
    print(f"{len(names) - sum(failures.values())} of {len(names)} architectures featurised in {total:.0f} s "
          f"(timm {timm.__version__})")
    for reason, count in failures.most_common():
        print(f"  {count} failed: {reason}")
    print("over 3 s:", ", ".join(slow) or "none")


if __name__ == "__main__":
    main()
