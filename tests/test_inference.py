"""Tiled inference on whole images: the tile layout and batching tiles of several images."""

from pathlib import Path

import pytest
import torch

from lmae_repair.checkpoints import load_checkpoint
from lmae_repair.errors import LmaeError
from lmae_repair.inference import TILE_SHRINK_PATCHES, TILE_STRETCH_PATCHES, bf16_pays, for_inference, predict_many, resolve_precision, tile_spans
from lmae_repair.model import LabelMAE, ModelConfig
from lmae_repair.quantise import Int8Linear


@pytest.mark.parametrize("crop,patch", [(224, 16), (64, 8), (32, 8)])
def test_tiles_cover_the_side_with_the_fewest_tiles_about_the_crops_size(crop, patch):
    longest = crop + TILE_STRETCH_PATCHES * patch
    for length in range(crop, 12 * crop, patch):
        side, origins = tile_spans(length, crop, patch)
        covered = torch.zeros(length, dtype=torch.bool)
        for origin in origins:
            assert origin % patch == 0 and 0 <= origin and origin + side <= length
            covered[origin : origin + side] = True
        assert covered.all(), (length, side, origins)
        assert origins[-1] + side == length
        assert crop - TILE_SHRINK_PATCHES * patch <= side <= longest, (length, side)
        assert len(origins) > 1 or side == length  # only overlapping tiles are shorter than the crop
        assert len(origins) == -(-length // longest), (length, origins)  # no tile more than needed


def test_a_camvid_frame_takes_four_tiles_instead_of_six():
    assert tile_spans(480, 224, 16) == (240, [0, 240])
    assert tile_spans(368, 224, 16) == (208, [0, 160])  # one patch shorter: 3 rows of overlap, not 5


def test_a_pascal_voc_frame_takes_four_tiles():
    assert tile_spans(512, 224, 16) == (256, [0, 256])  # 500 wide, padded to 512
    assert tile_spans(384, 224, 16) == (208, [0, 176])  # 375 high, padded to 384


def small_model(hint: bool) -> LabelMAE:
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16,
                         dec_heads=2, neighbour_hint=hint, refine_channels=4 if hint else 0)
    return LabelMAE(config).eval()


