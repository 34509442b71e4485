"""Repairing one label: the routing rule and do-no-harm."""

import cv2
import numpy as np
import pytest
import torch

from lmae_repair.checkpoints import CheckpointInfo
from lmae_repair.labelspace import LabelSpace
from lmae_repair.masking import background_ratio
from lmae_repair.model import LabelMAE, ModelConfig
from lmae_repair.repair import (
    border_class_counts, choose_checkpoint, finish, heavy_share, label_heavy_share, merge, predict, prepare, repair_hint,
)


@torch.no_grad()
def repair_label(model, info, image, label, overwrite_labeled=False):
    """One label through the three steps `complete` runs, without routing and with no confidence
    floor (`complete` defaults to 0.9), so that the model's own choice shows."""
    item = prepare(image, label, info)
    return finish(item, predict(model, info, [item], "cpu", overwrite_labeled=overwrite_labeled)[0], info, overwrite_labeled)


def test_heavy_share_counts_patches_at_or_above_the_threshold():
    bg = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert heavy_share(bg, 0.5) == pytest.approx(0.6)
    assert heavy_share(bg, 0.9) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "share,expected",
    [(0.0, None), (0.05, 0.25), (0.3, 0.25), (0.375, 0.5), (0.5, 0.5), (0.62, 0.5), (0.63, 0.75), (1.0, 0.75)],
)
def test_routing_picks_the_nearest_mask_ratio_ties_to_the_larger(share, expected):
    ratios = [0.5, 0.25, 0.75]
    index = choose_checkpoint(share, ratios)
    assert (None if index is None else ratios[index]) == expected


