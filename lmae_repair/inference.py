"""Running a trained model on whole images of any size, in tiles of the size it was trained on.

Sin-cos positions and sequence lengths the model never saw in training do not extrapolate well
(measured on CamVid: PA-mIoU 0.63 in 224 tiles vs 0.37 on the whole 480x368 grid). So whole images
are padded to a multiple of the patch size and cut into patch-aligned tiles of the training crop
size; the last tile of each row/column is shifted back to end at the border, and class
probabilities are averaged where tiles overlap. The patch mask is defined on the whole image's
patch grid, and every tile uses its own part of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmae_repair.model import LabelMAE
from lmae_repair.neighbourhood import neighbourhood_hint


def pad_to_multiple(
    image: torch.Tensor, label: torch.Tensor, multiple: int, void_id: int, minimum: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B,3,H,W) image with zeros and (B,H,W) label with void at the bottom/right so that
    both sides are multiples of `multiple` and at least `minimum`."""
    height, width = label.shape[-2:]
    target_h = max(-(-height // multiple) * multiple, minimum)
    target_w = max(-(-width // multiple) * multiple, minimum)
    pad = (0, target_w - width, 0, target_h - height)
    if pad[1] == 0 and pad[3] == 0:
        return image, label
    return F.pad(image, pad, value=0.0), F.pad(label, pad, value=void_id)


def bf16_pays(device: torch.device | str) -> bool:
    """bf16 autocast for inference: on a GPU, and on CPUs with native bf16 matrix instructions
    (AVX512-BF16, AMX), where it doubles the model's speed; elsewhere bf16 would be emulated and
    slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def tile_origins(length: int, tile: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length); the last one ends at `length`."""
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, tile))
    return origins + [length - tile]


@torch.no_grad()
def predict_probabilities(
    model: LabelMAE,
    image: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    tile: int,
    batch_size: int = 16,
    autocast: bool = False,
    hint: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class probabilities (N, H, W) for one image (3, H, W) whose sides are multiples of the patch
    size and at least `tile`; `mask` (L,) marks the hidden patches of its whole grid."""
    return predict_many(model, [image], [label], [mask], tile, batch_size, autocast, [hint])[0]


@torch.no_grad()
def predict_many(
    model: LabelMAE,
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    masks: list[torch.Tensor],
    tile: int,
    batch_size: int = 16,
    autocast: bool = False,
    hints: list[torch.Tensor | None] | None = None,
    needed: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """`predict_probabilities` for several images of any sizes at once: the tiles of all of them
    share batches of `batch_size`, so small images still fill the batch. Images may be float in
    [0, 1] or uint8 (made float one batch of tiles at a time, which keeps large images small).

    `hints` are the whole-image nearest-fill hints of a `neighbour_hint` model (computed from the
    whole image's visible labels when None, not from each tile's). `needed` (one (L,) bool per
    image) marks the patches whose probabilities will be used; the others may come out unrefined
    (see `LabelMAE.forward`).
    """
    p, n = model.config.patch_size, model.config.num_classes
    hints = list(hints) if hints is not None else [None] * len(images)
    if model.config.neighbour_hint:
        hints = [
            h if h is not None else neighbourhood_hint(label[None], mask[None], p, n)[0]
            for h, label, mask in zip(hints, labels, masks)
        ]
    windows = []  # (image index, y, x)
    for i, image in enumerate(images):
        _, height, width = image.shape
        windows += [(i, y, x) for y in tile_origins(height, tile) for x in tile_origins(width, tile)]
    grid_masks = [m.view(im.shape[1] // p, im.shape[2] // p) for m, im in zip(masks, images)]
    grid_needed = None if needed is None else [m.view(im.shape[1] // p, im.shape[2] // p) for m, im in zip(needed, images)]
    probs = [torch.zeros(n, *im.shape[1:], device=im.device) for im in images]
    counts = [torch.zeros(1, *im.shape[1:], device=im.device) for im in images]
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crop_images = torch.stack([images[i][:, y : y + tile, x : x + tile] for i, y, x in chunk])
        if crop_images.dtype == torch.uint8:
            crop_images = crop_images.float().div_(255.0)
        crop_labels = torch.stack([labels[i][y : y + tile, x : x + tile] for i, y, x in chunk])
        def crop_grid(grids: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([grids[i][y // p : (y + tile) // p, x // p : (x + tile) // p].reshape(-1) for i, y, x in chunk])

        crop_masks = crop_grid(grid_masks)
        crop_needed = None if grid_needed is None else crop_grid(grid_needed)
        crop_hints = None
        if model.config.neighbour_hint:
            crop_hints = torch.stack([hints[i][y : y + tile, x : x + tile] for i, y, x in chunk])
        with torch.autocast(crop_images.device.type, dtype=torch.bfloat16, enabled=autocast):
            if crop_needed is None:
                logits = model(crop_images, crop_labels, crop_masks, crop_hints)
            else:
                logits = model.forward_patches(crop_images, crop_labels, crop_masks, crop_needed, crop_hints)
        if crop_needed is None:
            for (i, y, x), prob in zip(chunk, logits.float().softmax(1)):
                probs[i][:, y : y + tile, x : x + tile] += prob
                counts[i][:, y : y + tile, x : x + tile] += 1
        else:
            add_patches(probs, counts, chunk, crop_needed, logits.float().softmax(1), p, tile)
    return [prob / count.clamp_(min=1) for prob, count in zip(probs, counts)]


def add_patches(probs, counts, chunk, needed: torch.Tensor, patch_probs: torch.Tensor, p: int, tile: int) -> None:
    """Accumulate (K, N, p, p) patch probabilities (tiles' `needed` patches, in `nonzero` order)
    into the whole images' probabilities and counts; patches never needed keep count 0."""
    tile_index, row, column = needed.view(len(chunk), tile // p, tile // p).nonzero(as_tuple=True)
    for j, (i, y, x) in enumerate(chunk):
        rows = tile_index == j
        if not rows.any():
            continue
        n, height, width = probs[i].shape
        grid_y, grid_x = row[rows] + y // p, column[rows] + x // p
        by_patch = probs[i].view(n, height // p, p, width // p, p).permute(1, 3, 0, 2, 4)
        by_patch.index_put_((grid_y, grid_x), patch_probs[rows], accumulate=True)
        count_by_patch = counts[i].view(1, height // p, p, width // p, p).permute(1, 3, 0, 2, 4)
        count_by_patch.index_put_((grid_y, grid_x), torch.ones_like(patch_probs[rows][:, :1]), accumulate=True)
