"""Published evidence shipped in assets/published, imported into the database on first use.

Two sources, each row stored with provenance 'published' and a citation in `source`:

- timm's `results/results-imagenet.csv`: dense ImageNet-1k top-1 and top-5 of every pretrained
  timm weight. The model key is the weight name (`resnet18.a1_in1k`). A weight evaluated at
  several input sizes gets the size appended (`@288px`). The architecture is the part before
  the dot.
- the msbench documentation's post-training sparsity tables (T3 to T6): ImageNet top-1 of
  ResNet-18, ResNet-50, MobileNetV2 and RegNetX-600MF pruned with magnitude masks at 10 to 60 %
  unstructured sparsity, without reconstruction, with layer-wise or with block-wise
  reconstruction. The same measurement printed in two tables is imported once.

- timm's inference benchmark tables: the mean step time and throughput of every architecture at
  several input sizes, on two CPUs (float32, batch 1, torch.compile, PyTorch 2.4) and two GPUs
  (mixed precision, large batches). Each file becomes a hardware profile (`timm-...`) and its
  rows dense timings on the runtime `timm-benchmark`. A step time is a mean, stored as p50;
  p90 and p99 are unknown.

Rows whose architecture this timm version does not list are left out. The import is recorded
as a run whose id carries a hash of the asset files, so changed assets are imported again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import uuid
from importlib import resources
from typing import Any

from advisor.i18n import _
from db import DatabaseLockedError, Store

log = logging.getLogger(__name__)

TIMM_FILE = "timm_results-imagenet.csv"
TIMM_SOURCE = ("timm results/results-imagenet.csv, github.com/huggingface/pytorch-image-models "
               "@ aa4b5850c1543fa488abf260f18390eda46cf85d")
MSBENCH_SOURCE = ("msbench docs/source/benchmark/ImageClassification/Benchmark.rst table {table}, "
                  "github.com/ModelTC/msbench @ f1bddb5b6ecf92dc8804c6c214c8341e6053dfdc")
# msbench model names and the timm architecture each one is; all four are the standard networks
# timm implements under these names.
MSBENCH_ARCHITECTURES = {
    "resnet-18": "resnet18",
    "resnet-50": "resnet50",
    "mobilenetv2_1.0": "mobilenetv2_100",
    "regnetx-600": "regnetx_006",
}
MSBENCH_TABLES = {
    "T3": "msbench_doc_T3_PTS_with_vs_without_layerwise_reconstruction_top1.csv",
    "T4": "msbench_doc_T4_PTS_blockwise_vs_layerwise_top1.csv",
    "T5": "msbench_doc_T5_PTS_calibration_size_mbv2_top1.csv",
    "T6": "msbench_doc_T6_PTS_progressive_reconstruction_top1.csv",
}
TIMM_BENCHMARKS = {
    # file: (environment key, what the file name says about the machine)
    "timm_benchmark-infer-fp32-nchw-pt240-cpu-i7_12700h-dynamo.csv": (
        "timm-fp32-pt240-cpu-i7_12700h", {"device": "cpu", "cpu_model": "Intel Core i7-12700H",
                                          "precision": "fp32", "torch_version": "2.4.0", "compiled": "torch.compile"}),
    "timm_benchmark-infer-fp32-nchw-pt240-cpu-i9_10940x-dynamo.csv": (
        "timm-fp32-pt240-cpu-i9_10940x", {"device": "cpu", "cpu_model": "Intel Core i9-10940X",
                                          "precision": "fp32", "torch_version": "2.4.0", "compiled": "torch.compile"}),
    "timm_benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv": (
        "timm-amp-pt240-cu124-rtx3090", {"device": "NVIDIA GeForce RTX 3090", "precision": "amp",
                                         "torch_version": "2.4.0", "cuda_version": "12.4"}),
    "timm_benchmark-infer-amp-nchw-pt291-cu128-4090.csv": (
        "timm-amp-pt291-cu128-rtx4090", {"device": "NVIDIA GeForce RTX 4090", "precision": "amp",
                                         "torch_version": "2.9.1", "cuda_version": "12.8"}),
}
PUBLISHED_RUNTIME = "timm-benchmark"  # bench_engine.runtime_names.PUBLISHED_RUNTIMES
TIMM_BENCHMARK_SOURCE = ("timm results/{file}, github.com/huggingface/pytorch-image-models @ "
                         "aa4b5850c1543fa488abf260f18390eda46cf85d; p50 is the mean step time")
IMPORT_COMMAND = "import published evidence"


def _asset(name: str) -> str:
    return resources.files("assets").joinpath("published", name).read_text(encoding="utf-8")


def assets_hash() -> str:
    digest = hashlib.sha256()
    for name in [TIMM_FILE, *MSBENCH_TABLES.values(), *TIMM_BENCHMARKS]:
        digest.update(name.encode())
        digest.update(_asset(name).encode())
    return digest.hexdigest()[:12]


def _families() -> dict[str, str]:
    """Map every timm architecture to its timm module (its family)."""
    import timm

    return {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}


def _base(run_id: str, model_key: str, source: str) -> dict[str, Any]:
    return {
        "result_id": uuid.uuid4().hex,
        "run_id": run_id,
        "model_key": model_key,
        "dataset": "imagenet",
        "labelled": True,
        "provenance": "published",
        "source": source,
        "layer_policy_json": "{}",
    }


def timm_rows(run_id: str, families: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Dense ImageNet rows from timm's results table; returns (results rows, models rows)."""
    results, models = [], []
    records = list(csv.DictReader(_asset(TIMM_FILE).splitlines()))
    sizes: dict[str, int] = {}
    for record in records:
        sizes[record["model"]] = sizes.get(record["model"], 0) + 1
    for record in records:
        architecture = record["model"].split(".", 1)[0]
        if architecture not in families:
            continue
        # A weight evaluated at several input sizes gets one model key per size.
        weight = record["model"] if sizes[record["model"]] == 1 else f"{record['model']}@{record['img_size']}px"
        top1, top5 = float(record["top1"]), float(record["top5"])
        results.append({
            **_base(run_id, weight, TIMM_SOURCE),
            "criterion": "dense", "allocation": "none", "pattern": "dense",
            "recipe_json": json.dumps({"criterion": "dense"}),
            "requested_sparsity": 0.0, "achieved_sparsity": 0.0,
            "top1": top1, "top5": top5, "dense_top1": top1, "dense_top5": top5,
            "eval_size": 50_000,
        })
        models.append({
            "model_key": weight, "architecture": architecture, "family": families[architecture],
            "weights_source": f"timm pretrained weight {weight} (published results only; not downloaded)",
            "num_classes": 1000, "in_chans": 3, "input_size": int(record["img_size"]),
            "param_count": int(float(record["param_count"].replace(",", "")) * 1e6),
        })
    return results, models


