"""Time the digits detector's training and a detection grid, and print box mAP per configuration.

Usage: python benchmarks/detection_grid.py [--detector NAME] [--calibration-size N] [--sparsity 0.3 ...]
                                          [--recipe uniform+magnitude --recipe sensitivity+magnitude ...]

Uses a fresh data folder, so it first builds the digits detection set and trains
the named detector (timed), then benches magnitude and Wanda (or each --recipe) at each sparsity in this
process with `bench_model` (each configuration timed: prune, evaluate 300 images, latency). Run
it on an idle machine; set OMP_WAIT_POLICY=passive when another process shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="digits/fcos_mobilenet_v2",
                        help="digits/fcos_mobilenet_v2 or digits/fcos_efficientnet_lite0")
    parser.add_argument("--calibration-size", type=int, default=32)
    parser.add_argument("--sparsity", type=float, action="append", default=None)
    parser.add_argument("--recipe", action="append", default=[],
                        help="a recipe as for `ptsa bench --recipe`; repeatable; replaces magnitude and Wanda")
    args = parser.parse_args()
    sparsities = args.sparsity or [0.3, 0.5, 0.7]
    os.environ["PTSA_DATA_DIR"] = tempfile.mkdtemp(prefix="ptsa-detection-")

    from bench_engine.detection.detectors import digits_detector
    from bench_engine.detection.splits import load_detection_data
    from bench_engine.runner import BenchPlan, bench_model

    started = time.perf_counter()
    bundle = digits_detector(name=args.detector)
    trained = time.perf_counter() - started
    print(f"digits set built and detector trained in {trained:.0f} s "
          f"(mAP {100 * bundle.extra['eval_metrics']['map']:.1f})")

    data = load_detection_data("digits", bundle.preprocess.input_size)
    plan = BenchPlan(criteria=["magnitude", "wanda"], sparsities=sparsities, calibration_size=args.calibration_size,
                     recipes=args.recipe)
    seconds: list[float] = []
    last = time.perf_counter()

    class Clock:
        """Receives bench_model's progress steps and records the time between them."""

        def update(self, n: int = 1) -> None:
            nonlocal last
            now = time.perf_counter()
            seconds.append(now - last)
            last = now

        def set_postfix_str(self, text: str) -> None:
            pass

    columns, _latency = bench_model(bundle, data, plan, "benchmark", "benchmark", progress=Clock())
    print(f"{'recipe':<24} {'sparsity':>8} {'box mAP':>8} {'mAP@.5':>7} {'fidelity':>8} {'p50 ms':>7} {'seconds':>8}")
    for i in range(len(columns["result_id"])):
        recipe = json.loads(columns["recipe_json"][i]).get("recipe") or columns["criterion"][i]
        recipe = recipe.removesuffix("+unstructured")
        print(f"{recipe:<24} {columns['requested_sparsity'][i]:>8.2f} {columns['box_map'][i]:>8.1f} "
              f"{columns['box_map_50'][i]:>7.1f} {columns['box_map_fidelity'][i]:>8.1f} "
              f"{columns['latency_p50_ms'][i]:>7.1f} {seconds[i]:>8.1f}")
    print(f"machine: {os.cpu_count()} CPUs; data folder {Path(os.environ['PTSA_DATA_DIR'])}")


if __name__ == "__main__":
    main()
