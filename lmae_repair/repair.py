"""Repairing one label: route it to a checkpoint, hide its background-heavy patches, rebuild them.

Routing (paper, Fig. 4): a patch is *background-heavy* when at least `threshold` of its pixels
are background or void. The share s of background-heavy patches in a label picks, among the
available checkpoints, the one whose mask ratio m is nearest to s (ties go to the larger ratio);
a label with no background-heavy patch is left as it is. That model then hides the floor(L*m)
patches with the highest background ratio, exactly as it was trained to, and rebuilds them;
among patches with the same ratio, those with more void go first (void is certainly a hole).

Gap kind: a family may also hold a checkpoint meant for gaps that follow the image's edges
(`gap_kind` "objects": objects an annotator left unlabelled) beside one for any gap (holes cut
across the scene: an unfinished label). At the chosen mask ratio, a label whose gaps follow the
image's edges (`gap_edge_contrast`) goes to the objects checkpoint where the family has one there,
any other label to the checkpoint for any gap.

Do no harm: only pixels inside hidden patches may change, and among those only pixels that were
background or void, unless `overwrite_labeled` is set. Everything else is copied from the input.
Background (which may be right) changes only where the model is confident (`min_confidence`) and
not where the change would only move the border of an annotated region (`border_moves`).

Working scale: the models know objects at the size they had in the training images. A pair whose
short side is at least RESCALE_FROM times the training images' median short side (stored in the
checkpoint) is shrunk to that scale for routing and for the model (`shrink_pair`), and the
model's probabilities are brought back to the input's size; only the input's own pixels are ever
changed, at its full resolution. Smaller pairs, and checkpoints that do not record the scale, are
read as they are (`working_scale`).

Native resolution: a label of any size is cut into patches from its top-left corner; a patch's
background ratio counts only its pixels inside the label, so the partial last row/column of
patches is judged like the others. For the model the image is padded (image black, label void) to
whole patches and to at least one tile; tiles of the training crop size then cover it (see
`inference.py`); padding patches are never hidden, and the result is cropped back to the input's
exact size.

The work is split in three steps so that `complete` can overlap them: `prepare` (CPU, in loader
workers), `predict` (the model, on batches of tiles from several labels), `finish` (CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lmae_repair.checkpoints import CheckpointInfo
from lmae_repair.class_bias import apply_class_bias, normalised, weigh_classes
from lmae_repair.continuation import NO_CLASS, agreements, boost_continued_classes, reach_at_input
from lmae_repair.dataset import label_tensor
from lmae_repair.defaults import DEFAULT_THRESHOLD
from lmae_repair.errors import LmaeError
from lmae_repair.inference import mirror_pad, predict_many, resolve_precision
from lmae_repair.masking import expand_patch_mask, mask_count, missing_pixels, patch_background_ratio, patch_share, top_patches
from lmae_repair.model import LabelMAE
from lmae_repair.neighbourhood import neighbourhood_hint

EDGE_FOLLOWING = 1.6  # gap_edge_contrast at or above which a label's gaps follow the image's edges
GAP_CONTRAST_PIXELS = 4_000_000  # larger images are measured at this size
VOID_FIRST = 1e-3  # tie-break weight of a patch's void share when choosing the patches to hide
GAP_VOTE_WEIGHT = 0.5  # objects checkpoints: weight of a void gap's mean probabilities (`lean_on_whole_gaps`)
GAP_VOTE_MAX_SHARE = 0.1  # ... for gaps of at most this share of the image (larger ones: not one object)
SURROUND_PENALTY = 5.0  # objects checkpoints: how much less likely a gap is the classes on its border (`not_what_surrounds`)
BORDER_MARGIN = 3  # pixels: background turned into class c only this close to class c is a border move
RESCALE_FROM = 1.5  # a pair this many times larger than the training images is read at their scale
COVERAGE_SLACK = 0.02  # ... unless that leaves this much more of its gaps unhidden (`as_the_model_sees`)


def heavy_share(bg_ratio: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of patches whose background-or-void ratio is at least `threshold`."""
    return float((bg_ratio >= threshold).float().mean())


