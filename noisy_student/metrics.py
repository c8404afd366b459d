"""Classification metrics: top-1, top-5, per-class accuracy, expected calibration error."""

from __future__ import annotations

import torch


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE = sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|, equal-width confidence bins."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    # bin b holds confidences in (edges[b], edges[b+1]]; confidence 0 goes in the first bin
    index = torch.clamp(torch.bucketize(confidence, edges, right=False) - 1, 0, bins - 1)
    ece = torch.zeros(())
    for b in range(bins):
        members = index == b
        if members.any():
            gap = (correct[members].mean() - confidence[members].mean()).abs()
            ece += members.float().mean() * gap
    return float(ece)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           num_classes: int) -> dict[str, object]:
    """Metrics of logits `[N, C]` against labels `[N]`; accuracies are fractions."""
    probs = logits.float().softmax(dim=1)
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices  # [N, k]
    hit = topk == labels[:, None]
    per_class = []
    for c in range(num_classes):
        members = labels == c
        per_class.append(float(hit[members, 0].float().mean()) if members.any() else None)
    return {
        "top1": float(hit[:, 0].float().mean()),
        "top5": float(hit.any(dim=1).float().mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": float(torch.nn.functional.cross_entropy(logits.float(), labels)),
        "per_class": per_class,
        "n": int(len(labels)),
    }
