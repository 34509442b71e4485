import math

import numpy as np
import pytest
import torch

from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace
from lmae_repair.masking import (
    background_ratio,
    erase_objects,
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


SPACE = LabelSpace(4, background_id=0, void_id=255)


def test_mix_draws_strategies_in_the_given_proportions():
    labels = torch.randint(0, 4, (5000, 8, 8))
    objects = torch.zeros_like(labels, dtype=torch.bool)
    _, _, chosen = mixed_training_mask(labels, objects, 4, SPACE, 0.5, (1, 2, 2, 5), torch.Generator().manual_seed(0))
    shares = {name: chosen.count(name) / len(chosen) for name in set(chosen)}
    assert abs(shares["random"] - 0.1) < 0.03
    assert abs(shares["label-first"] - 0.2) < 0.03
    assert abs(shares["background-first"] - 0.2) < 0.03
    assert abs(shares["objects"] - 0.5) < 0.03
    _, _, paper = mixed_training_mask(labels[:500], objects[:500], 4, SPACE, 0.5, (1, 2, 2), torch.Generator().manual_seed(0))
    assert "objects" not in paper


def test_objects_strategy_erases_objects_from_the_input_and_hides_them():
    """A row drawn for `objects` gets its objects turned into background in the input, and the
    patches they leave behind are the hidden ones; the true label is untouched."""
    label = torch.ones(1, 16, 16, dtype=torch.long)  # class 1 everywhere, 4x4 patches of 4 px
    label[0, 4:8, 4:8] = 2  # one object filling patch 5
    objects = torch.zeros_like(label, dtype=torch.bool)
    objects[0, 4:8, 4:8] = True
    truth = label.clone()
    inputs, mask, chosen = mixed_training_mask(label, objects, 4, SPACE, 2 / 16, (0, 0, 0, 1), torch.Generator().manual_seed(0))
    assert chosen == ["objects"]
    assert torch.equal(label, truth)
    assert (inputs[0, 4:8, 4:8] == 0).all() and (inputs[0][~objects[0]] == 1).all()
    assert mask[0, 5] and mask.sum() == 2  # the erased object's patch is hidden first


def test_erase_objects_takes_the_share_of_small_objects_only():
    label = np.zeros((40, 40), np.uint8)
    label[2:6, 2:6] = 1
    label[10:14, 2:6] = 1
    label[20:24, 20:24] = 2
    label[30:34, 30:34] = 3
    label[:, 36:] = 2  # 160 px: too big for max_area 100
    erased = erase_objects(label, SPACE, 0.5, 100, np.random.default_rng(0))
    assert erased.sum() == 2 * 16
    assert not erased[:, 36:].any() and not (erased & (label == 0)).any()
    everything = erase_objects(label, SPACE, 1.0, 100, np.random.default_rng(0))
    assert everything.sum() == 4 * 16


def test_parse_mix():
    assert parse_mix("1:2:2") == (1.0, 2.0, 2.0)
    assert parse_mix("1:2:2:2") == (1.0, 2.0, 2.0, 2.0)
    for bad in ("1:2", "a:b:c", "-1:1:1", "0:0:0", "1:1:1:1:1", "nan:1:1:1", "inf:1:1:1", "1e39:1:1:1", "3e38:3e38:1:1", ""):
        with pytest.raises(LmaeError):
            parse_mix(bad)


def test_expand_patch_mask_covers_whole_patches():
    mask = torch.tensor([[True, False, False, True]])
    pixels = expand_patch_mask(mask, (2, 2), 3)
    assert pixels.shape == (1, 6, 6)
    assert pixels[0, :3, :3].all() and not pixels[0, :3, 3:].any() and pixels[0, 3:, 3:].all()
