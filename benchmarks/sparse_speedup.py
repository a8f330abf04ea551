"""Measure when sparse execution beats dense on this CPU, with the product's runtimes and protocol.

Usage: python benchmarks/sparse_speedup.py [--threads 2] [--out speedup.json]

Part 1 times one 768×3072 Linear layer (a ViT-Base MLP shape) with dense weights holding zeros
and with the weight in CSR, at 0/50/70/90 % magnitude sparsity and 1, 16 and 64 input rows.
Part 2 times a whole vit_small_patch16_224 (no pretrained weights) pruned with magnitude at
0/50/70/90 %, at batch 1 and 16, on every runtime available here. Every runtime's outputs are
checked against the PyTorch model before its timing is printed. Prints one line per
measurement with the p50 latency, the spread and the verdict against dense on the same
runtime and batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from torch import nn

from bench_engine.latency import measure_latency
from bench_engine.pruning import LayerPolicy, PruneConfig, find_prunable_layers, prune_model
from bench_engine.pruning.criteria import magnitude
from bench_engine.pruning.layers import matrix_to_weight, weight_matrix
from bench_engine.runtimes import RUNTIMES, TorchSparseCsr, check_outputs, speedup_verdict

SPARSITIES = (0.0, 0.5, 0.7, 0.9)


def time_callable(run, shape, batch) -> dict:
    result = measure_latency(run, shape, batch_size=batch, warmup=5, repeats=30, max_seconds=3.0)
    return {"p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "spread": result.spread, "repeats": result.repeats}


def linear_part(records: list[dict]) -> None:
    torch.manual_seed(0)
    base = nn.Linear(768, 3072)
    for sparsity in SPARSITIES:
        layer = copy.deepcopy(base)
        if sparsity:
            pruned, _ = magnitude(weight_matrix(layer), round(sparsity * layer.weight.numel()), None)
            with torch.no_grad():
                layer.weight.copy_(matrix_to_weight(layer, pruned))
        csr = TorchSparseCsr(min_sparsity=0.0).prepare(layer, torch.randn(1, 768))
        for rows in (1, 16, 64):
            check_outputs(layer, csr, torch.randn(rows, 768))
            dense = time_callable(layer, (768,), rows)
            sparse = time_callable(csr.run, (768,), rows)
            verdict = speedup_verdict(dense["p50_ms"], sparse["p50_ms"], csr.sparse_kernel)
            records.append({"part": "linear 768x3072", "sparsity": sparsity, "batch": rows, "dense": dense,
                            "runtime": "torch-sparse-csr", "sparse": sparse, "verdict": verdict})
            print(f"Linear 768×3072  sparsity {sparsity:.0%}  rows {rows:>3}  dense {dense['p50_ms']:7.3f} ms  "
                  f"CSR {sparse['p50_ms']:7.3f} ms  {verdict}", flush=True)


def model_part(records: list[dict]) -> None:
    torch.manual_seed(0)
    dense_model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    shape = (3, 224, 224)
    example = torch.randn(2, *shape)
    available = [r for r in RUNTIMES.values() if r.unavailable_reason() is None]
    for runtime in RUNTIMES.values():
        if runtime.unavailable_reason():
            print(f"vit_small  runtime {runtime.name} skipped: {runtime.unavailable_reason()}", flush=True)
    baselines: dict[tuple[str, int], float] = {}
    for sparsity in SPARSITIES:
        model = copy.deepcopy(dense_model)
        if sparsity:
            layers, _ = find_prunable_layers(model, LayerPolicy(), example[:1])
            prune_model(layers, PruneConfig(criterion="magnitude", sparsity=sparsity))
        for runtime in available:
            prepared = runtime.prepare(model, example[:1])
            check_outputs(model, prepared, example)
            for batch in (1, 16):
                timing = time_callable(prepared.run, shape, batch)
                if sparsity == 0.0:
                    baselines[(runtime.name, batch)] = timing["p50_ms"]
                dense_ms = baselines[(runtime.name, batch)]
                verdict = speedup_verdict(dense_ms, timing["p50_ms"], prepared.sparse_kernel)
                records.append({"part": "vit_small_patch16_224", "sparsity": sparsity, "batch": batch,
                                "runtime": runtime.name, "timing": timing, "verdict": verdict})
                print(f"vit_small  sparsity {sparsity:.0%}  batch {batch:>2}  {runtime.name:<18} "
                      f"p50 {timing['p50_ms']:8.2f} ms  spread {timing['spread']:.0%}  {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-model", action="store_true", help="time the single Linear layer only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    records: list[dict] = []
    linear_part(records)
    if not args.skip_model:
        model_part(records)
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
