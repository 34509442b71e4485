"""Repairing one label: route it to a checkpoint, hide its background-heavy patches, rebuild them.

Routing (paper, Fig. 4): a patch is *background-heavy* when at least `threshold` of its pixels
are background or void. The share s of background-heavy patches in a label picks, among the
available checkpoints, the one whose mask ratio m is nearest to s (ties go to the larger ratio);
a label with no background-heavy patch is left as it is. That model then hides the floor(L*m)
patches with the highest background ratio, exactly as it was trained to, and rebuilds them.

Do no harm: only pixels inside hidden patches may change, and among those only pixels that were
background or void, unless `overwrite_labeled` is set. Everything else is copied from the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmae_repair.checkpoints import CheckpointInfo
from lmae_repair.dataset import label_tensor, to_tensors
from lmae_repair.inference import pad_to_multiple, predict_probabilities
from lmae_repair.masking import background_ratio, expand_patch_mask, mask_count, missing_pixels, top_patches
from lmae_repair.model import LabelMAE

DEFAULT_THRESHOLD = 0.5


def heavy_share(bg_ratio: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of patches whose background-or-void ratio is at least `threshold`."""
    return float((bg_ratio >= threshold).float().mean())


def label_heavy_share(label: np.ndarray, info: CheckpointInfo, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Routing input: the share of background-heavy patches of a label at native resolution,
    the last row/column of patches padded with void."""
    space, p = info.label_space, info.model.patch_size
    label_t = label_tensor(label, space)
    height, width = label_t.shape
    padded = F.pad(label_t, (0, -width % p, 0, -height % p), value=space.void_id)
    return heavy_share(background_ratio(padded[None], p, space.background_id, space.void_id)[0], threshold)


def choose_checkpoint(share: float, mask_ratios: list[float]) -> int | None:
    """Index of the mask ratio nearest to `share` (ties: the larger ratio); None if share is 0."""
    if share <= 0.0 or not mask_ratios:
        return None
    return min(range(len(mask_ratios)), key=lambda i: (abs(mask_ratios[i] - share), -mask_ratios[i]))


@dataclass
class Repair:
    """A repaired label and what was done to it."""

    values: np.ndarray  # (H, W) uint8, same size as the input label
    patches_masked: int
    pixels_changed: int
    mean_confidence: float  # mean top-class probability over the changed pixels (nan if none)


@torch.no_grad()
def repair_label(
    model: LabelMAE,
    info: CheckpointInfo,
    image: np.ndarray,
    label: np.ndarray,
    overwrite_labeled: bool = False,
    device: torch.device | str = "cpu",
) -> Repair:
    """Hide the floor(L*m) most background-heavy patches of `label` and rebuild them with `model`.

    `image` is (H, W, 3) uint8 and `label` (H, W) uint8 of the same size, in the checkpoint's label
    space; the result has the input's size (the input is padded to whole tiles and cropped back).
    """
    space, p = info.label_space, model.config.patch_size
    tile = int(info.training.get("crop", 224))
    height, width = label.shape
    image_t, label_t = to_tensors(image, label, space)
    image_t, label_t = pad_to_multiple(image_t[None], label_t[None], p, space.void_id, minimum=tile)
    image_t, label_t = image_t[0].to(device), label_t[0].to(device)

    bg = background_ratio(label_t[None], p, space.background_id, space.void_id)
    count = mask_count(bg.shape[1], info.mask_ratio)
    mask = top_patches(bg, count, torch.Generator().manual_seed(0))[0]
    probs = predict_probabilities(
        model, image_t, label_t, mask, tile, autocast=torch.device(device).type == "cuda"
    )
    confidence, prediction = probs.max(0)
    grid = (label_t.shape[0] // p, label_t.shape[1] // p)
    editable = expand_patch_mask(mask[None], grid, p)[0][:height, :width].cpu()
    original = torch.from_numpy(label)
    if not overwrite_labeled:
        editable &= missing_pixels(original, space.background_id, space.void_id)
    prediction = prediction[:height, :width].cpu().to(torch.uint8)
    repaired = torch.where(editable, prediction, original)
    changed = repaired != original
    mean_conf = float(confidence[:height, :width].cpu()[changed].mean()) if changed.any() else float("nan")
    return Repair(repaired.numpy(), int(mask.sum()), int(changed.sum()), mean_conf)
