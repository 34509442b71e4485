"""Training data: a scan of the labels (class frequencies, bad pairs) and a random-crop dataset."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lmae_repair.data import Pair, check_same_size, read_label, read_pair
from lmae_repair.errors import LmaeError
from lmae_repair.inference import mirror_pad
from lmae_repair.labelspace import LabelSpace
from lmae_repair.masking import erase_objects


@dataclass
class LabelScan:
    """What one pass over the label files found."""

    histogram: np.ndarray  # (256,) pixel count per value, over the readable pairs
    good: list[Pair]
    values: dict[Pair, np.ndarray]  # the distinct values in each readable label
    problems: list[str] = field(default_factory=list)
    palette: list[int] | None = None
    shapes: dict[Pair, tuple[int, int]] = field(default_factory=dict)  # each readable label's (height, width)

    def median_short_side(self, pairs: list[Pair]) -> int:
        """The scale the model will learn its objects at (`repair.working_scale`)."""
        return int(np.median([min(self.shapes[pair]) for pair in pairs]))

    def max_value(self, void_id: int) -> int | None:
        values = [v for v in np.flatnonzero(self.histogram) if v != void_id]
        return int(max(values)) if values else None

    def outside(self, space: LabelSpace) -> tuple[list[Pair], list[str]]:
        """(pairs whose values all fit the label space, one line per pair that does not)."""
        fitting, problems = [], []
        for pair in self.good:
            bad = space.outside_values(self.values[pair])
            if bad:
                problems.append(f"{pair.label}: {space.outside_message(bad)}")
            else:
                fitting.append(pair)
        return fitting, problems

    def unannotated(self, pairs: list[Pair], space: LabelSpace) -> list[Pair]:
        """The `pairs` whose labels hold void only (Cityscapes' gtFine/test): training would spend
        crops on them and validation would score nothing on them."""
        return [pair for pair in pairs if set(self.values[pair].tolist()) <= {space.void_id}]


def scan_labels(pairs: list[Pair], on_step: Callable[[], None] | None = None) -> LabelScan:
    """Read every label (and its image's header): value histogram, first palette, and the pairs
    that cannot be used, each with a one-line reason."""
    histogram = np.zeros(256, dtype=np.int64)
    good, values, problems, palette, shapes = [], {}, [], None, {}
    for pair in pairs:
        try:
            label = read_label(pair.label)
            check_same_size(pair, label.values.shape)
        except LmaeError as exc:
            problems.append(str(exc))
        else:
            counts = np.bincount(label.values.ravel(), minlength=256)
            histogram += counts
            values[pair] = np.flatnonzero(counts)
            shapes[pair] = label.values.shape
            good.append(pair)
            if palette is None and label.palette is not None:
                palette = label.palette
        if on_step is not None:
            on_step()
    return LabelScan(histogram, good, values, problems, palette, shapes)


def to_tensors(image: np.ndarray, label: np.ndarray, space: LabelSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 image and HxW label -> float (3,H,W) in [0,1] and long (H,W) with unknown
    values mapped to void."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return image_t, label_tensor(label, space)


def label_tensor(label: np.ndarray, space: LabelSpace) -> torch.Tensor:
    """HxW uint8 label -> long (H,W) with values outside the label space mapped to void. Always a
    copy: for an int64 label (a notebook's) `.long()` had been the caller's memory, and the void
    was written into the caller's array."""
    label_t = torch.from_numpy(np.ascontiguousarray(label)).to(torch.long, copy=True)
    label_t[(label_t >= space.num_classes) & (label_t != space.void_id)] = space.void_id
    return label_t


# Objects the `objects` training strategy may erase: up to this share of the crop, found in the
# crop (at 224: 5,017 pixels, 2.9% of a CamVid frame, a tenth of a concrete image). `evaluate`
# erases objects of up to 5% of the whole image (8,640 pixels on a CamVid frame); training on
# those instead (found in the whole label, then cut to the crop) was measured against this rule
# on 2026-11-24 and was not better (models/camvid/README.md, "Objects slot, fifteenth round").
OBJECT_MAX_SHARE_OF_CROP = 0.1
OBJECT_ERASE_SHARE = 0.5


def gap_pixel_counts(pairs: list[Pair], space: LabelSpace, crop: int) -> list[int]:
    """Per class, the pixels of the objects that the `objects` strategy may erase (every object
    small enough for a `crop` window), summed over the labels: the class frequencies of what an
    objects checkpoint is asked to rebuild, for `--weights-from gaps`. Unreadable labels are
    left out (the label scan reports them)."""
    counts = np.zeros(space.num_classes, np.int64)
    max_area = OBJECT_MAX_SHARE_OF_CROP * crop * crop
    rng = np.random.default_rng(0)  # every object is taken (share 1), so the draw never matters
    for pair in pairs:
        try:
            label = read_label(pair.label).values
        except LmaeError:
            continue
        erased = erase_objects(label, space, 1.0, max_area, rng)
        counts += np.bincount(label[erased], minlength=256)[: space.num_classes]
    return [int(c) for c in counts]


def photometric_jitter(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A (3, H, W) float image in [0, 1] as another camera, lens or encoder might have given it:
    each independently, blur (p 0.3, Gaussian sigma 0.3-1.5), a low-resolution source (p 0.2, shrunk
    1.3-2.5x and enlarged back), JPEG (p 0.2, quality 40-90), brightness and contrast (p 0.5).

    Why: trained on crops and flips alone, the camvid objects slot lost a third of what it restores
    to a mild blur (CamVid val, Gaussian sigma 0.7: objects restored 0.818 -> 0.629, PA-mIoU 0.577 ->
    0.422), and as much on frames enlarged 2x and read shrunk back (README "Working scale"):
    its image evidence was CamVid's own sharpness."""
    pixels = (image.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    height, width = pixels.shape[:2]
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (0, 0), float(rng.uniform(0.3, 1.5)))
    if rng.random() < 0.2:
        factor = float(rng.uniform(1.3, 2.5))
        small = cv2.resize(pixels, (max(1, round(width / factor)), max(1, round(height / factor))), interpolation=cv2.INTER_AREA)
        pixels = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.2:  # OpenCV encodes BGR: RGB given as it is would be compressed with the wrong luma weights
        _, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 91))])
        pixels = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    out = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
    if rng.random() < 0.5:
        contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(-0.1, 0.1)
        out = ((out - 0.5) * contrast + 0.5 + brightness).clamp_(0.0, 1.0)
    return out


