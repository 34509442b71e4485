"""Which patches to hide: per-patch background ratio and the three training strategies.

A patch's background ratio is the share of its pixels that are background or void: the pixels a
careless annotator leaves behind. Training mixes three strategies (paper, Sec. III-B) so that the
model learns every situation it will meet:
- random: any patch;
- label-first: the patches most covered by annotated classes (learn to rebuild a whole object);
- background-first: the patches most covered by background (learn to keep background background).
Each strategy masks exactly floor(L * m) of the L patches; ties are broken at random.
Inference always uses background-first: the background-heavy patches are the suspects.

Our addition, `objects`: half of the small objects of the crop are first turned into the missing
value (background, or void where there is no background class) in the model's *input*, then
background-first masking hides the patches they leave behind, and the loss asks for the objects
back. This is what a missed object looks like at inference; the paper's three strategies never
show it (a hidden patch there always has the true label around it), so a model trained only on
them learns to extend the neighbourhood and fills a missed car with road.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace

STRATEGIES = ("random", "label-first", "background-first")
TRAINING_STRATEGIES = STRATEGIES + ("objects",)
# random : label-first : background-first as in the paper (1:2:2), plus objects (see above)
DEFAULT_MIX = (1.0, 2.0, 2.0, 2.0)


def mask_count(num_patches: int, mask_ratio: float) -> int:
    """floor(L * m), robust to float error (0.29 * 100 must give 29, not 28)."""
    return int(math.floor(num_patches * mask_ratio + 1e-9))


def missing_pixels(label: torch.Tensor, background_id: int | None, void_id: int) -> torch.Tensor:
    """True where a pixel is background or void: where annotation may be missing."""
    missing = label == void_id
    if background_id is not None:
        missing |= label == background_id
    return missing


def background_ratio(
    label: torch.Tensor, patch_size: int, background_id: int | None, void_id: int
) -> torch.Tensor:
    """(B, H, W) class indices -> (B, L) share of background-or-void pixels in each patch.

    Patches are numbered row by row, as the model numbers its tokens. H and W must be multiples of
    the patch size.
    """
    missing = missing_pixels(label, background_id, void_id)
    pooled = F.avg_pool2d(missing.float().unsqueeze(1), patch_size)  # (B, 1, h, w)
    return pooled.flatten(1)


def patch_background_ratio(label: torch.Tensor, patch_size: int, space: LabelSpace) -> torch.Tensor:
    """(H, W) class indices -> (ceil(H/p), ceil(W/p)) share of background-or-void pixels among each
    patch's pixels inside the label: `background_ratio` for one label of any size, whose partial
    last row/column of patches is judged on its own pixels rather than on padding."""
    return patch_share(missing_pixels(label, space.background_id, space.void_id), patch_size)


def patch_share(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(H, W) bool -> (ceil(H/p), ceil(W/p)) share of True pixels among each patch's pixels
    inside the image (a partial last row/column of patches is judged on its own pixels)."""
    height, width = pixels.shape
    pad = (0, -width % patch_size, 0, -height % patch_size)
    inside = F.pad(torch.ones(height, width, device=pixels.device), pad)
    return F.avg_pool2d(F.pad(pixels.float(), pad)[None], patch_size)[0] / F.avg_pool2d(inside[None], patch_size)[0]


