"""`lmae-repair train`: fit one L-MAE per mask ratio and write its checkpoints.

Per mask ratio m the run folder `OUT/mask-<m>/` receives `best.safetensors` (highest validation
PA-mIoU; lowest training loss when there is no validation data), `last.safetensors`,
`state.pt` (everything `--resume` needs) and `history.jsonl` (one line of figures per epoch).

Optimisation follows the paper: Adam with weight decay 1e-4 and ReduceLROnPlateau on the epoch's
training loss (patience 5, threshold 1e-3, factor 0.8). Added, and written down here: a linear
learning-rate warm-up over the first epoch or 200 steps, whichever is shorter (transformers
trained from scratch diverge without one), and gradient clipping at norm 1. The loss counts the
hidden patches only, as in MAE: visible patches would only teach the model to copy its input.
A model with an image branch (`--image-branch`) adds BRANCH_LOSS_WEIGHT times the branch's own
loss over every labelled pixel of the crop: the branch sees only the image, so there is nothing
to copy, and direct supervision teaches it defects much faster than the refiner's gradient alone.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.text import Text
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from lmae_repair import __version__
from lmae_repair.checkpoints import GAP_KINDS, CheckpointInfo, load_checkpoint, read_info, save_checkpoint, strict_json
from lmae_repair.data import DatasetIndex, Pair, atomic_write, discover_noted, read_pair
from lmae_repair.dataset import CropDataset, SeededSampler, gap_pixel_counts, label_tensor, scan_labels
from lmae_repair.distributed import (
    Ranks,
    device_for_rank,
    process_group,
    ranks_from_environment,
    sum_across_ranks,
    wait_for_all,
)
from lmae_repair.errors import LmaeError
from lmae_repair.defaults import DEFAULT_CROP, usable_cpus
from lmae_repair.families import counted_classes_problem, masks_of_0_and_255
from lmae_repair.inference import mirror_pad, predict_probabilities, resolve_device
from lmae_repair.labelspace import LabelSpace, build_label_space, declared_class_names, first_names, names_agree, void_named
from lmae_repair.losses import WEIGHTINGS, class_weights, lmae_loss
from lmae_repair.quantise import calibrate
from lmae_repair.masking import (
    DEFAULT_MIX,
    background_ratio,
    expand_patch_mask,
    mask_count,
    mixed_training_mask,
    strategy_mask,
)
from lmae_repair.metrics import ConfusionMatrix
from lmae_repair.model import LabelMAE, preset_config


BRANCH_LOSS_WEIGHT = 0.5


@dataclass
class TrainOptions:
    out: Path
    mask_ratios: list[float]
    preset: str = "tiny"
    patch_size: int | None = None
    image_branch: int | None = None  # None: the --init checkpoint's, else none
    branch_reads_labels: bool | None = None  # None: the --init checkpoint's, else False
    epochs: int = 50
    batch_size: int = 16
    crop: int = DEFAULT_CROP
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    mask_mix: tuple[float, ...] = DEFAULT_MIX
    class_weighting: str = "paper"
    weights_from: str = "labels"  # class frequencies for the weights: whole labels, or the objects strategy's gaps
    photometric: bool = False  # images also blurred, shrunk, JPEG-encoded, brightened (dataset.photometric_jitter)
    resume: bool = False
    init: Path | None = None  # start from this checkpoint's weights (fine-tuning)
    keep_epochs: bool = False  # also write epoch-NNN.safetensors every epoch, for `lmae-repair average`
    gaps: str = "any"  # the labels the checkpoints are for, in routing: CheckpointInfo.gap_kind
    max_minutes: float = 0.0  # per mask ratio: no epoch is begun that would end past it (0: no limit)


@dataclass
class TrainingData:
    """The pairs to train and validate on, their label space and class pixel counts."""

    train: DatasetIndex
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    space: LabelSpace
    class_pixels: list[int]
    summary: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # one line per unusable pair
    val_index: DatasetIndex | None = None  # the validation data, where other than `train`'s
    shapes: dict[Pair, tuple[int, int]] = field(default_factory=dict)  # each training label's (height, width)


WEIGHT_SOURCES = ("labels", "gaps")


def loss_weights(options: TrainOptions, data: TrainingData, console: Console) -> torch.Tensor:
    """Per-class loss weights (eq. 10 or an alternative) from the class frequencies that
    `--weights-from` names, printed once. `labels`: the whole labels (the paper). `gaps`: the
    objects that the objects strategy erases, because an objects checkpoint is scored on
    rebuilding those, where the classes are mixed quite unlike whole labels (CamVid: road is a
    third of the pixels but 2% of the small objects)."""
    if options.weights_from == "gaps":
        counts = gap_pixel_counts(data.train_pairs, data.space, options.crop)
    else:
        counts = data.class_pixels
    weights = class_weights(torch.tensor(counts), options.class_weighting)
    console.print(
        f"loss weights ({options.class_weighting}, from {options.weights_from}): "
        + ", ".join(f"{name} {w:.2f}" for name, w in zip(data.space.names, weights.tolist())),
        highlight=False,
    )
    return weights


STATE_FILE = "state.pt"  # in each ratio folder: everything --resume needs


RATIO_FOLDER_PREFIX = "mask-"  # a run folder holds one mask-<ratio>/ folder per mask ratio


def ratio_folder(out: Path, ratio: float) -> Path:
    return out / f"{RATIO_FOLDER_PREFIX}{ratio:.2f}"


def run_patch_size(options: TrainOptions, num_classes: int) -> int:
    """The patch size the run's model will have (its --preset's, or --patch-size): the checks made
    before the model is built (crop, ratios, the family in --out) each need it."""
    return preset_config(options.preset, num_classes, patch_size=options.patch_size).patch_size


def check_mask_ratios(options: TrainOptions, space: LabelSpace) -> None:
    """Refuse, before any training, a crop that is not whole patches (at least two a side), and
    mask ratios that cannot make a model with these patches: two that share a run folder (two
    decimals: the second would find the first's run and stop after it), or one that hides no
    patch of a training crop (it would learn nothing). Ratios outside (0, 1) are refused earlier,
    by `check_option_values`."""
    folders: dict[str, float] = {}
    patch = run_patch_size(options, space.num_classes)
    if options.crop % patch or options.crop < 2 * patch:  # one patch: nothing both seen and hidden
        raise LmaeError(f"--crop {options.crop} must be a multiple of the patch size {patch}, at least {2 * patch}")
    patches = (options.crop // patch) ** 2
    for ratio in options.mask_ratios:
        folder = ratio_folder(Path("."), ratio).name
        if folder in folders:
            raise LmaeError(f"--mask-ratio {folders[folder]:g} and {ratio:g} would both train into {folder}/; give each ratio once")
        folders[folder] = ratio
        if mask_count(patches, ratio) == 0:
            raise LmaeError(f"--mask-ratio {ratio:g} hides none of the {patches} patches of a {options.crop}-pixel crop: nothing to learn")


def check_crop_size(options: TrainOptions, data: TrainingData) -> None:
    """Refuse a crop larger than every training image, where it is beyond the default too: each
    crop would be mostly its image's mirror, which is not trained on (`note_small_images`), and
    its memory grows with its area (`--crop 100000` on 120x90 images was killed for memory in the
    loader, after the scan). The default crop is kept: small images train at it, as they did."""
    if not data.shapes:
        return
    patch = run_patch_size(options, data.space.num_classes)
    pair, (height, width) = min(data.shapes.items(), key=lambda item: (-max(item[1]), item[0].key))
    limit = max(math.ceil(max(height, width) / patch) * patch, DEFAULT_CROP // patch * patch)
    if options.crop > limit:
        raise LmaeError(f"--crop {options.crop} is larger than every training image (the largest: {pair.label}, {width}x{height}): "
                        "each crop would be mostly its mirror image, which is not trained on, at a memory cost that grows with "
                        f"the crop's area; give --crop {limit} or less")


def check_same_family(options: TrainOptions, space: LabelSpace) -> None:
    """Refuse a run into an --out whose checkpoints would make no family with this run's: one of
    another label space or patch size (a family's other ratios, trained on other data), or one
    that already serves a ratio trained here (an average written there as `mask-0.50.safetensors`).
    Either way the run trained, and then `--models OUT` was refused by every command."""
    from lmae_repair.checkpoints import checkpoints_in_folder
    from lmae_repair.families import space_difference

    if not options.out.is_dir():
        return
    patch = run_patch_size(options, space.num_classes)
    own = [ratio_folder(options.out, ratio) for ratio in options.mask_ratios]  # their runs: --resume checks them, or they are refused
    trained = {round(ratio, 2) for ratio in options.mask_ratios}
    for path in checkpoints_in_folder(options.out):
        if any(folder in path.parents for folder in own):
            continue
        info = read_info(path)
        differs = space_difference(space, patch, info, path)
        if differs:
            raise LmaeError(f"{options.out}: this run's {differs}; the checkpoints of one family (--models {options.out}) "
                            "must share one label space and patch size: choose another --out")
        served = sorted(trained & {round(ratio, 2) for ratio in info.slot_ratios}) if info.gap_kind == options.gaps else []
        if served:
            raise LmaeError(f"{path} already serves mask ratio {served[0]:.2f} ({options.gaps} gaps) in {options.out}: a second "
                            f"checkpoint for it would make --models {options.out} refused; choose another --out")


def check_option_values(options: TrainOptions) -> None:
    """Refuse the option values that are wrong whatever the data (a typo in --preset, a mask ratio
    of 2, --device cuda on a machine without a GPU) before the labels are scanned: the error is
    then the one line printed, at once, not the last line after the scan's notes."""
    preset_config(options.preset, 1)
    if options.class_weighting not in WEIGHTINGS:
        raise LmaeError(f"unknown class weighting {options.class_weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    if options.gaps not in GAP_KINDS:
        raise LmaeError(f"--gaps must be one of {', '.join(GAP_KINDS)}, got {options.gaps!r}")
    if options.weights_from not in WEIGHT_SOURCES:
        raise LmaeError(f"--weights-from: expected {' or '.join(WEIGHT_SOURCES)}, got {options.weights_from!r}")
    if options.seed >= 2**64:  # torch.manual_seed takes 64 bits: a larger seed failed after the scan, 'unexpected ValueError'
        raise LmaeError(f"--seed must be below 2**64 = {2**64}, got {options.seed}")
    if options.lr <= 0:  # Adam at 0 changes no weight: every epoch would be spent for a checkpoint equal to where it began
        raise LmaeError(f"--lr must be above 0 (at {options.lr:g} no weight changes), e.g. 5e-4 (the default) or 1e-4 to fine-tune")
    for ratio in options.mask_ratios:
        if not 0.0 < round(ratio, 2) < 1.0:  # its run folder and checkpoint say it to two decimals
            raise LmaeError(f"--mask-ratio must be between 0.01 and 0.99, got {ratio:g}")
    resolve_device(options.device)


def train(options: TrainOptions, data: TrainingData, console: Console) -> list[Path]:
    """Train one model per mask ratio; returns the best checkpoint of each. Under torchrun every
    process runs this, on its own shard of the data (see distributed.py)."""
    check_option_values(options)
    check_mask_ratios(options, data.space)
    check_crop_size(options, data)
    check_same_family(options, data.space)
    for ratio in options.mask_ratios:  # every ratio before the first trains: none is overwritten after hours
        check_no_earlier_run(ratio_folder(options.out, ratio), options.resume)
    ranks = ranks_from_environment()
    device = device_for_rank(resolve_device(options.device), ranks)
    weights = loss_weights(options, data, console).to(device, torch.float)  # once for every mask ratio
    note_small_images(console, data, options.crop)
    say = (lambda text: console.print(f"note: {text}", highlight=False)) if ranks.is_main else None
    with process_group(ranks, device, say), contextlib.ExitStack() as locks:
        held = hold_existing_run_folders(options, locks) if ranks.is_main else set()
        return [train_one_ratio(options, data, ratio, weights, console, ranks, device, locks, held) for ratio in options.mask_ratios]


def hold_existing_run_folders(options: TrainOptions, locks: contextlib.ExitStack) -> set[Path]:
    """Lock, before the first ratio trains, every ratio's run folder that exists already (a run to
    --resume, a folder made for it), and see that the others can be made: with `-m 0.25 -m 0.5`, a
    mask-0.50/ locked by another train or read-only was refused only after the 0.25 model had
    trained. The folders held; the others are made and locked by their ratio, after --init is read
    (a refused one leaves no run folder behind)."""
    from lmae_repair.complete import check_can_create

    held = set()
    for ratio in options.mask_ratios:
        folder = ratio_folder(options.out, ratio)
        if folder.is_dir():
            locks.enter_context(hold_run_folder(folder, options.resume))
            held.add(folder)
            continue
        check_can_create(folder)  # judged by the nearest folder above it, as complete judges OUT
    return held


def hold_run_folder(folder: Path, resume: bool):
    """The lock on a ratio's run folder (`complete.lock_output`, held until `train` ends): a second
    train into it while this one runs (a job submitted twice) is refused, instead of both writing
    each other's checkpoints, state and history. Without --resume, the folder is checked again
    once held: a run that finished in between is not overwritten."""
    from lmae_repair.complete import TRAIN_LOCK_FILE, lock_output

    lock = lock_output(folder, name=TRAIN_LOCK_FILE)
    try:
        check_no_earlier_run(folder, resume)
    except LmaeError:
        lock.close()
        raise
    return lock


def note_small_images(console: Console, data: TrainingData, crop: int) -> None:
    """Say which training images are smaller than the crop, and what is done with them: each crop
    of one is filled out with its mirror image, whose labels are void (`CropDataset._random_window`),
    so a 50x300 image trains on its own 50x224 pixels, not on four mirrored copies of them."""
    small = [pair for pair in data.train_pairs if min(data.shapes.get(pair, (crop, crop))) < crop]
    if not small:
        return
    first = min(small, key=lambda pair: pair.key)
    height, width = data.shapes[first]
    console.print(f"note: {len(small)} of the {len(data.train_pairs)} training images {'is' if len(small) == 1 else 'are'} "
                  f"smaller than the {crop}-pixel crop "
                  f"(first: {first.label}, {width}x{height}); their crops are filled out with their mirror image, "
                  "whose labels are not trained on (void)", highlight=False)


def train_one_ratio(
    options: TrainOptions, data: TrainingData, ratio: float, weights: torch.Tensor, console: Console, ranks: Ranks,
    device: torch.device, locks: contextlib.ExitStack | None = None, held: set[Path] = frozenset(),
) -> Path:
    folder = ratio_folder(options.out, ratio)
    torch.manual_seed(options.seed)
    options = resumed_run_options(folder, options, console)
    model = build_model(options, data.space)
    config = model.config
    if options.init is not None and not (options.resume and (folder / STATE_FILE).exists()):
        start_from(model, options.init, data.space)
    never_started = not folder.exists()  # a later ratio of a run interrupted during an earlier one
    folder.mkdir(parents=True, exist_ok=True)  # after --init is read: a refused one leaves no run folder behind
    if locks is not None and ranks.is_main and folder not in held:  # only rank 0 writes the run folder
        locks.enter_context(hold_run_folder(folder, options.resume))
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=5, threshold=1e-3, factor=0.8
    )
    state = restore_run(folder, model, optimizer, plateau, data, ratio, options, console, never_started)
    if state.epoch >= options.epochs:
        console.print(f"{folder}: already trained for {state.epoch} epochs (--epochs {options.epochs})")
        return folder / "best.safetensors"

    trained = model
    if ranks.distributed:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = make_loader(data.train_pairs, data.space, options, device, ranks)
    warmup = min(options.warmup_steps, len(loader))
    generator = torch.Generator()  # the training masks', seeded at each epoch (`seed_epoch`)
    processes = f", {ranks.world_size} processes x {options.batch_size} images per step" if ranks.distributed else ""
    console.print(Text.assemble(
        (f"mask ratio {ratio:.2f}", "bold"), f": {options.preset} model, {model.num_parameters() / 1e6:.1f}M "
        f"parameters, patch {config.patch_size}, {pairs_text(len(data.train_pairs), 'training')}, "
        f"{pairs_text(len(data.val_pairs), 'validation')}, device {device}{processes}; "
        f"{epoch_plan(state.epoch, options.epochs, options.max_minutes)}"
    ))
    use_amp = device.type == "cuda"
    calibration = calibration_crops(data.train_pairs, options.crop) if config.image_branch and ranks.is_main else ([], [])
    with training_progress(console, disable=not ranks.is_main) as progress:
        task = progress.add_task(
            f"m={ratio:.2f}", total=(options.epochs - state.epoch) * len(loader), loss=float("nan"), speed=0.0,
            deadline=time.monotonic() + 60.0 * options.max_minutes if options.max_minutes else None,
        )
        run_started, epoch_seconds = time.perf_counter(), []
        for epoch in range(state.epoch + 1, options.epochs + 1):
            if next_epoch_would_overrun(options.max_minutes, time.perf_counter() - run_started, epoch_seconds):
                progress.console.print(
                    f"stopped after epoch {state.epoch}: another would end past --max-minutes {options.max_minutes:g} "
                    f"(an epoch takes {duration(max(epoch_seconds))}); go on with --resume", highlight=False)
                done = next(t.completed for t in progress.tasks if t.id == task)
                progress.update(task, total=done)  # the bar ends full, not stuck part-way
                break
            started = time.perf_counter()
            seed_epoch(epoch, options.seed, ranks.rank, loader.sampler, generator)
            train_loss, images = run_epoch(
                trained, loader, optimizer, weights, ratio, options, data.space, generator, device,
                use_amp, warmup, state, progress, task,
            )
            if math.isnan(train_loss):
                raise LmaeError(diverged_message(folder, ratio, epoch, state.epoch, options.lr))
            plateau.step(train_loss)
            record = {
                "epoch": epoch,
                "train_loss": round(train_loss, 5),
                **epoch_images(images, loader.sampler),
                "images_per_s": round(images / (time.perf_counter() - started), 2),
                "lr": optimizer.param_groups[0]["lr"],
            }
            if data.val_pairs:
                record.update(validate(model, data.val_pairs, data.space, ratio, options.crop, device, options.seed, ranks))
            record["seconds"] = round(time.perf_counter() - started, 1)
            epoch_seconds.append(record["seconds"])
            score = record.get("val_pa_miou", -train_loss)
            improved = beats(score, state.best_score, validated="val_pa_miou" in record)
            state.epoch, state.history = epoch, state.history + [record]
            if improved:
                state.best_score = score
            if ranks.is_main:
                dropped = tuned_on(folder / "best.safetensors") if improved else None
                info = checkpoint_info(model, ratio, data, options, state, record, device, ranks)
                info.int8_calibration = calibrate(model, *calibration)
                save_epoch(folder, model, optimizer, plateau, state, improved, info, options.keep_epochs)
                progress.console.print(epoch_line(record, improved))
                if dropped:
                    progress.console.print(f"note: {folder / 'best.safetensors'} replaced by epoch {epoch}, without the class "
                                           f"offsets tuned on {dropped}; tune again: lmae-repair tune {dropped} --models {folder}",
                                           highlight=False)
            if options.max_minutes:  # the bar (and its ETA) ends where the budget will stop the run
                more = epochs_within_budget(options.max_minutes, time.perf_counter() - run_started, epoch_seconds,
                                            options.epochs - epoch)
                done = next(t.completed for t in progress.tasks if t.id == task)
                progress.update(task, total=done + more * len(loader))
    wait_for_all()  # the checkpoints are written before any process reads them
    return folder / "best.safetensors"


def diverged_message(folder: Path, ratio: float, epoch: int, saved: int, lr: float) -> str:
    """What to say when an epoch's training loss is NaN (diverged, typically a too high --lr):
    its weights are NaN too (no gradient scaler skips such a step), and every later epoch would
    be NaN. The run went on to its last epoch and then ended with 'best.safetensors: no such
    checkpoint file', or, validated, kept NaN weights as best. It stops there instead, without
    saving that epoch, and says what is kept (the saved epochs, which --resume would continue
    at the same --lr) and what to try."""
    if saved:
        kept = (f"{folder} keeps epoch{'s 1-' if saved > 1 else ' '}{saved} (best.safetensors, last.safetensors, "
                f"state.pt), not epoch {epoch}")
        where = (f" into a new --out (the saved run resumes only at its --lr), or from its weights with "
                 f"--init {folder / 'best.safetensors'}")
    else:
        kept, where = "nothing was saved (no epoch ended before it)", ""
    return (f"mask ratio {ratio:.2f}: the training loss became NaN in epoch {epoch} (the weights are no longer numbers), "
            f"so training stopped; {kept}; try a lower --lr than {lr:g} (e.g. --lr {lr / 5:g}){where}")


def tuned_on(path: Path) -> str | None:
    """Where `lmae-repair tune` tuned the class offsets a run's checkpoint holds (tuned in place,
    `--models RUN/mask-R`), or None. A resumed run's new best.safetensors does not carry them
    over: they fit the weights they were tuned with, as `average` drops them too, so the run
    says so instead of silently writing the best epoch untuned (`train_one_ratio`)."""
    if not path.exists():
        return None
    try:
        info = read_info(path)
    except LmaeError:
        return None
    if not info.class_bias and not info.continuation:
        return None
    return (info.training.get("class_bias_tuned_on") or {}).get("data") or "DATA"


def beats(score: float, best: float, validated: bool = True) -> bool:
    """Whether an epoch's score makes it best.safetensors. A NaN PA-mIoU (validation whose hidden
    patches held no annotated pixel: a PA-mIoU of nothing) never beats a real one, but counts
    while no real one has come: compared as a number it beat nothing, no best.safetensors was
    written, and the run ended after its last epoch with 'no such checkpoint file'. A NaN training
    loss (not `validated`) never counts: its weights are NaN, and complete would have used them."""
    if math.isnan(score) and not validated:
        return False
    return math.isnan(best) or best == -math.inf or score > best


def duration(seconds: float) -> str:
    """A time as a person reads it: seconds under a minute, else minutes."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def epoch_images(images: int, sampler: SeededSampler) -> dict:
    """history's count of an epoch's pairs: the distinct ones. Under torchrun the shares are
    padded to one length by reading a few pairs twice (`SeededSampler`), so the crops trained on
    (`images`, which the loss and the speed count) can exceed the pairs; 7 pairs on 2 processes
    said "images": 8. Those repeats are then given as "repeated"."""
    figures = {"images": images - sampler.repeated}
    if sampler.repeated:
        figures["repeated"] = sampler.repeated
    return figures


def seed_epoch(epoch: int, seed: int, rank: int, sampler: SeededSampler, mask_generator: torch.Generator) -> None:
    """Every random draw of an epoch from (seed, epoch, process) alone: the order and crops
    (`SeededSampler`), the training masks and drop-path. So `--resume` after epoch k goes on as
    the uninterrupted run did, and the processes under torchrun draw differently."""
    sampler.set_epoch(epoch)
    mask_generator.manual_seed((seed * 1000 + epoch + 1_000_003 * rank) % 2**63)
    torch.manual_seed((seed + 7919 * rank + 104_729 * epoch) % 2**63)


def build_model(options: TrainOptions, space: LabelSpace) -> LabelMAE:
    """The `--preset` model for this label space. Without `--image-branch` (and
    `--branch-reads-labels`), an `--init` checkpoint's image branch (and what it reads) is kept:
    fine-tuning must not drop what it learned."""
    image_branch, reads_labels = options.image_branch, options.branch_reads_labels
    if options.init is not None and (image_branch is None or reads_labels is None):
        init_model = read_info(options.init).model
        image_branch = image_branch if image_branch is not None else init_model.image_branch or None
        reads_labels = reads_labels if reads_labels is not None else init_model.branch_reads_labels
    if reads_labels and not image_branch:
        raise LmaeError("--branch-reads-labels needs an image branch: add --image-branch 16 (or --init a checkpoint with one)")
    config = preset_config(options.preset, space.num_classes, patch_size=options.patch_size, image_branch=image_branch,
                           branch_reads_labels=reads_labels or None)
    return LabelMAE(config)  # its crop was checked against the patch size first (check_mask_ratios)


def restore_run(
    folder: Path, model: LabelMAE, optimizer, plateau, data: TrainingData, ratio: float, options: TrainOptions,
    console: Console, never_started: bool = False,
) -> RunState:
    """With --resume, the saved run loaded into `model`, `optimizer` and `plateau` (a ratio killed
    before its first epoch ended starts again, and so does one whose folder this run made,
    `never_started`: the run was stopped during an earlier ratio); without it, a fresh run
    (`train` has refused, before any ratio trained, one that would overwrite an earlier run:
    `check_no_earlier_run`)."""
    state_path = folder / STATE_FILE
    if options.resume and not state_path.exists() and never_started:
        console.print(f"{folder}: not started yet, nothing to resume; training it from the start", highlight=False)
    elif options.resume and not state_path.exists():
        console.print(f"{folder}: no saved epoch to resume (killed before its first one ended); starting from scratch", highlight=False)
    elif options.resume:
        state, trained_on = resume_state(state_path, model, optimizer, plateau, model.config, data, ratio, options, console)
        console.print(f"resuming {folder} after epoch {state.epoch} of {options.epochs}")
        if tuned_on(folder / "best.safetensors"):
            console.print(f"note: {folder / 'best.safetensors'} holds class offsets tuned by lmae-repair tune; they are "
                          "not carried over to an epoch that becomes best (they were tuned for its weights): tune again "
                          "if one does", highlight=False)
        if trained_on and trained_on != data.summary.get("data"):
            console.print(f"note: its earlier epochs were trained on {trained_on}; it goes on with {data.summary.get('data')}", highlight=False)
        return state
    return RunState()  # a fresh run: `check_no_earlier_run` made sure none is overwritten


def resumed_run_options(folder: Path, options: TrainOptions, console: Console) -> TrainOptions:
    """With --resume of a saved run, the --init and image branch the run was started with: its
    weights come from its state, not from --init, so its checkpoints must name the checkpoint it
    really started from (not the --init of the resuming command, or none when that omits it),
    and the model is rebuilt as it was (a run started from a checkpoint with an image branch
    resumes without --init being repeated)."""
    state_path = folder / STATE_FILE
    if not (options.resume and state_path.exists()):
        return options
    info = load_saved_run(state_path)[1]
    started_from = info.training.get("init")
    if options.init is not None and (started_from is None or Path(options.init).resolve() != Path(started_from).resolve()):
        console.print(f"note: {folder} was started from {started_from or 'no checkpoint (random weights)'}; "
                      f"--init {options.init} is not used when it resumes", highlight=False)
    return replace(
        options,
        init=None if started_from is None else Path(started_from),
        image_branch=info.model.image_branch if options.image_branch is None else options.image_branch,
        branch_reads_labels=info.model.branch_reads_labels if options.branch_reads_labels is None else options.branch_reads_labels,
    )


RUN_FILES = (STATE_FILE, "best.safetensors", "last.safetensors", "history.jsonl")


def check_no_earlier_run(folder: Path, resume: bool) -> None:
    """Refuse to start a ratio's run over an earlier one's files: without --resume, any of them
    (a repeated command must not overwrite a run, even one whose state.pt was deleted); with
    --resume, checkpoints left without the state.pt that would continue them."""
    found = [name for name in RUN_FILES if (folder / name).exists()]
    if found and not resume:
        raise LmaeError(f"{folder / found[0]}: a run already exists here; pass --resume to continue it or choose another --out")
    if found and resume and STATE_FILE not in found:
        raise LmaeError(f"{folder}: holds a run's {found[0]} but no {STATE_FILE} to resume it from; choose another --out")


def next_epoch_would_overrun(max_minutes: float, elapsed: float, epoch_seconds: list[float]) -> bool:
    """Whether the next epoch, as long as the longest so far, would end past `max_minutes` of
    this ratio's training: a time budget (a shared machine, a lent GPU) ends the run cleanly at an
    epoch's end, with its checkpoints written, instead of killed mid-epoch. At least one epoch
    always runs. Under torchrun the processes agree (any one out of time stops them all), so
    none waits for the others at a collective that never comes; without a budget (the same
    option in every process) there is nothing to agree on."""
    if not max_minutes:
        return False
    over = bool(epoch_seconds) and elapsed + max(epoch_seconds) > 60.0 * max_minutes
    return bool(sum_across_ranks(torch.tensor([float(over)])).item() > 0)


def epochs_within_budget(max_minutes: float, elapsed: float, epoch_seconds: list[float], left: int) -> int:
    """How many of the `left` epochs still to reach --epochs will run within `max_minutes`, by
    `next_epoch_would_overrun`'s rule (each as long as the longest so far): what the progress bar
    counts to, so that its ETA is the run's end, not that of epochs the budget will never begin."""
    longest = max(epoch_seconds)
    if longest <= 0:
        return left
    return max(0, min(left, int((60.0 * max_minutes - elapsed) // longest)))


def epoch_plan(done: int, epochs: int, max_minutes: float) -> str:
    """What the run is set to train, for its first line: the epochs to reach and the budget."""
    if epochs <= done + 1:  # one epoch: it always runs, whatever the budget
        return f"epoch {epochs}"
    return f"epochs {done + 1}-{epochs}" + (f" (fewer if --max-minutes {max_minutes:g} runs out first)" if max_minutes else "")


def save_epoch(folder: Path, model, optimizer, plateau, state: RunState, improved: bool, info: CheckpointInfo,
               keep: bool = False) -> None:
    """Write the epoch's checkpoints (with `keep`, also one named after the epoch), then the
    resumable state, then the history rebuilt from it.

    Where the run's first state cannot be written (a full disk: state.pt is the largest file; a
    kill), the checkpoints just written are removed again: left without a state, they would make
    `--resume` refuse the folder (nothing to resume from) and the same command refuse it too (a
    run exists), so the folder is left as empty as before the epoch and either command starts
    again. Later epochs keep an earlier state.pt, which `--resume` continues from."""
    written = [folder / "last.safetensors"] + ([folder / epoch_file(state.epoch)] if keep else []) \
        + ([folder / "best.safetensors"] if improved else [])
    first = not (folder / STATE_FILE).exists()
    try:
        for path in written:
            save_checkpoint(path, model, info)
        save_state(folder / STATE_FILE, model, optimizer, plateau, state, info)
    except BaseException:
        if first:
            for path in written:
                path.unlink(missing_ok=True)
        raise
    write_history(folder / "history.jsonl", state.history)


CALIBRATION_PAIRS = 8  # training images whose central crop calibrates an int8 U-Net


def calibration_crops(pairs: list[Pair], crop: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The central `crop` x `crop` window (zero-padded where the image is smaller, void-padded
    in the label), in [0, 1], of the first CALIBRATION_PAIRS readable training images, and the
    same windows of their labels: what `quantise.calibrate` measures the image branch's
    activation ranges on when a checkpoint is saved (the labels only for a branch that reads
    them). The same crops every epoch, so that only the weights change the ranges."""
    images, labels = [], []
    for pair in pairs:
        if len(images) == CALIBRATION_PAIRS:
            break
        try:
            image, label = read_pair(pair)
        except LmaeError:
            continue
        top, left = max((image.shape[0] - crop) // 2, 0), max((image.shape[1] - crop) // 2, 0)
        window = torch.from_numpy(image[top : top + crop, left : left + crop].copy()).permute(2, 0, 1).float() / 255.0
        pad = (0, crop - window.shape[2], 0, crop - window.shape[1])
        images.append(torch.nn.functional.pad(window, pad))
        label_window = torch.from_numpy(label.values[top : top + crop, left : left + crop].astype(np.int64))
        labels.append(torch.nn.functional.pad(label_window, pad, value=255))  # beyond the image: void (>= N)
    return images, labels


def start_from(model: LabelMAE, path: Path, space: LabelSpace) -> None:
    """Load the weights of checkpoint `path` into `model` (same architecture and label space).

    A checkpoint without an image branch may start a model with one (`--image-branch`): the
    branch starts fresh and the refiner's weights for its features start at zero, so training
    starts from exactly the checkpoint's predictions. Likewise a branch that reads the image only
    may start one that also reads the labels (`--branch-reads-labels`): the U-Net's first
    convolution gets zero weights for the label planes. Data whose classes are numbered only
    (no classes.txt, `--num-classes`) takes the checkpoint's class names (and palette), so that the
    fine-tuned files still say sky, road... instead of class_0, class_1..."""
    source, info = load_checkpoint(path)
    mine = model.config
    grows_branch = not info.model.image_branch and replace(info.model, image_branch=mine.image_branch) == replace(mine, branch_reads_labels=False)
    grows_labels = (not info.model.branch_reads_labels and info.model.image_branch == mine.image_branch
                    and replace(info.model, branch_reads_labels=mine.branch_reads_labels) == mine)
    grows_branch = grows_branch or grows_labels
    if not info.label_space.same_classes(space):  # first: no other option fixes it
        theirs = info.label_space
        hint = ""
        if not space.has_names:  # scanned from the labels (no classes.txt): labels coded as the checkpoint's may be read otherwise
            background = "none" if theirs.background_id is None else theirs.background_id
            hint = (f"; if your labels are coded as its are, say so: --num-classes {theirs.num_classes} --background-id {background} "
                    f"--void-id {theirs.void_id} (or put the classes.txt of its data beside yours)")
        raise LmaeError(f"--init {path}: its label space ({theirs.describe()}) differs from the data's ({space.describe()}); "
                        f"a checkpoint can only start a model of the same classes{hint}")
    if not space.has_names and info.label_space.has_names:  # labels copied without their class list: the checkpoint's names
        space.names, space.palette = list(info.label_space.names), space.palette or info.label_space.palette
    if info.model.branch_reads_labels and replace(info.model, branch_reads_labels=False) == mine:
        # only --branch-reads-image-only asks this (the default keeps what the branch reads): the generic
        # advice below ("pass the same --preset, --patch-size and --image-branch") named none of it
        raise LmaeError(f"--init {path}: its image branch reads the label as well as the image, and --branch-reads-image-only "
                        "asks for one that reads the image only, which it cannot become without what it learned from the label; "
                        "leave out --branch-reads-image-only to fine-tune it as it is, or start without --init")
    if info.model != model.config and not grows_branch:
        raise LmaeError(f"--init {path}: its architecture differs from the one being trained ({config_difference(info.model, model.config)}); "
                        "pass the same --preset, --patch-size and --image-branch")
    weights = model.state_dict()
    for name, tensor in source.state_dict().items():
        target = weights[name]
        if target.shape == tensor.shape:
            target.copy_(tensor)
        else:  # the refiner's (or the U-Net's) first convolution, grown by new input channels
            target.zero_()
            target[:, : tensor.shape[1]].copy_(tensor)
    model.load_state_dict(weights)


def config_difference(theirs, mine) -> str:
    """What differs between a saved model's architecture and the one this run builds, each
    setting with both values (`patch_size 16 (this run: 8)`)."""
    theirs, mine = theirs.to_dict(), mine.to_dict()
    return ", ".join(f"{key} {theirs[key]} (this run: {mine.get(key)})" for key in theirs if theirs[key] != mine.get(key))


EPOCH_FILES = "epoch-*.safetensors"  # the weights train --keep-epochs keeps, one file per epoch


def epoch_file(epoch: int) -> str:
    return f"epoch-{epoch:03d}.safetensors"


@dataclass
class RunState:
    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)


def make_loader(pairs: list[Pair], space: LabelSpace, options: TrainOptions, device: torch.device, ranks: Ranks = Ranks()) -> DataLoader:
    """Shuffled batches of random crops; under torchrun each process reads its own 1/N of the
    pairs each epoch (`dataset.SeededSampler`), so an epoch still covers the data once. The last
    batch may be smaller and is kept: dropping it, 20 pairs in batches of 16 trained on 16 an
    epoch and 30 on 16, though the run said '30 training pairs' and --epochs counts passes over them."""
    dataset = CropDataset(pairs, space, options.crop, augment=True, photometric=options.photometric)
    default_workers = min(4, usable_cpus() // (2 * ranks.world_size))  # the job's cores, not the node's
    workers = options.workers if options.workers is not None else default_workers
    sampler = SeededSampler(len(dataset), options.seed, ranks.rank, ranks.world_size)
    shard = len(sampler)
    return DataLoader(
        dataset,
        batch_size=min(options.batch_size, shard),
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator(),  # its workers' base seed, drawn once per process: not from the global RNG (seed_epoch)
    )


def branch_view(input_label: torch.Tensor, pixel_mask: torch.Tensor, strategies: list[str], num_classes: int) -> torch.Tensor:
    """The label a branch that reads labels sees in training (model.LabelMAE.branch_input): the
    input label, with the hidden patches void (`num_classes`) in the samples whose strategy hides
    true labels (random, label-first, background-first), so that it never copies the answer; the
    objects strategy's input is a damaged label, as at inference, and is seen whole."""
    hides_truth = torch.tensor([name != "objects" for name in strategies], device=input_label.device)
    return torch.where(hides_truth[:, None, None] & pixel_mask, num_classes, input_label)


def run_epoch(model, loader, optimizer, weights, ratio, options, space, generator, device, use_amp, warmup, state, progress, task):
    """One pass over the training data; returns (mean loss, images seen)."""
    model.train()
    total_loss, images = 0.0, 0
    window_start, window_images = time.perf_counter(), 0
    config = (model.module if isinstance(model, DistributedDataParallel) else model).config
    p, has_branch = config.patch_size, bool(config.image_branch)
    for image, label, objects in loader:
        image = image.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        objects = objects.to(device, non_blocking=True)
        input_label, mask, strategies = mixed_training_mask(label, objects, p, space, ratio, options.mask_mix, generator)
        pixel_mask = expand_patch_mask(mask, (label.shape[1] // p, label.shape[2] // p), p)
        set_warmup_lr(optimizer, state.step, warmup, options.lr)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            if has_branch:
                seen = branch_view(input_label, pixel_mask, strategies, config.num_classes) if config.branch_reads_labels else None
                logits, branch_logits = model(image, input_label, mask, with_branch_logits=True, branch_label=seen)
            else:
                logits = model(image, input_label, mask)
        loss = lmae_loss(logits, label, weights, pixel_mask)
        if has_branch:  # the image branch also learns to segment the whole crop from the image alone
            # (or, reading the visible labels, the hidden patches: the rest it could copy)
            branch_pixels = pixel_mask if config.branch_reads_labels else None
            loss = loss + BRANCH_LOSS_WEIGHT * lmae_loss(branch_logits, label, weights, branch_pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step += 1
        batch_loss = float(loss.detach())
        total_loss += batch_loss * image.shape[0]
        images += image.shape[0]
        window_images += image.shape[0]
        speed = window_images / max(time.perf_counter() - window_start, 1e-9)
        progress.update(task, advance=1, loss=batch_loss, speed=speed)
    total_loss, images = (float(v) for v in sum_across_ranks(torch.tensor([total_loss, images], dtype=torch.float64)))
    if images == 0:
        raise LmaeError("no training batch could be formed (no readable training pair?)")
    return total_loss / images, int(images)


def set_warmup_lr(optimizer, step: int, warmup: int, lr: float) -> None:
    """Linear warm-up to `lr` over the first `warmup` steps; afterwards the plateau scheduler
    owns the learning rate."""
    if step < warmup:
        for group in optimizer.param_groups:
            group["lr"] = lr * (step + 1) / warmup


@torch.no_grad()
def validate(
    model: LabelMAE,
    pairs: list[Pair],
    space: LabelSpace,
    ratio: float,
    tile: int,
    device: torch.device,
    seed: int = 0,
    ranks: Ranks = Ranks(),
) -> dict:
    """PA-mIoU at mask ratio `ratio` on whole images: random patches hidden (the same ones every
    epoch, drawn from `seed`), rebuilt in tiles, scored on the hidden non-void pixels. Also the
    global mIoU of the completed label (hidden pixels predicted, the rest kept). Under torchrun
    each process scores every N-th pair and the confusion matrices are summed: the same figures
    as one process."""
    model.eval()
    p = model.config.patch_size
    masked_cm, global_cm = ConfusionMatrix(space.num_classes), ConfusionMatrix(space.num_classes)
    use_amp = device.type == "cuda"
    for index, pair in enumerate(pairs):
        if index % ranks.world_size != ranks.rank:
            continue
        try:
            image_np, label_file = read_pair(pair)
        except LmaeError:
            continue
        height, width = label_file.values.shape
        whole = [-(-side // p) * p for side in (height, width)]
        padded = [max(side, tile) for side in whole]
        image, label = mirror_pad(image_np, label_tensor(label_file.values, space).numpy(), *padded)  # as inference pads
        image, label = image.float().div_(255.0).to(device), label.to(device)
        generator = torch.Generator().manual_seed(seed * 100_003 + index)
        if padded == whole:
            bg = background_ratio(label[None], p, space.background_id, space.void_id)
            mask, seen = strategy_mask("random", bg, ratio, generator)[0], label
        else:  # smaller than a tile: its mirror image must not show what it hides
            mask, seen = hide_within_image(label, (height, width), whole, p, space, ratio, generator)
        probs = predict_probabilities(model, image, seen, mask, tile, autocast=use_amp)
        prediction = probs.argmax(0)
        pixel_mask = expand_patch_mask(mask[None], (label.shape[0] // p, label.shape[1] // p), p)[0]
        real = (slice(0, height), slice(0, width))  # the padding is scored nowhere
        masked_cm.update(prediction[real], label[real], pixel_mask[real])
        global_cm.update(torch.where(pixel_mask, prediction, label)[real], label[real])
    model.train()
    for matrix in (masked_cm, global_cm):
        matrix.matrix = sum_across_ranks(matrix.matrix)
        matrix.unpredicted = sum_across_ranks(matrix.unpredicted)
    return {
        "val_pa_miou": round(masked_cm.miou(), 4),
        "val_pa_pixel_acc": round(masked_cm.pixel_accuracy(), 4),
        "val_miou": round(global_cm.miou(), 4),
    }


def hide_within_image(
    label: torch.Tensor, size: tuple[int, int], whole: tuple[int, int], p: int, space: LabelSpace, ratio: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation's random patches for a pair smaller than a tile (`label`: (Hp, Wp), its mirror
    image beyond `size`, the pair's (H, W)): (mask (Lp,), the label the model is shown). As at
    inference (`repair.prepare`), only the patches of the pair's own grid (`whole`, its size in
    whole patches) are hidden, and the mirror image shows them void. Drawn on the padded grid with
    its mirror image showing the hidden labels, a 50-pixel-wide pair had most of its hidden
    patches in the unscored padding and the answers of the others beside them."""
    height, width = size
    grid = (whole[0] // p, whole[1] // p)
    bg = background_ratio(label[None, : whole[0], : whole[1]], p, space.background_id, space.void_id)
    hidden = strategy_mask("random", bg, ratio, generator)[0].view(grid)
    mask = torch.nn.functional.pad(hidden, (0, label.shape[1] // p - grid[1], 0, label.shape[0] // p - grid[0]), value=False)
    damaged = label[:height, :width].clone()
    damaged[expand_patch_mask(hidden.flatten()[None], grid, p)[0][:height, :width]] = space.void_id
    widths = ((0, label.shape[0] - height), (0, label.shape[1] - width))
    seen = torch.from_numpy(np.pad(damaged.cpu().numpy(), widths, mode="symmetric")).to(label.device)
    seen[:height, :width] = label[:height, :width]  # the pair itself as every pair is shown: the model hides its patches
    return mask.flatten(), seen


def checkpoint_info(
    model, ratio, data: TrainingData, options: TrainOptions, state: RunState, record: dict,
    device: torch.device, ranks: Ranks = Ranks(),
) -> CheckpointInfo:
    training = {
        **data.summary,
        "preset": options.preset,
        "epochs": state.epoch,
        "batch_size": options.batch_size * ranks.world_size,
        "processes": ranks.world_size,
        "crop": options.crop,
        "lr": options.lr,
        "weight_decay": options.weight_decay,
        "mask_mix": list(options.mask_mix),
        "class_weighting": options.class_weighting,
        "weights_from": options.weights_from,
        "photometric": options.photometric,
        "init": None if options.init is None else str(Path(options.init).resolve()),
        "seed": options.seed,
        "device": device.type if ranks.distributed else str(device),
        "train_seconds": round(sum(r["seconds"] for r in state.history), 1),
        "command": launch_command(ranks),
    }
    validation = {k: v for k, v in record.items() if k.startswith("val_")}
    if validation:
        validation["epoch"] = state.epoch
        validation["tile"] = options.crop
        validation["protocol"] = "random patches hidden at the training mask ratio, whole images in tiles"
    return CheckpointInfo(model.config, ratio, data.space, training, validation, __version__, gap_kind=options.gaps)


def launch_command(ranks: Ranks) -> str:
    """The command line that trained this checkpoint, as the user would retype it."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":  # python -m lmae_repair, or torchrun -m lmae_repair
        program = "python -m lmae_repair"
        if ranks.distributed:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(ranks.world_size))
            program = f"torchrun --nproc_per_node {per_node} -m lmae_repair"
    return " ".join([program] + sys.argv[1:])


def save_state(path: Path, model, optimizer, plateau, state: RunState, info: CheckpointInfo) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "plateau": plateau.state_dict(),
            "run": asdict(state),
            "info": info.to_json(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # drop-path on a GPU
        },
        buffer,
    )
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


# what a resumed run must keep (see resume_state): TrainOptions fields, recorded under the same
# names in each checkpoint's training record (checkpoint_info). The seed draws the validation
# masks too: resumed with another, best.safetensors was chosen by figures on other patches.
RESUMED_OPTIONS = ("crop", "lr", "mask_mix", "class_weighting", "weights_from", "photometric", "seed")


def resume_state(path: Path, model, optimizer, plateau, config, data: TrainingData, ratio: float,
                 options: TrainOptions, console: Console) -> tuple[RunState, str | None]:
    """The saved run loaded into `model`, `optimizer` and `plateau`: its state, and the data its
    epochs were trained on (a resumed run may be given other data on purpose; it is said, not refused).

    Options that change what the run learns (crop, learning rate, masks, loss weights, kind of
    gap) must be the ones it was started with: the optimizer's saved state would silently keep
    the old learning rate while the checkpoints recorded the new one, and a run resumed with
    `--gaps objects` would be marked for labels its earlier epochs never trained for. Changing
    them is a new run from these weights (`--init`). So must the validation pairs, which choose
    best.safetensors by comparing the epochs' figures (`check_same_validation`)."""
    space = data.space
    saved, info = load_saved_run(path)
    differs = [config_difference(info.model, config)] if info.model != config else []
    if not info.label_space.same_classes(space):
        differs.append(f"label space {info.label_space.describe()} (this run: {space.describe()})")
    if abs(info.mask_ratio - ratio) > 1e-9:
        differs.append(f"mask ratio {info.mask_ratio:g} (this run: {ratio:g})")
    if differs:  # said as "(model, label space or mask ratio)", leaving the user to guess which option
        raise LmaeError(f"{path}: the saved run differs from this command: {'; '.join(differs)}; "
                        "use the options it was started with, or another --out")
    check_resumed_options(path, info, options)
    check_same_validation(path, info, data.summary, console)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    plateau.load_state_dict(saved["plateau"])
    torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng") and torch.cuda.is_available() and len(saved["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    run = saved["run"]
    return RunState(run["epoch"], run["step"], run["best_score"], run["history"]), info.training.get("data")


def load_saved_run(path: Path) -> tuple[dict, CheckpointInfo]:
    """A run's state.pt and the checkpoint info saved with it."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved, CheckpointInfo.from_json(saved["info"])
    except Exception as exc:
        raise LmaeError(f"{path}: unreadable training state ({type(exc).__name__}: {str(exc)[:120]})") from None


def check_resumed_options(path: Path, info: CheckpointInfo, options: TrainOptions) -> None:
    now = {key: list(value) if isinstance(value, tuple) else value  # as the JSON record holds it
           for key, value in ((key, getattr(options, key)) for key in RESUMED_OPTIONS)}
    changed = [option_change(key, now[key], info.training[key]) for key in RESUMED_OPTIONS
               if key in info.training and info.training[key] != now[key]]
    if info.gap_kind != options.gaps:
        changed.append(f"--gaps {options.gaps} (started with {info.gap_kind})")
    if changed:
        raise LmaeError(f"{path}: --resume continues a run with the options it was started with, and these differ: "
                        f"{'; '.join(changed)}. Pass those, or start a new run from its weights with --init")


def check_same_validation(path: Path, info: CheckpointInfo, summary: dict, console: Console) -> None:
    """Refuse to resume a run on another number (or split) of validation pairs than it was saved
    with: its best score is compared with the next epochs' figures, so a run validated on 2 pairs
    and resumed on 4 chose best.safetensors across two sets, and one resumed without --val
    compared a PA-mIoU with the negative training loss (no later epoch could be best). Data that
    moved (another folder, as many pairs) is noted, as moved training data is."""
    then, now = validation_text(info.training), validation_text(summary)
    if then != now:
        raise LmaeError(f"{path}: --resume continues a run on the validation pairs it was saved with, which choose "
                        f"best.safetensors, and these differ: {now} (saved with {then}). Pass the same --val, --val-split "
                        "and --val-max-pairs, or start a new run from its weights with --init")
    if info.training.get("val_data") != summary.get("val_data"):
        console.print(f"note: its earlier epochs were validated on {info.training.get('val_data')}; it goes on with "
                      f"{summary.get('val_data')}", highlight=False)


def validation_text(training: dict) -> str:
    """How many validation pairs a run has, and of which split (not where they lie: data moved
    to another disk is still the same validation)."""
    if not training.get("val_pairs"):
        return "no validation pairs"
    return pairs_text(training["val_pairs"], "validation") + (f" of split {training['val_split']}" if training.get("val_split") else "")


def pairs_text(count: int, kind: str) -> str:
    """'1 training pair', '3 validation pairs': a run on one pair said '1 training pairs'."""
    return f"{count} {kind} pair{'' if count == 1 else 's'}"


def option_change(key: str, now, then) -> str:
    """An option of a resumed run that differs from its start, as the user types it: a flag
    (`--photometric`) by whether it is given, not as 'True (started with False)'."""
    flag = f"--{key.replace('_', '-')}"
    if isinstance(now, bool):
        return f"{flag} {'given' if now else 'left out'} (started {'with' if then else 'without'} it)"
    return f"{flag} {now} (started with {then})"


def write_history(path: Path, history: list[dict]) -> None:
    """One line of figures per epoch, rewritten whole from the saved state (never appended), so
    that a run killed between saving its state and its history cannot lose or repeat an epoch.
    A figure of nothing (NaN: a PA-mIoU with no annotated pixel hidden; or an infinite loss) is
    written null: bare NaN is not JSON, and jq or any strict reader refused the whole file."""
    text = "".join(strict_json(record) + "\n" for record in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def epoch_line(record: dict, improved: bool) -> Text:
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}", f"{record['images_per_s']:.1f} img/s"]
    if "val_pa_miou" in record:
        parts.append(f"val PA-mIoU {record['val_pa_miou']:.4f}")
        parts.append(f"mIoU {record['val_miou']:.4f}")
    parts.append(f"lr {record['lr']:.2e}")
    parts.append(f"{record['seconds']:.0f}s")
    return Text.assemble("  ".join(parts), ("  best", "green") if improved else "")


class BudgetTimeRemainingColumn(TimeRemainingColumn):
    """The time remaining, never past the task's `deadline` field (the --max-minutes budget's end,
    `time.monotonic`): in the first epoch the rate of its steps says nothing yet of when the budget
    stops the run, and the ETA of every epoch to --epochs (an hour for a run of one minute) is not
    what happens."""

    def render(self, task) -> Text:
        shown = super().render(task)
        deadline = task.fields.get("deadline")
        if deadline is None or task.finished:
            return shown
        left = max(deadline - time.monotonic(), 0.0)
        if task.time_remaining is not None and task.time_remaining <= left:
            return shown
        minutes, seconds = divmod(int(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


@contextlib.contextmanager
def training_progress(console: Console, disable: bool = False):
    """The epoch's bar, drawn live only on a real terminal (`cli.drawn_or_logged`): a log file
    under FORCE_COLOR=1 got it redrawn ten times a second; there the epoch lines tell the progress."""
    from lmae_repair.cli import drawn_or_logged

    with drawn_or_logged(console), progress_bar(console, disable) as progress:
        yield progress


def progress_bar(console: Console, disable: bool) -> Progress:
    """The columns of `training_progress`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[speed]:.1f} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        BudgetTimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def load_training_data(
    root: Path,
    split: str | None,
    images: Path | None,
    labels: Path | None,
    val: Path | None,
    val_split: str | None,
    space_options: dict,
    console: Console,
    val_max_pairs: int = 0,
) -> TrainingData:
    """Discover and scan the training data, settle the label space, and find the validation pairs
    (the first `val_max_pairs` usable ones when that is above 0).

    Pairs that cannot be used (unreadable, size mismatch, values outside the label space) are
    reported one line each on stderr and left out.

    --val-split without --val beside --images/--labels is refused: it is a split of DATA, which
    is then not given (the current folder by default), so a `val/` folder there was validated on
    without a word, whatever data it held.
    """
    if images is not None and val is None and val_split is not None:
        raise LmaeError(f"--val-split {val_split}: --images and --labels name the training pairs' folders, which have no "
                        "splits; give the validation data with --val DATA (and --val-split for a split of it)")
    index = discover_noted(console, root, split, images, labels)
    if index.unlabelled:  # as complete notes them: a partly converted dataset must not train on a part silently
        console.print(f"note: {index.unlabelled_images_note('not trained on')}", highlight=False)
    scan = scan_training_labels(index, console)
    space, pairs, skipped = settle_label_space(index, scan, space_options, console)
    if not scan.histogram[: space.num_classes].any():
        raise LmaeError(f"{index.root}: no training label holds an annotated pixel (all void): nothing to learn from")
    # e.g. Cityscapes' gtFine/test, whose labels are all void: an epoch's crops spent on nothing
    pairs = leave_out_unannotated(console, pairs, scan, space, "training", " (pass --split to train on one split)" if split is None else "")
    val_pairs: list[Pair] = []
    val_index = None
    if val is not None or val_split is not None:
        val_index, val_pairs, val_skipped = find_validation_pairs(val if val is not None else root, val_split, space, val_max_pairs,
                                                                  counted=space_options.get("num_classes") is None, console=console)
        skipped += val_skipped
    report_skipped(console, skipped)
    note_validation(console, pairs, val_pairs, own_split_hint=split is None and val is None)
    counts = scan.histogram[: space.num_classes]
    total = max(int(counts.sum()), 1)
    summary = {
        "data": str(index.root.resolve()),
        "layout": index.layout,
        "split": split,
        "pairs": len(pairs),
        "val_data": str((val or root).resolve()) if val_pairs else None,
        "val_split": val_split,
        "val_pairs": len(val_pairs),
        "class_pixel_share": {name: round(int(c) / total, 5) for name, c in zip(space.names, counts)},
        "image_short_side": scan.median_short_side(pairs),
        "skipped_pairs": len(skipped),
    }
    shapes = {pair: scan.shapes[pair] for pair in pairs}
    return TrainingData(index, pairs, val_pairs, space, [int(c) for c in counts], summary, skipped, val_index, shapes)


def scan_training_labels(index: DatasetIndex, console: Console):
    """Every training label read once (`dataset.scan_labels`), with a bar on a terminal; an error
    when none is usable, before the label space, which cannot be told from no label at all."""
    from lmae_repair.cli import draws_live

    with Progress(TextColumn("scanning labels"), BarColumn(), MofNCompleteColumn(), console=console, transient=True,
                  disable=not draws_live(console)) as progress:  # a transient bar leaves a blank line in logs
        task = progress.add_task("scan", total=len(index.pairs))
        scan = scan_labels(index.pairs, lambda: progress.advance(task))
    if not scan.good:
        report_skipped(console, index.unmatched + scan.problems)
        raise LmaeError(f"{index.root}: no usable training pair")
    return scan


def settle_label_space(index: DatasetIndex, scan, space_options: dict, console: Console) -> tuple[LabelSpace, list[Pair], list[str]]:
    """(label space, the pairs whose values fit it, one line per pair left out). The space comes
    from the options, the class list or the scanned values (`build_label_space`); one that cannot
    be meant (a single class) is refused, and labels holding 255 against another void value get
    the option that reads them."""
    void_option = space_options.get("void_id")
    space = build_label_space(
        index.root,
        scanned_max_value=scan.max_value(void_option if void_option is not None else 255),
        palette=scan.palette,
        layout_names=index.known_class_names,
        splits=index.split_folders,
        **space_options,
    )
    problem = space.single_class_problem() or (void_named(space.names) if void_option is None else None)
    if not problem and space.void_id == 255 and void_option is None:
        problem = masks_of_0_and_255([set(np.flatnonzero(scan.histogram).tolist())])  # every label: a class list changes nothing
    if not problem and space_options.get("num_classes") is None and not space.has_names:  # classes counted from the values
        problem = counted_classes_problem(scan.histogram, space.num_classes, space.void_id)  # soft-edged masks, spread-out values
    if problem:
        raise LmaeError(f"{index.root}: {problem}")
    absent = [name for name, count in zip(space.names, scan.histogram[: space.num_classes]) if not count]
    # a class listed in classes.txt (or counted up to) that no label holds; where none holds any
    # class, the error that nothing is annotated says it alone (`load_training_data`), not after a
    # note naming every class as one the model "cannot learn"
    if absent and len(absent) < space.num_classes:
        console.print(f"note: no training label holds {first_names(absent)}: the model cannot learn "
                      f"{'them' if len(absent) > 1 else 'it'}", highlight=False)
    pairs, outside = scan.outside(space)
    skipped = index.unmatched + scan.problems + outside
    void_note = void_255_hint(scan, space) if void_option is None else None
    if not pairs:
        report_skipped(console, skipped)
        raise LmaeError(f"{index.root}: no usable training pair{'; ' + void_note if void_note else ''}")
    if void_note:
        console.print(f"note: {void_note}", highlight=False)
    return space, pairs, skipped


def find_validation_pairs(
    root: Path, split: str | None, space: LabelSpace, max_pairs: int, counted: bool, console: Console,
) -> tuple[DatasetIndex, list[Pair], list[str]]:
    """(the validation data, its pairs that fit the label space, the first `max_pairs` when above
    0; one line per pair left out). Validation data that names other classes than the training
    data's, or has no usable pair, is refused: its figures would choose best.safetensors on
    nonsense. When the classes were `counted` from the training labels and validation labels hold
    more, the note says how to give the count."""
    index = discover_noted(console, root, split)
    check_same_classes(index, space)
    scan = scan_labels(index.pairs)
    pairs, outside = scan.outside(space)
    if outside and counted and not space.has_names:
        console.print(f"note: the {space.num_classes} classes were counted from the training labels' largest value; "
                      "validation labels hold more: pass --num-classes, or list the classes in a classes.txt", highlight=False)
    skipped = [f"{line} (validation)" for line in index.unmatched + scan.problems + outside]
    if not pairs:
        report_skipped(console, skipped)
        raise LmaeError(f"{index.root}: no usable validation pair (--val, --val-split)")
    if len(scan.unannotated(pairs, space)) == len(pairs):  # scored on no pixel: every epoch's PA-mIoU was NaN, and
        report_skipped(console, skipped)  # the run ended, after its last epoch, without a best.safetensors
        raise LmaeError(f"{index.root}: no validation label holds an annotated pixel (all void): nothing to choose "
                        "best.safetensors by (--val, --val-split)")
    pairs = leave_out_unannotated(console, pairs, scan, space, "validation")
    return index, (pairs[:max_pairs] if max_pairs > 0 else pairs), skipped


def leave_out_unannotated(console: Console, pairs: list[Pair], scan, space: LabelSpace, kind: str, hint: str = "") -> list[Pair]:
    """`pairs` without those whose labels hold void only (`LabelScan.unannotated`), which are
    noted: `kind` (training, validation) pairs with nothing to learn or score."""
    unannotated = set(scan.unannotated(pairs, space))
    if unannotated:
        first, count = min(unannotated, key=lambda pair: pair.key), len(unannotated)
        console.print(f"note: {count} {kind} label{'s hold' if count > 1 else ' holds'} no annotated pixel (all void), left out "
                      f"(first: {first.label}){hint}", highlight=False)
    return [pair for pair in pairs if pair not in unannotated]


def check_same_classes(index: DatasetIndex, space: LabelSpace) -> None:
    """Refuse validation data whose class list names other classes than the training data's."""
    names = declared_class_names(index.root, index.known_class_names, index.split_folders)
    if names and space.has_names and not names_agree(names, space):
        raise LmaeError(f"{index.root}: its classes ({first_names(names)}) are not the training data's "
                        f"({first_names(space.names)}); validate on data of the same label space")


def note_validation(console: Console, pairs: list[Pair], val_pairs: list[Pair], own_split_hint: bool) -> None:
    """Say when best.safetensors will be chosen on little evidence: without validation pairs (by
    training loss), or on validation pairs it also trains on."""
    if not val_pairs:
        console.print("note: no validation pairs (--val-split, --val), so best.safetensors is the epoch of lowest "
                      "training loss, which says little of how well it repairs", highlight=False)
    trained = {pair.label.resolve() for pair in pairs}
    shared = sum(pair.label.resolve() in trained for pair in val_pairs)
    if shared:
        split_hint = " (pass --split to train on one split only)" if own_split_hint else ""
        console.print(f"note: {shared} of the {len(val_pairs)} validation pairs are also training pairs{split_hint}; "
                      "validation figures then overrate the model", highlight=False)


def void_255_hint(scan, space) -> str | None:
    """The likely fix when labels mark unannotated pixels 255 (the common convention) but the
    label space took another void value (a classes.txt whose last line is `void`): every such
    label would otherwise be skipped with no word on which option helps."""
    if space.void_id == 255:
        return None
    holding = sum(255 in values for values in scan.values.values())  # each: the distinct values of a label
    if not holding:
        return None
    return (f"{holding} labels hold the value 255, outside the label space (void is {space.void_id}); "
            "if 255 marks unannotated pixels, pass --void-id 255")


def report_skipped(console: Console, problems: list[str], limit: int = 20) -> None:
    err = Console(stderr=True, quiet=console.quiet, markup=False, emoji=False)  # quiet on torchrun's other ranks
    for line in problems[:limit]:
        err.print(Text.assemble(("skipped:", "yellow"), f" {line}"), highlight=False, soft_wrap=True)
    if len(problems) > limit:
        err.print(Text.assemble(("skipped:", "yellow"), f" ... and {len(problems) - limit} more"))
