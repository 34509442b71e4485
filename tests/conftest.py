"""Generated datasets for the tests: small scenes whose classes are drawn in their own colours,
written in each supported layout. No test needs ../shared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmae_repair.checkpoints import CheckpointInfo, save_checkpoint
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import LabelMAE, ModelConfig

NUM_CLASSES = 4  # 0 background, 1..3 objects
CLASS_COLOURS = np.array([[40, 40, 40], [220, 40, 40], [40, 200, 60], [50, 80, 230]], dtype=np.float64)
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12)


def make_scene(rng: np.random.Generator, height: int = 64, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its label: background plus a few rectangles and discs of classes 1..3,
    each class in its own colour with noise, so that the image alone tells the classes apart."""
    label = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(rng.integers(2, 5)):
        cls = rng.integers(1, NUM_CLASSES)
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        size = rng.integers(max(height // 8, 4), max(height // 3, 6))
        if rng.random() < 0.5:
            shape = (abs(yy - cy) < size) & (abs(xx - cx) < size * rng.uniform(0.5, 1.5))
        else:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 < size**2
        label[shape] = cls
    image = CLASS_COLOURS[label] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_pair(image_path: Path, label_path: Path, image: np.ndarray, label: np.ndarray, palette=None) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path)
    label_img = Image.fromarray(label)
    if palette is not None:
        label_img.putpalette(palette)
    label_img.save(label_path)


def add_files_left_unpaired(root: Path) -> None:
    """Beside a paired dataset's pairs, files discovery cannot pair but whose image it knows: a
    JPEG label (jl.jpg for jl.png), two labels of one name (d.png, d.tif) and two labels naming
    one image (c.png, c_mask.png)."""
    image, label = make_scene(np.random.default_rng(2))
    write_pair(root / "images" / "jl.png", root / "labels" / "jl.jpg", image, label)
    write_pair(root / "images" / "d.png", root / "labels" / "d.png", image, label)
    Image.fromarray(label).save(root / "labels" / "d.tif")
    write_pair(root / "images" / "c.png", root / "labels" / "c.png", image, label)
    Image.fromarray(label).save(root / "labels" / "c_mask.png")


def make_paired(root: Path, count: int = 6, size: int = 64, seed: int = 0, images="images", labels="labels") -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, label = make_scene(rng, size, size)
        write_pair(root / images / f"scene_{i:03d}.png", root / labels / f"scene_{i:03d}.png", image, label)
    return root


def make_voc(root: Path, count: int = 6, size: int = 64, seed: int = 0, splits=None) -> Path:
    rng = np.random.default_rng(seed)
    names = [f"2007_{i:06d}" for i in range(count)]
    for name in names:
        image, label = make_scene(rng, size, size)
        write_pair(root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png", image, label, VOC_PALETTE)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    splits = splits or {"train": names[: count - 2], "val": names[count - 2 :]}
    for split, members in splits.items():
        (sets / f"{split}.txt").write_text("\n".join(members) + "\n")
    return root


def make_cityscapes(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, city, count in (("train", "aachen", 3), ("train", "bremen", 2), ("val", "lindau", 2)):
        for i in range(count):
            image, label = make_scene(rng, 64, 128)
            prefix = f"{city}_{i:06d}_000019"
            write_pair(
                root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png",
                root / "gtFine" / split / city / f"{prefix}_gtFine_labelTrainIds.png",
                image,
                label,
            )
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def family(tmp_path):
    """Two untrained checkpoints (mask ratios 0.25 and 0.5) for the generated label space."""
    folder = tmp_path / "models"
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2,
                         neighbour_hint=True, refine_channels=4)
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    for ratio in (0.25, 0.5):
        torch.manual_seed(0)
        save_checkpoint(folder / f"mask-{ratio:.2f}" / "best.safetensors", LabelMAE(config), CheckpointInfo(config, ratio, space, {"crop": 32}))
    return folder


@pytest.fixture(scope="session")
def trained_family(tmp_path_factory):
    """A small model (mask ratio 0.5) trained for a few seconds on generated scenes with the
    objects strategy, so that it sees an erased object in the image: for tests that need a model
    with an opinion."""
    from lmae_repair.losses import lmae_loss
    from lmae_repair.masking import erase_objects, expand_patch_mask, mixed_training_mask

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=2, enc_dim=64, enc_heads=4, dec_depth=1, dec_dim=64, dec_heads=4,
                         neighbour_hint=True, refine_channels=8)
    model = LabelMAE(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(120):
        scenes = [make_scene(rng, 64, 64) for _ in range(8)]
        images = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i, _ in scenes])
        labels = torch.stack([torch.from_numpy(l).long() for _, l in scenes])
        objects = torch.stack([torch.from_numpy(erase_objects(l, space, 0.5, 64 * 64 * 0.5, rng)) for _, l in scenes])
        inputs, mask, _ = mixed_training_mask(labels, objects, 16, space, 0.5, (1, 2, 2, 4), generator)
        loss = lmae_loss(model(images, inputs, mask), labels, None, expand_patch_mask(mask, (4, 4), 16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("trained") / "models"
    save_checkpoint(folder / "mask-0.50" / "best.safetensors", model.eval(), CheckpointInfo(config, 0.5, space, {"crop": 64}))
    return folder


def as_a_user_without_override(command: list[str]) -> list[str]:
    """`command` run so that permission bits apply to it: as it is for a user, under capsh without
    the capabilities that let root read and write anything when the tests run as root."""
    if os.geteuid() != 0:
        return command
    if shutil.which("capsh") is None:
        pytest.skip("running as root without capsh: permission bits cannot be tried")
    return ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$@"', "sh", *command]