class CropDataset(Dataset):
    """Random `crop` x `crop` windows with random horizontal flips (smaller images are extended by
    their mirror image, as at inference, with void labels there: `_random_window`), each with the objects that the `objects` strategy would erase from it (see masking.py);
    with `photometric`, images also pass `photometric_jitter`.
    A pair that fails to load is reported once on stderr and replaced by another."""

    def __init__(self, pairs: list[Pair], space: LabelSpace, crop: int, augment: bool = True, photometric: bool = False):
        self.pairs, self.space, self.crop, self.augment = pairs, space, crop, augment
        self.photometric = photometric and augment
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`key`: an index, or (index, seed) from `SeededSampler`, whose seed alone then draws the
        crop's window, flip, jitter and objects (whatever process or worker reads it)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None  # None: torch's own
        for attempt in range(len(self.pairs)):
            pair = self.pairs[(index + attempt) % len(self.pairs)]
            try:
                image, label = read_pair(pair)
                break
            except LmaeError as exc:
                if str(pair.label) not in self._reported:
                    self._reported.add(str(pair.label))
                    print(f"skipped: {exc}", file=sys.stderr)
        else:
            raise LmaeError("no readable training pair left")
        image_t, label_t = to_tensors(image, label.values, self.space)
        image_t, label_t = self._random_window(image_t, label_t, generator)
        rng = np.random.default_rng(int(torch.randint(2**31, (), generator=generator)))
        if self.photometric:
            image_t = photometric_jitter(image_t, rng)
        max_area = OBJECT_MAX_SHARE_OF_CROP * self.crop * self.crop
        objects = erase_objects(label_t.numpy().astype(np.uint8), self.space, OBJECT_ERASE_SHARE, max_area, rng)
        return image_t, label_t, torch.from_numpy(objects)

    def _random_window(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.crop
        height, width = label.shape
        if height < c or width < c:  # extended by its mirror image, as inference extends it
            image, label = mirror_pad(image.permute(1, 2, 0).numpy(), label.numpy(), max(height, c), max(width, c))
            # but not its labels: mirrored, they would show the hidden patches' answers beside them
            # (a 50-pixel-wide image fills a 224 crop with four more copies of itself), and weigh
            # the image's pixels four times in the loss; void is neither learned nor scored
            label[height:, :] = self.space.void_id
            label[:, width:] = self.space.void_id
            height, width = label.shape
        top = int(torch.randint(0, height - c + 1, (), generator=generator)) if self.augment else (height - c) // 2
        left = int(torch.randint(0, width - c + 1, (), generator=generator)) if self.augment else (width - c) // 2
        image, label = image[:, top : top + c, left : left + c], label[top : top + c, left : left + c]
        if self.augment and torch.rand((), generator=generator) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()


class SeededSampler(Sampler):
    """Each epoch's order of the pairs, and a seed per crop, drawn from (seed, epoch) alone: a run
    resumed after epoch k then reads what the uninterrupted run read from epoch k+1 on, whatever
    the number of loading workers (which would otherwise carry their random state across epochs).
    Under torchrun each process takes every world_size-th item of the one shuffled order (padded
    by repeating it, as DistributedSampler does), so an epoch still covers the data once."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    @property
    def repeated(self) -> int:
        """How many pairs the padding reads twice an epoch, summed over the processes: 1 for 7
        pairs on 2 processes (shares of 4 and 4), 0 whenever the pairs divide by the processes."""
        return len(self) * self.world_size - self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)  # any --seed
        order = torch.randperm(self.size, generator=generator).tolist()
        total = len(self) * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        seeds = torch.randint(2**62, (total,), generator=generator).tolist()
        return iter(list(zip(order, seeds))[self.rank :: self.world_size])