def label_heavy_share(label: np.ndarray, info: CheckpointInfo, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Routing input: the share of background-heavy patches of a label at native resolution."""
    ratio = patch_background_ratio(label_tensor(label, info.label_space), info.model.patch_size, info.label_space)
    return heavy_share(ratio.flatten(), threshold)


def choose_checkpoint(share: float, mask_ratios: list[float]) -> int | None:
    """Index of the mask ratio nearest to `share` (ties: the larger ratio); None if share is 0."""
    if share <= 0.0 or not mask_ratios:
        return None
    return min(range(len(mask_ratios)), key=lambda i: (abs(mask_ratios[i] - share), -mask_ratios[i]))


def gap_edge_contrast(image: np.ndarray, label: np.ndarray, space) -> float | None:
    """How closely the border of a label's gaps (its background or void) follows the edges of the
    image: the image's mean gradient magnitude on a 3-pixel band along that border, over its mean
    on the whole image; None when the gaps have no border inside the image.

    Why: a gap left where an object is (a missed car, the void CamVid leaves between objects)
    has the object's outline, which the image shows as an edge; a gap cut across the scene (an
    unfinished label, erased patches) runs over whatever is there. `benchmarks/gap_kind.py`,
    5th-95th percentile: CamVid val, half the small objects erased 1.9-2.6, random 16-pixel patches
    erased at 0.25 1.0-1.4 (none of them at 1.6 or above); CamVid train 1.4-3.2 (91% at 1.6 or
    above) and 1.0-1.4 (1.6%). Where background is the missing value (concrete) the gaps are the
    whole background and this says nothing (38-61% above 1.6 whatever the damage): such a family
    holds no objects checkpoint."""
    if label.size > GAP_CONTRAST_PIXELS:  # a huge image: measured on a smaller copy, in bounded memory
        scale = (GAP_CONTRAST_PIXELS / label.size) ** 0.5
        size = (max(1, round(label.shape[1] * scale)), max(1, round(label.shape[0] * scale)))
        image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    gaps = missing_pixels(label, space.background_id, space.void_id)
    band = cv2.morphologyEx(gaps.view(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    band[:2], band[-2:], band[:, :2], band[:, -2:] = 0, 0, 0, 0  # the image's own border is no gap border
    if not band.any():
        return None
    grey = cv2.GaussianBlur(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32), (3, 3), 0)
    gradient = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    return float(cv2.mean(gradient, mask=band)[0] / max(float(cv2.mean(gradient)[0]), 1e-6))


def choose_for_gaps(choice: int, infos: list[CheckpointInfo], follows_edges) -> int:
    """Among the checkpoints of the chosen one's mask ratio, the one for this label's kind of gap:
    `gap_kind` "objects" where the gaps follow the image's edges (`follows_edges()`, evaluated only
    when there is a choice to make), else one for any gap."""
    ratio = infos[choice].mask_ratio
    same = [i for i, info in enumerate(infos) if info.mask_ratio == ratio]
    if len({infos[i].gap_kind for i in same}) == 1:
        return choice
    wanted = "objects" if follows_edges() else "any"
    return next((i for i in same if infos[i].gap_kind == wanted), choice)


def gaps_follow_edges(image: np.ndarray, label: np.ndarray, space) -> bool:
    contrast = gap_edge_contrast(image, label, space)
    return contrast is not None and contrast >= EDGE_FOLLOWING


@dataclass
class Prepared:
    """One label made ready for the model (padded to whole tiles), and what is needed to finish."""

    image: torch.Tensor  # (3, Hp, Wp) uint8
    label: torch.Tensor  # (Hp, Wp) uint8, padded with its mirror image (uint8 throughout: large images stay small)
    mask: torch.Tensor  # (Lp,) bool, True on the hidden patches of the padded grid
    hint: torch.Tensor | None  # (Hp, Wp) uint8 nearest-fill hint, for neighbour_hint models
    original: np.ndarray  # (H, W) the input label as it was
    size: tuple[int, int]  # (h, w) the pair as the model reads it: (H, W), or smaller (`working_scale`)
    kept: np.ndarray | None = None  # (H, W) bool: void pixels annotated all the same (`data.annotated_void`), never changed

    def hidden_pixels(self, patch_size: int) -> torch.Tensor:
        """(Hp, Wp) bool: the pixels of the hidden patches, at the model's size."""
        grid = (self.label.shape[0] // patch_size, self.label.shape[1] // patch_size)
        return expand_patch_mask(self.mask[None], grid, patch_size)[0]

    def at_input(self, plane: torch.Tensor, smooth: bool = False) -> torch.Tensor:
        """A (Hp, Wp) or (N, Hp, Wp) map at the model's size, cropped to the pair and brought to
        the input's (H, W): nearest neighbour (masks, classes), or bilinear with `smooth`
        (probabilities)."""
        plane = plane[..., : self.size[0], : self.size[1]]
        if self.size == self.original.shape:
            return plane
        batch = plane.float()[None] if plane.dim() == 3 else plane.float()[None, None]
        mode = dict(mode="bilinear", align_corners=False) if smooth else dict(mode="nearest-exact")
        resized = F.interpolate(batch, size=self.original.shape, **mode)
        return resized[0] if plane.dim() == 3 else resized[0, 0].to(plane.dtype)

    def hidden_at_input(self, patch_size: int) -> torch.Tensor:
        """(H, W) bool: the pixels of the hidden patches, at the input's size."""
        return self.at_input(self.hidden_pixels(patch_size))

    def fillable_pixels(self, patch_size: int, space) -> torch.Tensor:
        """(H, W) bool at the input's size: the background or void pixels of the hidden patches
        the model rebuilds, the only ones `merge` may change (without `overwrite_labeled`)."""
        grid = (self.label.shape[0] // patch_size, self.label.shape[1] // patch_size)
        rebuilt = expand_patch_mask(self.editable_patches(patch_size, space, False)[None], grid, patch_size)[0]
        missing = missing_pixels(torch.from_numpy(self.original), space.background_id, space.void_id)
        if self.kept is not None:
            missing &= ~torch.from_numpy(self.kept)
        return self.at_input(rebuilt) & missing

    def editable_patches(self, patch_size: int, space, overwrite_labeled: bool) -> torch.Tensor:
        """(Lp,) bool: the hidden patches where `merge` may change a pixel (those holding
        background or void, or every hidden patch with `overwrite_labeled`): the only patches whose
        prediction is used."""
        if overwrite_labeled:
            return self.mask
        p = patch_size
        height, width = self.label.shape
        missing = missing_pixels(self.label, space.background_id, space.void_id)
        return self.mask & missing.view(height // p, p, width // p, p).any(3).any(1).flatten()


def working_scale(shape: tuple[int, int], info: CheckpointInfo) -> float:
    """By how much a pair of this (H, W) is shrunk for the model: its short side over the training
    images' median short side when that is at least RESCALE_FROM, else 1 (read as it is).

    Why: the model learned objects, and how much of a scene a 224 tile holds, at the size of its
    training images. Bundled camvid family on CamVid val (first 40 pairs) upscaled 2x to 960x720,
    read as it is: objects PA-mIoU 0.202 against 0.443 at 480x360; see the README "Working
    scale" for the figures with the pairs shrunk back."""
    trained = info.training.get("image_short_side")
    if not trained:
        return 1.0
    factor = min(shape) / float(trained)
    return factor if factor >= RESCALE_FROM else 1.0


def shrink_pair(image: np.ndarray, label: np.ndarray, factor: float, space) -> tuple[np.ndarray, np.ndarray]:
    """The pair `factor` times smaller: the image area-averaged; each label pixel the value that
    covers most of its footprint, except that any void in the footprint makes it void (void is a
    hole for certain: a small hole must not vanish, or nothing would fill it)."""
    height, width = label.shape
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small_image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)
    small_label = np.zeros(size[::-1], label.dtype)
    largest_cover = np.full(size[::-1], -1.0, np.float32)
    void = None
    for value in np.unique(label):  # one value at a time: a large label with many classes stays small in memory
        cover = cv2.resize((label == value).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        if value == space.void_id:
            void = cover > 1e-6
            continue
        larger = cover > largest_cover
        small_label[larger], largest_cover[larger] = value, cover[larger]
    if void is not None:
        small_label[void] = space.void_id
    return small_image, small_label


def as_the_model_sees(
    image: np.ndarray, label: np.ndarray, infos: list[CheckpointInfo], threshold: float = DEFAULT_THRESHOLD, rescale: bool = True,
    kept: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pair at the working scale (`working_scale`), unless shrinking it would leave more of its
    gaps outside the patches the model rebuilds (`gap_coverage`, by more than COVERAGE_SLACK); as it
    is with `rescale` False.

    Why the coverage check: holes much finer than the model's patches (e.g. 16-pixel squares on a
    960x720 frame, 8 pixels once shrunk) no longer fill whole patches, and the mask ratio leaves
    part of them unhidden. CamVid val upscaled to 960x720 (first 40 pairs), random 16-pixel
    patches at 0.5: PA-mIoU 0.765 read as it is, 0.603 shrunk (restored 0.848); missed objects
    gain from shrinking (0.202 -> 0.402). README "Working scale".

    The gaps are judged without the `kept` pixels (`as_routed`), which are never filled: a
    GeoTIFF's void no-data border, 40% of a tile, had outweighed its 40-pixel holes, and the
    tile was shrunk 4x, its holes to 10 pixels that no patch hid, so none was filled."""
    factor = working_scale(label.shape, infos[0]) if rescale else 1.0
    if factor == 1.0:
        return image, label
    space = infos[0].label_space
    small_image, small_label = shrink_pair(image, label, factor, space)
    small_gaps, gaps = as_routed(small_label, kept, space), as_routed(label, kept, space)
    if gap_coverage(small_gaps, infos, threshold) < gap_coverage(gaps, infos, threshold) - COVERAGE_SLACK:
        return image, label
    return small_image, small_label


def hidden_patches(label_t: torch.Tensor, patch_size: int, mask_ratio: float, space) -> torch.Tensor:
    """(rows, columns) bool patch grid: the floor(L*m) most background-heavy patches of a label
    ((H, W) long, `label_tensor`), those the model hides and rebuilds."""
    ratio = patch_background_ratio(label_t, patch_size, space)
    # Among equally background-heavy patches, void ones first: void is a hole for certain,
    # background only perhaps.
    priority = ratio + VOID_FIRST * patch_background_ratio(label_t, patch_size, replace(space, background_id=None))
    count = mask_count(ratio.numel(), mask_ratio)
    return top_patches(priority.flatten()[None], count, torch.Generator().manual_seed(0))[0].view(ratio.shape)


def gap_coverage(label: np.ndarray, infos: list[CheckpointInfo], threshold: float) -> float:
    """Share of a label's holes that fall in the patches the routing would hide (mask ratio chosen
    by `choose_checkpoint`, patches by `hidden_patches`): what the model can rebuild at all, at
    this label's scale. The holes are its void pixels where it has any (a hole for certain), else
    its background: where background covers most of the image (concrete: 86% of the pixels), it
    would outweigh fine void holes left unhidden."""
    space, p = infos[0].label_space, infos[0].model.patch_size
    label_t = label_tensor(label, space)
    holes = label_t == space.void_id
    if not holes.any():
        holes = missing_pixels(label_t, space.background_id, space.void_id)
    choice = choose_checkpoint(label_heavy_share(label, infos[0], threshold), [info.mask_ratio for info in infos])
    if choice is None or not holes.any():
        return 0.0
    hidden = hidden_patches(label_t, p, infos[choice].mask_ratio, space)
    pixels = expand_patch_mask(hidden.flatten()[None], tuple(hidden.shape), p)[0][: label.shape[0], : label.shape[1]]
    return float((pixels & holes).sum() / holes.sum())


def pair_arrays(image, label) -> tuple[np.ndarray, np.ndarray]:
    """The pair as the repair reads it: `image` (H, W, 3) uint8 RGB and `label` (H, W) uint8 class
    ids, C-contiguous (a PIL image is read as np.asarray reads it; a label of another integer type
    whose values fit is made uint8, so the repair returns uint8). Anything else is refused in one
    line saying what it is and what is read. Why: from a notebook the arrays come as the user
    holds them (a float image in 0..1, a grey (H, W, 1) one, an int64 label), and they had ended
    in a traceback from OpenCV or torch, or a float image had been read as black. Nothing is
    done in place: the caller's arrays stay as they are. A read-only array (np.asarray of a PIL
    image) is copied, which torch.from_numpy would have warned about."""
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise LmaeError(f"image is {image.shape}: a grey image; the repair reads (H, W, 3) RGB: np.dstack([grey] * 3)")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = (": channels first (a tensor's layout)? image.transpose(1, 2, 0)" if image.ndim == 3 and image.shape[0] == 3
                else ": image[..., :3] drops the alpha channel" if image.ndim == 3 and image.shape[2] == 4 else "")
        raise LmaeError(f"image is {image.shape}; the repair reads (H, W, 3) RGB{hint}")
    if image.dtype != np.uint8:
        values = f" (values {image.min():g} to {image.max():g})" if image.size and image.dtype.kind in "biuf" else ""
        hint = ": (image * 255).round().astype(np.uint8)" if image.dtype.kind == "f" and image.size and image.max() <= 1 else ""
        raise LmaeError(f"image is {image.dtype}{values}; the repair reads uint8 RGB, 0 to 255{hint}")
    if label.ndim != 2:
        raise LmaeError(f"label is {label.shape}; the repair reads (H, W) class ids")
    if label.dtype != np.uint8:
        if label.dtype.kind not in "iu":
            raise LmaeError(f"label is {label.dtype}; the repair reads integer class ids (uint8)")
        if label.size and (label.min() < 0 or label.max() > 255):
            raise LmaeError(f"label is {label.dtype} with values {label.min()} to {label.max()}; the repair reads uint8 class ids, 0 to 255")
        label = label.astype(np.uint8)
    if image.shape[:2] != label.shape:
        raise LmaeError(f"image {image.shape} and label {label.shape} differ in size; the repair reads a label of its image's size")
    return tuple(np.ascontiguousarray(a) if a.flags.writeable else np.array(a, order="C") for a in (image, label))


def prepare(
    image: np.ndarray, label: np.ndarray, info: CheckpointInfo, original: np.ndarray | None = None, routed: np.ndarray | None = None,
) -> Prepared:
    """Choose the floor(L*m) most background-heavy patches of `label` ((H, W) uint8, with `image`
    (H, W, 3) uint8 of the same size) and pad both for tiled prediction. `original`: the input's
    label at its own size where `label` is a shrunk copy (`shrink_pair`); `routed`: the label
    the patches are chosen by, where it differs (`as_routed`). Other arrays are made so or
    refused (`pair_arrays`)."""
    image, label = pair_arrays(image, label)
    space, p = info.label_space, info.model.patch_size
    tile = info.tile
    label_t = label_tensor(label, space)
    native_mask = hidden_patches(label_t if routed is None else label_tensor(routed, space), p, info.mask_ratio, space)

    padded_h = max(native_mask.shape[0] * p, tile)
    padded_w = max(native_mask.shape[1] * p, tile)
    image_t, label_t = mirror_pad(image, label_t.numpy(), padded_h, padded_w)
    mask = F.pad(native_mask, (0, padded_w // p - native_mask.shape[1], 0, padded_h // p - native_mask.shape[0]), value=False)
    mask = mask.flatten()
    label_t = label_t.to(torch.uint8)
    hint = repair_hint(label_t, mask, info) if info.model.neighbour_hint else None
    return Prepared(image_t, label_t, mask, hint, label if original is None else original, tuple(label.shape))


def repair_hint(label_t: torch.Tensor, mask: torch.Tensor, info: CheckpointInfo) -> torch.Tensor:
    """(Hp, Wp) uint8 nearest-fill hint for a label to repair ((Hp, Wp) padded label, (Lp,) hidden
    patches). Training computes it from the visible patches alone (the hidden ones are the
    question). Repairing, where missing annotation is void, every annotated pixel is certain,
    those inside hidden patches too, so the hint is filled from all of them: a thin strip of void
    along a border is then hinted from the pixels beside it, not from the nearest visible patch.
    Where a background class exists, background inside hidden patches may be a missed object, so
    the training hint is kept.

    CamVid val, 2-pixel void strips cut along class borders inside 12 random 48x48 windows per
    label (1% of the pixels): share of them filled right 0.480 -> 0.630 (nearest fill 0.900);
    objects damage PA-mIoU 0.580 -> 0.583; random patches at 0.5 unchanged (0.784). On concrete
    val (background class) the same rule cost objects precision (0.692 -> 0.631)."""
    unknown_patches = mask if info.label_space.background_id is not None else torch.zeros_like(mask)
    return neighbourhood_hint(label_t[None], unknown_patches[None], info.model.patch_size, info.model.num_classes)[0].to(torch.uint8)


def has_annotation(label: np.ndarray, space) -> bool:
    """Whether a label holds any class (background included): an all-void label was never
    annotated, so there is nothing to complete from. Rebuilt, it came out as the model's own
    segmentation of 75% of the image with void squares left in the rest; it is left as it is
    (`audit` lists it as a file defect)."""
    return bool((label < space.num_classes).any())


def route_and_prepare(
    image: np.ndarray, label: np.ndarray, checkpoints: list[tuple[object, CheckpointInfo]], threshold: float = DEFAULT_THRESHOLD,
    rescale: bool = True, kept: np.ndarray | None = None,
) -> tuple[float, int | None, Prepared | None]:
    """(background-heavy share, index of the checkpoint chosen or None, its prepared input):
    the routing rules above (mask ratio, then gap kind) applied to one label at the working
    scale (`working_scale`; `rescale` False: always as it is), as `complete`, `evaluate` and
    `audit` use them. `kept`: the label's pixels `merge` must leave as they are
    (`LabelFile.kept`). `image` and `label` as `pair_arrays` reads them."""
    image, label = pair_arrays(image, label)
    infos = [info for _, info in checkpoints]
    space = infos[0].label_space
    seen_image, seen_label = as_the_model_sees(image, label, infos, threshold, rescale, kept)
    routed = as_routed(seen_label, kept, space)
    share = label_heavy_share(routed, infos[0], threshold)
    if not has_annotation(label, space):
        return share, None, None
    choice = choose_checkpoint(share, [info.mask_ratio for info in infos])
    if choice is not None:
        choice = choose_for_gaps(choice, infos, lambda: gaps_follow_edges(seen_image, routed, space))
    prepared = None if choice is None else prepare(seen_image, seen_label, checkpoints[choice][1], original=label, routed=routed)
    if prepared is not None:
        prepared.kept = kept
    return share, choice, prepared


def as_routed(label: np.ndarray, kept: np.ndarray | None, space) -> np.ndarray:
    """The label that routing and the choice of hidden patches read: `label` with its `kept`
    pixels (annotated, though void: Cityscapes' ego vehicle) standing in as a class, so that they
    count as annotated, not as gaps. Counted as gaps, a Cityscapes frame's bonnet took the hidden
    patches that its real holes needed. The model still reads them as void."""
    if kept is None or not kept.any():
        return label
    if kept.shape != label.shape:  # the pair is read shrunk (`working_scale`)
        kept = cv2.resize(kept.astype(np.uint8), (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    stand_in = next(c for c in range(space.num_classes) if c != space.background_id)
    return np.where(kept, np.uint8(stand_in), label)


@dataclass
class Repair:
    """A repaired label and what was done to it."""

    values: np.ndarray  # (H, W) uint8, same size as the input label
    patches_masked: int
    pixels_changed: int
    mean_confidence: float  # mean top-class probability over the changed pixels (nan if none)


def predict(
    model: LabelMAE, info: CheckpointInfo, items: list[Prepared], device: torch.device | str, tiles_per_pass: int = 16,
    precision: str = "auto", overwrite_labeled: bool = False,
) -> list[torch.Tensor]:
    """Class probabilities (N, Hp, Wp) for each prepared label, tiles of all of them batched.
    Exact only on the patches `merge` may edit (given `overwrite_labeled`); `precision` bf16 (or
    auto where bf16 is native) runs it under bf16 autocast; int8 is a property of the model
    (`inference.for_inference`)."""
    device = torch.device(device)
    to = dict(device=device, non_blocking=True)
    images = [item.image.to(**to) for item in items]  # uint8: each tile is made float on its own
    labels = [item.label.to(**to) for item in items]
    masks = [item.mask.to(**to) for item in items]
    hints = [None if item.hint is None else item.hint.to(**to) for item in items]
    p, space = info.model.patch_size, info.label_space
    needed = [item.editable_patches(p, space, overwrite_labeled).to(**to) for item in items]
    tile = info.tile
    autocast = resolve_precision(precision, device) == "bf16"
    return predict_many(model, images, labels, masks, tile, tiles_per_pass, autocast, hints, needed, info.context_patches)


def finish(
    item: Prepared, probs: torch.Tensor, info: CheckpointInfo, overwrite_labeled: bool = False,
    min_confidence: float = 0.0,
) -> Repair:
    """Merge the model's prediction into the original label under the do-no-harm rule."""
    return finish_from(item, class_probabilities(item, probs, info), info, overwrite_labeled, min_confidence)


def class_probabilities(item: Prepared, probs: torch.Tensor, info: CheckpointInfo) -> torch.Tensor:
    """The (N, H, W) probabilities at the input's size that each pixel's class is chosen from:
    `gap_probabilities` with the checkpoint's class offsets and continuation bonuses applied."""
    probs = gap_probabilities(item, probs, info)
    if not any(info.continuation):
        return apply_class_bias(probs, info.class_bias)
    weighted = weigh_classes(probs, info.class_bias)
    return normalised(boost_continued_classes(weighted, continuation_agreements(item, info), info.continuation))


def continuation_agreements(item: Prepared, info: CheckpointInfo) -> np.ndarray:
    """(2, H, W) the class continued across each pixel down its column and along its row
    (`continuation.agreements`), known pixels being the annotated ones the repair may not change.
    Where a background class exists, void pixels only: background may hide a missed object."""
    space, p = info.label_space, info.model.patch_size
    known = (item.original < space.num_classes) & ~item.fillable_pixels(p, space).numpy()
    directions = [bool(b) for b in info.continuation] if any(info.continuation) else [True, True]  # tuning: both
    agreed = agreements(item.original, known, reach_at_input(p, item.size[0], item.original.shape[0]), directions)
    if space.background_id is not None:
        agreed[:, item.original != space.void_id] = NO_CLASS
    return agreed


def finish_from(
    item: Prepared, chosen: torch.Tensor, info: CheckpointInfo, overwrite_labeled: bool = False, min_confidence: float = 0.0,
) -> Repair:
    """`finish` from `class_probabilities` already computed (which `audit` also reads)."""
    confidence, prediction = chosen.max(0)
    return merge(item, prediction, confidence, info, overwrite_labeled, min_confidence)


def gap_probabilities(item: Prepared, probs: torch.Tensor, info: CheckpointInfo) -> torch.Tensor:
    """The model's (N, Hp, Wp) probabilities as the class is chosen from them, before any class
    offsets: cropped to the input's size, float on the CPU, and for an objects checkpoint leaning
    on each gap's mean (`lean_on_whole_gaps`). Shared by `finish` and the offsets' tuning, so the
    offsets are tuned on what they are applied to."""
    probs = item.at_input(probs.float().cpu(), smooth=True)
    if item.size != item.original.shape:  # patches never rebuilt hold 0: blended into their neighbours' border
        probs /= probs.sum(0, keepdim=True).clamp_(min=1e-6)
    if info.gap_kind != "objects":
        return probs
    return lean_on_whole_gaps(not_what_surrounds(probs, item, info), item, info)


def not_what_surrounds(probs: torch.Tensor, item: Prepared, info: CheckpointInfo) -> torch.Tensor:
    """Each void gap's class probabilities multiplied by exp(-SURROUND_PENALTY * s_c), s_c being
    class c's share of the labelled pixels along the gap's border (8-neighbours), renormalised;
    gaps over GAP_VOTE_MAX_SHARE of the image are left as they are.

    Why, for checkpoints meant for missed objects only: an object is a region of one class, so
    the class of a missed object is rarely the class around it, while the model's guess drifts to
    that class (a small patch of road between cars filled as the pavement beside it, a car gap as
    the road under it). Not a hard rule: a gap also takes in the label's own thin void between
    objects, which may touch another object of the same class. CamVid val, objects damage (all 101
    pairs, seed 0, offsets tuned before this rule): PA-mIoU 0.480 -> 0.548 at 5 (3 / 8 / 12 / 30:
    0.530 / 0.545 / 0.533 / 0.480); first 120 CamVid train pairs 0.408 -> 0.437 at 5 (3 / 8 / 12:
    0.435 / 0.432 / 0.426). Holes cut across the scene (other checkpoints) do share their border's
    class, so the rule is not for them."""
    space, original = info.label_space, item.original
    void = original == space.void_id
    if not void.any():
        return probs
    count, regions = cv2.connectedComponents(void.astype(np.uint8), connectivity=8)
    n, (height, width) = probs.shape[0], original.shape
    border_counts = border_class_counts(regions, count, original, n)
    share = border_counts / np.maximum(border_counts.sum(1, keepdims=True), 1)
    factor = np.exp(-SURROUND_PENALTY * share).astype(np.float32)  # (count, n)
    sizes = np.bincount(regions.ravel(), minlength=count)
    factor[sizes > GAP_VOTE_MAX_SHARE * height * width] = 1.0
    at = np.flatnonzero(void)  # only gap pixels change (a fraction of the image)
    flat = probs.flatten(1).clone()
    gap_probs = flat[:, at] * torch.from_numpy(factor[regions.ravel()[at]]).t()
    flat[:, at] = gap_probs / gap_probs.sum(0, keepdim=True).clamp_(min=1e-6)
    return flat.view_as(probs)


def border_class_counts(regions: np.ndarray, count: int, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(count, num_classes): how often each region of `regions` (connected components, 0 = none)
    has a pixel of each class among its 8 neighbours, counted once per neighbouring direction."""
    height, width = label.shape
    padded = np.pad(regions, 1)
    labelled = label < num_classes
    index = []
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        neighbour_region = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        touching = labelled & (neighbour_region > 0)
        index.append(neighbour_region[touching].astype(np.int64) * num_classes + label[touching])
    counts = np.bincount(np.concatenate(index), minlength=count * num_classes)
    return counts.reshape(count, num_classes)


def lean_on_whole_gaps(probs: torch.Tensor, item: Prepared, info: CheckpointInfo) -> torch.Tensor:
    """Each pixel's class probabilities averaged half and half with the mean over its connected
    void gap (8-connected, inside the hidden patches, at most GAP_VOTE_MAX_SHARE of the image).

    Why, for checkpoints meant for missed objects only: such a gap is mostly one object, but the
    model's per-pixel guess drifts to the surrounding class near the gap's border and between
    look-alike classes (bicyclist / pedestrian). Leaning on the whole gap's mean pulls those pixels
    to the class the gap as a whole looks like. CamVid val, objects damage (all 101 pairs, seed 0):
    PA-mIoU 0.351 -> 0.362 (weights 0.3 / 0.4 / 0.6 / 0.8: 0.358 / 0.361 / 0.359 / 0.302; the whole
    mean alone, 0.248: gaps often join several objects). Not for gaps cut across the scene: random
    patches at 0.25 fell 0.816 -> 0.811, so other checkpoints keep their per-pixel guess."""
    space = info.label_space
    height, width = item.original.shape
    gap = (torch.from_numpy(item.original) == space.void_id) & item.hidden_at_input(info.model.patch_size)
    if not gap.any():
        return probs
    count, regions = cv2.connectedComponents(gap.numpy().astype(np.uint8), connectivity=8)
    regions = torch.from_numpy(regions).flatten()
    at = gap.flatten().nonzero()[:, 0]  # only gap pixels change (a fraction of the image)
    in_gap = regions[at].long()
    sizes = torch.bincount(in_gap, minlength=count)
    flat = probs.flatten(1)
    gap_probs = flat[:, at]
    means = (torch.zeros(probs.shape[0], count).index_add_(1, in_gap, gap_probs) / sizes.clamp(min=1))[:, in_gap]
    voted = (sizes <= GAP_VOTE_MAX_SHARE * height * width)[in_gap]
    flat = flat.clone()
    flat[:, at] = torch.where(voted, (1.0 - GAP_VOTE_WEIGHT) * gap_probs + GAP_VOTE_WEIGHT * means, gap_probs)
    return flat.view_as(probs)


def merge(
    item: Prepared, prediction: torch.Tensor, confidence: torch.Tensor | None, info: CheckpointInfo,
    overwrite_labeled: bool = False,
    min_confidence: float = 0.0,
) -> Repair:
    """Do no harm: `prediction` ((H, W) class indices at the input's size; values that are not a
    class mean "no opinion") replaces only pixels inside hidden patches, and among those only
    background or void pixels unless `overwrite_labeled`. A pixel that has a value (background,
    or a class with `overwrite_labeled`) changes only where `confidence` is at least
    `min_confidence`: saying an annotator missed something needs more certainty than filling a
    hole; and background never changes just to move a region's border (`border_moves`). Shared
    by the model and the baselines (which give no confidence)."""
    space = info.label_space
    original = torch.from_numpy(item.original)
    if overwrite_labeled:
        editable = item.hidden_at_input(info.model.patch_size)
        if item.kept is not None:
            editable &= ~torch.from_numpy(item.kept)
    else:
        editable = item.fillable_pixels(info.model.patch_size, space)
    editable &= prediction < space.num_classes
    if confidence is not None and min_confidence > 0.0:
        editable &= (original == space.void_id) | (confidence >= min_confidence)
    if space.background_id is not None and not overwrite_labeled:
        editable &= ~border_moves(original.numpy(), prediction.numpy(), editable.numpy(), space)
        editable &= ~dont_care_void(original, space, info.model.patch_size)
    repaired = torch.where(editable, prediction.to(torch.uint8), original)
    changed = repaired != original
    mean_conf = float(confidence[changed].mean()) if confidence is not None and changed.any() else float("nan")
    return Repair(repaired.numpy(), int(item.mask.sum()), int(changed.sum()), mean_conf)


def dont_care_void(original: torch.Tensor, space, patch_size: int) -> torch.Tensor:
    """Void pixels a label space with a background class means as "don't care", kept as they are:
    those of patches that are mostly not void, such as Pascal VOC's bands of 255 along object
    borders. Where a background class exists, missing annotation is background, and thin void
    is deliberate; void holes (patches mostly void) are still filled. (Filling the bands changed
    17,742 of 29,714 band pixels of 12 224x224 labels: 2.9% of every intact label's pixels.)"""
    void = original == space.void_id
    if not void.any():
        return void
    mostly_labelled = patch_share(void, patch_size) < 0.5
    pixels = expand_patch_mask(mostly_labelled.flatten()[None], tuple(mostly_labelled.shape), patch_size)[0]
    return void & pixels[: void.shape[0], : void.shape[1]]


def border_moves(original: np.ndarray, prediction: np.ndarray, editable: np.ndarray, space) -> torch.Tensor:
    """(H, W) bool: the background pixels whose change would only move the border of an annotated
    region: each connected group of background pixels that would become class c and lies wholly
    within BORDER_MARGIN pixels of class c in the label. Annotators and the model disagree about
    where a region ends; that is not a missed annotation (on intact concrete val labels it was a
    third of the pixels changed at the default confidence). A group that reaches further (a crack
    the annotator stopped drawing halfway, a missed object) is kept whole, so a continued region
    has no gap."""
    moves = np.zeros(original.shape, bool)
    kernel = np.ones((2 * BORDER_MARGIN + 1, 2 * BORDER_MARGIN + 1), np.uint8)
    candidates = editable & (original == space.background_id)
    for c in np.unique(prediction[candidates]):
        annotated = (original == c).astype(np.uint8)
        if c == space.background_id or not annotated.any():
            continue  # a class the label does not have has no border to move
        group = candidates & (prediction == c)
        count, regions = cv2.connectedComponents(group.astype(np.uint8), connectivity=8)
        near = cv2.dilate(annotated, kernel) > 0
        reaches_out = np.zeros(count, bool)
        reaches_out[np.unique(regions[group & ~near])] = True
        moves |= group & ~reaches_out[regions]
    return torch.from_numpy(moves)
