"""Tiled inference on whole images: the tile layout and batching tiles of several images."""

from pathlib import Path

import pytest
import torch

from lmae_repair.inference import TILE_STRETCH_PATCHES, bf16_pays, predict_many, tile_spans
from lmae_repair.model import LabelMAE, ModelConfig


@pytest.mark.parametrize("crop,patch", [(224, 16), (64, 8), (32, 8)])
def test_tiles_cover_the_side_with_the_fewest_tiles_no_shorter_than_the_crop(crop, patch):
    longest = crop + TILE_STRETCH_PATCHES * patch
    for length in range(crop, 12 * crop, patch):
        side, origins = tile_spans(length, crop, patch)
        covered = torch.zeros(length, dtype=torch.bool)
        for origin in origins:
            assert origin % patch == 0 and 0 <= origin and origin + side <= length
            covered[origin : origin + side] = True
        assert covered.all(), (length, side, origins)
        assert origins[-1] + side == length
        assert crop <= side <= longest, (length, side)
        assert len(origins) == -(-length // longest), (length, origins)  # no tile more than needed


def test_a_camvid_frame_takes_four_tiles_instead_of_six():
    assert tile_spans(480, 224, 16) == (240, [0, 240])
    assert tile_spans(368, 224, 16) == (224, [0, 144])


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
    together = predict_many(model, images, labels, masks, 32, batch_size=3)
    for image, label, mask, probs in zip(images, labels, masks, together):
        alone = predict_many(model, [image], [label], [mask], 32, batch_size=16)[0]
        assert probs.shape == (3, *image.shape[1:])
        torch.testing.assert_close(probs, alone, atol=1e-5, rtol=1e-5)


def test_an_image_of_one_tile_gets_the_model_output_itself():
    model = small_model(False)
    image, label = torch.rand(3, 40, 40), torch.randint(0, 3, (40, 40))  # 5 x 5 patches: crop 4 + 1
    mask = torch.rand(25) < 0.5
    probs = predict_many(model, [image], [label], [mask], 32)[0]
    torch.testing.assert_close(probs, model(image[None], label[None], mask[None]).softmax(1)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags from /proc/cpuinfo")
def test_bf16_is_chosen_on_a_cpu_only_where_it_has_native_bf16():
    """Emulated bf16 made `complete` 2.7x slower on an AVX-512 Xeon without AVX512-BF16: auto
    precision must pick it only where the CPU says it has bf16 instructions (or AMX)."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    assert bf16_pays("cpu") == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert bf16_pays("cuda")
