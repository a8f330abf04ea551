"""Time resnet18, mobilenetv3_large_100 and vit_small_patch16_224 on every runtime, into a database.

Usage: python benchmarks/latency_evidence.py [--db latency.duckdb] [--threads 2] [--repeats 20]
       [--max-seconds 3] [--batch 1,16]

Without --db the measurements go to the default database (`make latency-evidence`). On a GPU
server, pass `--batch 1,64` and the server's thread count.

Runs `ptsa latency MODEL --random-init` for each model at 0 (dense), 50, 70 and 90 % magnitude
sparsity and the 2:4 pattern, on torch-eager, torch-sparse-csr, onnxruntime-cpu,
onnxruntime-cuda, torch-eager-cuda and torch-2:4-cuda. The runtimes that cannot run here are
skipped with their reason. Then prints one Markdown table of p50 latencies with each sparse
row's speedup against the dense model timed in the same rounds, as in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from db import Store, default_db_path  # noqa: E402

MODELS = ("resnet18", "mobilenetv3_large_100", "vit_small_patch16_224")
RUNTIMES = "torch-eager,torch-sparse-csr,onnxruntime-cpu,onnxruntime-cuda,torch-eager-cuda,torch-2:4-cuda"
SPARSITIES = "0.5,0.7,0.9,2:4"
# The ptsa installed beside this Python, so the script works without an activated venv.
PTSA = shutil.which("ptsa", path=str(Path(sys.executable).parent)) or "ptsa"
COLUMNS = ("dense", "50 %", "70 %", "90 %", "2:4")


def column(row: dict) -> str:
    if row["criterion"] == "dense":
        return "dense"
    if row["pattern"] != "unstructured":
        return row["pattern"]
    return f"{row['requested_sparsity']:.0%}".replace("%", " %")


def cell(row: dict) -> str:
    text = f"{row['p50_ms']:,.1f}"
    if row["speedup"] is not None:
        kernel = ", sparse kernel" if row["sparse_kernel"] else ""
        text += f" ({row['speedup']:.2f}×{kernel})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(default_db_path()), help="database file to write the measurements to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=3.0)
    parser.add_argument("--batch", default="1,16")
    args = parser.parse_args()

    run_ids = []
    for model in MODELS:
        command = [PTSA, "--db", args.db, "latency", model, "--random-init", "--runtime", RUNTIMES,
                   "--batch", args.batch, "--sparsity", SPARSITIES, "--repeats", str(args.repeats),
                   "--max-seconds", str(args.max_seconds), "--threads", str(args.threads), "--json"]
        print("$", " ".join(command), file=sys.stderr, flush=True)
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        run_ids.append(done.stdout.split('"run_id": "')[1].split('"')[0])

    with Store.open(args.db, read_only=True) as store:
        rows = store.query(
            "SELECT * FROM latency WHERE run_id IN (SELECT unnest(?)) ORDER BY model_key, runtime, batch_size",
            [run_ids],
        )
    table: dict[tuple[str, str, int], dict[str, str]] = {}
    for row in rows:
        key = (row["model_key"].removesuffix("@random-init"), row["runtime"], row["batch_size"])
        table.setdefault(key, {})[column(row)] = cell(row)
    print("| model | runtime | batch | " + " | ".join(COLUMNS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for (model, runtime, batch), cells in table.items():
        print(f"| {model} | {runtime} | {batch} | " + " | ".join(cells.get(c, "-") for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