def _recipe(reconstruction: str, steps: int | None, progressive: bool) -> dict[str, Any]:
    recipe = "magnitude" if reconstruction == "none" else f"magnitude+{reconstruction}_recon"
    if steps:
        recipe += f"(steps={steps})"
    data = {"criterion": "magnitude", "allocation": "uniform", "pattern": "unstructured",
            "reconstruction": reconstruction, "recipe": recipe}
    if steps:
        data["recon_steps"] = steps
    if progressive:
        data["progressive"] = "sparsity raised from 10 % in steps of 10 %, reconstructing at each"
    return data


def msbench_rows(run_id: str, families: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """Post-training sparsity rows from the msbench tables; returns (results rows, models rows)."""
    dense: dict[str, float] = {}
    seen: set[tuple] = set()
    results = []
    for table, file in MSBENCH_TABLES.items():
        reader = csv.reader(_asset(file).splitlines())
        header = next(reader)
        sparsity_columns = [(i, int(h.split("at ")[1].split("%")[0]) / 100) for i, h in enumerate(header)
                            if h.startswith("top1 at ")]
        for cells in reader:
            name = cells[0]
            architecture = MSBENCH_ARCHITECTURES[name]
            calibration = None
            steps = None
            if table == "T6":
                steps, progressive = int(cells[1]), True
                reconstruction = "layer"
            else:  # T6 prints no dense top-1; the model's value from T3 applies
                dense[name] = float(cells[1])
                progressive = False
                setting = cells[2].lower()
                reconstruction = "none"
                if "block" in setting:
                    reconstruction = "block"
                elif "layer" in setting:
                    reconstruction = "layer"
                if table == "T5":
                    calibration, reconstruction = int(cells[2]), "block"
            for index, sparsity in sparsity_columns:
                if not cells[index]:
                    continue
                top1 = float(cells[index])
                key = (name, reconstruction, steps, sparsity, top1)
                if key in seen:
                    continue  # the same measurement printed in an earlier table
                seen.add(key)
                recipe = _recipe(reconstruction, steps, progressive)
                results.append({
                    **_base(run_id, f"{architecture}@msbench", MSBENCH_SOURCE.format(table=table)),
                    "criterion": "magnitude", "allocation": "uniform", "pattern": "unstructured",
                    "recipe_json": json.dumps(recipe, sort_keys=True),
                    "requested_sparsity": sparsity, "achieved_sparsity": None,
                    "top1": top1, "dense_top1": dense.get(name),
                    "calibration_size": calibration,
                    "eval_size": 50_000,
                })
    models = [
        {"model_key": f"{architecture}@msbench", "architecture": architecture, "family": families[architecture],
         "weights_source": f"msbench's ImageNet-trained {name} (dense top-1 {dense[name]:.2f}); published results only",
         "num_classes": 1000, "in_chans": 3, "input_size": 224}
        for name, architecture in MSBENCH_ARCHITECTURES.items()
    ]
    return results, models


def benchmark_rows(run_id: str, families: dict[str, str]) -> tuple[list[dict], list[dict], list[dict]]:
    """Dense timings from timm's benchmark tables; returns (latency rows, models rows, environments)."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    timings, models, environments = [], {}, []
    for file, (env_key, profile) in TIMM_BENCHMARKS.items():
        environments.append((env_key, {**profile, "os": None, "num_threads": None, "source": file.removeprefix("timm_")}))
        source = TIMM_BENCHMARK_SOURCE.format(file=file.removeprefix("timm_"))
        for record in csv.DictReader(_asset(file).splitlines()):
            architecture, size = record["model"], int(record["infer_img_size"])
            if architecture not in families:
                continue
            model_key = f"{architecture}@{size}px (timm benchmark)"
            models[model_key] = {
                "model_key": model_key, "architecture": architecture, "family": families[architecture],
                "weights_source": "timm benchmark table (timings only; no weights)", "num_classes": 1000,
                "in_chans": 3, "input_size": size,
                "param_count": int(float(record["param_count"].replace(",", "")) * 1e6),
            }
            timings.append({
                "latency_id": uuid.uuid4().hex, "run_id": run_id, "model_key": model_key, "env_key": env_key,
                "runtime": PUBLISHED_RUNTIME, "batch_size": int(record["infer_batch_size"]), "criterion": "dense",
                "requested_sparsity": 0.0, "pattern": "dense", "achieved_sparsity": 0.0, "sparse_kernel": None,
                "sparse_layers": 0, "p50_ms": float(record["infer_step_time"].replace(",", "")),
                "throughput_per_s": float(record["infer_samples_per_sec"].replace(",", "")),
                "provenance": "published", "source": source, "created_at": now,
            })
    return timings, list(models.values()), environments


def import_published(store: Store) -> int:
    """Import the published rows unless this version of the assets is already in; return rows added."""
    run_id = f"published-{assets_hash()}"
    if store.query("SELECT 1 FROM runs WHERE run_id = ?", [run_id]):
        return 0
    families = _families()
    timm_results, timm_models = timm_rows(run_id, families)
    ms_results, ms_models = msbench_rows(run_id, families)
    rows = timm_results + ms_results
    timings, benchmark_models, environments = benchmark_rows(run_id, families)
    with store.transaction():
        # Rows of an older version of the assets are replaced.
        store.delete_results("published", run_id_prefix="published-")
        store.start_run(run_id, IMPORT_COMMAND, {"assets": assets_hash()}, None, "assets")
        store.upsert_models(timm_models + ms_models + benchmark_models)
        store.delete_latency("published", run_id_prefix="published-")
        for env_key, profile in environments:
            store.upsert_environment(env_key, profile)
        names = list(timings[0])
        store.insert_latency({name: [row[name] for row in timings] for name in names})
        names = list(dict.fromkeys(name for row in rows for name in row))
        store.insert_results({name: [row.get(name) for row in rows] for name in names})
        store.finish_run(run_id, "finished")
    log.info("imported %d published results and %d published timings (%s)", len(rows), len(timings), run_id)
    return len(rows) + len(timings)


def ensure_published(db_path: Any) -> None:
    """Import the published rows into the database at `db_path` if they are not in yet.

    A database held by another process is left alone; the next command imports them.
    """
    try:
        with Store.open(db_path) as store:
            added = import_published(store)
        if added:
            # Logged at info level: it happens once per version of the tables and needs no action.
            log.info("%s", _("imported {n} published rows and timings into {db} (once per version of the published "
                                "tables)").format(n=added, db=db_path))
    except DatabaseLockedError:
        log.info("database %s is locked; published evidence will be imported later", db_path)
