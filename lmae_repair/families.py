"""Which checkpoints to use: `--models` given as files, folders or a bundled family name, or the
bundled family that matches the dataset when `--models` is left out.

A *family* is a folder of checkpoints that share one label space and patch size and differ in mask
ratio (`models/camvid/mask-0.50.safetensors`, ...). Bundled families live in the project's
`models/` folder (override with the LMAE_REPAIR_MODELS environment variable). A family matches a
dataset when every label value seen in a sample of its labels is one of the family's classes or
its void value, and, for a family with named classes, when the dataset's class names
(classes.txt or the layout's list) or palette agree with it; the best agreement wins.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from lmae_repair.checkpoints import CheckpointInfo, checkpoints_in_folder, read_info
from lmae_repair.data import CITYSCAPES_NAMES, DatasetIndex, distinct_files, is_cityscapes, read_label, shell_path
from lmae_repair.hub import HUB_PREFIX, cached_family, fetch_family, is_hub_spec
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import declared_class_names, declared_classes, find_classes_file, first_names, names_agree, void_named

Checkpoints = list[tuple[Path, CheckpointInfo]]
MATCH_SAMPLE = 32  # labels read to decide which family fits a dataset
FIT_SHARE = 0.75  # share of those whose values must all be classes or void


def how_to_train(root: Path, images: Path | None = None) -> str:
    """The advice for data no bundled family fits, as a command that can be pasted: the data as
    it was given (DATA, or `--images` with `--labels` = root), its run folder outside the data
    (`train` refuses one inside it), beside it when the current folder is in it."""
    data, here = root.resolve(), Path.cwd().resolve()
    inside = any(here == folder or folder in here.parents for folder in [data] + ([images.resolve()] if images else []))
    runs = os.path.relpath(data.parent / f"{data.name}-runs") if inside else "runs/mine"
    given = shell_path(root) if images is None else f"--images {shlex.quote(str(images))} --labels {shlex.quote(str(root))}"
    if images is None and is_cityscapes(root) and all((root / "leftImg8bit" / split).is_dir() for split in ("train", "val")):
        given += " --split train --val-split val"  # not on val (held out to choose best.safetensors) nor test (all void)
    return (f"train a family for it with `lmae-repair train {given} --mask-ratio 0.25 "
            f"--mask-ratio 0.5 --mask-ratio 0.75 --out {shlex.quote(runs)}`, then pass --models {shlex.quote(runs)}")


def bundled_models_dir() -> Path:
    override = os.environ.get("LMAE_REPAIR_MODELS")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "models"


def bundled_models_text() -> str:
    """The bundled models folder for a message, saying where it was set when LMAE_REPAIR_MODELS moved it."""
    return f"{bundled_models_dir()}{', set by LMAE_REPAIR_MODELS' if os.environ.get('LMAE_REPAIR_MODELS') else ''}"


def bundled_families() -> dict[str, Path]:
    """Family name -> folder, for every folder of checkpoints under the bundled models folder:
    found as `--models FOLDER` finds them (`checkpoints_in_folder`), so that neither a hidden
    folder nor the `__MACOSX/` of a models folder unzipped from a Mac, which holds AppleDouble
    `._x.safetensors` files only, is taken for a family (every run without --models stopped
    with "__MACOSX: no .safetensors checkpoint found")."""
    root = bundled_models_dir()
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and checkpoints_in_folder(d)}


def checkpoint_files(specs: list[Path | str]) -> list[Path]:
    """The checkpoint files `--models` names, each once: files, folders (checkpoints_in_folder),
    bundled families by name and families on the Hub. Nothing is read yet, so that `inspect`
    can show each file of a folder that does not form one family."""
    families = bundled_families()
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if not path.exists() and str(spec) in families:
            path = families[str(spec)]
        elif is_hub_spec(str(spec)):
            path = fetch_family(str(spec))
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += checkpoints_in_folder(path)
        else:
            known = f" (bundled families: {', '.join(families)})" if families else f" (no bundled family in {bundled_models_text()})"
            raise LmaeError(f"{spec}: no such checkpoint file, folder or bundled family{known}")
    if not files:
        raise LmaeError(f"{', '.join(map(str, specs))}: no .safetensors checkpoint found")
    return distinct_files(files)  # a file named twice serves once


def not_a_local_path(spec: str, command: str) -> str:
    """Why `spec`, which names no local file or folder, is no input of a command that reads local
    checkpoint files only (`average`): a bundled family's name and a Hub family's id were told
    "no such file or folder" (the Hub's as hf:/owner/name), as if mistyped. Says where such a
    family's files lie, or how to get them onto this machine."""
    families = bundled_families()
    takes = f"{command} takes local checkpoint files or run folders"
    if spec in families:
        return (f"{spec}: {takes}, not a bundled family's name; its files are in {families[spec]} "
                f"(`lmae-repair inspect {spec}` shows what each one is)")
    if is_hub_spec(spec):
        cached = cached_family(spec)
        named = spec if spec.startswith(HUB_PREFIX) else HUB_PREFIX + spec
        where = (f"its files are in the Hugging Face cache, {cached}" if cached
                 else f"`lmae-repair inspect {named}` downloads it into the Hugging Face cache and shows where each file lies")
        if spec.startswith(HUB_PREFIX):
            return f"{spec}: {takes}, not a Hub family; {where}"
        return f"{spec}: no such file or folder ({takes}; were it the Hub family {named}, {where})"
    return f"{spec}: no such file or folder"


def find_checkpoints(specs: list[Path | str]) -> Checkpoints:
    """Checkpoint files named directly, found in folders (in a run folder, each ratio's
    best.safetensors stands for its last.safetensors and kept epochs), or bundled families by
    name; all must share one label space and patch size. One entry per routing slot, sorted by
    mask ratio: a file that serves several ratios (`CheckpointInfo.serve_ratios`) comes once per
    ratio, its info carrying that ratio."""
    files = checkpoint_files(specs)
    checkpoints = [(f, replace(info, mask_ratio=ratio)) for f, info in ((f, read_info(f)) for f in files) for ratio in info.slot_ratios]
    first_path, first = checkpoints[0]
    for path, info in checkpoints[1:]:
        differs = family_difference(info, first, first_path)
        if differs:
            raise LmaeError(f"{path}: {differs}; the checkpoints of one family must share one label space and patch size: "
                            "give one family at a time")
    serving: dict = {}
    for path, info in checkpoints:  # routing would take the first and ignore the other without a word
        slot = (round(info.mask_ratio, 2), info.gap_kind)
        if slot in serving and serving[slot].resolve() != path.resolve():
            raise LmaeError(f"{serving[slot]} and {path} both serve mask ratio {slot[0]:.2f} ({slot[1]} gaps); "
                            "give one file per slot (`inspect` lists the slots each file serves)")
        serving[slot] = path
    return sorted(checkpoints, key=lambda c: (c[1].mask_ratio, c[1].gap_kind))


def dataset_evidence(index: DatasetIndex, problems: list[str] | None = None) -> tuple[list[set[int]], list[str] | None, list[int] | None]:
    """The label values of each label of a sample, the dataset's class names, and the palette most
    of the sampled labels carry (one label from another tool, first in the sample, must not speak
    for the dataset); why each sampled label that could not be read could not, into `problems`."""
    values: list[set[int]] = []
    palettes: Counter = Counter()
    for label in sampled_labels(index, problems):
        values.append(set(np.unique(label.values).tolist()))
        if label.palette:
            palettes[tuple(label.palette)] += 1
    palette = list(palettes.most_common(1)[0][0]) if palettes else None
    return values, declared_class_names(index.root, index.known_class_names, index.split_folders), palette


def sampled_labels(index: DatasetIndex, problems: list[str] | None = None):
    """The readable labels of up to MATCH_SAMPLE pairs spread over the dataset, the sample a
    family is matched by; an unreadable one is skipped (reported when its pair is processed), its
    error added to `problems` where given."""
    step = max(1, len(index.pairs) // MATCH_SAMPLE)
    for pair in index.pairs[::step][:MATCH_SAMPLE]:
        try:
            yield read_label(pair.label)
        except LmaeError as exc:
            if problems is not None:
                problems.append(str(exc))


def seen(values: list[set[int]]) -> str:
    """The label values of the sample, the largest ones kept when there are many: they are the
    ones that usually explain a misfit (a void 255, classes beyond the family's)."""
    every = sorted(set().union(*values))
    shown = every if len(every) <= 14 else every[:8] + ["..."] + every[-5:]
    return "[" + ", ".join(map(str, shown)) + "]"


def unknown_values(values: list[set[int]], space) -> str:
    """The sampled label values that a label space has no place for, as a clause for the error
    that refuses its checkpoint ("" when the misfit is elsewhere, in the class names). Why: the
    error listed only the values seen, cut in the middle, leaving the user to work out that a
    family of 3 classes had been given Pascal VOC's 21."""
    outside = sorted(v for v in set().union(*values) if v >= space.num_classes and v != space.void_id)
    if not outside:
        return ""
    shown = ", ".join(map(str, outside)) if len(outside) <= 6 else f"{', '.join(map(str, outside[:4]))}, ..., {outside[-1]}"
    labels = sum(1 for label in values if any(v in label for v in outside))
    return (f"; {shown} {'is' if len(outside) == 1 else 'are'} neither its classes (0-{space.num_classes - 1}) nor its void "
            f"({space.void_id}), in {labels} of the {len(values)} labels sampled")


def family_difference(info: CheckpointInfo, first: CheckpointInfo, first_path: Path) -> str | None:
    """How a checkpoint differs from a family's first, in what one family must share, or None."""
    differs = space_difference(info.label_space, info.model.patch_size, first, first_path)
    return None if differs is None else f"its {differs}"


def space_difference(mine, patch_size: int, first: CheckpointInfo, first_path: Path) -> str | None:
    """How a label space and patch size differ from those of a family's checkpoint `first`, or
    None: also asked by `train` of the checkpoints already in its --out, which a model of other
    classes would make no family. Class names count where both have them: a file for "rust,
    corrosion" beside files for "crack, spalling" would fill a crack with rust."""
    theirs = first.label_space
    if not (mine.same_classes(theirs) and mine.same_names(theirs)):
        return f"label space ({mine.describe()}) differs from that of {first_path} ({theirs.describe()})"
    if patch_size != first.model.patch_size:
        return f"patch size ({patch_size}) differs from that of {first_path} ({first.model.patch_size})"
    return None


def masks_of_0_and_255(values: list[set[int]], names: list[str] | None = None, palette: list[int] | None = None,
                       void_declared: bool = False) -> str | None:
    """What is wrong where every sampled label holds only 0 and 255 and nothing says 255 is void
    (a palette, or a class list that names 255 as void, `void_declared`): binary masks saved black
    and white, whose 255 is void in these label spaces (Pascal VOC's convention), so a repair
    would fill every object as missing annotation. A class list of names alone (`background`,
    `lesion`) does not excuse them: it names a value 1 that no label holds, and with a checkpoint
    trained on 0/1 masks `complete` had turned every lesion into background. None for other
    labels (background and void only, where the data says 255 is void, is a label to complete)."""
    every = set().union(*values) if values else set()
    if every != {0, 255} or palette or void_declared:
        return None
    listed = f" (the class list names {first_names(names)} but not what 255 is)" if names else ""
    return (f"the labels hold only 0 and 255 (binary masks saved black and white?), and 255 is void here{listed}, so every "
            "object would be taken for missing annotation and filled: save the objects as 1 (0/1 masks; e.g. with "
            "numpy, (mask == 255).astype(np.uint8) into new files), then run this again"
            + ("; if 255 is missing annotation, say so in the class list (lines `0 background`, ..., `255 void`)"
               if names else ""))


SOFT_EDGE_VALUES = 16  # distinct values between 0 and 255 from which 0/255 masks are taken for soft-edged
SOFT_EDGE_SHARE = 0.1  # ... while those values cover at most this share of the pixels (the edges)
SOFT_EDGE_UPPER_VALUES = 4  # ... and edges run the whole way from 0 to 255: some of those values are 128 or more


def soft_edged_masks(histogram, num_classes: int, way_out: str = "pass --num-classes where the values are classes") -> str | None:
    """What is wrong where labels whose classes are counted from their values (no class list)
    are 0/255 masks with soft edges: mostly 0 and 255, and many values between them on a few
    pixels, as a mask resized with bilinear interpolation (or saved from a probability map)
    holds. `train` took each value for a class (250 classes, 48M parameters, with the objects
    void) and trained on them without a word. `histogram`: pixel count per value, all labels."""
    counts = np.asarray(histogram)
    between = counts[1:255]
    if not (counts[0] and counts[255]) or int((between > 0).sum()) < SOFT_EDGE_VALUES:
        return None
    if int((counts[128:255] > 0).sum()) < SOFT_EDGE_UPPER_VALUES:  # class indices 1..k with 255 void: 17+ classes, small objects
        return None
    share = float(between.sum()) / float(counts.sum())
    if share > SOFT_EDGE_SHARE:
        return None
    return (f"the labels look like masks of 0 and 255 with soft edges ({int((between > 0).sum())} values between them, on "
            f"{share:.1%} of the pixels, as a mask resized with bilinear interpolation holds), which would be read as "
            f"{num_classes} classes with 255 void: threshold them into 0/1 masks (e.g. with numpy, (mask >= 128).astype(np.uint8) "
            f"into new files; resize masks with nearest-neighbour only), or {way_out}")


def sparse_values(histogram, num_classes: int, void_id: int = 255,
                  way_out: str = "pass --num-classes where the values are classes") -> str | None:
    """What is wrong where labels whose classes are counted from their values (no class list)
    use fewer than half of the values 0..N-1 that count makes classes: an encoding of spread-out
    values (0, 10, 20, 30; 0, 128, 255), not class indices. `train` took 0, 10, 20, 30 for 31
    classes, 27 of them never seen, 30 a class rather than void, and trained without a word."""
    present = [int(v) for v in np.flatnonzero(np.asarray(histogram)[:num_classes])]
    if not present or len(present) * 2 >= num_classes:  # none: no label read as indices (colour labels), said elsewhere
        return None
    values = present + ([void_id] if np.asarray(histogram)[void_id] else [])
    shown = ", ".join(map(str, values)) if len(values) <= 8 else f"{', '.join(map(str, values[:6]))}, ..., {values[-1]}"
    listed = f"[{', '.join(map(str, present))}]" if len(present) <= 8 else "VALUES"
    return (f"the labels hold only the values {shown}: counted from them, that is {num_classes} classes (0-{num_classes - 1}, "
            f"void {void_id}) of which {num_classes - len(present)} never occur; lmae-repair reads classes as the values "
            f"0, 1, 2... with void {void_id}: remap them into new files (e.g. with numpy, lut = np.full(256, {void_id}, np.uint8); "
            f"lut[{listed}] = np.arange({len(present)}); lut[mask], leaving a value that marks missing annotation out of "
            f"the list so that it becomes {void_id}), or {way_out}")


def counted_classes_problem(histogram, num_classes: int, void_id: int = 255,
                            way_out: str = "pass --num-classes where the values are classes") -> str | None:
    """Why labels whose classes are counted from their values (no class list) are no class
    indices: 0/255 masks with soft edges (`soft_edged_masks`) or spread-out values
    (`sparse_values`); None where the count looks meant."""
    return soft_edged_masks(histogram, num_classes, way_out) or sparse_values(histogram, num_classes, void_id, way_out)


def soft_edges_of_sample(index: DatasetIndex) -> str | None:
    """`counted_classes_problem` of the labels `dataset_evidence` samples. Why: where no family
    fits 0/255 masks resized with bilinear interpolation, or values such as 0, 10, 20, complete and
    audit said to train a family on them, and train then refused them (or made a model of classes
    no label holds); they now say what train would."""
    histogram = np.zeros(256, np.int64)
    for label in sampled_labels(index):
        histogram += np.bincount(label.values.ravel(), minlength=256)[:256]
    largest = [value for value in np.flatnonzero(histogram) if value != 255]
    return counted_classes_problem(histogram, int(max(largest, default=0)) + 1, 255,
                                   "where the values are classes, train a family on them with `lmae-repair train --num-classes N`")


PALETTE_SCORE = 1  # the palette agrees: weaker evidence than names (2), as most VOC tools write the same one


def match_score(info: CheckpointInfo, values: list[set[int]], names: list[str] | None, palette: list[int] | None) -> int | None:
    """None if the family cannot read these labels; otherwise higher = better agreement.

    The values of most sampled labels (FIT_SHARE) must be classes or void: a few broken labels
    (a stray value, a colour label) must not stop a run; they are reported per pair."""
    space = info.label_space
    fitting = [all(v < space.num_classes or v == space.void_id for v in label) for label in values]
    if not values or sum(fitting) < FIT_SHARE * len(values):
        return None
    score = 0
    if names and space.has_names:
        if not names_agree(names, space):
            return None  # the dataset says what its classes are, and they are others
        score += 2
    if palette and space.palette:
        size = 3 * space.num_classes
        if list(palette[:size]) == list(space.palette[:size]):
            score += PALETTE_SCORE
    return score


def no_fit_reason(families: dict, values: list[set[int]], names: list[str] | None, unconfirmed: list,
                  soft: str | None = None, names_from: str = "its class list", unreadable: list[str] | None = None,
                  palette: list[int] | None = None) -> str:
    """Why no bundled family was chosen, with what the user can do about a near miss: labels
    whose values fit a family but that nothing names (no class list, no palette), or labels that
    hold no class indices at all, the first sampled label's error saying why (`unreadable`): a
    dataset of truncated or empty labels (a failed copy) was told to save its colour labels as
    class indices."""
    named = f"class names {first_names(names, 6)} (from {names_from}), " if names else ""
    reason = f"no bundled family ({', '.join(families)}) fits these labels ({named}values seen: {seen(values)})"
    masks = masks_of_0_and_255(values) or soft  # no family fits, and train refuses such labels (`soft`: soft-edged masks)
    if masks:
        return f"{reason}: {masks}"
    if not values and unreadable:
        if len(unreadable) == 1:
            return f"{reason}: the label sampled could not be read as class indices ({unreadable[0]})"
        return f"{reason}: none of the {len(unreadable)} labels sampled could be read as class indices (first: {unreadable[0]})"
    if not values:
        return reason + (": no sampled label could be read as class indices (colour labels must be saved as class indices "
                         "first: a palette or grayscale PNG, one value per class; or painted in the colours of a CVAT labelmap.txt "
                         "in the dataset folder, as its class list)")
    # palette labels whose colours are not the family's (a tool's own palette) say nothing of its classes either
    unnamed = "no classes.txt, and their palette is not the family's" if palette else "no classes.txt, no palette"
    for name, space in unconfirmed:
        reason += (f"; the values fit family '{name}' but nothing names the classes ({unnamed}): "
                   f"if they are its classes ({first_names(space.names)}), pass --models {name}")
    return reason


class NoFamilyFits(LmaeError):
    """No bundled family fits a dataset's labels: an error for `complete` and `evaluate`, while
    `audit` goes on with what needs no model (`reason` says which labels, without the advice)."""

    def __init__(self, reason: str, index: DatasetIndex, values: list[set[int]] | None = None, soft: str | None = None):
        try:  # the classes as train would read them (build_label_space): where one is named void, train refuses
            misnamed = void_named(declared_classes(index.root, index.known_class_names, index.split_folders)[0])
        except LmaeError:  # a class list that cannot be read: train says why
            misnamed = None
        # 0/255 masks, or no label read as class indices (colour labels): the reason says what to do
        # first, and no training advice (a family would learn nothing from the masks; train skips colour labels)
        self.advice = ("" if masks_of_0_and_255(values or []) or soft or values == [] else
                       f"before training a family for them: {misnamed}" if misnamed else how_to_train(index.root, index.image_root))
        self.reason = reason
        super().__init__(f"{index.root}: {reason}" + (f"; {self.advice}" if self.advice else ""))


def match_family(index: DatasetIndex) -> tuple[str, Checkpoints, str]:
    """The bundled family that fits the dataset best, and a note when the evidence is thin; a
    clear error when none or several fit."""
    families = bundled_families()
    if not families:
        raise LmaeError(f"no --models given and no bundled models found in {bundled_models_text()}; {how_to_train(index.root, index.image_root)}")
    unreadable: list[str] = []
    values, names, palette = dataset_evidence(index, unreadable)
    scored, unconfirmed = [], []
    for name, folder in families.items():
        checkpoints = find_checkpoints([folder])
        info = checkpoints[0][1]
        score = match_score(info, values, names, palette)
        # a family with named classes needs the data to say so (names or palette): label values
        # alone (0, 1, 2...) fit almost any family
        if score is not None and (score > 0 or not info.label_space.has_names):
            scored.append((score, name, checkpoints))
        elif score is not None:
            unconfirmed.append((name, info.label_space))
    if not scored:
        soft = None if names else soft_edges_of_sample(index)  # as train judges labels whose classes nothing names
        # names without a class list are the layout's: Cityscapes' train ids, named by its file names, or nnU-Net's dataset.json
        names_from = ("its class list" if find_classes_file(index.root, index.split_folders) is not None else
                      "its Cityscapes file names" if index.known_class_names == CITYSCAPES_NAMES else "its dataset.json")
        raise NoFamilyFits(no_fit_reason(families, values, names, unconfirmed, soft, names_from, unreadable, palette), index, values, soft)
    scored.sort(key=lambda s: -s[0])
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        tied = ", ".join(s[1] for s in scored if s[0] == scored[0][0])
        raise LmaeError(f"{index.root}: several bundled families fit these labels ({tied}); choose one with --models")
    score, name, checkpoints = scored[0]
    note = ""
    if score == PALETTE_SCORE and checkpoints[0][1].label_space.has_names:
        note = (" (chosen by its label values and palette alone: the data has no class list to confirm "
                "its classes; pass --models to be sure)")
    return name, checkpoints, note


def resolve_models(specs: list | None, index: DatasetIndex) -> tuple[str, Checkpoints]:
    """(what was used, checkpoints) for `--models`, or the matching bundled family without it."""
    if specs:
        checkpoints = find_checkpoints(list(specs))
        path, info = checkpoints[0]
        values, names, palette = dataset_evidence(index)
        problem = (masks_of_0_and_255(values, names, palette, void_declared=declared_classes(index.root, index.known_class_names, index.split_folders)[2] == 255)
                   if info.label_space.void_id == 255 else None)
        if problem:
            raise LmaeError(f"{index.root}: {problem}")
        if values and match_score(info, values, names, palette) is None:
            space = info.label_space
            raise LmaeError(
                f"{path}: its label space ({space.describe()}) does not fit the labels of {index.root} "
                f"(values seen: {seen(values)}{', class names: ' + first_names(names, 6) if names else ''})"
                f"{unknown_values(values, space)}; pass "
                f"checkpoints trained on labels like these, or {how_to_train(index.root, index.image_root)}"
            )
        return ", ".join(map(str, specs)), checkpoints
    name, checkpoints, note = match_family(index)
    return f"bundled family {name!r}{note}", checkpoints


def export_family(run_dir: Path, dest: Path, half: bool = True) -> list[Path]:
    """Copy the best checkpoint of each mask ratio of a training run into a family folder
    (`dest/mask-<ratio>.safetensors`, `mask-<ratio>-objects.safetensors` for a run of `--gaps
    objects`), in float16 by default to halve its size. A file of a family folder keeps its name
    (its model card names it: the bundled camvid family's general.safetensors)."""
    from lmae_repair.checkpoints import load_checkpoint, save_checkpoint

    written = []
    for path in dict.fromkeys(path for path, _ in find_checkpoints([run_dir])):
        model, info = load_checkpoint(path)
        objects = "-objects" if info.gap_kind == "objects" else ""
        target = Path(dest) / (f"mask-{info.mask_ratio:.2f}{objects}.safetensors" if is_run_checkpoint(path) else path.name)
        save_checkpoint(target, model, info, half=half)
        written.append(target)
    return written


def is_run_checkpoint(path: Path) -> bool:
    """A training run's checkpoint (mask-<ratio>/best.safetensors, or a bare best.safetensors),
    whose name says nothing of its mask ratio, as opposed to a family folder's named file."""
    from lmae_repair.train import RATIO_FOLDER_PREFIX

    return path.name == "best.safetensors" or path.parent.name.startswith(RATIO_FOLDER_PREFIX)


def calibrate_checkpoint(path: Path, data: Path, split: str | None = None, half: bool = True) -> int:
    """Measure the int8 activation ranges of a checkpoint's image branch (quantise.py) on the
    training images of `data`, as `train` does when it saves, and write them into the checkpoint
    (float16 weights by default, as bundled). For checkpoints saved before `train` did this.
    Returns the number of ranges (0: the model has no image branch, the file is left alone)."""
    from lmae_repair.checkpoints import load_checkpoint, save_checkpoint
    from lmae_repair.data import discover
    from lmae_repair.quantise import calibrate
    from lmae_repair.train import calibration_crops

    model, info = load_checkpoint(path)
    if model.branch is None:
        return 0
    images, labels = calibration_crops(discover(Path(data), split).pairs, info.tile)
    info.int8_calibration = calibrate(model, images, labels)
    save_checkpoint(Path(path), model, info, half=half)
    return len(info.int8_calibration)


def set_routing(path: Path, dest: Path, ratios: list[float] | float, gap_kind: str | None = None, half: bool = True) -> Path:
    """Copy a checkpoint to `dest` (a file), weights unchanged, serving the routing slots of
    `ratios` (the first is its mask ratio) and meant for `gap_kind` gaps (checkpoints.GAP_KINDS;
    None keeps the checkpoint's own).
    One file for several slots keeps a family small: the bundled camvid family serves 0.50 and
    0.75 from one model (models/camvid/README.md). One number (`0.5`) is one slot: from a
    notebook it had raised "'float' object is not iterable"."""
    from numbers import Real

    from lmae_repair.checkpoints import GAP_KINDS, load_checkpoint, save_checkpoint

    ratios = [ratios] if isinstance(ratios, Real) else list(ratios)
    if any(not isinstance(r, Real) or isinstance(r, bool) for r in ratios):
        raise LmaeError(f"mask ratios must be numbers in (0, 1], got {ratios}")
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise LmaeError(f"mask ratios must be in (0, 1], got {ratios}")
    check_distinct_slots(ratios)
    if gap_kind is not None and gap_kind not in GAP_KINDS:
        raise LmaeError(f"gap kind must be one of {', '.join(GAP_KINDS)}, got {gap_kind!r}")
    model, info = load_checkpoint(path)
    gap_kind = info.gap_kind if gap_kind is None else gap_kind
    training = {**info.training, "trained_mask_ratio": info.training.get("trained_mask_ratio", info.mask_ratio)}
    served = replace(info, mask_ratio=float(ratios[0]), serve_ratios=[float(r) for r in ratios[1:]], gap_kind=gap_kind, training=training)
    dest = with_checkpoint_suffix(Path(dest))
    save_checkpoint(dest, model, served, half=half)
    return dest


def with_checkpoint_suffix(path: Path) -> Path:
    """`path` ending in .safetensors. `average --out models/mine/mask-0.50` (and `set_routing`,
    `set_context` given `mine/general`) wrote a file that `--models models/mine` and `inspect`
    then did not find ("no .safetensors checkpoint found"): a folder's checkpoints are its
    .safetensors files (checkpoints.checkpoints_in_folder)."""
    return path if path.name.endswith(".safetensors") else path.with_name(path.name + ".safetensors")


def check_distinct_slots(ratios: list[float]) -> None:
    """Refuse a mask ratio given twice to `set_routing`, or two that are one ratio to two decimals
    (0.5 and 0.501, as a run folder names them): the file came twice into one routing slot, and
    `inspect` listed 'mask ratio 0.50, mask ratio 0.50'."""
    seen: dict[str, float] = {}
    for ratio in ratios:
        slot = f"{ratio:.2f}"
        if slot in seen:
            first = seen[slot]
            twice = f"{ratio:g} is given twice" if first == ratio else f"{first:g} and {ratio:g} are both mask ratio {slot}"
            raise LmaeError(f"mask ratios {ratios}: {twice}; give each routing slot once")
        seen[slot] = ratio


def set_context(path: Path, dest: Path, patches: int, half: bool = True) -> Path:
    """Copy a checkpoint to `dest` (a file), weights unchanged, its encoder and decoder attending
    at inference only within `patches` patches of the patches being rebuilt (0: the whole tile;
    `CheckpointInfo.context_patches`, `model.context_around`). Set it only after measuring the
    family's damage with and without (`evaluate`): it made `complete` on CamVid val about 10%
    faster at no measurable cost there, and cost the concrete family a little precision."""
    from numbers import Integral

    from lmae_repair.checkpoints import load_checkpoint, save_checkpoint

    if not isinstance(patches, Integral) or isinstance(patches, bool) or patches < 0:  # "3" raised a TypeError
        raise LmaeError(f"context patches must be a whole number, 0 or more, got {patches!r}")
    model, info = load_checkpoint(path)
    dest = with_checkpoint_suffix(Path(dest))
    save_checkpoint(dest, model, replace(info, context_patches=int(patches)), half=half)
    return dest


def serve_at_ratio(path: Path, ratio: float, dest: Path, half: bool = True) -> Path:
    """Copy a checkpoint into a family slot of another mask ratio (`dest/mask-<ratio>.safetensors`),
    weights unchanged. The mask ratio is not part of the network: at inference it only sets how
    many patches are hidden, so one well-trained model can serve several routing slots. (CamVid,
    2026-11-23: the bundled 0.25 model with its image branch beat the models trained at 0.5 and
    0.75 on their own damage, see models/camvid/README.md.) The ratio it was trained at is kept
    in the metadata as `training["trained_mask_ratio"]` and shown by `inspect`."""
    target = Path(dest) / f"mask-{ratio:.2f}.safetensors"
    return set_routing(path, target, [ratio], half=half)
