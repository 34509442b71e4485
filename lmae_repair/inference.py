"""Running a trained model on whole images of any size, in tiles of the size it was trained on.

Sin-cos positions and sequence lengths the model never saw in training do not extrapolate well
(measured on CamVid: PA-mIoU 0.63 in 224 tiles vs 0.37 on the whole 480x368 grid). So whole images
are padded to a multiple of the patch size (and to at least the training crop) and cut into
patch-aligned tiles about the training crop's size, spread evenly with the last one ending at the
border; class probabilities are averaged where tiles overlap. The patch mask is defined on the
whole image's patch grid, and every tile uses its own part of it.

Tile size (`tile_spans`): a side may stretch up to TILE_STRETCH_PATCHES patches beyond the
training crop when that saves a tile. A CamVid frame (480x368, 30x23 patches of 16) then took
2 x 2 tiles of 15 x 14 patches instead of 3 x 2 of 14 x 14 (15 x 13 since the shrink below):
840 tokens instead of 1,176, and `complete` on CamVid val went from 7.8 to 9.8-10.9 pairs/s
(2-core CPU, 2026-11-22) with the same quality (first 40 val pairs, bundled 224-crop models:
random patches 0.5 PA-mIoU 0.726 both ways, erased objects restored 0.153 vs 0.151): one patch beyond the positions seen in training does not
hurt, unlike a whole unseen grid (above). Two patches beyond do not either, and they let a
Pascal VOC frame (500x375, padded to 512x384) take 2 x 2 tiles of 16 x 14 patches instead of
3 x 2: on CamVid val resized to 500x375 (2026-11-23, bundled camvid family, 101 pairs) random
patches 0.5 PA-mIoU 0.761 with one patch and 0.760 with two, objects 0.130 both (restored 0.291
and 0.292), `evaluate` 39 s -> 32 s; and its first 24 pairs resized to 2048x1024, where tiles
become 16 x 16 patches (8 x 4 tiles instead of 9 x 5): random 0.865 vs 0.866, objects 0.084 vs
0.081 (restored 0.245 vs 0.227). (On 2026-11-22, with earlier models, 16 x 16 tiles forced on
CamVid frames cost a little: 0.719 vs 0.726 on 40 pairs.)

A side may also be one patch *shorter* than the crop where tiles overlap (TILE_SHRINK_PATCHES):
the CamVid frame's 23 rows of patches then take two rows of tiles of 13 patches (overlapping by
3 rows) instead of 14 (by 5), tiles of 15 x 13 = 195 tokens against the 196 of training, 780
tokens a frame instead of 840. On all 101 CamVid val pairs (2026-11-23, bundled family, int8,
seed 0): objects PA-mIoU 0.242 -> 0.251 (restored 0.449 -> 0.459), random patches at 0.5 0.7664
-> 0.7658 and at 0.25 0.7938 -> 0.7932; `complete --dry-run` 8.3 pairs/s against 7.2-7.4. Two
patches shorter (12 rows, 180 tokens) was faster still (8.3-8.8) but cost random patches more
(0.763 at 0.5, 0.790 at 0.25, under nearest fill's 0.791), so the shrink stays at one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lmae_repair.errors import LmaeError
from lmae_repair.model import LabelMAE, WholeImageFeatures, context_around
from lmae_repair.neighbourhood import neighbourhood_hint
from lmae_repair.quantise import int8_linears, quantised_branch


def mirror_pad(image: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, height, width) image and (height, width) label tensors: the pair extended at the bottom
    and right by its mirror image (repeated for a pair much smaller than a tile).

    Why not zeros and void: the model never met black, unlabelled borders in training, and they
    cost it near the edge. On CamVid val (480x360, padded to 368: a partial last row of patches),
    random patches at 0.5 PA-mIoU went from 0.766 to 0.774 with mirrored padding; on its frames cut
    to 160x160 (padded to a 224 tile) from 0.679 to 0.696 (objects 0.343 to 0.400). The padded
    patches stay visible and are never edited."""
    widths = ((0, height - label.shape[0]), (0, width - label.shape[1]))
    image_t = torch.from_numpy(np.pad(image, widths + ((0, 0),), mode="symmetric")).permute(2, 0, 1)
    return image_t, torch.from_numpy(np.pad(label, widths, mode="symmetric"))


