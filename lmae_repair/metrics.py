"""Confusion-matrix metrics: mIoU, per-class IoU, and PA-mIoU.

PA-mIoU (predicted-area mIoU, from the paper) is the mIoU computed over the reconstructed (masked)
pixels only, so copying the visible labels earns nothing. Void pixels never count. Classes with no
pixel in either prediction or truth are left out of the mean. A prediction that is not a class
(a hole a repair left void) counts as a miss of the true class.
"""

from __future__ import annotations

import numpy as np
import torch

from lmae_repair.errors import LmaeError


def class_ious(matrix: np.ndarray, unpredicted: np.ndarray) -> np.ndarray:
    """Per-class IoU (N,) from a confusion matrix (rows true, columns predicted) and, per true
    class, the pixels left without a class; NaN for classes absent from both truth and
    prediction. The one definition behind `evaluate`, validation and `tune`, so that their
    figures can be compared."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) + np.asarray(unpredicted, dtype=np.float64) - hits
    return np.where(union > 0, hits / np.maximum(union, 1), np.nan)


def mean_iou(ious: np.ndarray) -> float:
    """The mean over the classes that count (not NaN); NaN when none does."""
    present = ~np.isnan(ious)
    return float(ious[present].mean()) if present.any() else float("nan")


def as_tensor(values) -> torch.Tensor:
    """A tensor as it is; a numpy array (or list) as a tensor, a view with negative strides (a
    flipped label) copied, which torch cannot take."""
    if isinstance(values, torch.Tensor):
        return values
    return torch.from_numpy(np.ascontiguousarray(values))


class ConfusionMatrix:
    """Accumulates an N x N matrix: rows are true classes, columns predicted classes."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.unpredicted = torch.zeros(num_classes, dtype=torch.long)  # per true class: no class predicted

    def update(self, prediction: torch.Tensor, truth: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Count pixels where truth is a class (not void) and `where` (if given) is True. Tensors
        or numpy arrays (a notebook's labels) of one shape."""
        prediction, truth = as_tensor(prediction), as_tensor(truth)
        where = None if where is None else as_tensor(where)
        for name, other in (("prediction", prediction), ("where", where)):
            if other is not None and other.shape != truth.shape:
                raise LmaeError(f"confusion matrix: {name} {tuple(other.shape)} and truth {tuple(truth.shape)} "
                                "must have the same shape")
        n = self.num_classes
        valid = (truth >= 0) & (truth < n)
        if where is not None:
            valid &= where.bool()
        truth, prediction = truth[valid].long().cpu(), prediction[valid].long().cpu()
        predicted = (prediction >= 0) & (prediction < n)
        pairs = truth[predicted] * n + prediction[predicted]
        self.matrix += torch.bincount(pairs, minlength=n * n).view(n, n)
        self.unpredicted += torch.bincount(truth[~predicted], minlength=n)

    @property
    def total(self) -> int:
        return int(self.matrix.sum() + self.unpredicted.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU (N,); NaN for classes absent from both truth and prediction."""
        return class_ious(self.matrix.numpy(), self.unpredicted.numpy())

    def miou(self) -> float:
        return mean_iou(self.iou())

    def pixel_accuracy(self) -> float:
        total = self.total
        return float(self.matrix.diag().sum()) / total if total else float("nan")
