"""Jobs: the unit of work of a resumable bench, and the worker process that runs them.

A job is one configuration (a pruning recipe at one sparsity and pattern, or the dense model)
of one model with one set of weights, on one dataset, evaluated one way, timed on one set of
runtimes on one hardware profile. Its key is a SHA-256 of all of these (`job_spec`), so the same
job benched again, by any run on any machine with the same profile, has the same key, and a
bench skips it once it is stored.

A worker process benches the pending jobs of one model (`run_task`): it loads the model and
the data, evaluates the dense model once, then writes one shard per job (`bench_engine.shards`)
as each finishes or fails. It never opens the database; the driver (`bench_engine.runner`)
ingests the shards. Before benching, the worker writes a manifest listing every job key it will
attempt, so when a worker dies (out of memory, a segfault, a kill) the driver knows which jobs
died with it and records them as failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench_engine.pruning import LayerPolicy, PruneConfig

log = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the meaning of a job key changes, so old keys no longer match


@dataclass(frozen=True)
class ModelSource:
    """The `ptsa bench` arguments that name a model and its data, for a worker to load them."""

    model: str
    data: str
    weights: str | None = None
    unlabelled: bool = False
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: int | None = None
    task: str = "classification"  # or "detection"

    @property
    def label(self) -> str:
        return self.model

    def load(self, seed: int) -> tuple[Any, Any]:
        """Load the model bundle and the dataset of the source's task (imports torch and timm)."""
        from bench_engine.data import load_dataset
        from bench_engine.models import load_model

        if self.task == "detection":
            from bench_engine.detection.sources import load_detection_data, load_detection_model

            bundle = load_detection_model(self.model, self.weights, num_classes=self.num_classes,
                                          input_size=self.input_size)
            return bundle, load_detection_data(self.data, bundle.preprocess.input_size, seed,
                                               unlabelled=self.unlabelled)
        bundle = load_model(self.model, self.weights, num_classes=self.num_classes, in_chans=self.in_chans,
                            input_size=self.input_size)
        data = load_dataset(self.data, bundle.preprocess, seed, labelled=False if self.unlabelled else None)
        return bundle, data


def infer_task(model: str) -> str:
    """Return 'detection' for a detector's name, else 'classification'."""
    from bench_engine.detection.sources import is_detector_name

    return "detection" if is_detector_name(model) else "classification"


# -- the plan, as JSON for the worker -----------------------------------------------------------


def plan_to_json(plan: Any) -> dict[str, Any]:
    """Return every field of a BenchPlan in JSON types (patterns as 'N:M' or null)."""
    data = dataclasses.asdict(plan)
    data["patterns"] = [None if p is None else f"{p[0]}:{p[1]}" for p in plan.patterns]
    data["extra_recipes"] = [list(pair) for pair in plan.extra_recipes]
    return data


def plan_from_json(data: dict[str, Any]) -> Any:
    """Rebuild the BenchPlan written by `plan_to_json`."""
    from bench_engine.runner import BenchPlan

    values = dict(data)
    values["policy"] = LayerPolicy(**{**values["policy"], "never_prune": tuple(values["policy"]["never_prune"])})
    values["patterns"] = tuple(None if p is None else tuple(int(x) for x in p.split(":")) for p in values["patterns"])
    values["extra_recipes"] = tuple(tuple(pair) for pair in values["extra_recipes"])
    for name in ("criteria", "sparsities", "corrections", "recipes", "runtimes", "runtime_batch_sizes"):
        values[name] = tuple(values[name])
    return BenchPlan(**values)


# -- keys -----------------------------------------------------------------------------------------


def data_digest(data: Any, calibration: torch.Tensor) -> str:
    """Return the SHA-256 of the inputs a bench uses: the calibration draw and every evaluation input.

    Computed on the preprocessed tensors, so it changes with the images, the labels (a detection
    set's boxes), the split, the seed or the preprocessing, and not with file names or dates.
    """
    digest = hashlib.sha256()
    digest.update(f"{data.name}|{data.labelled}|{len(data.train)}|{len(data.evaluation)}".encode())
    digest.update(calibration.detach().cpu().contiguous().numpy().tobytes())
    if getattr(data, "task", "classification") == "detection":
        for image_ids, batch in data.evaluation_images(batch_size=16):
            digest.update(json.dumps(image_ids).encode())
            digest.update(batch.detach().cpu().contiguous().numpy().tobytes())
        digest.update(json.dumps(data.evaluation.to_coco_dict() if data.labelled else [], sort_keys=True,
                                 default=str).encode())
        return digest.hexdigest()
    for index in range(len(data.evaluation)):
        tensor, label = data.evaluation[index]
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(str(label).encode())
    return digest.hexdigest()


def job_spec(model_key: str, weights_sha256: str | None, data_sha256: str, config: PruneConfig | None, plan: Any,
             env_key: str, task: str = "classification") -> dict[str, Any]:
    """Return everything a job's result depends on. Its key is the hash of this.

    A detection job adds its task and the reference score of its fidelity. A classification
    job's spec has neither, so the keys of jobs stored before detection existed still match.
    """
    spec = {
        "key_version": KEY_VERSION,
        "model_key": model_key,
        "weights_sha256": weights_sha256,
        "data_sha256": data_sha256,
        "config": {"criterion": "dense"} if config is None else config.to_dict(),
        "evaluation": {"calibration_size": plan.calibration_size, "seed": plan.seed,
                       "policy": plan.policy.to_dict()},
        "latency": {"batch_size": plan.latency_batch_size, "runtimes": sorted(plan.runtimes),
                    "runtime_batch_sizes": sorted(plan.runtime_batch_sizes) if plan.runtimes else []},
        "env_key": env_key,
    }
    if task != "classification":
        spec["task"] = task
        spec["evaluation"]["reference_score"] = plan.reference_score
    return spec


