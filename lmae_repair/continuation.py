"""Classes that run through a gap: a tuned nudge towards the class found on both sides of it.

Where the nearest known pixel straight above an unknown pixel and the nearest one straight below
it carry the same class c, and lie within REACH_PATCHES patches of each other, c probably runs
through the pixel (a pole crossing a hole, a tree trunk, a building's edge). The model rebuilds
16-pixel patches and misses much of this on thin things: CamVid val, random patches at 0.5,
bundled camvid family (seed 0), pole IoU 0.475, while over the erased pixels where this rule names
pole (within 50 pixels) it is right 95% of the time. The same along rows is a separate nudge.

The nudges are log-probability bonuses, per checkpoint, [vertical, horizontal]
(`CheckpointInfo.continuation`), tuned with the class offsets on labelled pairs
(`class_bias.tune_checkpoint`): what continues, and in which direction, depends on the data (in
street scenes things stand upright; left and right of a pole is building, so the horizontal
nudge there hurts). Known pixels are the annotated pixels the repair may not change: for labels
whose missing annotation is void, every annotated pixel; where a background class exists, the
background of the patches being rebuilt may hide a missed object and is not known. There the
nudge goes to void pixels only (`repair.continuation_agreements`): a background pixel between two
pieces of a crack may be the missed piece, but it may as well be background, and carrying classes
across it hid missed objects (concrete val, objects at 0.9: restored 0.050 -> 0.039, precision
0.710 -> 0.651), while void holes gained (random patches at 0.5: 0.792 -> 0.800).
"""

from __future__ import annotations

import numpy as np
import torch

REACH_PATCHES = 8  # the farthest two known pixels may be apart, in patches at the model's scale
NO_CLASS = -1


def agreement_down_columns(values: np.ndarray, known: np.ndarray, reach: int) -> np.ndarray:
    """(H, W) int16: for each unknown pixel, the class of the nearest known pixels above and below
    it in its column where both carry that class and lie at most `reach` rows apart; NO_CLASS
    elsewhere (known pixels, no agreement, too far apart, or an image edge on one side).

    Each known pixel's row and class are packed into one key (row * 256 + class) so that a
    running maximum down the columns carries both at once (no gather afterwards)."""
    height = values.shape[0]
    keys = np.arange(height, dtype=np.int32)[:, None] * 256 + values.astype(np.int32)
    above = np.maximum.accumulate(np.where(known, keys, -1), axis=0)
    below = np.minimum.accumulate(np.where(known, keys, height * 256)[::-1], axis=0)[::-1]
    agree = (above >= 0) & (below < height * 256) & ((above & 255) == (below & 255))
    agree &= (below >> 8) - (above >> 8) <= reach
    agree &= ~known
    return np.where(agree, above & 255, NO_CLASS).astype(np.int16)


def agreements(values: np.ndarray, known: np.ndarray, reach: int, directions=(True, True)) -> np.ndarray:
    """(2, H, W) int16: the class agreed on down the columns and along the rows
    (`agreement_down_columns`); a direction not asked for is NO_CLASS throughout."""
    vertical = agreement_down_columns(values, known, reach) if directions[0] else np.full(values.shape, NO_CLASS, np.int16)
    horizontal = (agreement_down_columns(values.T, known.T, reach).T if directions[1]
                  else np.full(values.shape, NO_CLASS, np.int16))
    return np.stack([vertical, horizontal])


def reach_at_input(patch_size: int, model_height: int, input_height: int) -> int:
    """REACH_PATCHES in pixels of the input label (a pair may be read shrunk, `working_scale`)."""
    return int(round(REACH_PATCHES * patch_size * input_height / max(model_height, 1)))


def boost_continued_classes(weighted: torch.Tensor, agreed: np.ndarray, bonus: list[float]) -> torch.Tensor:
    """Multiply, in place, each agreed class of a contiguous (N, H, W) map of class weights by
    exp(bonus) of its direction, and return it (renormalising is the caller's: the class offsets
    reweight the same map, `class_bias.weigh_classes`). Only the boosted entries are touched: a
    pass over the whole map costs more than the boost (a fresh copy of a CamVid frame's
    probabilities 2.6 ms against 5 for finding the agreements, one thread)."""
    values = weighted.view(-1)
    pixels_per_class = weighted[0].numel()
    for direction, weight in enumerate(bonus or []):
        pixels = np.flatnonzero(agreed[direction] != NO_CLASS) if weight else np.zeros(0, np.int64)
        if len(pixels):
            classes = agreed[direction].reshape(-1)[pixels].astype(np.int64)
            values[torch.from_numpy(classes * pixels_per_class + pixels)] *= float(np.exp(weight))
    return weighted