def bf16_pays(device: torch.device | str) -> bool:
    """bf16 autocast for inference: on a GPU, and on CPUs with native bf16 matrix instructions
    (AVX512-BF16, AMX), where it doubles the model's speed. Elsewhere bf16 is emulated and much
    slower than float32: on a 2-core Intel Xeon with AVX-512 but no AVX512-BF16, `complete` on
    CamVid val ran at 2.9 pairs/s in bf16 against 7.9 in float32. (`torch.ops.mkldnn.
    _is_mkldnn_bf16_supported()` says yes on any AVX-512 CPU, so it cannot decide this.)"""
    device = torch.device(device)
    if device.type == "cuda":  # native from Ampere (compute capability 8) on; emulated before
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in native)


PRECISIONS = ("auto", "bf16", "fp32", "int8")


def int8_pays(device: torch.device | str) -> bool:
    """int8 linear layers (`quantise.Int8Linear`) for inference on CPUs with VNNI (int8 dot
    products) but no native bf16: on a 2-core Intel Xeon with AVX512-VNNI, `complete` on CamVid
    val ran at 9.2-9.4 pairs/s against 7.9 in float32, with the same `evaluate` figures to three
    decimals. Where bf16 is native it is faster than int8 (AMD EPYC: encoder 42 ms bf16, 70 ms int8)."""
    if torch.device(device).type != "cpu" or "x86" not in torch.backends.quantized.supported_engines:
        return False
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def resolve_device(name: str) -> torch.device:
    """--device as a torch device: auto is the GPU when there is one; a clear error for a device
    this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise LmaeError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmaeError(f"--device {name}: no CUDA GPU is available (use --device cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise LmaeError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return device


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """--precision: `auto` becomes bf16 where it is native (`bf16_pays`), int8 where that pays
    (`int8_pays`), float32 elsewhere; an explicit choice is kept (int8 runs on a CPU only)."""
    if requested not in PRECISIONS:
        raise LmaeError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "int8" and torch.device(device).type != "cpu":
        raise LmaeError("--precision int8 runs on a CPU only; use bf16 or fp32 on a GPU")
    if requested != "auto":
        return requested
    return "bf16" if bf16_pays(device) else "int8" if int8_pays(device) else "fp32"


def fuse_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with each BatchNorm folded into the convolution before it
    (the image branch's U-Net): at inference a BatchNorm is a fixed per-channel affine map, and
    folding it saves a full-resolution pass over memory per convolution. Same outputs up to
    rounding. Models without BatchNorm come back as they are."""
    if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
        return model
    fused = copy.deepcopy(model).eval()
    for sequence in [module for module in fused.modules() if isinstance(module, nn.Sequential)]:
        for index in range(len(sequence) - 1):
            conv, norm = sequence[index], sequence[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequence[index] = fuse_conv_bn_eval(conv, norm)
                sequence[index + 1] = nn.Identity()
    return fused


def branch_in_int8(precision: str, device: torch.device | str) -> bool:
    """Whether the image branch's U-Net runs in int8 (quantise.Int8UNet): with int8, and with bf16
    on a CPU that also has VNNI. There the transformer's matrix products are faster in bf16 than
    in int8, but the U-Net's convolutions are not: a 480x368 frame took 34 ms in int8 against
    86 ms in bf16 (148 in float32) on a 2-core AMD EPYC with AVX512-BF16 and VNNI (2026-11-25)."""
    return precision == "int8" or (precision == "bf16" and int8_pays(device))


def for_inference(model: nn.Module, precision: str, int8_calibration: list | None = None) -> nn.Module:
    """The model as inference runs it: BatchNorms folded into their convolutions
    (`fuse_batch_norms`); with `precision` int8 its linear layers (nearly all of the
    transformer's matrix work) become int8 ones (`quantise.Int8Linear`); with int8, and with bf16
    on a CPU with VNNI (`branch_in_int8`), its image branch, if the checkpoint carries
    `int8_calibration`, becomes a statically quantised int8 U-Net (quantise.py). bf16 is applied
    as autocast around each pass (see `predict_many`)."""
    device = next(model.parameters()).device
    if precision == "int8" and device.type != "cpu":
        raise LmaeError("int8 runs on a CPU only; use bf16 or fp32 on a GPU")
    if branch_in_int8(precision, device) and getattr(model, "branch", None) is not None:
        branch = quantised_branch(model.branch, int8_calibration or [])
        if branch is not None:
            model = copy.deepcopy(model)
            model.branch = branch
    model = fuse_batch_norms(model)
    return int8_linears(model) if precision == "int8" else model


@dataclass
class TileProgress:
    """How far `predict_many` is through the tiles of the pairs it runs (total 0 between runs),
    for the progress lines (`cli.PairProgress`). Why: pairs are counted only when their batch is
    done, and one 6000x4000 pair took 10 minutes of a 2-core CPU, whose log said '0/1 pairs'
    every minute with no sign of how much was left."""

    done: int = 0
    total: int = 0


TILES = TileProgress()


TILE_STRETCH_PATCHES = 2  # how far a tile's side may exceed the training crop, in patches
TILE_SHRINK_PATCHES = 1  # how much shorter than the training crop a side may be, where tiles overlap


def tile_spans(length: int, crop: int, patch_size: int) -> tuple[int, list[int]]:
    """(tile side, start offsets) of the fewest tiles covering [0, length) along one side, in
    pixels; `length` is a multiple of `patch_size` and at least `crop`. A side may be up to
    TILE_STRETCH_PATCHES patches longer than `crop`, and TILE_SHRINK_PATCHES shorter where
    several tiles overlap (less overlap, fewer tokens); tiles overlap evenly, and the last one
    ends at `length`."""
    patches, crop_patches = length // patch_size, max(crop // patch_size, 1)
    count = -(-patches // (crop_patches + TILE_STRETCH_PATCHES))
    side = max(-(-patches // count), min(crop_patches - TILE_SHRINK_PATCHES, patches))
    if count == 1:
        return length, [0]
    origins = [round(j * (patches - side) / (count - 1)) * patch_size for j in range(count)]
    return side * patch_size, origins


@torch.no_grad()
def predict_probabilities(
    model: LabelMAE,
    image: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    crop: int,
    tiles_per_pass: int = 16,
    autocast: bool = False,
    hint: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class probabilities (N, H, W) for one image (3, H, W) whose sides are multiples of the patch
    size and at least the training `crop`; `mask` (L,) marks the hidden patches of its whole grid."""
    return predict_many(model, [image], [label], [mask], crop, tiles_per_pass, autocast, [hint])[0]


@torch.no_grad()
def predict_many(
    model: LabelMAE,
    images: list[torch.Tensor],
    labels: list[torch.Tensor],
    masks: list[torch.Tensor],
    crop: int,
    tiles_per_pass: int = 16,
    autocast: bool = False,
    hints: list[torch.Tensor | None] | None = None,
    needed: list[torch.Tensor] | None = None,
    context_radius: int = 0,
) -> list[torch.Tensor]:
    """`predict_probabilities` for several images of any sizes at once: the tiles of all of them
    share passes of `tiles_per_pass` (tiles of one shape per pass, see `tile_spans`), so small images
    still fill the batch. Images may be float in [0, 1] or uint8 (made float one batch of tiles at
    a time, which keeps large images small).

    `hints` are the whole-image nearest-fill hints of a `neighbour_hint` model (computed from the
    whole image's visible labels when None, not from each tile's). `needed` (one (L,) bool per
    image) marks the patches whose probabilities will be used; the others may come out unrefined
    (see `LabelMAE.forward`); with `needed`, the encoder and decoder attend only within
    `context_radius` patches of the needed ones (`model.context_around`; 0: the whole tile).
    """
    p, n = model.config.patch_size, model.config.num_classes
    hints = list(hints) if hints is not None else [None] * len(images)
    if model.config.neighbour_hint:
        hints = [
            h if h is not None else neighbourhood_hint(label[None], mask[None], p, n)[0]
            for h, label, mask in zip(hints, labels, masks)
        ]
    else:
        hints = [None] * len(images)
    features = whole_image_features(model, images, autocast, labels) if needed is not None else FeatureTable.none(len(images))
    grid_masks = [m.view(im.shape[1] // p, im.shape[2] // p) for m, im in zip(masks, images)]
    grid_needed = None if needed is None else [m.view(im.shape[1] // p, im.shape[2] // p) for m, im in zip(needed, images)]
    probs = [torch.zeros(n, *im.shape[1:], device=im.device) for im in images]
    counts = [torch.zeros(1, *im.shape[1:], device=im.device) for im in images]
    windows = tile_windows(images, crop, p)
    if grid_needed is not None and context_radius:
        windows = by_context(windows, grid_masks, grid_needed, context_radius, p)
    TILES.done, TILES.total = 0, len(windows)
    try:
        for chunk in _same_shape_batches(windows, tiles_per_pass):
            tiles = TileBatch.cut(chunk, images, labels, grid_masks, grid_needed, features, hints, p)
            with torch.autocast(tiles.images.device.type, dtype=torch.bfloat16, enabled=autocast):
                if tiles.needed is None:
                    logits = model(tiles.images, tiles.labels, tiles.masks, tiles.hints)
                else:
                    logits = model.forward_patches(
                        tiles.images, tiles.labels, tiles.masks, tiles.needed, tiles.hints, tiles.features, context_radius
                    )
            if tiles.needed is None:
                for (i, rows, cols), prob in zip(tiles.places, logits.float().softmax(1)):
                    probs[i][:, rows, cols] += prob
                    counts[i][:, rows, cols] += 1
            else:
                add_patches(probs, counts, chunk, tiles.needed, logits.float().softmax(1), p)
            TILES.done += len(chunk)
    finally:  # between runs (and after a failed one) no tiles are under way
        TILES.done = TILES.total = 0
    return [prob / count.clamp_(min=1) for prob, count in zip(probs, counts)]


def tile_windows(images: list[torch.Tensor], crop: int, p: int) -> list[tuple]:
    """(tile height, tile width, image index, y, x) of every tile of every image (`tile_spans`),
    sorted by tile shape so that a pass holds tiles of one shape."""
    windows = []
    for i, image in enumerate(images):
        (tile_h, ys), (tile_w, xs) = (tile_spans(side, crop, p) for side in image.shape[1:])
        windows += [(tile_h, tile_w, i, y, x) for y in ys for x in xs]
    return sorted(windows, key=lambda window: window[:2])


def by_context(windows: list[tuple], grid_masks: list[torch.Tensor], grid_needed: list[torch.Tensor], radius: int, p: int) -> list[tuple]:
    """`windows` (sorted by tile shape) with the tiles of each shape ordered by how many visible
    patches the encoder reads around their needed patches (`model.context_around`).

    Why: the encoder and decoder pad each pass's tiles to its longest, so a pass mixing a tile
    whose needed patches are everywhere with tiles that need a corner runs them all whole. On
    CamVid val (bundled camvid family, 16 tiles a pass) the encoder's padded tokens were a third
    more than its tokens in tile order (42,276 for 31,820), an eighth more in this order
    (36,068); the decoder's 18% more (56,908 for 48,297). The encoder, wider and deeper, is most
    of the work."""
    contexts = [(context_around(grid[None], radius)[0] & ~mask).cpu() for grid, mask in zip(grid_needed, grid_masks)]

    def context_size(window: tuple) -> int:
        tile_h, tile_w, i, y, x = window
        return int(contexts[i][y // p : (y + tile_h) // p, x // p : (x + tile_w) // p].sum())

    return sorted(windows, key=lambda window: (window[:2], context_size(window)))


@dataclass
class TileBatch:
    """The model's input for one pass: the same window cut from each image's pixels, labels,
    patch masks (and needed patches, hints and image-branch features where there are any)."""

    places: list[tuple]  # (image index, row slice, column slice) of each tile
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    needed: torch.Tensor | None
    features: WholeImageFeatures | None
    hints: torch.Tensor | None

    @classmethod
    def cut(cls, chunk, images, labels, grid_masks, grid_needed, features: "FeatureTable", hints, p: int) -> "TileBatch":
        th, tw = chunk[0][:2]
        places = [(i, slice(y, y + th), slice(x, x + tw)) for _, _, i, y, x in chunk]
        crop_images = torch.stack([images[i][:, rows, cols] for i, rows, cols in places])
        if crop_images.dtype == torch.uint8:  # made float a pass at a time: large images stay small
            crop_images = crop_images.float().div_(255.0)

        def crop_grid(grids: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([grids[i][y // p : (y + th) // p, x // p : (x + tw) // p].reshape(-1) for _, _, i, y, x in chunk])

        def crop_pixels(per_image: list) -> torch.Tensor | None:
            if any(per_image[i] is None for i, _, _ in places):
                return None
            return torch.stack([per_image[i][..., rows, cols] for i, rows, cols in places])

        return cls(
            places, crop_images, torch.stack([labels[i][rows, cols] for i, rows, cols in places]), crop_grid(grid_masks),
            None if grid_needed is None else crop_grid(grid_needed), features.for_tiles(chunk), crop_pixels(hints),
        )


@dataclass
class FeatureTable:
    """The U-Net features of whole images (`whole_image_features`) in one table of pixel rows,
    each image row by row, and the row where each image begins (None: no features; its tiles
    run the branch themselves)."""

    table: torch.Tensor | None  # (pixels of the images that have features, w)
    firsts: list[int | None]
    sizes: list[tuple[int, int]]  # each image's (height, width)

    @classmethod
    def none(cls, count: int) -> "FeatureTable":
        """No features for any of `count` images."""
        return cls(None, [None] * count, [])

    def image(self, i: int) -> torch.Tensor | None:
        """Image i's features (H, W, w), a view of the table; None if it has none."""
        if self.firsts[i] is None:
            return None
        height, width = self.sizes[i]
        return self.table[self.firsts[i] : self.firsts[i] + height * width].view(height, width, -1)

    def for_tiles(self, chunk: list[tuple]) -> WholeImageFeatures | None:
        """The features of a pass's tiles (`chunk`: (height, width, image index, y, x) each), or
        None when one of their images has none."""
        if any(self.firsts[i] is None for _, _, i, _, _ in chunk):
            return None
        widths = [self.sizes[i][1] for _, _, i, _, _ in chunk]
        starts = [self.firsts[i] + y * width + x for (_, _, i, y, x), width in zip(chunk, widths)]
        device = self.table.device
        return WholeImageFeatures(self.table, torch.tensor(starts, device=device), torch.tensor(widths, device=device))


# Larger images run the image branch tile by tile: on 2048x1024 pairs (tiles that do not
# overlap) one pass over the whole image was slower (0.5 against 0.7 pairs/s model only, 2-core
# Xeon: its activations leave the cache) and took 3.6 GB instead of 2.5.
WHOLE_IMAGE_BRANCH_PIXELS = 600_000


@torch.no_grad()
def whole_image_features(
    model: LabelMAE, images: list[torch.Tensor], autocast: bool = False, labels: list[torch.Tensor] | None = None,
) -> FeatureTable:
    """The image branch's features of each whole image, written straight into one table of pixel
    rows in the dtype the refiner runs in (none for images above WHOLE_IMAGE_BRANCH_PIXELS, and
    for models without a branch), for the tiles to share (`WholeImageFeatures`).

    Why not per tile: the U-Net is a stack of convolutions with no positions, so one pass over
    the image gives every tile its features, without computing the overlap of neighbouring tiles
    twice and with real context instead of zero padding where tiles meet inside the image."""
    sizes = [tuple(image.shape[1:]) for image in images]
    firsts, rows = [], 0
    for height, width in sizes:
        fits = getattr(model, "branch", None) is not None and height * width <= WHOLE_IMAGE_BRANCH_PIXELS
        firsts.append(rows if fits else None)
        rows += height * width if fits else 0
    table = None
    labels = labels if labels is not None else [None] * len(images)
    for image, label, first, (height, width) in zip(images, labels, firsts, sizes):
        if first is None:
            continue
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=autocast):
            whole = model.image_features(image[None], None if label is None else label[None])[0]  # (w, H, W)
        if table is None:
            table = whole.new_empty(rows, whole.shape[0], dtype=torch.bfloat16 if autocast else whole.dtype)
        table[first : first + height * width].view(height, width, -1).copy_(whole.permute(1, 2, 0))
    return FeatureTable(table, firsts, sizes)


def _same_shape_batches(windows: list[tuple], tiles_per_pass: int):
    """Batches of at most `tiles_per_pass` windows that share a tile shape (windows sorted by shape)."""
    for _, same_shape in groupby(windows, key=lambda window: window[:2]):
        same_shape = list(same_shape)
        for start in range(0, len(same_shape), tiles_per_pass):
            yield same_shape[start : start + tiles_per_pass]


def add_patches(probs, counts, chunk, needed: torch.Tensor, patch_probs: torch.Tensor, p: int) -> None:
    """Accumulate (K, N, p, p) patch probabilities (tiles' `needed` patches, in `nonzero` order)
    into the whole images' probabilities and counts; patches never needed keep count 0. `chunk`
    holds the tiles' (height, width, image index, y, x), all of one shape."""
    tile_h, tile_w = chunk[0][:2]
    tile_index, row, column = needed.view(len(chunk), tile_h // p, tile_w // p).nonzero(as_tuple=True)
    for j, (_, _, i, y, x) in enumerate(chunk):
        rows = tile_index == j
        if not rows.any():
            continue
        n, height, width = probs[i].shape
        grid_y, grid_x = row[rows] + y // p, column[rows] + x // p
        by_patch = probs[i].view(n, height // p, p, width // p, p).permute(1, 3, 0, 2, 4)
        by_patch.index_put_((grid_y, grid_x), patch_probs[rows], accumulate=True)
        count_by_patch = counts[i].view(1, height // p, p, width // p, p).permute(1, 3, 0, 2, 4)
        count_by_patch.index_put_((grid_y, grid_x), torch.ones_like(patch_probs[rows][:, :1]), accumulate=True)