def job_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def config_id(config: PruneConfig | None) -> str:
    """Return a configuration's identity, the same for equal configurations built separately."""
    return "dense" if config is None else json.dumps(config.to_dict(), sort_keys=True)


def job_label(model_key: str, config: PruneConfig | None) -> str:
    if config is None:
        return f"{model_key} · dense"
    return f"{model_key} · {config.recipe()} · {config.sparsity:.0%}"


# -- the worker -------------------------------------------------------------------------------------


@dataclass
class WorkerTask:
    """The work of one worker process: one model's pending jobs of one run."""

    source: ModelSource
    plan: dict[str, Any]  # plan_to_json
    run_id: str
    env_key: str
    shard_folder: str
    skip_keys: list[str] = field(default_factory=list)  # jobs already stored (finished, or failed without retry)
    replace: bool = False  # --force: this run's rows replace the stored rows of the same jobs
    progress_file: str | None = None
    threads: int | None = None

    @property
    def manifest_path(self) -> Path:
        return Path(self.shard_folder) / f"{self.run_id}-{_slug(self.source.model)}.manifest"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "source": dataclasses.asdict(self.source)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerTask:
        return cls(**{**data, "source": ModelSource(**data["source"])})


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


def read_manifest(path: Path) -> dict[str, Any]:
    """{'model_key': ..., 'jobs': {key: {'label': ..., 'spec': ...}}} or empty when not written yet."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def run_task(task: WorkerTask) -> int:
    """Bench one model's pending jobs, writing a shard per job; return how many it attempted."""
    from bench_engine.runner import bench_model, check_compatible, failure_text, model_row
    from bench_engine.shards import write_shard
    from bench_engine.timing import as_columns

    if task.threads is not None:
        torch.set_num_threads(task.threads)
    plan = plan_from_json(task.plan)
    bundle, data = task.source.load(plan.seed)
    check_compatible(bundle, data)
    calibration = data.calibration(plan.calibration_size, plan.seed)
    digest = data_digest(data, calibration)
    configs: list[PruneConfig | None] = [None, *plan.configs()]
    data_task = getattr(data, "task", "classification")
    specs = {config_id(c): job_spec(bundle.model_key, bundle.weights_sha256, digest, c, plan, task.env_key, data_task)
             for c in configs}
    keys = {name: job_key(spec) for name, spec in specs.items()}
    skip = set(task.skip_keys)
    pending = {keys[config_id(c)]: {"label": job_label(bundle.model_key, c), "spec": specs[config_id(c)]}
               for c in configs if keys[config_id(c)] not in skip}
    Path(task.shard_folder).mkdir(parents=True, exist_ok=True)
    write_json_atomic(task.manifest_path, {"model_key": bundle.model_key, "jobs": pending,
                                           "skipped_keys": sorted(set(keys.values()) & skip)})
    progress = _ProgressLines(Path(task.progress_file), task.run_id) if task.progress_file else None
    if not pending:
        for _config in configs:  # every job is stored: the bar still moves past them
            if progress is not None:
                progress.update(1)
        return 0
    folder = Path(task.shard_folder)
    model = model_row(bundle)

    def on_result(config: PruneConfig | None, row: dict[str, Any] | None, latency: list[dict[str, Any]],
                  error: Exception | None) -> None:
        key = keys[config_id(config)]
        job = {"job_key": key, "run_id": task.run_id, "model_key": bundle.model_key,
               "label": pending[key]["label"], "spec": pending[key]["spec"],
               "status": "failed" if error is not None else "finished",
               "error": None if error is None else failure_text(error), "replace": task.replace}
        body: dict[str, Any] = {"job": job}
        if row is not None:
            row = {**row, "job_key": key}
            for timing in latency:
                timing["job_key"] = key
            body.update(model=model, results={name: [value] for name, value in row.items()},
                        latency=as_columns(latency) if latency else None)
        write_shard(folder, key, body)

    bench_model(bundle, data, plan, task.run_id, task.env_key, progress=progress,
                skip=lambda c: keys[config_id(c)] in skip, on_result=on_result)
    return len(pending)


class _ProgressLines:
    """The bar interface `bench_model` reports to, appending JSON lines the driver reads."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id, self.detail = path, run_id, ""

    def _write(self, kind: str) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"kind": kind, "detail": self.detail}) + "\n")

    def set_postfix_str(self, text: str) -> None:
        self.detail = text
        self._write("detail")

    def update(self, n: int = 1) -> None:
        self._write("step")


class _LowerLevelFormatter(logging.Formatter):
    """'warning: text', as the CLI words its own warnings."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


def _die_with_parent() -> None:
    """Ask Linux to end this worker when its driver dies, so a killed run leaves no worker behind."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.debug("cannot tie the worker's life to its driver here")


def main(argv: Iterable[str]) -> int:
    """`python -m bench_engine.jobs TASK.json`: run one worker task (the driver starts this)."""
    args = list(argv)
    if len(args) != 1:
        print("usage: python -m bench_engine.jobs TASK.json", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)  # relayed by the driver, so worded like its own lines
    handler.setFormatter(_LowerLevelFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    _die_with_parent()
    task = WorkerTask.from_json(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    run_task(task)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
