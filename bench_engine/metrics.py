"""Accuracy against labels and fidelity to the dense model, from logits."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits, labels) of the model over all batches; labels are -1 where unlabelled."""
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(x).float())
        labels.append(torch.as_tensor(y))
    return torch.cat(logits), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of inputs whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels.unsqueeze(1)).any(dim=1).float().mean() * 100)


def fidelity(logits: torch.Tensor, dense_logits: torch.Tensor) -> tuple[float, float]:
    """Return (top-1 agreement in percent, mean KL(dense || sparse) in nats)."""
    agreement = float((logits.argmax(1) == dense_logits.argmax(1)).float().mean() * 100)
    kl = F.kl_div(
        F.log_softmax(logits, dim=1), F.log_softmax(dense_logits, dim=1), log_target=True, reduction="batchmean"
    )
    return agreement, float(kl)


def score(logits: torch.Tensor, labels: torch.Tensor, dense_logits: torch.Tensor, labelled: bool) -> dict[str, float | None]:
    agreement, kl = fidelity(logits, dense_logits)
    return {
        "top1": topk_accuracy(logits, labels, 1) if labelled else None,
        "top5": topk_accuracy(logits, labels, 5) if labelled else None,
        "top1_agreement": agreement,
        "kl_divergence": kl,
    }
