"""Task evaluations: how a bench scores each model for its task, and the result columns it fills.

`bench_model` prunes and times a model the same way for every task. Only three steps differ:
running the model over the evaluation side, scoring its outputs, and drawing the calibration
set. Outputs are scored against the labels where there are labels, and always against the
dense model's outputs. Classification scores logits by top-1 and top-5, and detection scores
boxes by COCO box mAP.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from bench_engine.errors import DataError, InvalidConfigError
from bench_engine.metrics import predict, score
from bench_engine.task_names import CLASSIFICATION, DETECTION


class TaskEvaluation(Protocol):
    """The task-specific steps of a bench, for one model on one dataset."""

    task: str
    name: str  # the dataset's name, stored in results.dataset
    labelled: bool
    eval_size: int

    def calibration(self, size: int, seed: int) -> torch.Tensor: ...

    def run(self, model: nn.Module) -> Any:
        """Run the model over the evaluation side; return its outputs."""
        ...

    def score(self, outputs: Any, dense_outputs: Any) -> dict[str, Any]:
        """Return the result columns of one model's outputs, with the dense model's as reference."""
        ...

    def dense_columns(self, dense_scores: dict[str, Any]) -> dict[str, Any]:
        """Return the dense model's reference columns, stored on every row of the model."""
        ...

    def check_plan(self, plan: Any) -> None:
        """Raise InvalidConfigError for a technique or runtime the task cannot run."""
        ...

    def check_reference(self, model: nn.Module) -> None:
        """Raise DataError when the dense model's outputs cannot serve as the reference of every row."""
        ...


class ClassificationEvaluation:
    """Top-1 and top-5 against labels; top-1 agreement and KL divergence against the dense model."""

    task = CLASSIFICATION

    def __init__(self, data: Any) -> None:
        self.data = data
        self.name, self.labelled, self.eval_size = data.name, data.labelled, len(data.evaluation)

    def calibration(self, size: int, seed: int) -> torch.Tensor:
        return self.data.calibration(size, seed)

    def run(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return predict(model, self.data.evaluation_batches())

    def score(self, outputs: Any, dense_outputs: Any) -> dict[str, Any]:
        logits, labels = outputs
        return {**score(logits, labels, dense_outputs[0], self.labelled), "task": CLASSIFICATION}

    def dense_columns(self, dense_scores: dict[str, Any]) -> dict[str, Any]:
        return {"dense_top1": dense_scores["top1"], "dense_top5": dense_scores["top5"]}

    def check_plan(self, plan: Any) -> None:
        return None

    def check_reference(self, model: nn.Module) -> None:
        return None  # logits always exist


class DetectionEvaluation:
    """Box mAP@[.5:.95] and mAP@.5 against labels (in percent); box mAP against the dense model's boxes."""

    task = DETECTION

    def __init__(self, data: Any, reference_score: float = 0.5) -> None:
        self.data, self.reference_score = data, reference_score
        self.name, self.labelled, self.eval_size = data.name, data.labelled, len(data.evaluation)

    def calibration(self, size: int, seed: int) -> torch.Tensor:
        return self.data.calibration(size, seed)

    def run(self, model: nn.Module) -> list[dict[str, Any]]:
        from bench_engine.detection.detectors import predict_boxes

        return predict_boxes(model, self.data)

    def score(self, outputs: Any, dense_outputs: Any) -> dict[str, Any]:
        from bench_engine.detection.evaluate import evaluate_boxes, fidelity_boxes

        columns: dict[str, Any] = {"task": DETECTION, "top1": None, "top5": None, "top1_agreement": None,
                                   "kl_divergence": None, "box_map": None, "box_map_50": None,
                                   "box_reference_score": self.reference_score}
        if self.labelled:
            labelled = evaluate_boxes(self.data.evaluation, outputs)
            columns.update(box_map=100.0 * labelled["map"], box_map_50=100.0 * labelled["map_50"])
        try:
            # The dense model against itself checks, before any configuration runs, that it has
            # reference boxes; its own score is 100 by definition.
            fidelity = fidelity_boxes(dense_outputs, outputs, self.data.evaluation, self.reference_score)
        except DataError:
            if not self.labelled:
                raise  # unlabelled rows have no other score
            columns["box_map_fidelity"] = None  # labelled rows keep their mAP
        else:
            columns["box_map_fidelity"] = 100.0 if outputs is dense_outputs else 100.0 * fidelity["map"]
        return columns

    def dense_columns(self, dense_scores: dict[str, Any]) -> dict[str, Any]:
        return {"dense_top1": None, "dense_top5": None, "dense_box_map": dense_scores["box_map"],
                "dense_box_map_50": dense_scores["box_map_50"]}

    def check_reference(self, model: nn.Module) -> None:
        """On unlabelled data, where fidelity is the only score, require dense boxes at the reference score."""
        from bench_engine.detection.evaluate import fidelity_boxes

        if not self.labelled:
            boxes = self.run(model)
            fidelity_boxes(boxes, boxes, self.data.evaluation, self.reference_score)

    def check_plan(self, plan: Any) -> None:
        """Reject runtimes that replace the detector's module.

        The exported runtimes (ONNX, CSR) rebuild the module, which loses the detector's pre- and
        post-processing. Every allocation runs: sensitivity and learned allocation compare a
        detector's outputs before post-processing (`bench_engine.pruning.outputs`).
        """
        other = [name for name in plan.runtimes if name != "torch-eager"]
        if other:
            raise InvalidConfigError(
                "runtime {runtime} does not time detectors yet; with --task detection use --runtime torch-eager "
                "or leave --runtime out.", runtime=", ".join(other))


def evaluation_for(data: Any, plan: Any = None) -> TaskEvaluation:
    """Return the task evaluation that fits a dataset: detection splits score boxes, the rest logits."""
    if getattr(data, "task", CLASSIFICATION) == DETECTION:
        return DetectionEvaluation(data, getattr(plan, "reference_score", 0.5))
    return ClassificationEvaluation(data)
