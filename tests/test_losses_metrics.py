import math

import numpy as np
import pytest
import torch

from lmae_repair.errors import LmaeError
from lmae_repair.losses import class_weights, lmae_loss
from lmae_repair.metrics import ConfusionMatrix


def test_void_pixels_do_not_change_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 8, 8))
    with_void = label.clone()
    with_void[:, :4] = 255
    reference = lmae_loss(logits[:, :, 4:], label[:, 4:], None)
    assert torch.isclose(lmae_loss(logits, with_void, None), reference)
    # whatever the logits say at void pixels, the loss is the same
    scrambled = logits.clone()
    scrambled[:, :, :4] = torch.randn(2, 3, 4, 8) * 50
    assert torch.isclose(lmae_loss(scrambled, with_void, None), reference)


def test_loss_counts_only_masked_pixels_when_given_a_pixel_mask():
    torch.manual_seed(0)
    logits, label = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    pixel_mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    pixel_mask[0, 0] = True
    assert torch.isclose(lmae_loss(logits, label, None, pixel_mask), lmae_loss(logits[:, :, :1], label[:, :1], None))


def test_all_void_gives_zero_loss_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = lmae_loss(logits, torch.full((1, 4, 4), 255), None)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_weighted_loss_is_weighted_mean_as_in_eq_12():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = 2.0  # pixel 0: class 0 favoured, truth 0
    label = torch.tensor([[[0, 1]]])
    weights = torch.tensor([1.0, 3.0])
    per_pixel = torch.nn.functional.cross_entropy(logits, label, reduction="none")[0, 0]
    expected = (1.0 * per_pixel[0] + 3.0 * per_pixel[1]) / 4.0
    assert torch.isclose(lmae_loss(logits, label, weights), expected)


def test_paper_weights_favour_rare_classes():
    w = class_weights(torch.tensor([900_000, 90_000, 9_000, 1_000]), "paper")
    assert w[0] < w[1] < w[2] <= w[3]
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-5)
    inverse = class_weights(torch.tensor([900_000, 90_000, 9_000, 1_000]), "inverse")
    assert inverse[0] < inverse[3]
    assert class_weights(torch.tensor([5, 5]), "none").tolist() == [1.0, 1.0]
    assert class_weights(torch.tensor([100, 0, 10]), "paper")[1] == 1.0  # absent class
    with pytest.raises(LmaeError):
        class_weights(torch.tensor([1, 2]), "bogus")


def test_miou_and_pa_miou():
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 9])
    prediction = torch.tensor([0, 1, 1, 1, 2, 0, 0])
    cm = ConfusionMatrix(3)
    cm.update(prediction, truth)
    assert np.allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert math.isclose(cm.miou(), (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.total == 6  # the void pixel (9) is not counted
    masked = ConfusionMatrix(3)
    masked.update(prediction, truth, torch.tensor([False, False, True, True, False, False, True]))
    assert masked.miou() == 1.0  # only the two class-1 pixels count
    spilled = ConfusionMatrix(3)  # a class predicted where it is not true counts, with IoU 0
    spilled.update(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert math.isclose(spilled.miou(), (1 / 2 + 1 + 0) / 3)


def test_tune_scores_the_miou_that_evaluate_reports():
    from lmae_repair.class_bias import pa_miou

    truths, chosen = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    logs = np.log(np.eye(3)[chosen] * 0.9 + 0.05)
    cm = ConfusionMatrix(3)
    cm.update(torch.from_numpy(chosen), torch.from_numpy(truths))
    assert math.isclose(pa_miou(logs, truths, np.zeros(3, np.int64), np.zeros(3)), cm.miou())


def test_confusion_matrix_takes_numpy_arrays_as_a_notebook_passes_them():
    """PA-mIoU from a notebook: labels are numpy arrays (uint8 from a PNG, a bool mask of the
    erased pixels); update had raised AttributeError: 'numpy.ndarray' object has no attribute
    'bool'. Arrays of different shapes are refused naming both, not with torch's mask error."""
    truth = np.array([[0, 0, 1], [1, 2, 9]], np.uint8)
    prediction = np.array([[0, 1, 1], [1, 2, 0]], np.uint8)
    erased = np.array([[False, False, True], [True, False, True]])
    from_numpy, from_torch = ConfusionMatrix(3), ConfusionMatrix(3)
    from_numpy.update(prediction[:, ::-1], truth[:, ::-1], erased[:, ::-1])  # a flipped view: negative strides
    from_torch.update(torch.from_numpy(prediction), torch.from_numpy(truth), torch.from_numpy(erased))
    assert torch.equal(from_numpy.matrix, from_torch.matrix) and from_numpy.miou() == 1.0
    unmasked = ConfusionMatrix(3)
    unmasked.update(prediction.astype(np.int64), truth)
    assert unmasked.total == 5
    with pytest.raises(LmaeError, match=r"prediction \(2, 2\) and truth \(2, 3\)"):
        ConfusionMatrix(3).update(prediction[:, :2], truth)
    with pytest.raises(LmaeError, match=r"where \(2,\)"):
        ConfusionMatrix(3).update(prediction, truth, erased[0, :2])
