"""Class-weighted cross entropy (paper eq. 10-12), void ignored.

Eq. 10 turns each class's pixel frequency x_i into a weight with a logistic curve:
    w_i = 1 - 1 / (1 + beta * exp(-(x_i - E(x)) / (V(x) + xi)))^gamma
so classes rarer than average weigh more (towards 1) and frequent ones less (towards 0).
Choice written down: the paper's V(x) is read as the standard deviation of the frequencies. With
the variance, frequencies in [0, 1] give exponents of hundreds and the weights collapse to 0 or 1;
the standard deviation makes the exponent a z-score, which is the curve's evident intent. beta and
gamma (called learnable in the paper) are fixed at 1, which gives w_i = sigmoid(-z_i); a floor of
0.05 keeps the most frequent class in the loss.
Eq. 11-12 are PyTorch's weighted cross entropy with mean reduction: the sum of weighted pixel
losses divided by the sum of the weights of the counted pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmae_repair.errors import LmaeError

WEIGHTINGS = ("paper", "inverse", "none")
IGNORE = -100


def class_weights(pixel_counts: torch.Tensor, scheme: str = "paper", floor: float = 0.05) -> torch.Tensor:
    """Per-class loss weights from per-class pixel counts (N,).

    - "paper": eq. 10 as described above, scaled to mean 1 over the classes present;
    - "inverse": median frequency / class frequency, clipped to [0.1, 10];
    - "none": all ones.
    Classes absent from the counts get weight 1.
    """
    counts = pixel_counts.double()
    present = counts > 0
    if scheme == "none" or not present.any():
        return torch.ones_like(counts, dtype=torch.float)
    freq = counts / counts.sum()
    weights = torch.ones_like(freq)
    if scheme == "paper":
        x = freq[present]
        z = (x - x.mean()) / (x.std(unbiased=False) + 1e-6)
        w = (1.0 - 1.0 / (1.0 + torch.exp(-z))).clamp(min=floor)
        weights[present] = w / w.mean()
    elif scheme == "inverse":
        x = freq[present]
        weights[present] = (x.median() / x).clamp(0.1, 10.0)
    else:
        raise LmaeError(f"unknown class weighting {scheme!r} (choose from {', '.join(WEIGHTINGS)})")
    return weights.float()


def masked_targets(label: torch.Tensor, pixel_mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Targets for the loss: void (any value >= num_classes) and, if given, pixels outside
    `pixel_mask` become IGNORE."""
    target = label.long().clone()
    target[target >= num_classes] = IGNORE
    if pixel_mask is not None:
        target[~pixel_mask] = IGNORE
    return target


def lmae_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    weights: torch.Tensor | None,
    pixel_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted cross entropy over (B, N, H, W) logits; void and unmasked pixels ignored.

    Returns 0 (with a gradient) when no pixel counts, instead of NaN.
    """
    target = masked_targets(label, pixel_mask, logits.shape[1])
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    w = weights.to(logits.device, torch.float) if weights is not None else None
    return F.cross_entropy(logits.float(), target, weight=w, ignore_index=IGNORE)
