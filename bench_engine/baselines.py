"""Dense MNIST baselines: small timm models trained here, cached in the data folder.

They give the quick-start suite labelled, measured accuracy on six architecture families
without any model hub. Each is a stock timm architecture at 32×32 with one input channel. The
ViT uses 8×8 patches and 6 blocks, so it trains in under a minute on two cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench_engine.data import DataSplits, Preprocess, load_mnist
from bench_engine.errors import UnknownModelError
from bench_engine.models import ModelBundle
from bench_engine.paths import data_dir
from bench_engine.weights import file_sha256, load_into, read_state_dict

log = logging.getLogger(__name__)

MNIST_PREPROCESS = Preprocess(input_size=32, in_chans=1, mean=(0.1307,), std=(0.3081,))


@dataclass(frozen=True)
class BaselineSpec:
    """Architecture and training settings of one MNIST baseline."""

    architecture: str
    learning_rate: float
    epochs: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    seed: int = 0

    @property
    def name(self) -> str:
        return f"mnist/{self.architecture}"

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "timm": timm.__version__}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# One architecture per timm family. Learning rates and epochs were tuned on this data, so each
# reached 79-98 % top-1 after 18-43 s of training on a 2-core CPU (docs/benchmarks.md).
MNIST_BASELINES = {
    spec.name: spec
    for spec in (
        BaselineSpec("resnet10t", 2e-3, 3),
        BaselineSpec("mobilenetv3_small_050", 1e-2, 4),
        BaselineSpec("convnext_atto", 2e-3, 3),
        BaselineSpec("vit_tiny_patch16_224", 1e-3, 4, {"img_size": 32, "patch_size": 8, "depth": 6}),
        BaselineSpec("regnetx_002", 5e-3, 3),
        BaselineSpec("efficientvit_b0", 5e-3, 3),
        # Five more families, so the robustness regressor is scored on 12 held-out families
        # (11 here and EfficientNet-Lite0). Each reached 94-97 % top-1 after 11-38 s of training.
        BaselineSpec("ghostnet_050", 1e-2, 4),
        BaselineSpec("edgenext_xx_small", 5e-3, 4),
        BaselineSpec("levit_128s", 1e-3, 4, {"img_size": 32}),
        BaselineSpec("cs3darknet_s", 2e-3, 3),
        BaselineSpec("hgnetv2_b0", 2e-3, 3),
    )
}


def _create(spec: BaselineSpec) -> torch.nn.Module:
    return timm.create_model(
        spec.architecture, pretrained=False, num_classes=10, in_chans=1, **spec.model_kwargs
    )


def baseline_dir() -> Path:
    return data_dir() / "baselines"


def _paths(spec: BaselineSpec) -> tuple[Path, Path]:
    stem = f"mnist-{spec.architecture}-{spec.digest()}"
    return baseline_dir() / f"{stem}.safetensors", baseline_dir() / f"{stem}.json"


def train_baseline(spec: BaselineSpec, data: DataSplits, progress: Callable[[int, int], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one baseline from scratch with AdamW and a one-cycle schedule."""
    torch.manual_seed(spec.seed)
    inputs = torch.stack([data.train[i][0] for i in range(len(data.train))])
    labels = torch.tensor(data.train.labels)
    model = _create(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.05)
    steps_per_epoch = len(inputs) // spec.batch_size
    total = spec.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.learning_rate, total_steps=total)
    generator = torch.Generator().manual_seed(spec.seed)
    started = time.perf_counter()
    model.train()
    step = 0
    for _ in range(spec.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for i in range(steps_per_epoch):
            batch = order[i * spec.batch_size : (i + 1) * spec.batch_size]
            loss = F.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress:
                progress(step, total)
    model.eval()
    info = {"spec": asdict(spec), "train_seconds": round(time.perf_counter() - started, 1), "timm_version": timm.__version__}
    return model, info


def is_cached(spec: BaselineSpec) -> bool:
    """True when the baseline's weights and metadata are in the data folder."""
    weights_path, meta_path = _paths(spec)
    return weights_path.exists() and meta_path.exists()


def ensure_baseline(spec: BaselineSpec, data: DataSplits | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """Return the cached weights of a baseline, training and caching it first if needed."""
    weights_path, meta_path = _paths(spec)
    if is_cached(spec):
        return weights_path
    data = data or load_mnist(MNIST_PREPROCESS)
    log.info("training MNIST baseline %s", spec.name)
    model, info = train_baseline(spec, data, progress)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # Write to temporary names, then rename, so an interrupted run leaves no half-written file.
    tmp_weights = weights_path.with_name(f"{weights_path.name}.tmp{os.getpid()}")
    tmp_meta = meta_path.with_name(f"{meta_path.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_weights))
    tmp_meta.write_text(json.dumps(info, indent=2))
    os.replace(tmp_weights, weights_path)
    os.replace(tmp_meta, meta_path)
    return weights_path


def load_baseline(name: str, data: DataSplits | None = None, progress: Callable[[int, int], None] | None = None) -> ModelBundle:
    """Load a named MNIST baseline ('mnist/<architecture>'), training it on first use."""
    spec = MNIST_BASELINES.get(name)
    if spec is None:
        raise UnknownModelError(
            "unknown MNIST baseline {name!r}; choose one of {choices}.",
            name=name,
            choices=", ".join(MNIST_BASELINES),
        )
    path = ensure_baseline(spec, data, progress)
    model = _create(spec)
    load_into(model, read_state_dict(path), str(path))
    model.eval()
    return ModelBundle(
        model_key=spec.name,
        architecture=spec.architecture,
        model=model,
        preprocess=MNIST_PREPROCESS,
        weights_source=f"trained here on mnist ({path.name})",
        weights_sha256=file_sha256(path),
        num_classes=10,
        extra={"model_kwargs": spec.model_kwargs},
    )