@pytest.mark.parametrize("hint", [False, True])
def test_images_of_different_sizes_batched_together_get_what_each_gets_alone(hint):
    """Tiles of several shapes share one call; each must land in its own image, in its place."""
    model = small_model(hint)
    generator = torch.Generator().manual_seed(1)
    sizes = [(32, 32), (40, 72), (48, 40), (32, 104)]
    images = [torch.rand(3, h, w, generator=generator) for h, w in sizes]
    labels = [torch.randint(0, 3, (h, w), generator=generator) for h, w in sizes]
    masks = [torch.rand((h // 8) * (w // 8), generator=generator) < 0.5 for h, w in sizes]
    together = predict_many(model, images, labels, masks, 32, tiles_per_pass=3)
    for image, label, mask, probs in zip(images, labels, masks, together):
        alone = predict_many(model, [image], [label], [mask], 32, tiles_per_pass=16)[0]
        assert probs.shape == (3, *image.shape[1:])
        torch.testing.assert_close(probs, alone, atol=1e-5, rtol=1e-5)


def test_an_image_of_one_tile_gets_the_model_output_itself():
    model = small_model(False)
    image, label = torch.rand(3, 40, 40), torch.randint(0, 3, (40, 40))  # 5 x 5 patches: crop 4 + 1
    mask = torch.rand(25) < 0.5
    probs = predict_many(model, [image], [label], [mask], 32)[0]
    torch.testing.assert_close(probs, model(image[None], label[None], mask[None]).softmax(1)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reads_labels", [False, True])
def test_the_image_branch_run_on_the_whole_image_feeds_each_tile_its_own_part(monkeypatch, reads_labels):
    """Tiles take their U-Net features from one pass over the whole image (inference.
    whole_image_features). With a branch that looks at each pixel alone (a 1x1 convolution),
    whole-image and per-tile features are the same numbers, so a tile fed the wrong part of the
    whole image's features (or a branch that reads labels another tile's labels) would
    change the prediction."""
    import lmae_repair.inference as inference

    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16,
                         dec_heads=2, neighbour_hint=True, refine_channels=4, image_branch=4, branch_reads_labels=reads_labels)
    model = LabelMAE(config).eval()
    some_label = torch.zeros(48, 88, dtype=torch.long)
    features = inference.whole_image_features(model, [torch.rand(3, 48, 88)], labels=[some_label])
    assert features.image(0).shape == (48, 88, 4)  # pixel rows
    inputs = 3 + (3 + 1 if reads_labels else 0)
    model.branch = torch.nn.Conv2d(inputs, 4, 1)  # pointwise: no context, so no difference where tiles meet
    torch.nn.init.normal_(model.refine.layers[-1].weight, std=1.0)  # make the refiner read the features
    generator = torch.Generator().manual_seed(2)
    image = torch.rand(3, 48, 88, generator=generator)  # 2 x 3 overlapping tiles of 32
    label = torch.randint(0, 3, (48, 88), generator=generator)
    mask = torch.rand(6 * 11, generator=generator) < 0.5
    with torch.no_grad():
        whole = predict_many(model, [image], [label], [mask], 32, needed=[mask])[0]
        monkeypatch.setattr(inference, "WHOLE_IMAGE_BRANCH_PIXELS", 0)  # the tile-by-tile path
        assert inference.whole_image_features(model, [image], labels=[label]).image(0) is None
        tiled = predict_many(model, [image], [label], [mask], 32, needed=[mask])[0]
    torch.testing.assert_close(whole, tiled, atol=1e-5, rtol=1e-5)


def test_tiles_of_several_images_in_one_pass_read_their_own_image_features():
    """Tiles of different images share a pass (`predict_many`) and take their refiner windows
    from their own image's whole-image features (`WholeImageFeatures`): each image comes out as
    it does alone."""
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16,
                         dec_heads=2, neighbour_hint=True, refine_channels=4, image_branch=4)
    model = LabelMAE(config).eval()
    torch.nn.init.normal_(model.refine.layers[-1].weight, std=1.0)  # make the refiner read the features
    generator = torch.Generator().manual_seed(3)
    sizes = [(48, 88), (48, 88), (40, 64)]  # the first two share tile shapes, so passes
    images = [torch.rand(3, h, w, generator=generator) for h, w in sizes]
    labels = [torch.randint(0, 3, (h, w), generator=generator) for h, w in sizes]
    masks = [torch.rand(h // 8 * (w // 8), generator=generator) < 0.5 for h, w in sizes]
    with torch.no_grad():
        together = predict_many(model, images, labels, masks, 32, needed=masks)
        alone = [predict_many(model, [i], [l], [m], 32, needed=[m])[0] for i, l, m in zip(images, labels, masks)]
    for one, other in zip(together, alone):
        torch.testing.assert_close(one, other, atol=1e-5, rtol=1e-5)


def test_batch_norms_folded_for_inference_give_the_same_probabilities_and_leave_the_model_alone():
    """The image branch's BatchNorms are folded into its convolutions for inference: same output,
    and the model handed in (which training may go on with) keeps its BatchNorms."""
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16,
                         dec_heads=2, refine_channels=4, image_branch=4)
    model = LabelMAE(config)
    model.train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        model.branch(torch.randn(2, 3, 32, 32) * 3 + 1)
    for layer in model.refine.layers[-1:]:  # a trained refiner is not zero
        torch.nn.init.normal_(layer.weight, std=0.5)
    model.eval()
    folded = for_inference(model, "fp32")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 14
    image, label = torch.rand(3, 40, 48), torch.randint(0, 3, (40, 48))
    mask = torch.rand(30) < 0.5
    with torch.no_grad():
        expected = predict_many(model, [image], [label], [mask], 32)[0]
        torch.testing.assert_close(predict_many(folded, [image], [label], [mask], 32)[0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags from /proc/cpuinfo")
def test_bf16_is_chosen_on_a_cpu_only_where_it_has_native_bf16(monkeypatch):
    """Emulated bf16 made `complete` 2.7x slower on an AVX-512 Xeon without AVX512-BF16: auto
    precision must pick it only where the CPU says it has bf16 instructions (or AMX), and on GPUs
    from Ampere on (a V100 or T4 emulates it)."""
    assert bf16_pays("cpu") == bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100
    assert bf16_pays("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100
    assert not bf16_pays("cuda")


def cpu_flags() -> set[str]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    return flags


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags from /proc/cpuinfo")
def test_auto_precision_follows_the_cpu_and_bad_choices_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    flags = cpu_flags()
    expected = "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "int8" if flags & {"avx512_vnni", "avx_vnni"} else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(LmaeError, match="CPU only"):
        resolve_precision("int8", "cuda")
    with pytest.raises(LmaeError, match="expected one of auto, bf16, fp32, int8"):
        resolve_precision("fp16", "cpu")


def test_int8_gives_the_bundled_model_s_classes_on_nearly_every_pixel():
    """int8 (the default on CPUs with VNNI and no native bf16) must not change what complete
    writes beyond rounding: the bundled camvid 0.5 model, a CamVid-size street-like scene."""
    path = Path(__file__).resolve().parent.parent / "models" / "camvid" / "general.safetensors"
    model = load_checkpoint(path)[0].eval()
    quantised = for_inference(load_checkpoint(path)[0].eval(), "int8")
    assert any(isinstance(module, Int8Linear) for module in quantised.modules())
    generator = torch.Generator().manual_seed(0)
    label = torch.full((368, 480), 3)  # road below, building above, sky on top, a car and a pole
    label[:150], label[:60], label[200:260, 100:220], label[40:250, 400:410] = 1, 0, 8, 2
    image = (torch.tensor([[128, 128, 128], [70, 70, 70], [180, 200, 230], [200, 200, 50], [150, 150, 150],
                           [50, 120, 40], [200, 200, 0], [90, 90, 60], [40, 40, 160], [200, 50, 50], [0, 0, 0]])[label]
             .permute(2, 0, 1).float() / 255 + 0.05 * torch.randn(3, 368, 480, generator=generator)).clamp(0, 1)
    mask = torch.rand(23 * 30, generator=generator) < 0.5
    hidden = mask.view(23, 30).repeat_interleave(16, 0).repeat_interleave(16, 1)
    fp32 = predict_many(model, [image], [label], [mask], 224)[0].argmax(0)
    int8 = predict_many(quantised, [image], [label], [mask], 224)[0].argmax(0)
    assert (fp32 == int8)[hidden].float().mean() > 0.99
