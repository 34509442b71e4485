import math

import pytest
import torch

from lmae_repair.errors import LmaeError
from lmae_repair.masking import (
    background_ratio,
    expand_patch_mask,
    mask_count,
    mixed_training_mask,
    parse_mix,
    strategy_mask,
)


def labels_with_known_ratios():
    """A 4x4-patch label (patch 4) whose patch k has exactly k/16 background-or-void pixels."""
    label = torch.full((1, 16, 16), 2)
    for k in range(16):
        row, col = divmod(k, 4)
        patch = torch.full((16,), 2)
        patch[: k // 2] = 0  # background
        patch[k // 2 : k] = 9  # void
        label[0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = patch.view(4, 4)
    return label


def test_background_ratio_counts_background_and_void():
    ratio = background_ratio(labels_with_known_ratios(), 4, background_id=0, void_id=9)
    assert torch.allclose(ratio[0], torch.arange(16) / 16)
    only_void = background_ratio(labels_with_known_ratios(), 4, background_id=None, void_id=9)
    assert torch.allclose(only_void[0], torch.tensor([(k - k // 2) / 16 for k in range(16)]))


@pytest.mark.parametrize("strategy", ["random", "label-first", "background-first"])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.29, 0.5, 0.75, 0.9])
def test_each_strategy_masks_exactly_floor_l_times_m(strategy, ratio):
    bg = torch.rand(5, 100)
    mask = strategy_mask(strategy, bg, ratio, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [math.floor(100 * ratio + 1e-9)] * 5
    assert mask_count(100, 0.29) == 29


def test_background_first_picks_the_most_background_patches():
    bg = background_ratio(labels_with_known_ratios(), 4, 0, 9)
    mask = strategy_mask("background-first", bg, 0.25, torch.Generator().manual_seed(0))
    assert sorted(torch.nonzero(mask[0]).flatten().tolist()) == [12, 13, 14, 15]


def test_label_first_picks_the_most_annotated_patches():
    bg = background_ratio(labels_with_known_ratios(), 4, 0, 9)
    mask = strategy_mask("label-first", bg, 0.25, torch.Generator().manual_seed(0))
    assert sorted(torch.nonzero(mask[0]).flatten().tolist()) == [0, 1, 2, 3]


def test_ties_are_broken_at_random_not_by_position():
    bg = torch.zeros(1, 64)
    picks = {tuple(torch.nonzero(strategy_mask("background-first", bg, 0.5, torch.Generator().manual_seed(s))[0]).flatten().tolist()) for s in range(5)}
    assert len(picks) == 5


def test_random_strategy_spreads_over_all_patches():
    bg = torch.zeros(200, 16)
    mask = strategy_mask("random", bg, 0.5, torch.Generator().manual_seed(0))
    share = mask.float().mean(0)
    assert share.min() > 0.3 and share.max() < 0.7


def test_mix_draws_strategies_in_the_given_proportions():
    bg = torch.rand(5000, 16)
    _, chosen = mixed_training_mask(bg, 0.5, (1, 2, 2), torch.Generator().manual_seed(0))
    shares = {name: chosen.count(name) / len(chosen) for name in set(chosen)}
    assert abs(shares["random"] - 0.2) < 0.03
    assert abs(shares["label-first"] - 0.4) < 0.03
    assert abs(shares["background-first"] - 0.4) < 0.03


def test_parse_mix():
    assert parse_mix("1:2:2") == (1.0, 2.0, 2.0)
    for bad in ("1:2", "a:b:c", "-1:1:1", "0:0:0"):
        with pytest.raises(LmaeError):
            parse_mix(bad)


def test_expand_patch_mask_covers_whole_patches():
    mask = torch.tensor([[True, False, False, True]])
    pixels = expand_patch_mask(mask, (2, 2), 3)
    assert pixels.shape == (1, 6, 6)
    assert pixels[0, :3, :3].all() and not pixels[0, :3, 3:].any() and pixels[0, 3:, 3:].all()