def top_patches(scores: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask (B, L) with True on the `count` highest-scoring patches of each row.

    A tiny random jitter breaks ties, so equal-score patches are chosen at random rather than by
    position.
    """
    jitter = torch.rand(scores.shape, generator=generator, device="cpu").to(scores.device) * 1e-4
    order = torch.argsort(scores.float() + jitter, dim=1, descending=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask


def strategy_mask(
    strategy: str,
    bg_ratio: torch.Tensor,
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask (B, L) for one strategy, from the per-patch background ratio (B, L)."""
    count = mask_count(bg_ratio.shape[1], mask_ratio)
    if strategy == "random":
        scores = torch.zeros_like(bg_ratio)
    elif strategy == "background-first":
        scores = bg_ratio
    elif strategy == "label-first":
        scores = 1.0 - bg_ratio
    else:
        raise LmaeError(f"unknown masking strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    return top_patches(scores, count, generator)


def small_objects(label: np.ndarray, space: LabelSpace, max_area: float) -> list[tuple[np.ndarray, int]]:
    """The label's objects as (region map, index) pairs: connected (8-neighbour) regions of one
    class, not background or void, of at most `max_area` pixels. Apart from `erase_objects` so
    that `evaluate` can say, when it erased nothing, whether there was nothing to erase."""
    objects = []
    for value in np.unique(label):
        if value >= space.num_classes or value == space.background_id:
            continue
        count, regions, stats, _ = cv2.connectedComponentsWithStats((label == value).astype(np.uint8), connectivity=8)
        objects += [(regions, i) for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] <= max_area]
    return objects


def erase_objects(label: np.ndarray, space: LabelSpace, share: float, max_area: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: `share` of the label's objects (`small_objects`), the count rounded at random."""
    objects = small_objects(label, space, max_area)
    wanted = len(objects) * share
    take = int(wanted) + int(rng.random() < wanted - int(wanted))
    erased = np.zeros(label.shape, bool)
    for position in rng.permutation(len(objects))[:take]:
        regions, index = objects[position]
        erased |= regions == index
    return erased


def mixed_training_mask(
    label: torch.Tensor,
    objects: torch.Tensor,
    patch_size: int,
    space: LabelSpace,
    mask_ratio: float,
    mix: tuple[float, ...] = DEFAULT_MIX,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One strategy per sample, drawn with probabilities `mix` (random : label-first :
    background-first : objects). `label` (B, H, W) is the true label, `objects` (B, H, W) bool the
    objects that the `objects` strategy erases. Returns the model's input label, the mask (B, L)
    and the strategies chosen."""
    weights = torch.tensor(mix + (0.0,) * (len(TRAINING_STRATEGIES) - len(mix)), dtype=torch.float)
    picks = torch.multinomial(weights, label.shape[0], replacement=True, generator=generator)
    chosen = [TRAINING_STRATEGIES[i] for i in picks.tolist()]
    erase_rows = torch.tensor([name == "objects" for name in chosen], device=label.device)
    input_label = torch.where(erase_rows[:, None, None] & objects, space.missing_id, label)
    bg_ratio = background_ratio(input_label, patch_size, space.background_id, space.void_id)
    masked_as = ["background-first" if name == "objects" else name for name in chosen]
    mask = torch.zeros_like(bg_ratio, dtype=torch.bool)
    for strategy in STRATEGIES:
        rows = [i for i, name in enumerate(masked_as) if name == strategy]
        if rows:
            mask[rows] = strategy_mask(strategy, bg_ratio[rows], mask_ratio, generator)
    return input_label, mask, chosen


def parse_mix(text: str) -> tuple[float, ...]:
    """'1:2:2:2' -> (1.0, 2.0, 2.0, 2.0): random : label-first : background-first : objects
    ('1:2:2', the paper's mix, leaves objects out). Weights that are not finite in float32
    ('nan', 'inf', '1e39') are refused here: the strategies are drawn from them in float32
    (torch.multinomial), which failed in the first training step, after the run folder was made."""
    try:
        parts = tuple(float(p) for p in text.split(":"))
    except ValueError:
        parts = ()
    as_drawn = torch.tensor(parts, dtype=torch.float)
    finite = bool(as_drawn.isfinite().all()) and math.isfinite(float(as_drawn.sum()))
    if len(parts) not in (3, 4) or not finite or min(parts) < 0 or sum(parts) <= 0:
        raise LmaeError(
            f"--mask-mix: expected three or four finite, non-negative weights like 1:2:2:2 "
            f"(random:label-first:background-first[:objects]), got {text!r}"
        )
    return parts


def expand_patch_mask(mask: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, L) patch mask -> (B, H, W) pixel mask."""
    h, w = grid
    pixel = mask.view(-1, 1, h, w).float()
    return F.interpolate(pixel, scale_factor=patch_size, mode="nearest").squeeze(1).bool()