def untrained(num_classes=3, patch=8, crop=32):
    torch.manual_seed(0)
    config = ModelConfig(num_classes=num_classes, patch_size=patch, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    space = LabelSpace(num_classes, background_id=0, void_id=255)
    return LabelMAE(config).eval(), CheckpointInfo(config, 0.5, space, {"crop": crop})


def damaged_label(rng, height=40, width=52):
    """A label of classes 1-2 with some patches erased to background and some pixels to void;
    its size is not a multiple of the patch size."""
    label = rng.integers(1, 3, (height, width)).astype(np.uint8)
    label[:16, :16] = 0
    label[20:30, 30:50] = 0
    label[35:, :5] = 255
    return label


@pytest.fixture
def scenario():
    """An untrained model, its checkpoint info, and a damaged 52x40 label with an image."""
    rng = np.random.default_rng(0)
    model, info = untrained()
    label = damaged_label(rng)
    image = rng.integers(0, 255, (*label.shape, 3)).astype(np.uint8)
    return model, info, image, label


def test_only_background_or_void_pixels_inside_hidden_patches_change(scenario):
    model, info, image, label = scenario
    result = repair_label(model, info, image, label)
    assert result.values.shape == label.shape and result.values.dtype == np.uint8
    changed = result.values != label
    assert result.pixels_changed == int(changed.sum()) > 0  # an untrained model changes something
    assert np.isin(label[changed], [0, 255]).all()  # annotated pixels never change
    # pixels outside the hidden patches never change: recompute which patches were hidden
    padded = np.full((40, 56), 255, dtype=np.uint8)  # padded to whole 8-pixel patches: 5 x 7
    padded[:40, :52] = label
    bg = background_ratio(torch.from_numpy(padded)[None].long(), 8, 0, 255)[0]
    hidden_floor = torch.sort(bg, descending=True).values[result.patches_masked - 1]
    for y, x in zip(*np.nonzero(changed)):
        assert bg[(y // 8) * 7 + x // 8] >= hidden_floor
    assert result.patches_masked == 35 // 2 and 0 <= result.mean_confidence <= 1


def test_overwrite_labeled_lets_annotated_pixels_in_hidden_patches_change(scenario):
    model, info, image, label = scenario
    careful = repair_label(model, info, image, label)
    bold = repair_label(model, info, image, label, overwrite_labeled=True)
    assert bold.pixels_changed > careful.pixels_changed
    assert not np.isin(label[bold.values != label], [0, 255]).all()


def test_repair_is_deterministic(scenario):
    model, info, image, label = scenario
    assert np.array_equal(repair_label(model, info, image, label).values, repair_label(model, info, image, label).values)


def test_a_label_smaller_than_a_tile_is_repaired_in_its_own_patches():
    """Padding up to the tile size must not use up the mask budget: the hidden patches are the
    label's own background-heavy ones."""
    model, info = untrained(crop=64)  # 64-pixel tiles, 8-pixel patches; the label is 24x24
    label = np.full((24, 24), 1, dtype=np.uint8)
    label[:8, :8] = 0  # one empty patch of 9
    image = np.zeros((24, 24, 3), dtype=np.uint8)
    result = repair_label(model, info, image, label)
    assert result.patches_masked == 9 // 2
    assert (result.values[:8, :8] != 0).any()  # the empty patch was rebuilt (untrained model)


def test_partial_border_patches_are_judged_on_their_own_pixels():
    """A fully annotated label whose size is not a multiple of the patch size has no background-
    heavy patch: the padding is not counted as void."""
    _, info = untrained()
    label = np.full((20, 21), 1, dtype=np.uint8)  # 8-pixel patches: the last row/column are partial
    assert label_heavy_share(label, info) == 0.0
    label[16:, :] = 0  # the partial last row is all background
    assert label_heavy_share(label, info) == pytest.approx(3 / 9)


def test_min_confidence_guards_background_but_void_is_always_filled():
    """The model says class 1 everywhere at probability 0.6: with --min-confidence 0.7 the
    background pixels stay, the void pixels are filled; at 0.5 both change."""
    _, info = untrained(patch=8, crop=16)
    label = np.zeros((16, 16), np.uint8)
    label[:8, :8] = 255  # void patch
    label[8:, 8:] = 2  # annotated patch, never hidden
    item = prepare(np.zeros((16, 16, 3), np.uint8), label, info)  # hides 2 of the 4 patches
    probs = torch.zeros(3, 16, 16)
    probs[1], probs[0] = 0.6, 0.4
    strict = finish(item, probs, info, min_confidence=0.7).values
    hidden_background = (label == 0) & (strict != label)
    assert (strict[:8, :8] == 1).all() and not hidden_background.any()
    relaxed = finish(item, probs, info, min_confidence=0.5).values
    assert (relaxed[:8, :8] == 1).all() and (relaxed == 1).sum() == 2 * 64 and (relaxed[8:, 8:] == 2).all()


def test_background_is_not_changed_just_to_move_a_border():
    """Predicted class 1 as a 2-pixel ring around one annotated class-1 square (a border
    disagreement), as a tail running 18 pixels out of another (a region drawn halfway) and as a
    blob far from both (a missed object): the ring stays background, the tail and the blob are
    added whole, the tail's first pixels next to its square included."""
    _, info = untrained(patch=8, crop=32)
    label = np.zeros((32, 32), np.uint8)
    label[4:10, 4:10] = 1
    label[20:26, 4:10] = 1
    item = prepare(np.zeros((32, 32, 3), np.uint8), label, info)
    item.mask[:] = True  # every patch hidden: only the merge rule decides
    prediction = torch.from_numpy(label.astype(np.int64))
    prediction[2:12, 2:12] = 1  # ring
    prediction[22:24, 10:28] = 1  # tail
    prediction[28:31, 20:28] = 1  # blob
    repaired = merge(item, prediction, torch.ones(32, 32), info, min_confidence=0.9).values
    assert (repaired[22:24, 10:28] == 1).all() and (repaired[28:31, 20:28] == 1).all()
    assert (repaired[2:12, 2:12] == label[2:12, 2:12]).all()
    assert (repaired == 1).sum() == 2 * 36 + 36 + 24


def street_like(rng, height=96, width=128):
    """A noisy grey scene with two bright boxes (objects), and its label in a space without
    background: 0 = ground, 1 = object, void 2."""
    image = np.clip(rng.normal(90, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    for top, left in ((20, 20), (50, 80)):
        image[top : top + 24, left : left + 30] = 220
        label[top : top + 24, left : left + 30] = 1
    return image, label, LabelSpace(2, background_id=None, void_id=2)


def test_a_gap_where_an_object_was_follows_the_image_edges_and_a_hole_cut_across_does_not():
    from lmae_repair.repair import EDGE_FOLLOWING, gap_edge_contrast

    image, label, space = street_like(np.random.default_rng(0))
    missed = label.copy()
    missed[label == 1] = 2  # the annotator left the objects out
    hole = label.copy()
    hole[60:92, 10:42] = 2  # stopped halfway, across the ground
    assert gap_edge_contrast(image, missed, space) >= EDGE_FOLLOWING
    assert gap_edge_contrast(image, hole, space) < EDGE_FOLLOWING
    assert gap_edge_contrast(image, label, space) is None  # no gap
    huge = (128 * 20, 96 * 20)  # 4.9 megapixels: measured on a smaller copy
    assert gap_edge_contrast(cv2.resize(image, huge), cv2.resize(missed, huge, interpolation=cv2.INTER_NEAREST), space) >= EDGE_FOLLOWING


def test_routing_gives_object_shaped_gaps_to_the_objects_checkpoint_where_a_family_has_one():
    from lmae_repair.repair import route_and_prepare

    image, label, space = street_like(np.random.default_rng(0))
    config = ModelConfig(num_classes=2, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    general = [CheckpointInfo(config, ratio, space, {"crop": 32}) for ratio in (0.25, 0.5)]
    objects = CheckpointInfo(config, 0.25, space, {"crop": 32}, gap_kind="objects")
    family = [("general", general[0]), ("objects", objects), ("general", general[1])]
    missed, hole = label.copy(), label.copy()
    missed[50:74, 80:110] = 2
    hole[60:92, 10:42] = 2
    assert family[route_and_prepare(image, missed, family)[1]][0] == "objects"
    assert family[route_and_prepare(image, hole, family)[1]][0] == "general"
    missed_many = label.copy()
    missed_many[label == 1] = 2
    missed_many[:, :40] = 2
    share, choice, _ = route_and_prepare(image, missed_many, family)
    assert share > 0.375 and family[choice][1].mask_ratio == 0.5  # no objects checkpoint at 0.5: the general one
    without = [("general", general[0]), ("general", general[1])]
    assert without[route_and_prepare(image, missed, without)[1]][0] == "general"


def test_thin_void_is_kept_as_dont_care_where_background_exists_and_void_holes_are_filled():
    """A Pascal VOC style label (background 0, void 255): a 2-pixel band of 255 around an object
    marks uncertain borders and stays; a patch that is all void is a hole and is filled. Without
    a background class (CamVid) void is the missing annotation: the band is filled too."""
    _, info = untrained(patch=8, crop=32)
    label = np.zeros((32, 32), np.uint8)
    label[8:16, 8:16] = 1
    label[6:18, 6:8] = 255  # band along the object's left border
    label[24:32, 24:32] = 255  # a hole: one whole patch
    item = prepare(np.zeros((32, 32, 3), np.uint8), label, info)
    item.mask[:] = True
    prediction = torch.ones(32, 32, dtype=torch.long)
    repaired = merge(item, prediction, torch.ones(32, 32), info).values
    assert (repaired[6:18, 6:8] == 255).all()
    assert (repaired[24:32, 24:32] == 1).all()
    camvid_like = CheckpointInfo(info.model, 0.5, LabelSpace(3, background_id=None, void_id=255), info.training)
    repaired = merge(item, prediction, torch.ones(32, 32), camvid_like).values
    assert (repaired[6:18, 6:8] == 1).all() and (repaired[24:32, 24:32] == 1).all()


def test_a_pair_smaller_than_a_tile_is_extended_by_its_mirror_not_by_black_void():
    """The model never met black, unlabelled borders in training; a 20x12 pair padded to a 32
    tile shows it the pair's mirror image instead, and only the pair's own pixels can change."""
    _, info = untrained(patch=8, crop=32)
    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, (12, 20)).astype(np.uint8)
    image = rng.integers(0, 255, (12, 20, 3)).astype(np.uint8)
    item = prepare(image, label, info)
    assert tuple(item.label.shape) == (32, 32) and tuple(item.image.shape) == (3, 32, 32)
    assert (item.label[12:24, :20].numpy() == label[::-1]).all()
    assert (item.image[:, :12, 20:32].permute(1, 2, 0).numpy() == image[:, ::-1][:, :12]).all()
    assert not item.mask.view(4, 4)[2:, :].any() and not item.mask.view(4, 4)[:, 3:].any()


def test_an_objects_checkpoint_fills_a_void_gap_as_the_class_the_whole_gap_looks_like():
    """A void gap (a missed object) whose left half the model calls class 1 firmly and whose right
    half it calls class 2 barely: an objects checkpoint fills the whole gap with class 1; a
    checkpoint for any gap (holes cut across the scene) keeps the per-pixel guess. Gaps apart
    from each other are judged apart."""
    _, info = untrained(patch=8, crop=32)
    space = LabelSpace(3, background_id=None, void_id=255)
    general = CheckpointInfo(info.model, 0.5, space, info.training)
    objects = CheckpointInfo(info.model, 0.5, space, info.training, gap_kind="objects")
    label = np.zeros((64, 64), np.uint8)
    label[8:16, 0:16] = 255  # one gap over two patches
    label[40:48, 40:48] = 255  # another gap, far away
    item = prepare(np.zeros((64, 64, 3), np.uint8), label, general)
    item.mask[:] = True
    probs = torch.zeros(3, 64, 64)
    probs[1, :, :8], probs[2, :, :8] = 0.9, 0.1  # left of the first gap: firmly 1
    probs[1, :, 8:], probs[2, :, 8:] = 0.45, 0.55  # right of it and the other gap: barely 2
    per_pixel = finish(item, probs, general).values
    assert (per_pixel[8:16, :8] == 1).all() and (per_pixel[8:16, 8:16] == 2).all()
    whole = finish(item, probs, objects).values
    assert (whole[8:16, 0:16] == 1).all() and (whole[label != 255] == 0).all()
    assert (whole[40:48, 40:48] == 2).all()  # its own mean is 2


def test_an_objects_checkpoint_does_not_fill_a_gap_with_the_class_all_around_it():
    """A missed object is a region of its own class: a small void gap inside class 0 whose pixels
    the model calls 0 a little more than 2 is filled with 2 by an objects checkpoint, with 0 by a
    checkpoint for any gap (a hole cut across a region is that region's class). A gap over a
    tenth of the image is no single object and keeps the model's guess."""
    _, info = untrained(patch=8, crop=32)
    space = LabelSpace(3, background_id=None, void_id=255)
    general = CheckpointInfo(info.model, 0.5, space, info.training)
    objects = CheckpointInfo(info.model, 0.5, space, info.training, gap_kind="objects")
    label = np.zeros((64, 64), np.uint8)
    label[:, 48:] = 1
    label[8:16, 8:16] = 255  # a small gap, all around it class 0
    label[24:64, 0:16] = 255  # a gap of 640 pixels: 16% of the image
    item = prepare(np.zeros((64, 64, 3), np.uint8), label, general)
    item.mask[:] = True
    probs = torch.zeros(3, 64, 64)
    probs[0], probs[1], probs[2] = 0.5, 0.1, 0.4
    assert (finish(item, probs, general).values[8:16, 8:16] == 0).all()
    filled = finish(item, probs, objects).values
    assert (filled[8:16, 8:16] == 2).all()
    assert (filled[24:64, 0:16] == 0).all()
    assert (filled[label != 255] == label[label != 255]).all()


def test_the_repair_hint_reads_every_annotated_pixel_where_missing_is_void():
    """A hidden patch of class 1 with a void strip across it, among visible class 2: where
    missing annotation is void, the strip is hinted from the class-1 pixels of its own patch
    (certain annotation); where background is a class, only visible patches count (the hidden
    patch's background may be a missed object), as in training."""
    _, info = untrained(patch=8, crop=32)
    label = np.full((32, 32), 2, np.uint8)
    label[0:8, 0:8] = 1
    mask = torch.zeros(16, dtype=torch.bool)
    mask[0] = True  # the top-left patch is hidden
    void_space = LabelSpace(3, background_id=None, void_id=255)
    label[1:7, 3:5] = 255
    hint = repair_hint(torch.from_numpy(label), mask, CheckpointInfo(info.model, 0.5, void_space, info.training))
    assert (hint[0:8, 0:8].numpy() == 1).all()
    background_space = LabelSpace(3, background_id=0, void_id=255)
    label[1:7, 3:5] = 0
    hint = repair_hint(torch.from_numpy(label), mask, CheckpointInfo(info.model, 0.5, background_space, info.training))
    assert (hint[0:8, 0:8].numpy() == 2).all()


def test_border_class_counts_counts_each_regions_labelled_neighbours():
    """Region 1 (one pixel) has 8 labelled neighbours: three of class 2 above it, five of class 0;
    void neighbours and the image's edge count for nothing."""
    label = np.zeros((4, 5), np.uint8)
    label[0, :] = 2
    label[1, 1], label[3, 4] = 255, 255
    regions = np.zeros((4, 5), np.int32)
    regions[1, 1], regions[3, 4] = 1, 2
    counts = border_class_counts(regions, 3, label, 3)
    assert counts[1].tolist() == [5, 0, 3]
    assert counts[2].tolist() == [3, 0, 0]


def test_shrinking_a_pair_keeps_every_void_hole_and_gives_each_pixel_its_majority_class():
    from lmae_repair.repair import shrink_pair

    space = LabelSpace(3, background_id=0, void_id=255)
    label = np.ones((8, 8), np.uint8)
    label[0:2, 2:4] = [[2, 2], [2, 1]]  # three of four 2: 2
    label[4, 4] = 255  # one void pixel: a hole that must not vanish
    label[6:8, 0:2] = 0  # background is a class like the others here
    image = np.full((8, 8, 3), 100, np.uint8)
    small_image, small = shrink_pair(image, label, 2.0, space)
    assert small.shape == (4, 4) and small_image.shape == (4, 4, 3)
    assert small[0, 1] == 2 and small[2, 2] == 255 and small[3, 0] == 0
    assert (small == 255).sum() == 1 and (small_image == 100).all()


def test_working_scale_shrinks_only_pairs_well_above_the_training_images_scale():
    from lmae_repair.repair import working_scale

    _, info = untrained()
    assert working_scale((720, 960), info) == 1.0  # the checkpoint does not say its scale
    info.training["image_short_side"] = 360
    assert working_scale((360, 480), info) == 1.0
    assert working_scale((375, 500), info) == 1.0
    assert working_scale((720, 960), info) == pytest.approx(2.0)


@torch.no_grad()
def test_a_pair_at_twice_the_training_scale_is_repaired_as_its_half_size_copy_would_be(scenario):
    from lmae_repair.repair import route_and_prepare

    model, info, image, _ = scenario
    info.training["image_short_side"] = 40
    label = np.random.default_rng(2).integers(1, 3, (40, 52)).astype(np.uint8)
    label[:16, :16] = 0  # gaps of whole patches at the training scale, so shrinking leaves none unhidden
    label[16:24, 24:48] = 255
    large_image = cv2.resize(image, (104, 80), interpolation=cv2.INTER_NEAREST)
    large_label = cv2.resize(label, (104, 80), interpolation=cv2.INTER_NEAREST)
    checkpoints = [(model, info)]

    _, _, native = route_and_prepare(image, label, checkpoints)
    _, _, shrunk = route_and_prepare(large_image, large_label, checkpoints)
    _, _, as_is = route_and_prepare(large_image, large_label, checkpoints, rescale=False)
    assert shrunk.size == (40, 52) and shrunk.original.shape == (80, 104) and as_is.size == (80, 104)
    assert torch.equal(shrunk.label, native.label) and torch.equal(shrunk.mask, native.mask)

    small = finish(native, predict(model, info, [native], "cpu")[0], info).values
    large = finish(shrunk, predict(model, info, [shrunk], "cpu")[0], info)
    assert large.values.shape == (80, 104)
    changed = large.values != large_label
    assert changed.any() and np.isin(large_label[changed], [0, 255]).all()  # only the input's own missing pixels change
    upscaled = cv2.resize(small, (104, 80), interpolation=cv2.INTER_NEAREST)
    assert (large.values == upscaled).mean() > 0.95  # the same repair, up to where probabilities are blended
    assert not ((large_label == 255) & (large.values == 255) & (upscaled != 255)).any()  # every hole it fills small is filled


def test_fine_holes_that_would_no_longer_fill_patches_once_shrunk_are_read_as_they_are():
    from lmae_repair.repair import route_and_prepare

    model, info = untrained()
    info.training["image_short_side"] = 32
    rng = np.random.default_rng(1)
    label = rng.integers(1, 3, (64, 64)).astype(np.uint8)
    holes = rng.random((8, 8)) < 0.5  # half of the 8-pixel patches erased: 4 pixels once shrunk
    label[np.kron(holes, np.ones((8, 8), bool))] = 255
    image = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    assert route_and_prepare(image, label, [(model, info)])[2].size == (64, 64)
    mostly_background = np.zeros((64, 64), np.uint8)  # background 0 everywhere but for two objects
    mostly_background[8:24, 8:40] = 1
    mostly_background[40:56, 24:56] = 2
    mostly_background[np.kron(holes, np.ones((8, 8), bool))] = 255  # the fine holes are judged, not the background
    assert route_and_prepare(image, mostly_background, [(model, info)])[2].size == (64, 64)
    big_gap = rng.integers(1, 3, (64, 64)).astype(np.uint8)
    big_gap[16:48, 16:48] = 255
    assert route_and_prepare(image, big_gap, [(model, info)])[2].size == (32, 32)


def test_arrays_a_notebook_passes_are_read_as_uint8_or_refused_in_one_clear_line(scenario):
    """`route_and_prepare` and `prepare` take the pair as numpy arrays, and from a notebook they
    come as the user happens to hold them. An int64 label (np.array of a list, a model's argmax)
    is the same label: repaired alike, returned uint8; a PIL label (AttributeError: no 'shape')
    is read as np.asarray reads it. An image in floats (0..1 after ToTensor), grey (H, W) or
    (H, W, 1), RGBA, or a label the size of another image had ended in a traceback from OpenCV or
    torch ('Unsupported depth of input image', 'shape [15, 14] is invalid'), or in a repair that
    read a 0..1 image as black; each is now refused saying what is wrong and what the repair
    reads. The caller's arrays are not changed."""
    import re

    from PIL import Image

    from lmae_repair.errors import LmaeError
    from lmae_repair.repair import route_and_prepare

    model, info, image, label = scenario
    checkpoints = [(model, info)]
    expected = repair_label(model, info, image, label).values
    wide = label.astype(np.int64)
    with torch.no_grad():
        _, _, item = route_and_prepare(image, wide, checkpoints)
        repaired = finish(item, predict(model, info, [item], "cpu")[0], info).values
        flipped = repair_label(model, info, image[:, ::-1], label[:, ::-1]).values  # negative strides
    assert repaired.dtype == np.uint8 and np.array_equal(repaired, expected) and wide.dtype == np.int64
    assert flipped.shape == label.shape
    refusals = {
        "float32": (image.astype(np.float32) / 255, label),
        "(40, 52): a grey image": (image[..., 0], label),
        "(40, 52, 1)": (image[..., :1], label),
        "(40, 52, 4); the repair reads (H, W, 3) RGB: image[..., :3]": (np.dstack([image, image[..., :1]]), label),
        "(3, 40, 52); the repair reads (H, W, 3) RGB: channels first": (image.transpose(2, 0, 1), label),
        "label is float64": (image, label.astype(np.float64)),
        "label is bool": (image, label > 0),
        "label is (40, 52, 1)": (image, label[..., None]),
        "values 0 to 300": (image, np.where(label == 255, 300, label.astype(np.int64))),
        "image (40, 52, 3) and label (30, 52)": (image, label[:30]),
    }
    for words, (bad_image, bad_label) in refusals.items():
        for step in (lambda i, lab: route_and_prepare(i, lab, checkpoints), lambda i, lab: prepare(i, lab, info)):
            with pytest.raises(LmaeError, match=re.escape(words)):
                step(bad_image, bad_label)
    with torch.no_grad():
        _, _, item = route_and_prepare(Image.fromarray(image), Image.fromarray(label), checkpoints)
        assert np.array_equal(finish(item, predict(model, info, [item], "cpu")[0], info).values, expected)


def test_routing_a_notebooks_int64_label_leaves_the_callers_array_as_it_was():
    """`dataset.label_tensor` maps values outside the label space to void in its tensor; for an
    int64 label (a notebook's np.array of a list, a model's argmax) torch.from_numpy(...).long()
    was the caller's own memory, so `label_heavy_share` (and `evaluate.degrade`) wrote void into
    the caller's array. Now the tensor is always a copy."""
    from lmae_repair.dataset import label_tensor
    from lmae_repair.evaluate import EvaluateOptions, degrade

    _, info = untrained()
    label = np.ones((32, 32), np.int64)
    label[:8] = 7  # not a class of the 3-class space: read as void
    before = label.copy()
    assert label_heavy_share(label, info) == pytest.approx(1 / 4)
    assert int(label_tensor(label, info.label_space).max()) == 255
    degrade(label, info.label_space, EvaluateOptions(strategy="random", mask_ratio=0.5, patch_size=8), np.random.default_rng(0))
    assert np.array_equal(label, before)
