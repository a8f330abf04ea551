"""Time calibration statistics and pruning per criterion on real weights, and report peak memory.

Usage: python benchmarks/prune_time.py [--threads N] [--calibration-size N]
Prints one line per (model, criterion, pattern) with seconds and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch

from bench_engine.baselines import load_baseline
from bench_engine.data import load_photos
from bench_engine.models import load_efficientnet_lite0
from bench_engine.pruning import LayerPolicy, PruneConfig, collect_stats, find_prunable_layers, prune_model
from bench_engine.pruning.layers import rebind_layers


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(bundle, calibration: torch.Tensor) -> None:
    layers, _ = find_prunable_layers(bundle.model, LayerPolicy(), calibration[:1])
    started = time.perf_counter()
    stats = collect_stats(bundle.model, layers, calibration, need_hessian=True)
    print(f"{bundle.model_key:<28} statistics ({len(calibration)} inputs)  {time.perf_counter() - started:6.2f} s")
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        for pattern in (None, (2, 4)):
            copies = rebind_layers(layers, copy.deepcopy(bundle.model))
            config = PruneConfig(criterion=criterion, sparsity=0.5, pattern=pattern)
            report = prune_model(copies, config, stats)
            print(f"{bundle.model_key:<28} {criterion:<10} {config.pattern_name:<12} {report.seconds:6.2f} s"
                  f"   peak RSS {peak_rss_mib():7.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    lite0 = load_efficientnet_lite0()
    bench(lite0, load_photos(lite0.preprocess).calibration(args.calibration_size, seed=0))
    resnet = load_baseline("mnist/resnet10t")
    from bench_engine.baselines import MNIST_PREPROCESS
    from bench_engine.data import load_mnist

    bench(resnet, load_mnist(MNIST_PREPROCESS).calibration(128, seed=0))


if __name__ == "__main__":
    main()
