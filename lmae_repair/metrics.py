"""Confusion-matrix metrics: mIoU, per-class IoU, and PA-mIoU.

PA-mIoU (predicted-area mIoU, from the paper) is the mIoU computed over the reconstructed (masked)
pixels only, so copying the visible labels earns nothing. Void pixels never count. Classes with no
pixel in either prediction or truth are left out of the mean. A prediction that is not a class
(a hole a repair left void) counts as a miss of the true class.
"""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates an N x N matrix: rows are true classes, columns predicted classes."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.unpredicted = torch.zeros(num_classes, dtype=torch.long)  # per true class: no class predicted

    def update(self, prediction: torch.Tensor, truth: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Count pixels where truth is a class (not void) and `where` (if given) is True."""
        n = self.num_classes
        valid = (truth >= 0) & (truth < n)
        if where is not None:
            valid &= where.bool()
        truth, prediction = truth[valid].long().cpu(), prediction[valid].long().cpu()
        predicted = (prediction >= 0) & (prediction < n)
        pairs = truth[predicted] * n + prediction[predicted]
        self.matrix += torch.bincount(pairs, minlength=n * n).view(n, n)
        self.unpredicted += torch.bincount(truth[~predicted], minlength=n)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix
        self.unpredicted += other.unpredicted

    @property
    def total(self) -> int:
        return int(self.matrix.sum() + self.unpredicted.sum())

    def iou(self) -> torch.Tensor:
        """Per-class IoU (N,); NaN for classes absent from both truth and prediction."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) + self.unpredicted.double() - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        ious = self.iou()
        present = ~torch.isnan(ious)
        return float(ious[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.total
        return float(self.matrix.diag().sum()) / total if total else float("nan")


def pa_miou(prediction: torch.Tensor, truth: torch.Tensor, pixel_mask: torch.Tensor, num_classes: int) -> float:
    """PA-mIoU of one batch: mIoU over masked, non-void pixels."""
    cm = ConfusionMatrix(num_classes)
    cm.update(prediction, truth, pixel_mask)
    return cm.miou()
