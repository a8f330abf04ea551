"""Time each technique part on resnet18, mobilenetv3 and vit_small, and record its peak memory.

Usage:
    python benchmarks/technique_parts.py [--models resnet18 ...] [--calibration-size 64]
        [--steps 20] [--threads 2] [--out parts.json]
    python benchmarks/technique_parts.py --memory-check [--calibration-size 1024] [--budget-gib 4]

Every (model, part) runs in a fresh child process so its peak resident memory (VmHWM, reset
just before the part starts) belongs to that part alone. Models are built without pretrained
weights: time and memory do not depend on the weight values. Calibration inputs are random
224×224 images. Prints one line per part and writes them as JSON with `--out`.

`--memory-check` runs block-wise reconstruction with sparse inputs on ResNet-50 with 1,024
calibration images (a few steps per block) and reports the process's peak memory and how much
of the cached activations went to disk.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MODELS = ("resnet18", "mobilenetv3_large_100", "vit_small_patch16_224")
PARTS = (
    "statistics",
    "hessians",
    "magnitude",
    "wanda",
    "sparsegpt",
    "erk",
    "l2_global",
    "owl",
    "sensitivity",
    "learned",
    "weight_correction",
    "bias_correction",
    "bn_reestimation",
    "layer_recon",
    "block_recon",
)


def run_part(model_name: str, part: str, calibration_size: int, steps: int, threads: int) -> dict:
    """Run one part in this process; return seconds and peak memory above the start of the part."""
    import timm
    import torch

    from bench_engine import memory
    from bench_engine.pruning import LayerPolicy, PruneConfig, collect_stats, find_prunable_layers, prune_model
    from bench_engine.pruning.allocation import ALLOCATORS
    from bench_engine.pruning.correction import correct_bias, correct_weights, reestimate_batchnorm
    from bench_engine.pruning.layers import rebind_layers
    from bench_engine.pruning.learned import LearnedSettings, learned_allocation
    from bench_engine.pruning.reconstruction import ReconstructionSettings, reconstruct
    from bench_engine.pruning.sensitivity import measure_sensitivity

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).eval()
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    calibration = torch.randn(calibration_size, 3, size, size)
    layers, _ = find_prunable_layers(model, LayerPolicy(), calibration[:1])
    config = PruneConfig(criterion="magnitude", sparsity=0.5)

    # Inputs each part needs but does not own are prepared before the clock starts.
    stats = None
    if part in ("wanda", "owl", "bias_correction"):
        stats = collect_stats(model, layers, calibration, need_hessian=False)
    elif part == "sparsegpt":
        stats = collect_stats(model, layers, calibration, need_hessian=True)
    sparse = sparse_layers = None
    if part in ("weight_correction", "bias_correction", "bn_reestimation", "layer_recon", "block_recon"):
        sparse = copy.deepcopy(model)
        sparse_layers = rebind_layers(layers, sparse)
        prune_model(sparse_layers, config)

    rss_before = memory.resident_bytes()
    memory.reset_peak()
    started = time.perf_counter()
    detail = ""
    if part in ("statistics", "hessians"):
        collect_stats(model, layers, calibration, need_hessian=part == "hessians")
    elif part in ("magnitude", "wanda", "sparsegpt"):
        prune_model(rebind_layers(layers, copy.deepcopy(model)), PruneConfig(criterion=part, sparsity=0.5), stats)
    elif part == "erk":
        ALLOCATORS["erk"](layers, 0.5)
    elif part == "l2_global":
        ALLOCATORS["l2_global"](layers, 0.5, max_layer_sparsity=0.95)
    elif part == "owl":
        ALLOCATORS["owl"](layers, 0.5, stats)
    elif part == "sensitivity":
        measure_sensitivity(model, layers, calibration)
        detail = f"{len(layers)} layers x 5 sparsities"
    elif part == "learned":
        learned_allocation(model, layers, calibration, 0.5, LearnedSettings(steps=steps))
        detail = f"{steps} steps"
    elif part == "weight_correction":
        correct_weights(layers, sparse_layers)
    elif part == "bias_correction":
        correct_bias(layers, sparse_layers, stats)
    elif part == "bn_reestimation":
        reestimate_batchnorm(sparse, calibration)
    elif part in ("layer_recon", "block_recon"):
        settings = ReconstructionSettings(granularity=part.split("_")[0], input="sparse", steps=steps)
        report = reconstruct(model, sparse, layers, sparse_layers, calibration, settings)
        detail = f"{steps} steps per {'layer' if part == 'layer_recon' else 'block'}, {len(report.errors)} fitted"
    else:
        raise ValueError(f"unknown part {part!r}")
    seconds = time.perf_counter() - started
    peak = memory.peak_resident_bytes()
    return {
        "model": model_name,
        "part": part,
        "seconds": round(seconds, 3),
        "peak_rss_mib": round(peak / 1024**2, 1),
        "peak_above_start_mib": round((peak - rss_before) / 1024**2, 1),
        "layers": len(layers),
        "detail": detail,
    }


def memory_check(calibration_size: int, budget_gib: float, steps: int, threads: int) -> dict:
    import timm
    import torch

    from bench_engine import memory
    from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
    from bench_engine.pruning.layers import rebind_layers
    from bench_engine.pruning.reconstruction import ReconstructionSettings, reconstruct

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False).eval()
    calibration = torch.randn(calibration_size, 3, 224, 224)
    layers, _ = find_prunable_layers(model, LayerPolicy(), calibration[:1])
    sparse = copy.deepcopy(model)
    sparse_layers = rebind_layers(layers, sparse)
    prune_model(sparse_layers, PruneConfig(criterion="magnitude", sparsity=0.5))
    settings = ReconstructionSettings(
        granularity="block", input="sparse", steps=steps, memory_budget_bytes=int(budget_gib * 1024**3)
    )
    started = time.perf_counter()
    report = reconstruct(model, sparse, layers, sparse_layers, calibration, settings)
    return {
        "model": "resnet50",
        "calibration_size": calibration_size,
        "steps_per_block": steps,
        "budget_gib": budget_gib,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(memory.peak_resident_bytes() / 1024**3, 2),
        "activations_in_memory_peak_gib": round(report.peak_memory_bytes / 1024**3, 2),
        "activations_spilled_gib": round(report.spilled_bytes / 1024**3, 2),
        "blocks_fitted": len(report.errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--calibration-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20, help="steps for learned allocation and reconstruction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--memory-check", action="store_true")
    parser.add_argument("--budget-gib", type=float, default=4.0)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_check:
        result = memory_check(args.calibration_size or 1024, args.budget_gib, min(args.steps, 5), args.threads)
        print(json.dumps(result))
        return
    calibration_size = args.calibration_size or 64
    if args.one:
        print(json.dumps(run_part(args.one[0], args.one[1], calibration_size, args.steps, args.threads)))
        return
    results = []
    for model_name in args.models:
        for part in args.parts:
            command = [sys.executable, __file__, "--one", model_name, part, "--calibration-size", str(calibration_size),
                       "--steps", str(args.steps), "--threads", str(args.threads)]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                last_line = (completed.stderr.strip().splitlines() or ["no error output"])[-1]
                print(f"{model_name:<24} {part:<18} failed: {last_line}", flush=True)
                continue
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            results.append(result)
            print(f"{model_name:<24} {part:<18} {result['seconds']:8.2f} s  peak +{result['peak_above_start_mib']:7.0f} MiB"
                  f"  (RSS {result['peak_rss_mib']:6.0f} MiB)  {result['detail']}", flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
