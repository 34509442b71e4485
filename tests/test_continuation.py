"""Continuation: the class found on both sides of a gap, down a column or along a row, nudged up
by a bonus tuned with the class offsets and stored in the checkpoint."""

import numpy as np
import pytest
import torch

from lmae_repair.checkpoints import CheckpointInfo
from lmae_repair.class_bias import normalised, tune_choice, weigh_classes
from lmae_repair.continuation import NO_CLASS, agreements, boost_continued_classes
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import ModelConfig
from lmae_repair.repair import finish, prepare

VOID = 11


def pole_through_a_hole() -> tuple[np.ndarray, np.ndarray]:
    """A 32x32 label of building (1) with a pole (2) down column 10, and an 8x8 void hole over
    the pole's middle: the label and its known pixels."""
    label = np.full((32, 32), 1, np.uint8)
    label[:, 10] = 2
    label[12:20, 6:14] = VOID
    return label, label != VOID


def test_the_class_on_both_sides_of_a_gap_is_found_within_reach_only():
    label, known = pole_through_a_hole()
    down, along = agreements(label, known, reach=20)
    assert (down[12:20, 10] == 2).all() and (down[12:20, 6:10] == 1).all()  # the pole runs through, building beside it
    assert (along[12:20, 6:14] == 1).all()  # along the rows: building left and right of the hole, pole included
    assert (down[known] == NO_CLASS).all() and (along[known] == NO_CLASS).all()  # known pixels keep their own
    assert (agreements(label, known, reach=8)[0] == NO_CLASS).all()  # 9 rows apart: beyond a reach of 8
    label[20, 10] = 3  # the pole ends at the hole: below it is something else, so nothing is agreed there
    assert (agreements(label, known, reach=20)[0][12:20, 10] == NO_CLASS).all()


def test_a_bonus_moves_the_choice_to_the_continued_class_and_no_bonus_changes_nothing():
    label, known = pole_through_a_hole()
    agreed = agreements(label, known, reach=20)
    probs = torch.zeros(12, 32, 32)
    probs[1], probs[2] = 0.7, 0.3  # the model says building everywhere, pole at 0.3
    assert torch.equal(boost_continued_classes(probs.clone(), agreed, []), probs)
    assert torch.equal(boost_continued_classes(probs.clone(), agreed, [0.0, 0.0]), probs)
    nudged = normalised(boost_continued_classes(weigh_classes(probs, []), agreed, [2.0, 0.0]))
    assert (nudged[:, 12:20, 10].argmax(0) == 2).all() and (nudged[:, 12:20, 6:10].argmax(0) == 1).all()
    assert torch.allclose(nudged.sum(0), torch.ones(32, 32))
    assert torch.equal(probs[2], torch.full((32, 32), 0.3))  # the model's own probabilities are left as they are


def test_tuning_takes_the_bonus_that_helps_and_leaves_the_one_that_harms():
    """Pixels where the model leans to building but the class down the column (pole) is right,
    and pixels where the class along the row (building) would be wrong: tuning takes a
    vertical bonus and no horizontal one, and the pole pixels come right."""
    building, pole = [0.7, 0.3], [0.3, 0.7]
    probs = np.array([building] * 40 + [pole] * 40 + [building] * 40)
    truths = np.array([1] * 40 + [1] * 40 + [0] * 40)  # 0: building, 1: pole
    agreed = np.array([[1, 0]] * 40 + [[NO_CLASS, 0]] * 40 + [[NO_CLASS, 0]] * 40, np.int16)
    bias, bonus, before, after = tune_choice(np.log(probs).astype(np.float32), agreed, truths, np.zeros(2))
    assert bonus[0] > np.log(0.7 / 0.3) - bias[1] + bias[0] and bonus[1] == 0.0
    assert before < after == pytest.approx(1.0)


def test_a_checkpoint_carries_its_bonuses_and_repair_uses_them():
    config = ModelConfig(num_classes=11, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    space = LabelSpace(11, background_id=None, void_id=VOID)
    info = CheckpointInfo(config, 0.5, space, {"crop": 32}, continuation=[3.0, 0.0])
    assert CheckpointInfo.from_json(info.to_json()).continuation == [3.0, 0.0]
    label, _ = pole_through_a_hole()
    label[12:20, 6:14] = 1
    label[8:24, 8:16] = VOID  # a whole 8x8-aligned patch region hidden over the pole
    item = prepare(np.zeros((32, 32, 3), np.uint8), label, info)
    probs = torch.zeros(11, 32, 32)
    probs[1], probs[2] = 0.7, 0.3
    assert (finish(item, probs, info).values[8:24, 10] == 2).all()
    info.continuation = []
    assert (finish(item, probs, info).values[8:24, 10] == 1).all()
    with pytest.raises(LmaeError, match="continuation has 1 values"):
        CheckpointInfo.from_json(info.to_json().replace('"continuation": []', '"continuation": [1.0]'))


def test_where_missing_annotation_is_background_only_void_pixels_are_carried_across():
    """A background pixel inside a rebuilt patch may be a missed object: carrying the classes
    around it across would hide that object again (concrete val, objects at 0.9: restored 0.050 ->
    0.039 with bonuses on background too). A void pixel is known to be unannotated: the crack
    above and below it is carried across."""
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    info = CheckpointInfo(config, 0.5, LabelSpace(3, background_id=0, void_id=255), {"crop": 32}, continuation=[3.0, 0.0])
    label = np.full((32, 32), 2, np.uint8)  # spalling all round, so that only the two patches below are rebuilt
    label[8:24, 8:16] = 0
    label[:, 10] = 1  # a crack down column 10 ...
    label[8:16, 8:16] = 255  # ... hidden by a void patch ...
    label[16:24, 10] = 0  # ... and left as background over the next one
    item = prepare(np.zeros((32, 32, 3), np.uint8), label, info)
    probs = torch.zeros(3, 32, 32)
    probs[0], probs[1] = 0.7, 0.3  # the model says background everywhere
    values = finish(item, probs, info).values
    assert (values[8:16, 10] == 1).all() and (values[8:16, 8:10] == 0).all() and (values[16:24, 10] == 0).all()
