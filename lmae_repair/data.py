"""Dataset layouts and label files: find image/label pairs, read them, write labels back.

Three layouts are recognised (and `--images/--labels` names the folders explicitly):
- Pascal VOC: `JPEGImages/` + `SegmentationClass/`, optional `ImageSets/Segmentation/<split>.txt`,
  also when nested as `VOCdevkit/VOC20xx/`;
- Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/.../*_gtFine_labelTrainIds.png`;
- paired folders: `images/` beside `labels/` (or `masks/`, `annotations/`), matched by file stem,
  found anywhere below the root.
Every pair keeps its label path relative to the dataset root, so outputs can mirror the input.

What discovery cannot pair is kept apart: `unmatched` are problems that count as failed pairs (a
label without an image, two files with the same name, a split entry without files), `unlabelled`
are images without a label (normal in VOC's JPEGImages, so not recorded there).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import shlex
import struct
import sys
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import find_classes_file, labelmap_entries, read_class_names, text_lines

# PIL logs some decoding problems (a TIFF of 8 bands) before raising; the raise becomes our one
# line naming the file, so its log line, printed with no file name, would only add noise.
logging.getLogger("PIL").addHandler(logging.NullHandler())

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp"}  # .jfif: JPEGs as Windows saves them
# images of formats not read, named when a label's image is one (`unread_namesake`): phones' HEIC, cameras' raw files
MEDICAL_IMAGE_SUFFIXES = {".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}  # DICOM, NIfTI, NRRD, MetaImage
UNREAD_IMAGE_SUFFIXES = {".heic", ".heif", ".avif", ".gif", ".jp2", ".jxl", ".psd", ".tga", ".ppm", ".pgm",
                         ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"} | MEDICAL_IMAGE_SUFFIXES
_UMASK = os.umask(0o022)
os.umask(_UMASK)
# The largest image read, in pixels (8000x6000 fits): the model's class probabilities for one
# image take about 4 * classes bytes per pixel, so a 50-megapixel image with 21 classes needs
# about 4 GB; larger ones are refused before they are decoded. LMAE_REPAIR_MAX_PIXELS changes it.
DEFAULT_MAX_PIXELS = 50_000_000
LABEL_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"}
LOSSY_LABEL_SUFFIXES = {".jpg", ".jpeg", ".webp"}  # found among labels: reported, never read
# Found among labels, reported as failed pairs (never read): why, after "a JPG label; ". A GIF is
# lossless, but labels are written back in their own format and lmae-repair writes PNG, BMP, TIFF.
REFUSED_LABEL_SUFFIXES = {
    **{suffix: "lossy compression changes class values at region borders, so labels must be PNG (or BMP, TIFF)"
       for suffix in LOSSY_LABEL_SUFFIXES},
    ".gif": "labels are read and written as PNG, BMP or TIFF: save it as PNG (a palette GIF converts without a value changed)",
}
# The same files renamed (a JPEG saved as x.png): read, their values outside the label space were
# blamed, or, where JPEG's ringing stayed within it, processed as if exact, borders shifted.
LOSSY_LABEL_FORMATS = {"JPEG", "MPO", "WEBP"}
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
LABEL_DIR_NAMES = ("labels", "label", "masks", "mask", "annotations", "annotation", "gt")
NNUNET_DIR_NAMES = (("imagestr", "labelstr"), ("imagests", "labelsts"))  # nnU-Net's raw datasets: training and test pairs
NNUNET_SPLITS = {"imagestr": ("train", "Tr"), "imagests": ("test", "Ts")}  # what --split names each
NNUNET_CHANNEL = "_0000"  # nnU-Net names an image by its label's name and channel: case_0000.png for case.png
LABEL_STEM_SUFFIXES = ("_label", "_labels", "_mask", "_gt", "_seg", "_segmentation", "_annotation")  # _segmentation: ISIC
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelTrainIds"
CITYSCAPES_IDS_SUFFIX = "_gtFine_labelIds"  # the label ids beside the train ids (annotated_void)
CITYSCAPES_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]
# The colours Cityscapes gives its 19 train ids (cityscapesscripts' labels.py, as in the
# `_gtFine_color.png` files), in CITYSCAPES_NAMES' order: the reports draw its labels in them.
CITYSCAPES_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


class Problem(str):
    """A line of `DatasetIndex.unmatched` or `.unlabelled`, 'path: problem', printed as it is,
    that also carries the image it concerns where discovery knows one (a JPEG label's image, the
    image of two labels of one name, of a split entry whose label is missing): `audit` names it in
    the row, as it does for a pair, instead of leaving the curator to look for it."""

    image: Path | None = None


def problem(line: str, image: Path | None = None) -> Problem:
    """`line` as a Problem concerning `image`."""
    found = Problem(line)
    found.image = image
    return found


@dataclass(frozen=True)
class Pair:
    """One image and its label; `key` is the label's path relative to the dataset root."""

    image: Path
    label: Path
    key: str


@dataclass
class DatasetIndex:
    """What discovery found: the layout, its root, the pairs, and the files left unmatched."""

    layout: str
    root: Path
    pairs: list[Pair]
    unmatched: list[str] = field(default_factory=list)  # "path: problem", each a failed pair
    known_class_names: list[str] | None = None
    unlabelled: list[str] = field(default_factory=list)  # "path: no label with the same name"
    image_root: Path | None = None  # the --images folder, when it is not under root
    notes: list[str] = field(default_factory=list)  # what discovery chose that the user should know
    split_folders: tuple[Path, ...] = ()  # the --split's folders (DATA/train/): a class list there names the classes

    @property
    def input_folders(self) -> list[Path]:
        """Every folder the input is read from: nothing may be written there."""
        return [self.root] + ([self.image_root] if self.image_root is not None else [])

    def input_folder_holding(self, path: Path) -> Path | None:
        """The input folder that `path` is, or lies inside; None when it is outside the input."""
        path_r = path.resolve()
        return next((folder for folder in self.input_folders
                     if path_r == folder.resolve() or folder.resolve() in path_r.parents), None)

    def unlabelled_images_note(self, fate: str) -> str | None:
        """'N images have no label and are `fate` (first: ...)', or None where every image has one:
        train and evaluate say what they leave out, so that a partly labelled dataset (a video's
        every Nth frame, a half-converted folder) is not used in part without a word."""
        if not self.unlabelled:
            return None
        count = len(self.unlabelled)
        return (f"{count} image{'s have' if count > 1 else ' has'} no label and {'are' if count > 1 else 'is'} {fate} "
                f"(first: {self.unlabelled[0]})")

    def refuse_inside(self, path: Path, what: str = "the output") -> None:
        """Refuse to write `path` (an output folder, a report file) inside the input: it could
        overwrite an input file (an `audit --json` naming a label did), and no command writes
        under DATA."""
        folder = self.input_folder_holding(path)
        if folder is not None:
            raise LmaeError(f"{path}: {what} would be written inside the input ({folder}); choose a place outside it")


def _files_below(folder: Path, suffixes: set[str], problems: list[str] | None = None,
                 left_out: list[Path] | None = None) -> list[Path]:
    """The files below `folder` with one of `suffixes` (hidden files and folders left out), through symlinked
    folders but each real folder once, so that a link loop ends. What cannot be used is added to
    `problems`, one line each, instead of hanging or vanishing: a folder that cannot be read, a
    FIFO or device (opening it would wait forever), a link to nothing; such files also to `left_out`."""
    found = []

    def unreadable(error: OSError) -> None:
        if problems is not None:
            problems.append(f"{error.filename}: cannot read this folder ({error.strerror}); the files in it are left out")

    for dirpath, dirnames, filenames in walk_once(folder, onerror=unreadable):
        for name in filenames:
            path = Path(dirpath) / name
            if Path(name).suffix.lower() not in suffixes or name.startswith("."):
                continue
            if path.is_file():
                found.append(path)
            elif problems is not None:
                what = f"a link to {os.readlink(path)}, which does not exist" if path.is_symlink() and not path.exists() else "not a regular file"
                problems.append(f"{path}: {what}; left out")
                if left_out is not None:
                    left_out.append(path)
    return sorted(found)


# folders a drive or an archive holds beside the data: Windows' recycle bin and index, a Mac zip's resource forks
SYSTEM_FOLDERS = {"$recycle.bin", "system volume information", "__macosx"}


def walk_once(folder: Path, onerror=None):
    """`os.walk(folder)` through symlinked folders, but each real folder once, and none that
    holds `folder` itself: a link back to a folder already read (a loop, or a second way in) is
    not entered, nor one up to a folder above (`images/loop -> ..`), which led back in and to
    the folders beside it: a dataset's labels were read as images without a label, and a link
    up from a side folder found every pair 40 times over. Hidden folders (.git/,
    .ipynb_checkpoints/, a drive's .Trash-1000/) and SYSTEM_FOLDERS are not data: the images and
    labels of a deleted copy in a USB drive's trash were found as a second set of pairs.
    Folders are walked in sorted order, not the file system's: with `images/latest -> seq01` and
    the same in labels/, which name is used must not differ between images/ and labels/."""
    visited = {str(above) for above in Path(os.path.realpath(folder)).parents}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=onerror):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.casefold() not in SYSTEM_FOLDERS)
        yield dirpath, dirnames, filenames


def _label_stem_candidates(stem: str) -> list[str]:
    """A label named `x_mask.png` pairs with image `x.jpg` when no `x.png` label exists."""
    candidates = [stem]
    for suffix in LABEL_STEM_SUFFIXES:
        if stem.lower().endswith(suffix):
            candidates.append(stem[: -len(suffix)])
    return candidates


def _by_stem(paths: list[Path], folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """({relative path without extension: file}, {such a name that two files share (a.jpg and
    a.png): those files}); shared names are left out of the first, since either file could be the
    one meant (`clash_line` reports them). Accents count however they are stored (composed, or
    decomposed as macOS writes them), so an image and a label whose names look the same pair."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(unicodedata.normalize("NFC", path.relative_to(folder).with_suffix("").as_posix()), []).append(path)
    unique = {stem: group[0] for stem, group in groups.items() if len(group) == 1}
    return unique, {stem: group for stem, group in groups.items() if len(group) > 1}


def clash_line(group: list[Path], kind: str, named_by: Path | None = None) -> str:
    """The problem line of files of one name (`_by_stem`): keyed by the first, or where a label
    names those images, by that label, since it is the pair left out."""
    names = ", ".join(p.name for p in group)
    if named_by is not None:
        return (f"{named_by}: its image is ambiguous, {len(group)} {kind}s share its name ({names} in {group[0].parent}); "
                "rename or remove all but one")
    return f"{group[0]}: {len(group)} {kind}s share this name ({names}); rename or remove all but one"


def _labels_beside_images(candidates: list[Path], files: list[Path]) -> list[Path]:
    """Images and labels in one folder (`x.jpg` + `x.png` or `x_mask.png`): the labels are the
    label-format files that name another file of the folder (same name with another extension,
    or the name plus a label suffix such as `_mask`); the rest are images. Without this a label
    would pair with itself as its image."""
    stems: dict[Path, set[Path]] = {}
    for path in files:
        stems.setdefault(path.with_suffix(""), set()).add(path)
    return [
        path for path in candidates
        if any(stems.get(path.parent / stem, set()) - {path} for stem in _label_stem_candidates(path.stem))
    ]


def match_by_stem(image_dir: Path, label_dir: Path, root: Path) -> tuple[list[Pair], list[str], list[str]]:
    """Pair files in two folder trees by relative path without extension: (pairs, problems,
    images without a label). A name shared by two images or two labels is one problem, and
    its partner is not reported again as lacking a match."""
    problems: list[str] = []
    unusable_labels: list[Path] = []
    image_files = _files_below(image_dir, IMAGE_SUFFIXES, problems)
    label_files = _files_below(label_dir, LABEL_SUFFIXES, problems, unusable_labels)
    if label_dir.resolve() == image_dir.resolve():
        label_files = _labels_beside_images(label_files, image_files)
        taken = set(label_files)
        image_files = [path for path in image_files if path not in taken]
    images, image_clashes = _by_stem(image_files, image_dir)
    labels, label_clashes = _by_stem(label_files, label_dir)

    by_case = by_letter_case(images)

    def image_key(stem_path: str) -> str | None:
        """The key of the image a label (its path below label_dir without extension) names, if
        any: of its name, else of the one image whose name differs only in letter case (as
        `_pair_ignoring_case` pairs them)."""
        keys = image_keys_named(Path(stem_path))
        exact = next((key for key in keys if key in images), None)
        folded = {image for key in keys for image in by_case.get(key.casefold(), [])}
        return exact if exact is not None or len(folded) != 1 else folded.pop()

    def image_named(stem_path: str) -> Path | None:
        key = image_key(stem_path)
        return None if key is None else images[key]

    problems += [problem(clash_line(group, "label"), image_named(stem)) for stem, group in label_clashes.items()]
    pairs, used = [], {image_key(stem) or stem for stem in label_clashes}  # their image is reported through them
    if label_dir.resolve() != image_dir.resolve():
        for label in unusable_labels:  # a link to nothing: its image is reported through it, not also as without a label
            key = image_key(unicodedata.normalize("NFC", label.relative_to(label_dir).with_suffix("").as_posix()))
            if key is not None and key not in used:
                used.add(key)
                at = next(i for i, line in enumerate(problems) if line.startswith(f"{label}: "))
                problems[at] = problem(problems[at], images[key])
        refused, _ = _by_stem(_files_below(label_dir, set(REFUSED_LABEL_SUFFIXES)), label_dir)
        for stem_path, path in sorted(refused.items()):
            if stem_path not in labels and stem_path not in label_clashes:
                problems.append(problem(f"{path}: a {path.suffix.lstrip('.').upper()} label; "
                                        f"{REFUSED_LABEL_SUFFIXES[path.suffix.lower()]}", image_named(stem_path)))
                used.add(image_key(stem_path) or stem_path)  # its image is reported through this label, not as unlabelled
    claims: dict[str, list[Path]] = {}  # image key -> the labels that name it
    named_clashes: set[str] = set()  # names of several images that a label names
    orphans: list[tuple[Path, Path]] = []  # (label, its path below label_dir without extension)
    own_named = {key for stem in labels for key in image_keys_named(Path(stem), channel=False)}
    for stem_path, label in sorted(labels.items(), key=lambda item: item[1]):
        rel = Path(stem_path)
        keys = image_keys_named(rel)
        own = image_keys_named(rel, channel=False)
        match = next((key for key in keys if key in images and (key in own or key not in own_named)), None)
        if match is None:
            clash = next((key for key in keys if key in image_clashes), None)
            if clash is None:
                orphans.append((label, rel))
            else:  # the images it names share a name: reported by this label
                problems.append(clash_line(image_clashes[clash], "image", named_by=label))
                named_clashes.add(clash)
            continue
        used.add(match)
        claims.setdefault(match, []).append(label)
    orphans = _pair_ignoring_case(orphans, images, used, claims)
    problems += [clash_line(group, "image") for stem, group in image_clashes.items() if stem not in named_clashes]
    lonely_images = by_name({key: path for key, path in images.items() if key not in used}, labels=False)
    longer_images = by_prefix(lonely_images)
    problems += [f"{label}: no image with the same name"
                 f"{elsewhere(rel, lonely_images, image_dir) or unread_namesake(rel, image_dir) or near_namesake(label, rel, lonely_images, longer_images, image_dir)}"
                 for label, rel in orphans]
    for key, claimants in sorted(claims.items(), key=lambda item: item[1][0]):
        if len(claimants) == 1:
            pairs.append(Pair(images[key], claimants[0], relative_key(claimants[0], root)))
        else:  # x.png and x_mask.png both name x.jpg: either could be the one meant
            problems.append(problem(f"{images[key]}: {len(claimants)} labels name this image "
                                    f"({', '.join(str(p) for p in claimants)}); rename or remove all but one", images[key]))
    lonely_labels = by_name({rel.as_posix(): label for label, rel in orphans}, labels=True)
    longer_labels = by_prefix(lonely_labels)
    unlabelled = [problem(f"{image}: no label with the same name"
                          f"{elsewhere(Path(key), lonely_labels, label_dir, 'a label') or near_namesake(image, Path(key), lonely_labels, longer_labels, label_dir, 'a label') or no_folder(label_dir, Path(key).parent)}", image)
                  for key, image in images.items() if key not in used]
    return pairs, problems, unlabelled


def no_folder(label_dir: Path, below: Path) -> str:
    """For an image without a label in subfolder `below`: that the labels folder has no such
    subfolder, where it has none (a sequence exported as images but not as labels); nothing else.
    Each of its frames was "no label with the same name", as if its labels had been lost one by one."""
    return "" if below == Path(".") or (label_dir / below).is_dir() else f" ({label_dir / below} does not exist)"


def image_keys_named(rel: Path, channel: bool = True) -> list[str]:
    """The image keys (paths below the images folder, without extension) that a label names, `rel`
    being its own below the labels folder: x for x.png, also x for x_mask.png (`_label_stem_candidates`),
    and after those (where `channel`) x_0000, nnU-Net's name for the first channel of x
    (`NNUNET_CHANNEL`). `match_by_stem` gives an image to a label by that channel name only where
    no label names it by its own: in a plain dataset, labels/run.png beside run_0000.png's own
    label had made images/run_0000.png fail as named by two labels."""
    stems = _label_stem_candidates(rel.name)
    channels = [stem + NNUNET_CHANNEL for stem in stems] if channel else []
    return [(rel.parent / stem).as_posix() for stem in [*stems, *channels]]


def _pair_ignoring_case(orphans: list[tuple[Path, Path]], images: dict[str, Path], used: set[str],
                        claims: dict[str, list[Path]]) -> list[tuple[Path, Path]]:
    """Pair the labels left without an image (`orphans`: label, its path below the labels folder
    without extension) with an image whose name differs only in letter case (`IMG 001.JPG` and
    `img 001.png`): on Windows and macOS, where such datasets are made, that is the same name and
    they pair there; here they were failed pairs. Only where it is unambiguous: one image of that
    name, not taken by another label, named by one label. Updates `used` and `claims`; returns
    the orphans left."""
    free = by_letter_case(key for key in images if key not in used)

    def match(rel: Path) -> str | None:
        """The one free image whose name is one the label may name, letter case aside."""
        found = {key for named in image_keys_named(rel) for key in free.get(named.casefold(), [])}
        return found.pop() if len(found) == 1 else None

    matches = {label: match(rel) for label, rel in orphans}
    named = [key for key in matches.values() if key is not None]
    left = []
    for label, rel in orphans:
        key = matches[label]
        if key is None or named.count(key) > 1:
            left.append((label, rel))
            continue
        used.add(key)
        claims.setdefault(key, []).append(label)
    return left


def by_name(files: dict[str, Path], labels: bool) -> dict[str, list[Path]]:
    """{the image name a file has or (a label) may name, without extension: the files}, from
    {path below its folder without extension: file}: to find a file's partner in another
    subfolder (`elsewhere`) without a search per file."""
    index: dict[str, list[Path]] = {}
    for key, path in sorted(files.items(), key=lambda item: item[1]):
        for name in _label_stem_candidates(Path(key).name) if labels else [Path(key).name]:
            index.setdefault(name, []).append(path)
    return index


def elsewhere(stem: Path, partners: dict[str, list[Path]], partner_dir: Path, kind: str = "an image") -> str:
    """For a file without its partner (`stem`: its path below its folder, without extension):
    where a partner of its name (`by_name`) lies in another subfolder (pairs match by path below
    the two folders, so their subfolders must match); nothing where there is none."""
    names = _label_stem_candidates(stem.name) if kind == "an image" else [stem.name]
    found = [path for name in names for path in partners.get(name, [])
             if path.parent.relative_to(partner_dir) != stem.parent]
    if not found:
        return ""

    def folder(rel: Path) -> str:
        return "the top folder" if rel.as_posix() == "." else f"{rel.as_posix()}/"

    return (f" in {folder(stem.parent)} ({kind} of that name is in {folder(found[0].parent.relative_to(partner_dir))} "
            f"of {partner_dir}: the subfolders below the images and labels folders must match)")


def name_prefixes(name: str) -> list[str]:
    """The beginnings of `name` that end before a separator (not a letter or digit): `tile_01`
    and `tile` of `tile_01-mask`, not `tile_0`, so that `tile_1` is no beginning of `tile_10`."""
    return [name[:i] for i in range(1, len(name)) if not name[i].isalnum()]


def by_prefix(partners: dict[str, list[Path]]) -> dict[str, list[tuple[str, Path]]]:
    """{a beginning of a name (`name_prefixes`): (that name, its file)} of `by_name`'s index, for
    `near_namesake` to find longer names without a search per file."""
    index: dict[str, list[tuple[str, Path]]] = {}
    for name, files in partners.items():
        for prefix in name_prefixes(name):
            index.setdefault(prefix, []).extend((name, file) for file in files)
    return index


def near_namesake(path: Path, stem: Path, partners: dict[str, list[Path]], longer: dict[str, list[tuple[str, Path]]],
                  partner_dir: Path, kind: str = "an image") -> str:
    """For a file without its partner (`path`; `stem`, its path below its folder without
    extension; `kind`, what the partner is, as `elsewhere` takes it): an unpaired partner in the
    same subfolder whose name begins this one's (`partners`, `by_name`) or begins with it
    (`longer`, `by_prefix`) before a separator (a label `tile_01-mask.png` or `tile_01_classes.tif`
    for the image `tile_01.tif`), and the name that pairs them; nothing where there is none.
    Without it each was "no ... with the same name", the image and its label two lines apart,
    with no word of how labels are matched."""
    near = [(other, file) for other in name_prefixes(stem.name) for file in partners.get(other, [])]
    near += longer.get(stem.name, [])
    near = sorted(((other, file) for other, file in near if file.parent.relative_to(partner_dir) == stem.parent),
                  key=lambda item: (-len(item[0]), item[1]))
    if not near:
        return ""
    partner = near[0][1]
    label, image = (path, partner) if kind == "an image" else (partner, path)
    return (f" ({partner} has no {'label' if kind == 'an image' else 'image'} either, and a name close to this one: a label "
            f"pairs with the image of its name, alone or followed by {', '.join(LABEL_STEM_SUFFIXES)}; "
            f"rename {label.name} to {image.stem}{label.suffix} to pair them)")


def shell_path(path: Path | str) -> str:
    """`path` as a word of a command printed for pasting: quoted for the shell, and a relative
    path that starts with a dash as `./-x`, which the command line would otherwise take for an
    option (`lmae-repair train -ds` answered "No such option: -d")."""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def unread_namesake(rel: Path, image_dir: Path) -> str:
    """For a label without an image (`rel`: its path below the labels folder, without extension):
    a file of the image's name in a format lmae-repair does not read (an iPhone's HEIC, a camera's
    raw file, a GIF), said so rather than that there is no image; nothing where there is none."""
    folder = image_dir / rel.parent
    names = {name.casefold() for name in _label_stem_candidates(rel.name)}
    try:
        found = sorted(entry.name for entry in os.scandir(folder)
                       if not entry.name.startswith(".") and _unread_stem(entry.name) in names and entry.is_file())
    except OSError:
        return ""
    if not found:
        return ""
    slices = ("; a DICOM or NIfTI slice as a 16-bit PNG or TIFF, which is read and stretched to 8 bits"
              if _unread_suffix(found[0]) in MEDICAL_IMAGE_SUFFIXES else "")
    return (f" ({folder / found[0]} is there, in a format lmae-repair does not read: save the images as JPEG, PNG, "
            f"TIFF, BMP or WebP{slices})")


def _unread_suffix(name: str) -> str | None:
    """The suffix of a file name among UNREAD_IMAGE_SUFFIXES, the longest where two end it
    (`x.nii.gz` is NIfTI, whose Path.suffix is only `.gz`); None where none does."""
    ends = [suffix for suffix in UNREAD_IMAGE_SUFFIXES if name.lower().endswith(suffix) and len(name) > len(suffix)]
    return max(ends, key=len, default=None)


def _unread_stem(name: str) -> str | None:
    """A file name in a format not read without that suffix, letter case folded; None for others."""
    suffix = _unread_suffix(name)
    return None if suffix is None else name[: -len(suffix)].casefold()


def relative_key(path: Path | str, root: Path) -> str:
    """`path` relative to the dataset root: what keys a pair in reports and resumed runs.
    (Messages name files as the user gave them, so the path opens from where they ran it.)"""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def absolute_text(path: Path | str) -> str:
    """`path` from the root, as the reports give files so that a script opens them from any
    folder, without `.` and `..`: DATA given as `../shared/data/camvid/val` from /work/main gave
    `/work/main/../shared/data/...` (and two spellings of one file, which a script comparing paths
    takes for two). Where a link before a `..` makes the tidied path another place, the path as
    it is (links are kept, as the user named them)."""
    absolute = Path(path).absolute()
    tidy = os.path.normpath(absolute)
    return tidy if tidy == str(absolute) or os.path.realpath(tidy) == os.path.realpath(absolute) else str(absolute)


# ---------------------------------------------------------------- Pascal VOC


VOC_INSTANCE_FOLDER = "SegmentationObject"


def refuse_instance_labels(labels: Path) -> None:
    """Refuse Pascal VOC's SegmentationObject/ as a label folder. Its PNGs number an image's
    objects (1 = its first object, 2 = its second...) in the same palette and with the same 255
    borders as SegmentationClass/, so nothing in the files tells them from classes: taken as
    labels, `audit` and `complete` advised training a family on them, and a family of three
    classes (concrete) would have read objects 1 and 2 as crack and spalling."""
    if labels.resolve().name == VOC_INSTANCE_FOLDER:
        raise LmaeError(f"{labels}: Pascal VOC's {VOC_INSTANCE_FOLDER}/ holds object instance ids (1 = an image's first "
                        "object, 2 = its second...), not classes; its class labels are in SegmentationClass/ (pass "
                        "that folder, or the VOC root as DATA)")


def instances_only(root: Path) -> str:
    """A hint for a VOC tree that has JPEGImages/ and SegmentationObject/ but no SegmentationClass/
    (the instance masks alone, taken for the class labels), or "" for any other folder."""
    for folder in [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))]:
        if (folder / "JPEGImages").is_dir() and (folder / VOC_INSTANCE_FOLDER).is_dir():
            return (f"; {folder / VOC_INSTANCE_FOLDER} holds Pascal VOC's object instance ids, not classes: "
                    "the class labels belong in SegmentationClass/ beside it")
    return ""


def find_voc_root(root: Path) -> Path | None:
    """The folder holding JPEGImages/ and SegmentationClass/: root, or VOCdevkit/VOC20xx below.
    Several below (VOC2007 and VOC2012) are refused, naming them, rather than one taken silently."""
    def is_voc(folder: Path) -> bool:
        return (folder / "JPEGImages").is_dir() and (folder / "SegmentationClass").is_dir()

    if is_voc(root):
        return root
    found = [c for c in sorted(root.glob("VOC*")) + sorted(root.glob("VOCdevkit/VOC*")) if is_voc(c)]
    found = distinct_files(found)  # one dataset reached twice (VOC2012 a link to VOCdevkit/VOC2012) is one
    if len(found) > 1:
        names = ", ".join(c.relative_to(root).as_posix() for c in found)
        raise LmaeError(f"{root}: holds {len(found)} Pascal VOC datasets ({names}); pass one of them as DATA "
                        "(each is completed into its own OUT)")
    return found[0] if found else None


def split_lists(lists_dir: Path) -> list[Path]:
    """The split list files of ImageSets/Segmentation/ (a folder named `backup.txt` is not one:
    reading it stopped a run with "Is a directory"; nor is a hidden file: the `._train.txt` that
    macOS puts beside `train.txt` in a zip is binary, and its bytes were taken for a missing pair)."""
    return sorted(p for p in lists_dir.glob("*.txt") if p.is_file() and not p.name.startswith(".")) if lists_dir.is_dir() else []


def discover_voc(voc_root: Path, root: Path, split: str | None) -> DatasetIndex:
    """Pairs of JPEGImages/ and SegmentationClass/. Images without a label are normal there
    (VOC's JPEGImages also serve detection) unless a split list under ImageSets/Segmentation/
    names them: a listed name without its pair is a failed pair. With `split`, only the names of
    that list are taken."""
    image_dir, label_dir = voc_root / "JPEGImages", voc_root / "SegmentationClass"
    pairs, unmatched, unlabelled = match_by_stem(image_dir, label_dir, root)
    lists_dir = voc_root / "ImageSets" / "Segmentation"
    if split is not None:
        lists = [lists_dir / f"{split}.txt"]
        if not lists[0].is_file():
            available = [p.stem for p in split_lists(lists_dir)]
            raise LmaeError(
                f"{lists[0]}: no such split file (available splits: "
                f"{', '.join(available) or 'none'})"
            )
    else:
        lists = split_lists(lists_dir)
    if not lists:
        return DatasetIndex("voc", root, pairs, unmatched)
    # a list names a label by its path below SegmentationClass/ without extension; one in a
    # subfolder also by its name alone, where no label above has that name; and a pair by its
    # image's name (x for x_mask.png)
    found = {p.label.relative_to(label_dir).with_suffix("").as_posix(): p for p in pairs}
    for pair in pairs:
        found.setdefault(pair.label.stem, pair)
    for pair in pairs:
        found.setdefault(pair.image.stem, pair)
    problems = names_below(unmatched, (label_dir, image_dir), lambda line: line)
    lonely_images = names_below(unlabelled, (image_dir,), lambda line: line.image)
    known = found.keys() | problems.keys() | lonely_images.keys()
    folded = by_letter_case(known)
    listed: dict[str, str] = {}  # name -> the first list naming it
    for split_file in lists:
        for line in text_lines(split_file, errors="replace"):
            if line.strip():
                name = split_list_name(line, known, folded)
                listed.setdefault(name, split_file.relative_to(voc_root).as_posix())
    if split is not None and not listed:
        raise LmaeError(f"{lists[0]}: names no pair (the split list is empty); give another --split, or none to take "
                        f"all {len(pairs)} pairs")
    missing = [  # named by the label file that should be there: one entry per missing pair
        problems.get(name) or problem(
            f"{label_dir / name}.png: {listed[name]} lists {name}, but "
            f"{'this label is missing (its image is there)' if name in lonely_images else 'neither this label nor its image exists'}",
            lonely_images.get(name))
        for name in sorted(listed.keys() - found.keys())
    ]
    if split is not None:
        return DatasetIndex("voc", root, list(dict.fromkeys(found[name] for name in sorted(listed.keys() & found.keys()))), missing)
    return DatasetIndex("voc", root, pairs, list(dict.fromkeys(unmatched + missing)))


def names_below(lines: list[str], folders: tuple[Path, ...], value) -> dict:
    """{the name a split list gives the file a problem line (`path: reason`) is about: `value(line)`},
    by its path below the first of `folders` holding it, without extension (`seq01/frame_000001`),
    then by its bare name where no other file has it first. Keyed by the bare name alone, a CVAT
    video export's missing `seq01/frame_000001` and `seq02/frame_000001` were one failed pair
    named `SegmentationClass/frame_000001.png`, in neither sequence."""
    by_path: dict[str, object] = {}
    for line in lines:
        path = Path(line.partition(": ")[0])
        below = next((path.relative_to(folder) for folder in folders if path.is_relative_to(folder)), Path(path.name))
        by_path.setdefault(below.with_suffix("").as_posix(), value(line))
    for line in lines:
        by_path.setdefault(Path(line.partition(": ")[0]).stem, value(line))
    return by_path


def split_list_name(line: str, names, folded: dict[str, list[str]] | None = None) -> str:
    """The name a line of a VOC split list gives: the whole line (spaces around it dropped) where
    a file of `names` has it, as `with space` for `with space.png`; else its first word (VOC's
    `2007_000032  1` lines). A file name listed with its extension (`x.jpg`, `x.png`, as lists
    made by other tools have it) is the name without it. Accents may be composed in the list and
    decomposed in the file name (macOS wrote it so), or the other way round. A line giving a
    path (`JPEGImages\\x`, `C:\\data\\VOC\\JPEGImages\\x.jpg`, `/Users/me/VOC/JPEGImages/x.jpg`, as
    lists written on another machine or by Windows tools have it) names the file its end names:
    these were reported as pairs that "neither this label nor its image exists", and so was one
    in quotes, as Windows Explorer's "Copy as path" gives it (`"C:\\VOC\\JPEGImages\\x.jpg"`).
    Given `folded` (`by_letter_case(names)`), a name that differs only in letter case (`img_01`
    for IMG_01.png, one name on Windows and macOS) is the one name of `names` it can be."""
    spellings = (line.strip(), line.split()[0], line.strip().strip("\"'").strip())
    candidates = []  # each spelling, and each without an image extension
    for name in dict.fromkeys(unicodedata.normalize(form, tail) for s in spellings for tail in _path_tails(s)
                              for form in ("NFC", "NFD")):
        stem, suffix = os.path.splitext(name)
        candidates += [name] + ([stem] if suffix.lower() in IMAGE_SUFFIXES else [])
    exact = next((name for name in candidates if name in names), None)
    if exact is not None:
        return exact
    for name in candidates if folded is not None else []:
        same = folded.get(name.casefold(), [])
        if len(same) == 1:
            return same[0]
    return line.split()[0]


def by_letter_case(names) -> dict[str, list[str]]:
    """{casefolded name: the names of `names` that fold to it}, for `split_list_name`."""
    folded: dict[str, list[str]] = {}
    for name in sorted(names):
        folded.setdefault(name.casefold(), []).append(name)
    return folded


def _path_tails(spelling: str) -> list[str]:
    """`spelling` as it is, then, where it is a path (with / or Windows' \\), each shorter end of
    it, longest first: `a\\b\\c` gives `a\\b\\c`, `a/b/c`, `b/c`, `c`. The longest end that names a
    file wins, so `siteB/x` keeps naming the label in siteB/ rather than another x."""
    parts = [part for part in spelling.replace("\\", "/").split("/") if part]
    return list(dict.fromkeys([spelling] + ["/".join(parts[start:]) for start in range(len(parts))]))


# ---------------------------------------------------------------- Cityscapes


def is_cityscapes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


def discover_cityscapes(root: Path, split: str | None) -> DatasetIndex:
    image_root, label_root = root / "leftImg8bit", root / "gtFine"
    if split is not None and not (image_root / split).is_dir():
        available = sorted(p.name for p in image_root.iterdir() if p.is_dir())
        raise LmaeError(
            f"{image_root / split}: no such split (available: {', '.join(available) or 'none'})"
        )
    image_dir, label_dir = (image_root / split, label_root / split) if split else (image_root, label_root)
    pairs, problems, unlabelled = cityscapes_pairs(image_dir, label_dir, root)
    return DatasetIndex("cityscapes", root, pairs, problems, known_class_names=CITYSCAPES_NAMES, unlabelled=unlabelled)


def cityscapes_pairs(image_dir: Path, label_dir: Path, root: Path) -> tuple[list[Pair], list[str], list[str]]:
    """Pair `*_leftImg8bit.png` below `image_dir` with `*_gtFine_labelTrainIds.png` at the same
    place below `label_dir` (the rest of gtFine/ is left alone): (pairs, problems, images
    without a label), as `match_by_stem` gives them."""
    pairs, unlabelled, problems = [], [], []
    for image in _files_below(image_dir, {".png", ".jpg"}, problems):
        if not image.stem.endswith(CITYSCAPES_IMAGE_SUFFIX):
            continue
        prefix = image.stem[: -len(CITYSCAPES_IMAGE_SUFFIX)]
        rel_dir = image.parent.relative_to(image_dir)
        label = label_dir / rel_dir / f"{prefix}{CITYSCAPES_LABEL_SUFFIX}.png"
        if label.is_file():
            pairs.append(Pair(image, label, relative_key(label, root)))
        elif label.with_name(f"{prefix}{CITYSCAPES_IDS_SUFFIX}.png").is_file():  # converted in part: say how to finish
            unlabelled.append(problem(f"{image}: no {label.name}, only its _gtFine_labelIds.png ({how_to_make_train_ids(label_dir)})", image))
        else:
            unlabelled.append(problem(f"{image}: no {label.name}", image))
    paired = {pair.label for pair in pairs}
    for label in _files_below(label_dir, {".png"}) if label_dir.is_dir() else []:
        if label.name.endswith(f"{CITYSCAPES_LABEL_SUFFIX}.png") and label not in paired:  # a failed pair, as in other layouts
            prefix = label.name[: -len(f"{CITYSCAPES_LABEL_SUFFIX}.png")]
            problems.append(f"{label}: no image {prefix}{CITYSCAPES_IMAGE_SUFFIX}.png (or .jpg) in "
                            f"{image_dir / label.parent.relative_to(label_dir)}")
    if not pairs and any(label_dir.rglob(f"*{CITYSCAPES_IDS_SUFFIX}.png")):
        raise LmaeError(
            f"{label_dir}: has *_gtFine_labelIds.png but no *{CITYSCAPES_LABEL_SUFFIX}.png labels; lmae-repair "
            f"works on the 19 train ids: {how_to_make_train_ids(label_dir)}"
        )
    return pairs, problems, unlabelled


def how_to_make_train_ids(label_dir: Path) -> str:
    """The command that makes Cityscapes' train ids: run bare, csCreateTrainIdLabelImgs looks for
    the dataset inside its own package folder and finds nothing."""
    tree = next((folder.parent for folder in [label_dir, *label_dir.parents] if folder.name == "gtFine"), label_dir.parent)
    return (f"make the train ids with `CITYSCAPES_DATASET={shlex.quote(str(tree))} csCreateTrainIdLabelImgs` (pip install "
            "cityscapesscripts; it draws them from the *_gtFine_polygons.json)")


def match_folders(image_dir: Path, label_dir: Path, root: Path) -> tuple[list[Pair], list[str], list[str], list[str] | None]:
    """`match_by_stem`, or where no name matches and the images are Cityscapes' (`--images`
    and `--labels` inside a Cityscapes tree), `cityscapes_pairs`: (pairs, problems, images
    without a label, the class names the naming implies)."""
    pairs, problems, unlabelled = match_by_stem(image_dir, label_dir, root)
    if not pairs and image_dir.resolve() != label_dir.resolve() and any(image_dir.rglob(f"*{CITYSCAPES_IMAGE_SUFFIX}.*")):
        return *cityscapes_pairs(image_dir, label_dir, root), CITYSCAPES_NAMES
    return pairs, problems, unlabelled, None


# ---------------------------------------------------------------- paired folders


def find_paired_dirs(root: Path, notes: dict[Path, str] | None = None) -> list[tuple[Path, Path]]:
    """Every images/ folder below root that has a labels/ (masks/, ...) sibling. Where several
    label folders sit beside one images/ folder, the first of LABEL_DIR_NAMES is taken, and
    `notes` says which were not, by the images/ folder (so that a split's notes can be told)."""
    found = []
    for dirpath, dirnames, _ in walk_once(root):
        names = {name.lower(): name for name in dirnames}
        image_name = next((names[n] for n in IMAGE_DIR_NAMES if n in names), None)
        label_names = [names[n] for n in LABEL_DIR_NAMES if n in names]
        if image_name and label_names:
            found.append((Path(dirpath) / image_name, Path(dirpath) / label_names[0]))
            dirnames[:] = [d for d in dirnames if d not in (image_name, label_names[0])]
            if len(label_names) > 1 and notes is not None:
                notes[Path(dirpath) / image_name] = (
                    f"{Path(dirpath) / label_names[0]}: taken as the labels; {', '.join(label_names[1:])} beside it "
                    "left out (name the folders with --images and --labels to use another)")
        for images_tr, labels_tr in NNUNET_DIR_NAMES:  # imagesTr/ + labelsTr/, as nnU-Net names them
            if images_tr in names and labels_tr in names:
                found.append((Path(dirpath) / names[images_tr], Path(dirpath) / names[labels_tr]))
                dirnames[:] = [d for d in dirnames if d not in (names[images_tr], names[labels_tr])]
    return sorted(found)


def split_names(image_dir: Path, root: Path) -> tuple[str, ...]:
    """The --split values that choose a paired layout's image folder: the folders above it (train/
    for train/images/), and for nnU-Net's imagesTr/ and imagesTs/ `train` and `test` (or Tr, Ts).
    Why: without a split, `train` on an nnU-Net dataset with labelsTs/ trained on its test pairs."""
    return (*image_dir.parent.relative_to(root).parts, *NNUNET_SPLITS.get(image_dir.name.lower(), ()))


def discover_paired(root: Path, split: str | None) -> DatasetIndex | None:
    notes: dict[Path, str] = {}
    folder_pairs = find_paired_dirs(root, notes)
    if not folder_pairs:
        return None
    if split is not None:
        chosen = [(i, l) for i, l in folder_pairs if split in split_names(i, root)]
        if not chosen:
            available = sorted({i.parent.name if i.name.lower() not in NNUNET_SPLITS else i.name for i, _ in folder_pairs})
            raise LmaeError(
                f"{root}: no images/ + labels/ folders under a '{split}' folder "
                f"(found under: {', '.join(available)})"
            )
        folder_pairs = chosen
    pairs, unmatched, unlabelled, known = [], [], [], None
    for image_dir, label_dir in folder_pairs:
        found, problems, lonely, names = match_folders(image_dir, label_dir, root)
        pairs += found
        unmatched += problems
        unlabelled += lonely
        known = known or names
    chosen_notes = [notes[image_dir] for image_dir, _ in folder_pairs if image_dir in notes]  # not those of another split
    channels, unlabelled = other_channels(unlabelled, pairs)
    if channels:
        chosen_notes.append(f"further channels (_0001...) of paired images, as nnU-Net names them, left alone: {len(channels)} "
                            f"(first: {channels[0].image}); only the first channel ({NNUNET_CHANNEL}) is read")
    dataset_json = nnunet_dataset_json(root) if known is None else None
    if dataset_json is not None:
        known = nnunet_class_names(dataset_json)
    return DatasetIndex("paired", root, pairs, unmatched, known_class_names=known, unlabelled=unlabelled, notes=chosen_notes,
                        split_folders=chosen_split_folders(folder_pairs, root, split))


def chosen_split_folders(folder_pairs: list[tuple[Path, Path]], root: Path, split: str | None) -> tuple[Path, ...]:
    """The folders named `split` above the chosen image folders (DATA/train/ for
    DATA/train/images/), nearest the root first; none without --split, or for nnU-Net's imagesTr/
    (its split is the folder itself, its class list beside it in the root)."""
    folders: list[Path] = []
    for image_dir, _ in folder_pairs:
        parts = image_dir.parent.relative_to(root).parts
        if split in parts:
            folder = root.joinpath(*parts[: parts.index(split) + 1])
            if folder not in folders:
                folders.append(folder)
    return tuple(folders)


def other_channels(unlabelled: list[Problem], pairs: list[Pair]) -> tuple[list[Problem], list[Problem]]:
    """(the images among `unlabelled` that are further channels of a paired image, nnU-Net's
    x_0001.png beside x_0000.png, the rest). Why: listed as images without a label, each channel
    after the first was an audit row at score 1 above every label, three per case in a
    four-channel set, which no fix to the labels could clear."""
    paired = {pair.image.parent / pair.image.stem for pair in pairs if paired_by_channel(pair)}
    channels, rest = [], []
    for line in unlabelled:
        image = getattr(line, "image", None)
        stem = "" if image is None else image.stem
        base, _, number = stem.rpartition("_")
        further = len(number) == 4 and number.isdigit() and number != NNUNET_CHANNEL[1:]
        (channels if further and image.parent / f"{base}{NNUNET_CHANNEL}" in paired else rest).append(line)
    return channels, rest


def paired_by_channel(pair: Pair) -> bool:
    """Whether `pair`'s image is its label's by nnU-Net's first-channel name (x_0000.png for
    x.png), not by its own: a plain set's labelled frame seq_0000.png makes seq_0001.png no channel."""
    own = [stem.casefold() for stem in _label_stem_candidates(pair.label.stem)]
    image = pair.image.stem.casefold()
    return image not in own and image in {stem + NNUNET_CHANNEL for stem in own}


def nnunet_dataset_json(root: Path) -> Path | None:
    """The dataset.json of an nnU-Net (or Medical Segmentation Decathlon) raw dataset: beside its
    imagesTr/ + labelsTr/ folders. None for other datasets, whose dataset.json may be anything."""
    try:
        folders = {entry.name.lower() for entry in os.scandir(root) if entry.is_dir()}
    except OSError:
        return None
    nnunet = any(images in folders and labels in folders for images, labels in NNUNET_DIR_NAMES)
    return root / "dataset.json" if nnunet and (root / "dataset.json").is_file() else None


def nnunet_class_names(dataset_json: Path) -> list[str] | None:
    """The class names of an nnU-Net raw dataset, from the `labels` of its dataset.json (nnU-Net
    v2: {"background": 0, "liver": 1, ..., "ignore": N}; the Decathlon's and nnU-Net v1's:
    {"0": "background", "1": "liver"}), in value order: `ignore`, nnU-Net's unannotated value and
    always its largest, is then the last name, which makes it void
    (`labelspace.label_space_from_names`). Why: read without them, a CT set's organs were
    class_1..class_3 and the notes offered the street-scene family whose values they fit. None
    where the labels are not the values 0..N one name each (nnU-Net's regions, lists of values)."""
    try:
        labels = json.loads(dataset_json.read_text(encoding="utf-8-sig")).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(labels, dict):
        return None
    if all(isinstance(key, str) and key.isdigit() and isinstance(name, str) for key, name in labels.items()):
        by_value = {int(key): name for key, name in labels.items()}  # the Decathlon's value -> name
    elif all(type(value) is int for value in labels.values()):
        by_value = {value: name for name, value in labels.items()}
    else:
        return None
    if sorted(by_value) != list(range(len(labels))):
        return None
    return [by_value[value] for value in range(len(labels))]


# ---------------------------------------------------------------- entry point


def discover(
    root: Path | str = ".",
    split: str | None = None,
    images: Path | str | None = None,
    labels: Path | str | None = None,
) -> DatasetIndex:
    """Find the image/label pairs of a dataset in any supported layout.

    Raises LmaeError when the folder is missing, holds no recognised layout, or yields no pair.
    """
    root = Path(root)
    if images is not None or labels is not None:
        if images is None or labels is None:
            raise LmaeError("--images and --labels must be given together")
        if root.resolve() != Path.cwd().resolve():  # DATA would be ignored: say so rather than guess
            raise LmaeError(f"{root}: give DATA or --images/--labels, not both (--images and --labels name the "
                            "folders themselves, relative to the current folder)")
        if split is not None:
            raise LmaeError(f"--split {split}: a split needs a layout; --images and --labels name the pairs' folders themselves")
        images, labels = Path(images), Path(labels)
        for folder in (images, labels):
            if not folder.is_dir():
                raise LmaeError(f"{folder}: {'not a folder (--images and --labels name the folders that hold them)' if folder.exists() else 'no such folder'}")
        refuse_instance_labels(labels)
        pairs, unmatched, unlabelled, known = match_folders(images, labels, labels)
        index = DatasetIndex("paired", labels, pairs, unmatched, known_class_names=known, unlabelled=unlabelled, image_root=images)
    else:
        if not root.is_dir():
            raise LmaeError(f"{root}: {'not a folder (give the dataset folder)' if root.exists() else 'no such dataset folder'}")
        voc_root = find_voc_root(root)
        if voc_root is not None:
            index = discover_voc(voc_root, root, split)
        elif is_cityscapes(root):
            index = discover_cityscapes(root, split)
        else:
            index = discover_paired(root, split)
            if index is None:
                tree = next((folder for folder in root.resolve().parents if is_cityscapes(folder)), None)
                if tree is not None:  # DATA is a split, city or one side of a Cityscapes tree
                    raise LmaeError(f"{root}: inside the Cityscapes dataset {tree}; give that folder as DATA "
                                    "(--split for one split), or name a city's folders with --images and --labels")
                raise LmaeError(
                    f"{root}: no dataset layout found (expected JPEGImages/ + SegmentationClass/, "
                    "leftImg8bit/ + gtFine/, images/ + labels/, or nnU-Net's imagesTr/ + labelsTr/ folders; or pass --images and "
                    f"--labels){instances_only(root)}"
                )
    if not index.pairs:
        raise LmaeError(no_pairs_message(index))
    return index


def discover_noted(console, root: Path | str = ".", split: str | None = None, images: Path | str | None = None,
                   labels: Path | str | None = None) -> DatasetIndex:
    """`discover`, with what it chose that the user should know (a label folder left out beside
    the one taken) printed on `console` as notes: every command's discovery, training's
    validation data too, goes through here (calibrating a checkpoint's int8 ranges, which prints
    nothing, reads `discover` itself), so that each note is said once, where it is found."""
    index = discover(root, split, images, labels)
    for note in index.notes:
        console.print(f"note: {note}", highlight=False)
    return index


def no_pairs_message(index: DatasetIndex) -> str:
    """Why a layout gave no pair, in one line: what was found instead and how pairs are made."""
    message = f"{index.root}: found no image/label pairs ({index.layout} layout)"
    left_out = index.unmatched + index.unlabelled
    if not left_out:
        return f"{message}: no label files in it (labels are PNG, BMP or TIFF class-index images)"
    counts = " and ".join(f"{len(found)} {one if len(found) == 1 else many}" for found, one, many in
                          ((index.unlabelled, "image without a label", "images without a label"),
                           (index.unmatched, "file left out", "files left out")) if found)
    return (f"{message}: {counts} (first: {left_out[0]}); an image and its label pair by file name "
            "(x.jpg with x.png or x_mask.png)")


# ---------------------------------------------------------------- reading and writing


@dataclass
class LabelFile:
    """A label as class indices, with what is needed to write it back the same way."""

    values: np.ndarray  # (H, W) uint8
    mode: str  # "L", "P", "1" (1-bit), "I;16" (16-bit grey), "I" (32-bit TIFF), or "RGB"/"RGBA"/"LA" for grey saved with colour or alpha
    palette: list[int] | None
    transparency: int | bytes | None = None  # a palette PNG's transparent entries (tRNS), written back
    tiff: dict | None = None  # a TIFF's compression and descriptive tags (georeferencing...), written back (`tiff_extras`)
    png: bytes | None = None  # a PNG's pixel size and text chunks as stored, written back (`png_extras`)
    kept: np.ndarray | None = None  # (H, W) bool: void pixels annotated all the same (`annotated_void`), never filled


def max_pixels() -> int:
    """The largest image read, in pixels: LMAE_REPAIR_MAX_PIXELS (a whole number, as 100000000 or
    1e8; empty is unset), else 50 million. A value that is not one is refused as a setup error (the
    commands call this before any pair: `cli.guarded`); read per file, `int('abc')` had failed every
    pair as an 'unreadable label', and with no --models, as labels no bundled family fits."""
    text = os.environ.get("LMAE_REPAIR_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise LmaeError(f"LMAE_REPAIR_MAX_PIXELS: expected a whole number of pixels such as 100000000 or 1e8, got {text!r}")
    return int(value)


def check_size(path: Path, img: Image.Image) -> None:
    """Refuse an image too large to repair before its pixels are decoded."""
    check_pixels(path, *img.size)


def check_stored_orientation(path: Path, img: Image.Image) -> None:
    """Refuse a TIFF whose Orientation tag turns or flips it (2-8), before its pixels are decoded.
    Why: PIL applies a TIFF's orientation as it decodes (a JPEG's or PNG's EXIF one it does not),
    and garbles an uncompressed TIFF turned a quarter: such a label was read scrambled, reported
    unchanged and written back so, without the tag; such an image no longer matched its label's
    stored pixels, which are what lmae-repair pairs."""
    orientation = img.tag_v2.get(274, 1) if img.format == "TIFF" else 1
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        raise LmaeError(
            f"{path}: a TIFF whose Orientation tag ({orientation}) turns or flips it for viewers, which "
            "the TIFF decoder applies (garbling an uncompressed one); lmae-repair reads images and labels as "
            "stored: set the tag to 1 where the stored pixels are the ones labelled (exiftool -n -Orientation=1 FILE)"
        )


def check_pixels(path: Path, width: int, height: int) -> None:
    """`check_size` of an image `width` x `height` (from a header PIL could not open as an image too)."""
    if width * height > max_pixels():
        raise LmaeError(
            f"{path}: {width}x{height} ({width * height / 1e6:.1f} megapixels) is larger than the "
            f"{max_pixels() / 1e6:g} megapixels lmae-repair reads (set LMAE_REPAIR_MAX_PIXELS to "
            "raise the limit, or cut the image into tiles)"
        )
    if width == 0 or height == 0:
        raise LmaeError(f"{path}: image has no pixels ({width}x{height})")


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image (`read_image_nodata`)."""
    return read_image_nodata(path)[0]


def read_image_nodata(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 (H, W, 3), (H, W) bool of its no-data pixels or None). Grayscale, palette, RGBA
    and CMYK images are converted; images of more than 8 bits per value (16-bit PNG, 12-bit scans
    stored in 16 bits, signed or float rasters, 16-bit RGB TIFFs) are stretched to 8 bits
    (`stretch_to_8_bits`): PIL's own conversion clips them to white, or keeps only the high byte,
    which leaves 12-bit data almost black. No-data pixels are those where every band holds the
    value a TIFF declares in GDAL's GDAL_NODATA tag (`declared_nodata`), or, in an 8-bit
    GeoTIFF with an alpha band (`_geotiff_alpha`), those whose alpha is 0: outside a satellite
    swath, or a tile's edge beyond the scene. They are left out of the stretch and drawn black:
    a float reflectance raster with -9999 outside its swath had been stretched to plain white."""
    try:
        with Image.open(path) as img:
            check_size(path, img)
            check_stored_orientation(path, img)
            refuse_frames(path, img)
            nodata = declared_nodata(img)
            if _bits_per_band(img, path) > 8 and not (img.mode.startswith("I") or img.mode == "F"):
                _refuse_wide_band_interleaved(img, path)
                values, outside = _read_wide_colour(path, nodata)
                return stretch_to_8_bits(values, outside), outside
            img.load()
            if img.mode.startswith("I") or img.mode == "F":
                values = np.array(img)
                outside = nodata_pixels(values, nodata)
                return stretch_to_8_bits(values, outside), outside
            outside = None if nodata is None else nodata_pixels(np.asarray(img), nodata)  # no copy of every photo
            if outside is None and _geotiff_alpha(img):
                outside = nodata_pixels(np.asarray(img)[..., 3:], 0)
            if img.mode == "P" and "transparency" in img.info:
                # the same colours; straight to RGB, PIL warned (a UserWarning naming its own source
                # file, not the image) for every palette image with transparent entries
                img = img.convert("RGBA")
            return np.array(img.convert("RGB")), outside
    except LmaeError:
        raise
    except Exception as exc:  # PIL raises many types for bad files
        hint = ""
        undecodable = isinstance(exc, Image.UnidentifiedImageError) or "unknown raw mode" in str(exc)
        if path.suffix.lower() in (".tif", ".tiff") and undecodable and path.is_file() and os.path.getsize(path) > 0:
            tags = _tiff_tags(path)
            if tags is not None:
                return _read_tiff_pil_cannot(path, tags)
            hint = ("; a multi-band TIFF as GDAL writes them (bands as grey samples, or band-interleaved) is not read: "
                    "convert it to RGB first, e.g. gdal_translate -b 1 -b 2 -b 3 -co PHOTOMETRIC=RGB IN.tif OUT.tif")
        raise LmaeError(f"{path}: unreadable image ({_reason(exc)}){hint}") from None


def refuse_frames(path: Path, img: Image.Image) -> None:
    """Refuse an animated PNG or WebP, or a TIFF of several full-size pages: it was read at its
    first frame without a word, though the label may have been drawn on another, and a label of
    that kind is refused (`read_label`). A TIFF's further pages that are smaller (a GeoTIFF's
    overviews, a thumbnail) or a mask (NewSubfileType bit 4) are no other picture; nor are a
    phone JPEG's extra pictures (MPO: a depth map, a preview), read as the photo they come with."""
    frames = getattr(img, "n_frames", 1)
    if frames < 2 or img.format not in ("PNG", "WEBP", "TIFF"):
        return
    if img.format == "TIFF":
        size, whole = img.size, False
        for page in range(1, frames):
            img.seek(page)
            whole = img.size == size and not int(img.tag_v2.get(254, 0)) & 5  # neither an overview nor a mask
            if whole:
                break
        img.seek(0)
        if not whole:
            return
    what = "pages (a multi-page TIFF)" if img.format == "TIFF" else f"frames (an animated {'WebP' if img.format == 'WEBP' else 'PNG'})"
    raise LmaeError(f"{path}: image has {frames} {what}; lmae-repair reads single-frame images, and which frame "
                    "the label belongs to is not known: save the one it was drawn on as an image of its own")


def _tiff_tags(path: Path) -> dict | None:
    """The tags of a TIFF's first image, read by PIL's TIFF tag parser alone, for a TIFF that PIL
    cannot open as an image (a layout it has no mode for, such as RGB of floats); None where the
    file is no TIFF or its tags do not say its size."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as f:
            header = f.read(8)
            if header[:4] not in TiffImagePlugin.PREFIXES:
                return None
            tags = TiffImagePlugin.ImageFileDirectory_v2(header)
            f.seek(tags.next)
            tags.load(f)
        found = dict(tags)
    except Exception:
        return None
    return found if 256 in found and 257 in found else None


SAMPLE_KINDS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}  # TIFF SampleFormat


def _read_tiff_pil_cannot(path: Path, tags: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """`read_image_nodata` of a TIFF PIL has no mode for (`_tiff_tags`). Pixel-interleaved RGB (and
    one more band) of floats, as GDAL and OpenCV write reflectance, is decoded by OpenCV and
    stretched as other wide images are: it was refused as "not an image file", though a float
    raster of one band was read. Other layouts (several bands stored as grey samples, as GDAL
    writes multi-band rasters) are refused saying what they are, which OpenCV would have decoded
    as one garbled band."""
    check_pixels(path, int(tags[256]), int(tags[257]))
    bands, planar = int(tags.get(277, 1)), tags.get(284, 1)
    if tags.get(262) in (1, 2) and planar == 1 and bands in (3, 4):
        values, outside = _read_wide_colour(path, declared_nodata(tags), grey_bands=tags.get(262) == 1)
        return stretch_to_8_bits(values, outside), outside
    bits, kind = tags.get(258, 1), tags.get(339, 1)
    bits, kind = (value[0] if isinstance(value, tuple) else value for value in (bits, kind))
    layout = ", band-interleaved (PlanarConfiguration 2)" if planar == 2 else (
        ", stored as grey samples (PHOTOMETRIC=MINISBLACK, as GDAL writes multi-band rasters)" if tags.get(262) == 1 and bands > 1 else "")
    raise LmaeError(
        f"{path}: unreadable image (a TIFF of {bands} band{'s' if bands > 1 else ''} of {bits}-bit "
        f"{SAMPLE_KINDS.get(kind, 'unknown')} values{layout}, which lmae-repair does not decode); convert it to "
        "pixel-interleaved RGB first, e.g. gdal_translate -b 1 -b 2 -b 3 -co PHOTOMETRIC=RGB -co INTERLEAVE=PIXEL IN.tif OUT.tif"
    )


GDAL_NODATA_TAG = 42113  # GDAL's TIFF tag: the value of the pixels that hold no data, as text


def declared_nodata(img: Image.Image | dict) -> float | None:
    """The no-data value a TIFF (or its tags, `_tiff_tags`) declares (GDAL_NODATA, text such as
    "0", "-9999" or "nan"); None for other files, and where it declares none or one that is not a
    number."""
    tags = img if isinstance(img, dict) else getattr(img, "tag_v2", {}) if img.format == "TIFF" else {}
    text = tags.get(GDAL_NODATA_TAG)
    if text is None:
        return None
    try:
        return float(str(text).strip().strip("\x00"))
    except ValueError:
        return None


GEOTIFF_PLACEMENT_TAGS = {33550, 33922, 34264}  # ModelPixelScale, ModelTiepoint, ModelTransformation


def _geotiff_alpha(img: Image.Image) -> bool:
    """Whether `img` is a georeferenced 8-bit RGBA TIFF whose fourth band the file declares alpha
    (ExtraSamples 1 or 2), as `gdalwarp -dstalpha` writes the part of a tile outside the scene
    (alpha 0): that part was filled with classes. Only GeoTIFFs: a photo's transparent pixels are
    read as they always were."""
    tags = getattr(img, "tag_v2", {}) if img.format == "TIFF" and img.mode == "RGBA" else {}
    extra = tags.get(338)
    extra = extra[0] if isinstance(extra, tuple) and extra else extra
    return extra in (1, 2) and bool(GEOTIFF_PLACEMENT_TAGS & set(tags))


def nodata_pixels(values: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(H, W) bool: the pixels of `values` ((H, W) or (H, W, bands)) where every band holds
    `nodata`; None where it is None or no pixel holds it. Band by band, so that a large tile
    needs no (H, W, bands) temporary."""
    if nodata is None:
        return None
    bands = values[..., None] if values.ndim == 2 else values
    outside = np.ones(bands.shape[:2], bool)
    for band in range(bands.shape[2]):
        outside &= np.isnan(bands[..., band]) if math.isnan(nodata) else bands[..., band] == nodata
    return outside if outside.any() else None


def _bits_per_band(img: Image.Image, path: Path) -> int:
    """The widest band of a TIFF (its BitsPerSample tag) or of a colour PNG (its header's bit
    depth: PIL reads a 16-bit RGB PNG as 8 bits, keeping the high byte); 8 for other formats."""
    if img.format == "PNG" and img.mode in ("RGB", "RGBA"):
        with open(path, "rb") as f:
            header = f.read(25)  # signature (8), IHDR length and type (8), width, height, bit depth
        return header[24] if len(header) == 25 else 8
    bits = getattr(img, "tag_v2", {}).get(258, 8)
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _refuse_wide_band_interleaved(img: Image.Image, path: Path) -> None:
    """Refuse a band-interleaved colour TIFF (PlanarConfiguration 2, GDAL's INTERLEAVE=BAND) of
    more than 8 bits per band. Why: OpenCV, which reads the other wide colour TIFFs
    (`_read_wide_colour`), decodes it wrongly (a 16-bit RGB tile whose bands average 18,000-21,000
    came out as three bands of about 6,100: a dim grey smear), and `complete` repaired the label
    from that image without a word. PIL reads 8-bit ones right, so they are read."""
    tags = getattr(img, "tag_v2", {})
    if img.format == "TIFF" and tags.get(284) == 2 and int(tags.get(277, 1)) > 1:
        raise LmaeError(
            f"{path}: unreadable image (a band-interleaved TIFF of {_bits_per_band(img, path)} bits per band, "
            "PlanarConfiguration 2, is not decoded right); convert it to pixel-interleaved RGB first, e.g. "
            "gdal_translate -b 1 -b 2 -b 3 -co PHOTOMETRIC=RGB -co INTERLEAVE=PIXEL IN.tif OUT.tif"
        )


def _read_wide_colour(path: Path, nodata: float | None = None, grey_bands: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """A colour TIFF or PNG of more than 8 bits per band as (H, W, 3) in R, G, B order: the first
    three bands (an RGBN or RGBA file gives its RGB), with its no-data pixels judged on every band
    (`nodata_pixels`). OpenCV decodes these where PIL keeps 8 bits. `grey_bands`: a TIFF of 3 or 4
    bands stored as grey samples, decoded as RGB(N) (`_grey_bands_as_rgb`)."""
    import cv2

    encoded = np.fromfile(path, np.uint8)
    if grey_bands:
        _grey_bands_as_rgb(path, encoded)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # libtiff's warnings name no file
    try:
        values = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if values is None or values.ndim != 3 or values.shape[2] < 3:
        raise LmaeError(f"{path}: unreadable image (a {path.suffix.lstrip('.').upper() or 'file'} of more than 8 bits per band that OpenCV cannot decode)")
    return values[..., [2, 1, 0]], nodata_pixels(values, nodata)  # OpenCV orders the bands B, G, R(, A)


def _grey_bands_as_rgb(path: Path, encoded: np.ndarray) -> None:
    """Mark, in `encoded` (a TIFF's bytes, in memory: the file is not touched), its 3 or 4 bands
    stored as grey samples (PHOTOMETRIC=MINISBLACK, as GDAL writes multi-band rasters) as RGB and
    one extra band, the same pixels in the layout OpenCV decodes: it reads grey samples as one
    garbled band. Only the first directory's PhotometricInterpretation and ExtraSamples count
    change (OpenCV writes RGB + 1 band without ExtraSamples, and reads it so; a BigTIFF is refused)."""
    order = {b"II": "<", b"MM": ">"}.get(encoded[:2].tobytes())
    if order is None or int(np.frombuffer(encoded[2:4].tobytes(), f"{order}u2")[0]) != 42:
        raise LmaeError(f"{path}: unreadable image (a BigTIFF of bands stored as grey samples); convert it to RGB first, "
                        "e.g. gdal_translate -b 1 -b 2 -b 3 -co PHOTOMETRIC=RGB IN.tif OUT.tif")
    data = memoryview(encoded)
    ifd = struct.unpack_from(f"{order}I", data, 4)[0]
    entries = {struct.unpack_from(f"{order}H", data, ifd + 2 + 12 * i)[0]: ifd + 2 + 12 * i
               for i in range(struct.unpack_from(f"{order}H", data, ifd)[0])}
    bands = struct.unpack_from(f"{order}H", data, entries[277] + 8)[0] if 277 in entries else 1
    struct.pack_into(f"{order}H", data, entries[262] + 8, 2)  # RGB
    if 338 in entries:  # the bands after the first three are extra, their kind unspecified (0)
        struct.pack_into(f"{order}IHH", data, entries[338] + 4, bands - 3, 0, 0)


def stretch_to_8_bits(values: np.ndarray, nodata: np.ndarray | None = None) -> np.ndarray:
    """An image of more than 8 bits as RGB uint8. Values that already fit 0-255 are kept (a float
    raster within 0-1 is scaled by 255); others
    are stretched from the image's 0.1st to its 99.9th percentile, whatever their type: the bit
    depth a file declares (16) is often not the one its data uses (12), and signed or float
    rasters have no fixed range. Grey is repeated into three channels. `nodata` ((H, W) bool, or
    None): pixels that hold no data (`nodata_pixels`), left out of the range and drawn black.

    Integers of up to 16 bits go through a table of every value they can take, stretched as
    floats would be (the same bytes). Why: whole-image float64 temporaries made reading a
    6000x4000 12-bit RGB+NIR TIFF take 56 s and 2.0 GB at its peak (busy 2-core CPU); with the
    table, 12 s and 0.48 GB, most of it OpenCV's decoding (the stretch itself 9.8 -> 1.0 s)."""
    values = np.asarray(values)
    if values.dtype.kind in "ui" and values.dtype.itemsize <= 2:
        first, last = int(np.iinfo(values.dtype).min), int(np.iinfo(values.dtype).max)
        table = _stretched(np.arange(first, last + 1).astype(np.float32), values if nodata is None else values[~nodata])
        rgb = np.empty(values.shape, np.uint8)
        rows = max(1, 1_000_000 // max(1, values[:1].size))  # about a million values at once: numpy indexes with int64
        for top in range(0, len(values), rows):
            part = values[top : top + rows]
            rgb[top : top + rows] = table[part.astype(np.int32) - first] if first else table[part]
    else:
        floats = values.astype(np.float32, copy=False)  # float32, not 64: a 5000x5000 RGBN tile is 300 MB, not 600
        rgb = _stretched(floats, floats if nodata is None else floats[~nodata], floating=np.issubdtype(values.dtype, np.floating))
    if nodata is not None:
        rgb[nodata] = 0
    return np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb


def _stretched(levels: np.ndarray, data: np.ndarray, floating: bool = False) -> np.ndarray:
    """`levels` (float32) as uint8, scaled by the range of the image `data` (`stretch_to_8_bits`)."""
    if floating:
        known = bool(np.isfinite(data).any())
        smallest, largest = (float(np.nanmin(data)), float(np.nanmax(data))) if known else (0.0, 0.0)  # inf: stretched
    else:
        known, smallest, largest = data.size > 0, float(data.min(initial=0)), float(data.max(initial=0))
    if known and floating and smallest >= 0 and largest <= 1:  # a float raster scaled 0..1
        scaled = np.nan_to_num(levels) * 255.0
    elif known and smallest >= 0 and largest <= 255:
        scaled = np.nan_to_num(levels)
    else:
        pixels = data.reshape(-1, data.shape[-1] if data.ndim == 3 else 1)  # whole pixels, every band
        sample = pixels[:: max(1, len(pixels) // 1_500_000)].reshape(-1).astype(np.float32)  # percentiles of a sample: as good, far faster
        finite = sample[np.isfinite(sample)]
        low, high = np.percentile(finite, [0.1, 99.9]) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(levels, nan=low) - low) * np.float32(255.0 / max(high - low, 1e-12))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def wide_mask_hint(wide: np.ndarray) -> str:
    """What to do with a 16-bit label holding only 0 and its top value (65535, or 32767, 4095...):
    a binary mask saved by a tool that stretches masks to the full depth, not class indices."""
    values = np.unique(wide)
    if len(values) == 2 and values[0] == 0:
        return f" (only 0 and {int(values[1])}: a binary mask? save it as 0/1 in 8 bits, e.g. (mask > 0).astype(np.uint8))"
    return ""


def read_label(path: Path) -> LabelFile:
    """Single-channel class indices from an L, P, 1 or 16-bit PNG (values must fit 0..255)."""
    try:
        with Image.open(path) as img:
            check_size(path, img)
            check_stored_orientation(path, img)
            if img.format in LOSSY_LABEL_FORMATS:  # renamed: a .jpg label is refused by its suffix (REFUSED_LABEL_SUFFIXES)
                raise LmaeError(f"{path}: a {img.format} file named {path.suffix or 'without a suffix'}; "
                                f"{REFUSED_LABEL_SUFFIXES['.jpg']}")
            if getattr(img, "n_frames", 1) > 1:  # written back, only the first page would survive
                raise LmaeError(f"{path}: label has {img.n_frames} pages (a multi-page TIFF or an animation); "
                                "lmae-repair reads and writes single-page labels")
            if img.mode in ("RGB", "RGBA") and (bits := _bits_per_band(img, path)) > 8:
                # PIL keeps each value's high byte: grey classes 1..255 all read 0, the label emptied
                raise LmaeError(f"{path}: {bits}-bit colour label ({img.mode}), read as 8 bits it would lose its class "
                                "values; save it as an 8- or 16-bit grayscale (or palette) PNG of class indices")
            grey_bits = png_grey_bits(img)  # from the decoder's plan, which img.load() clears
            img.load()
            mode = img.mode
            palette = img.getpalette() if mode == "P" else None
            transparency = img.info.get("transparency") if mode == "P" else None
            tiff = tiff_extras(img)
            png = png_extras(path) if img.format == "PNG" else None
            if mode in ("L", "P"):
                values = np.array(img)
                if mode == "L" and grey_bits in (2, 4):
                    values //= 255 // (2 ** grey_bits - 1)  # PIL scaled 0..3 to 0, 85, 170, 255 (4 bits: 0..15 by 17)
            elif mode == "1":  # a two-class mask at one bit per pixel: 0 and 1, written back as one
                values = np.asarray(img).astype(np.uint8)
            elif mode in ("I", "I;16", "I;16B", "I;16L"):
                wide = np.asarray(img)
                if wide.size and (wide.max() > 255 or wide.min() < 0):
                    raise LmaeError(f"{path}: 16-bit label with values above 255{wide_mask_hint(wide)}")
                values = wide.astype(np.uint8)  # written back 32-bit (a TIFF's mode I) or 16-bit (write_label)
                mode = "I" if mode == "I" and img.format == "TIFF" else "I;16"
            elif mode in ("RGB", "RGBA") and (mapped := labelmap_label(path, np.asarray(img))) is not None:
                values, palette = mapped  # the mode kept: written back in the labelmap's colours (write_label)
            elif mode in ("RGB", "RGBA") and is_grey(np.asarray(img)):
                values = np.asarray(img)[..., 0]  # grey saved as colour: the indices, three times
            elif mode == "LA" and bool((np.asarray(img)[..., 1] == 255).all()):
                values = np.asarray(img)[..., 0]  # grey with an opaque alpha channel (GIMP's grey + alpha)
            elif mode == "LA" or (mode == "RGBA" and is_grey(np.asarray(img)[..., :3])):
                raise LmaeError(
                    f"{path}: grey label with transparent pixels ({mode}, alpha below 255); lmae-repair reads class "
                    "indices from opaque labels: save it without the alpha channel (a palette or grayscale PNG)"
                )
            elif mode in ("RGB", "RGBA"):
                values, palette = voc_colour_label(path, np.asarray(img), mode)
                mode = "P"  # written back in the palette form of VOC's own labels
            elif mode == "F" or mode.startswith("I"):
                raise LmaeError(f"{path}: label holds {'floating-point' if mode == 'F' else '32-bit'} values (mode {mode}); "
                                "expected class indices of 8 or 16 bits (a palette or grayscale PNG or TIFF)")
            else:
                raise LmaeError(
                    f"{path}: label has {len(img.getbands())} channels (mode {mode}); expected a "
                    "single-channel index image (mode L or P)"
                )
    except LmaeError:
        raise
    except Exception as exc:
        raise LmaeError(f"{path}: unreadable label ({_reason(exc)})") from None
    return LabelFile(np.ascontiguousarray(values, dtype=np.uint8), mode, palette, transparency, tiff, png)


def png_grey_bits(img: Image.Image) -> int | None:
    """The bit depth of a 2- or 4-bit grayscale PNG, None for any other (1 bit opens as mode 1), read from the
    decoder's raw mode (`L;2`) before the pixels are loaded, not from the file a second time: PIL
    widens a 2- or 4-bit grey PNG to 8 bits by scaling (0..3 to 0, 85, 170, 255), which left a
    label of classes 0..3 refused as values outside the label space. The scaling is exact, so the
    stored values are recovered by dividing; the label is written back with 8 bits."""
    raw = img.tile[0][3] if img.format == "PNG" and img.tile else None  # (codec, extents, offset, raw mode)
    return {"L;2": 2, "L;4": 4}.get(raw) if isinstance(raw, str) else None


PNG_KEPT_CHUNKS = {b"pHYs", b"sCAL", b"tEXt", b"zTXt", b"iTXt", b"eXIf"}  # pixel size (sCAL: ITK's pixel spacing), text, EXIF


def png_extras(path: Path) -> bytes | None:
    """The chunks of a PNG label that its copy must keep, as stored (length, type, data, CRC):
    its pixel size (pHYs, and sCAL, where ITK and SimpleITK keep a slice's pixel spacing) and its
    text, as a TIFF keeps its resolution and descriptive tags (`tiff_extras`). Why: PIL does not
    read sCAL, and a completed CT label read back by SimpleITK had a spacing of 1 x 1 beside its
    slice's 0.7 x 0.75, so the two no longer lined up in a volume. Its EXIF (eXIf, self-contained)
    too: a label carrying its phone photo's orientation came back without it, so viewers and
    loaders that apply it (`ImageOps.exif_transpose`) turned the image but no longer the label.
    None where there are none."""
    kept = []
    with open(path, "rb") as f:
        f.seek(8)  # the PNG signature
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                break
            if kind not in PNG_KEPT_CHUNKS:
                f.seek(length + 4, os.SEEK_CUR)  # its data and CRC
                continue
            body = f.read(length + 4)
            if len(body) < length + 4:
                break
            if struct.unpack(">I", body[-4:])[0] == zlib.crc32(kind + body[:-4]):  # a damaged one would spoil the copy
                kept.append(header + body)
    return b"".join(kept) or None


def with_png_chunks(encoded: bytes, chunks: bytes | None) -> bytes:
    """A PNG's bytes with `chunks` (`png_extras`) inserted before its first image data chunk,
    where the PNG standard puts pHYs and sCAL (text may go anywhere)."""
    position = 8
    while chunks and position + 8 <= len(encoded):
        length, kind = struct.unpack(">I4s", encoded[position : position + 8])
        if kind == b"IDAT":
            return encoded[:position] + chunks + encoded[position:]
        position += 12 + length
    return encoded


TIFF_KEPT_TAGS = {270, 282, 283, 296, 305, 306, 315, 33432}  # description, resolution, software, date, artist, copyright
TIFF_POINTER_TAGS = {34665, 34853, 40965}  # EXIF, GPS, interoperability sub-directories: offsets, wrong in another file
LOSSY_TIFF_COMPRESSIONS = {"jpeg", "tiff_jpeg", "webp"}  # a label written so would change its class values


def tiff_extras(img: Image.Image) -> dict | None:
    """What a TIFF label carries beside its pixels that its copy must keep: its compression, and
    its descriptive and private tags (GeoTIFF's georeferencing, 33550 and up, GDAL's nodata),
    each with its type. The tags that describe the pixels' layout are PIL's to write."""
    if img.format != "TIFF":
        return None
    tags = getattr(img, "tag_v2", {})
    kept = {tag: (tags[tag], tags.tagtype.get(tag)) for tag in tags
            if (tag in TIFF_KEPT_TAGS or tag >= 32768) and tag not in TIFF_POINTER_TAGS}
    return {"compression": img.info.get("compression"), "tags": kept}


def _tiff_options(tiff: dict | None) -> dict:
    """`Image.save` options that write a TIFF label back as it came (`tiff_extras`)."""
    if not tiff:
        return {}
    from PIL import TiffImagePlugin

    directory = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (value, tagtype) in tiff["tags"].items():
        directory[tag] = value
        if tagtype is not None:
            directory.tagtype[tag] = tagtype
    options = {"tiffinfo": directory}
    compression = tiff.get("compression")
    if compression in LOSSY_TIFF_COMPRESSIONS:
        options["compression"] = "tiff_lzw"  # lossless, and still compressed
    elif compression not in (None, "raw"):
        options["compression"] = compression
    return options


def voc_colour_indices(pixels: np.ndarray) -> np.ndarray | None:
    """(H, W) uint8: the class indices of an opaque RGB(A) label whose every colour is an entry of
    the Pascal VOC colour map (`report.default_palette`, void 255 as (224, 224, 192)); None where
    a colour is not one. The map gives red and green their top 3 bits and blue its top 2, one entry
    for each of the 256 combinations, so a table of those bits inverts it."""
    from lmae_repair.report import default_palette

    if pixels.shape[-1] == 4 and not bool((pixels[..., 3] == 255).all()):
        return None
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    if ((red & 31) | (green & 31) | (blue & 63)).any():
        return None
    colours = default_palette()
    table = np.zeros((8, 8, 4), np.uint8)
    table[colours[:, 0] >> 5, colours[:, 1] >> 5, colours[:, 2] >> 6] = np.arange(256)
    return table[red >> 5, green >> 5, blue >> 6]


def labelmap_file(label_path: Path) -> Path | None:
    """The `labelmap.txt` (CVAT's export) that is the class list of a label's dataset, else None:
    the one `find_classes_file` finds from the folder above the labels' (the dataset folder, or a
    split of it), so that the colours and the class names come from one file. Why not any one
    in a few folders above: one two folders above the dataset (another export), in labels/ or
    beside a classes.txt painted the labels in its colours while the names came from elsewhere,
    and OUT, which gets the class list only, could not read the completed labels back. Where
    none is there, the one above the nearest folder above the label named as discovery names
    label folders (`labels/`, `masks/`, `SegmentationClass/`...), so that a label in a sequence's
    subfolder (`labels/video1/clip2/x.png`) reads the dataset's labelmap.txt too: it was looked
    for in `labels/video1/` and its parent only, and the label refused as an unmapped colour label."""
    found = find_classes_file(label_path.parent.parent)
    if found is None:
        names = {*LABEL_DIR_NAMES, "segmentationclass", *(labels for _, labels in NNUNET_DIR_NAMES)}
        labels_folder = next((folder for folder in label_path.parents if folder.name.casefold() in names), None)
        found = None if labels_folder is None else find_classes_file(labels_folder.parent)
    return found if found is not None and found.name.casefold().startswith("labelmap.txt") else None


@functools.lru_cache(maxsize=8)
def _labelmap_codes(path: Path, stamp: int) -> np.ndarray | None:
    """(N,) int32 colour codes (r << 16 | g << 8 | b) of a labelmap.txt's classes in value order;
    None where it is not in CVAT's form or cannot be read. `stamp` (its mtime) renews the cache."""
    try:
        entries = labelmap_entries(read_class_names(path))
    except LmaeError:
        return None
    if entries is None:
        return None
    return np.array([(r << 16) | (g << 8) | b for _, (r, g, b) in entries], np.int32)


def colour_codes(pixels: np.ndarray) -> np.ndarray:
    """(H, W) int32: each RGB(A) pixel's colour as r << 16 | g << 8 | b."""
    rgb = pixels[..., :3].astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def labelmap_codes(label_path: Path) -> tuple[Path, np.ndarray] | None:
    """(the labelmap.txt above a label, its class colour codes), or None without a usable one."""
    found = labelmap_file(label_path)
    codes = _labelmap_codes(found, found.stat().st_mtime_ns) if found is not None else None
    return None if codes is None else (found, codes)


def labelmap_label(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
    """(class indices, the labelmap's colours as a palette) of an opaque colour label whose every
    colour is a class colour of the `labelmap.txt` above it (CVAT's segmentation-mask export paints
    its labels so); None otherwise (`voc_colour_label` then says which colours it lacks). Why:
    such labels were refused as colour labels with no mapping, their mapping lying beside them."""
    table = labelmap_codes(path)
    if table is None or (pixels.shape[-1] == 4 and not bool((pixels[..., 3] == 255).all())):
        return None
    codes = table[1]
    order = np.argsort(codes, kind="stable")
    sorted_codes, pixel_codes = codes[order], colour_codes(pixels)
    at = np.minimum(np.searchsorted(sorted_codes, pixel_codes), len(codes) - 1)
    if not bool((sorted_codes[at] == pixel_codes).all()):
        return None
    palette = [int(c) for code in codes for c in ((code >> 16) & 255, (code >> 8) & 255, code & 255)]
    return order[at].astype(np.uint8), palette


def colours_not_in_labelmap(path: Path, pixels: np.ndarray) -> str:
    """A clause naming the colours of a label that the labelmap.txt above it lacks ("" without one)."""
    table = labelmap_codes(path)
    if table is None:
        return ""
    present = np.unique(colour_codes(pixels))
    missing = present[~np.isin(present, table[1])].tolist()
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in missing[:4]) + (", ..." if len(missing) > 4 else "")
    return (f"; {len(missing)} of its colours are not class colours of {table[0]} ({shown}): add them there "
            "(`name:r,g,b::`), or repaint those pixels with a class's colour")


def in_voc_layout(path: Path) -> bool:
    """Whether a label lies below a Pascal VOC SegmentationClass/ folder (JPEGImages/ beside it),
    where colours mean the VOC colour map's indices."""
    return any(folder.name == "SegmentationClass" and (folder.parent / "JPEGImages").is_dir() for folder in path.parents)


def voc_colour_label(path: Path, pixels: np.ndarray, mode: str) -> tuple[np.ndarray, list[int]]:
    """(class indices, VOC palette) of a colour label that a tool saved without its palette: in a
    Pascal VOC layout, when every colour is a VOC colour-map entry. Elsewhere the same colours
    may mean other classes (CamVid's colours are VOC entries too), so it is refused, the message
    saying what its colours are and how to turn them into indices; other colour labels are
    refused as colour labels."""
    from lmae_repair.report import default_palette

    indices = voc_colour_indices(pixels)
    if indices is not None and in_voc_layout(path):
        return indices, default_palette().reshape(-1).tolist()
    hint = ""
    if indices is not None:
        present = [int(v) for v in np.flatnonzero(np.bincount(indices.ravel(), minlength=256))]
        hint = (f"; every colour in it is a Pascal VOC colour-map entry (indices {', '.join(map(str, present[:8]))}"
                f"{', ...' if len(present) > 8 else ''}), read so in a VOC layout (JPEGImages/ + SegmentationClass/); "
                "elsewhere save it as those indices first, e.g. Image.open(path).convert('RGB').quantize(palette="
                "Image.open(a label in VOC's palette), dither=Image.Dither.NONE).save(new_path)")
    if not hint:
        hint = sibling_palette_hint(path, pixels)
    in_labelmap = colours_not_in_labelmap(path, pixels)
    if in_labelmap:
        raise LmaeError(f"{path}: colour ({mode}) label{in_labelmap}")
    raise LmaeError(f"{path}: colour ({mode}) label with no palette mapping; lmae-repair needs class "
                    f"indices (a palette or grayscale PNG, one value per class; or a CVAT labelmap.txt of their colours in "
                    f"the dataset folder, as its class list{stray_labelmap(path)}){hint}")


@functools.lru_cache(maxsize=8)
def _folder_palette(folder: Path, stamp: int, looked_at: int = 20) -> tuple[Path, np.ndarray] | None:
    """(the first palette label among the first `looked_at` label files of a folder, its palette's
    colour codes), or None: looked up once per folder (`stamp`, its mtime, renews it), not once per
    colour label in it, as a dataset of colour labels fails every one. Regular files only: opening a
    FIFO named .png beside the label would wait forever."""
    try:
        siblings = sorted(p for p in folder.iterdir()
                          if p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith(".") and p.is_file())
    except OSError:
        return None
    for sibling in siblings[:looked_at]:
        try:
            with Image.open(sibling) as img:
                palette = img.getpalette() if img.mode == "P" else None
        except Exception:
            continue
        if palette:
            return sibling, colour_codes(np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3))
    return None


def sibling_palette_hint(path: Path, pixels: np.ndarray) -> str:
    """A clause saying how to turn a colour label back into indices where every colour in it is an
    entry of the palette of a palette label beside it (`_folder_palette`): one label of a palette
    dataset that a tool saved as RGB. Why: it was refused as a colour label "with no palette
    mapping", the mapping lying in its neighbours."""
    try:
        found = _folder_palette(path.parent, path.parent.stat().st_mtime_ns)
    except OSError:
        return ""
    if found is None or not bool(np.isin(np.unique(colour_codes(pixels)), found[1]).all()):
        return ""
    return (f"; every colour in it is an entry of the palette of {found[0]}: save it as that palette's indices "
            "first, e.g. Image.open(path).convert('RGB').quantize(palette=Image.open(that label), "
            "dither=Image.Dither.NONE).save(new_path)")


def stray_labelmap(label_path: Path) -> str:
    """A clause naming a labelmap.txt beside a colour label that is not read there (`labelmap_file`
    reads the dataset's class list only): the user put it in labels/, and was told only to add one."""
    beside = label_path.parent / "labelmap.txt"
    return f"; {beside} is not read there: move it to the dataset folder" if beside.is_file() else ""


def is_grey(pixels: np.ndarray) -> bool:
    """An RGB(A) label whose three channels are equal everywhere (and opaque): class indices
    saved as a grey colour image, as some tools do."""
    opaque = pixels.shape[-1] == 3 or bool((pixels[..., 3] == 255).all())
    return opaque and bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all())


def read_pair(pair: Pair, space=None, with_kept: bool = False, keep_void: bool = False) -> tuple[np.ndarray, LabelFile]:
    """Image and label of a pair, checked to be the same size and, given a LabelSpace `space`,
    to hold only its values (a label with unknown values is not guessed at). `with_kept`: also
    the label's void pixels that are annotated all the same (`annotated_void`), for the commands
    that repair labels; training reads 255 as void whatever it was, so it skips that extra file.
    `keep_void` (`--keep-void`, needs `space`): every void pixel is kept so, as Pascal VOC means
    its 255 (object borders, and difficult objects left out on purpose). The pixels where the
    image holds no data (`read_image_nodata`: a GeoTIFF's GDAL_NODATA, outside a swath) are kept
    too: `complete` had filled a tile's black no-data border with vegetation and road."""
    label = read_label(pair.label)
    check_same_size(pair, label.values.shape)
    if space is not None:
        space.check_values(pair.label, label.values)
    if with_kept:
        label.kept = annotated_void(pair.label, label.values)
    if keep_void:
        label.kept = _also_kept(label.kept, label.values == space.void_id)
    image, nodata = read_image_nodata(pair.image)
    if with_kept and nodata is not None:
        label.kept = _also_kept(label.kept, nodata)
    return image, label


def _also_kept(kept: np.ndarray | None, more: np.ndarray) -> np.ndarray:
    """`LabelFile.kept` with the pixels `more` added."""
    return more if kept is None else kept | more


# Cityscapes' train-id labels give 255 both to pixels nobody annotated (label id 0, "unlabeled")
# and to classes that were annotated but are left out of training: ego vehicle, rectification
# border, out of roi, static, dynamic, ground, parking, rail track, guard rail, bridge, tunnel,
# polegroup, caravan, trailer (ids 1-6, 9, 10, 14-16, 18, 29, 30).
CITYSCAPES_IGNORED = 255
CITYSCAPES_UNLABELED_ID = 0
# The label id of each train id (CITYSCAPES_NAMES' order: road 7, sidewalk 8, ... bicycle 33), as
# in cityscapesScripts' labels.py: what a completed train-id pixel is in the label ids.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def label_ids_path(label_path: Path) -> Path | None:
    """The `_gtFine_labelIds.png` that lies beside a Cityscapes train-id label (whether or not it
    exists); None for a label of another name."""
    if not label_path.name.endswith(f"{CITYSCAPES_LABEL_SUFFIX}.png"):
        return None
    return label_path.with_name(label_path.name[: -len(f"{CITYSCAPES_LABEL_SUFFIX}.png")] + f"{CITYSCAPES_IDS_SUFFIX}.png")


def label_ids_missing_note(pairs: list[Pair]) -> str | None:
    """A note where Cityscapes train-id labels have no `_gtFine_labelIds.png` beside them: nothing
    then tells their annotated 255 pixels (`annotated_void`) from missing annotation, and the
    ego vehicle's bonnet, 12% of every frame, was repainted as road without a word. None where every one has it."""
    lacking = [pair.label for pair in pairs if (ids := label_ids_path(pair.label)) is not None and not ids.is_file()]
    if not lacking:
        return None
    labels = [pair for pair in pairs if label_ids_path(pair.label) is not None]
    return (f"{len(lacking)} of {len(labels)} Cityscapes labels have no _gtFine_labelIds.png beside them (first: {lacking[0]}), "
            "so nothing tells their annotated 255 pixels (ego vehicle, out of roi, guard rail...) from missing annotation: "
            "all of them count as missing (complete fills them); put the labelIds files beside the train ids to keep them")


def annotated_void(label_path: Path, values: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the pixels of a Cityscapes train-id label that are 255 but annotated, read
    from the `_gtFine_labelIds.png` beside it (a label id other than 0); None for other labels
    and where that file is absent. Without this, `complete` repainted the car's own bonnet at
    the bottom of every Cityscapes frame (12% of the image) as road: `merge` keeps these pixels
    as they are, and routing (`repair.as_routed`) and `audit` do not count them as missing."""
    ids_path = label_ids_path(label_path)
    if ids_path is None or not ids_path.is_file():
        return None
    try:
        with Image.open(ids_path) as img:
            ids, mode = np.asarray(img), img.mode
    except Exception as exc:
        raise LmaeError(f"{ids_path}: unreadable ({_reason(exc)}); it says which of {label_path.name}'s 255 pixels are annotated "
                        "classes left out of training (remove it to treat them all as missing)") from None
    if ids.ndim != 2:
        raise LmaeError(f"{ids_path}: {ids.shape[2]} channels (mode {mode}); Cityscapes label ids are one value per pixel")
    if ids.shape != values.shape:
        raise LmaeError(f"{ids_path}: {ids.shape[1]}x{ids.shape[0]} but {label_path.name} is {values.shape[1]}x{values.shape[0]}")
    return (values == CITYSCAPES_IGNORED) & (ids != CITYSCAPES_UNLABELED_ID)


def completed_label_ids(ids: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Cityscapes label ids that agree with a completed train-id label: `ids` as they are where
    the train ids stayed (`before` == `after`), the label id of the new train id where a pixel was
    filled in (`CITYSCAPES_LABEL_IDS`; a value outside them, which no Cityscapes model gives,
    becomes 0, "unlabeled", i.e. still missing). Beside the completed train ids, these tell a later
    run which 255 pixels are annotated (`annotated_void`), and they are what cityscapesScripts'
    evaluation reads."""
    lookup = np.full(256, CITYSCAPES_UNLABELED_ID, np.uint8)
    lookup[: len(CITYSCAPES_LABEL_IDS)] = CITYSCAPES_LABEL_IDS
    return np.where(after != before, lookup[after], ids).astype(ids.dtype)


def check_same_size(pair: Pair, label_shape: tuple[int, int]) -> None:
    """Refuse a pair whose label and image differ in size, saying so when the image's EXIF
    orientation is a quarter turn (viewers show it turned; its stored pixels are what counts)."""
    width, height = image_size(pair.image)
    if (height, width) == tuple(label_shape):
        return
    turned = ""
    if (width, height) == tuple(label_shape):
        try:
            with Image.open(pair.image) as img:
                if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF Orientation: rotated by 90 degrees
                    turned = " (its EXIF orientation turns it a quarter for viewers; its stored pixels are what count: rotate the image's pixels to match)"
        except Exception:
            pass
        turned = turned or " (width and height swapped)"
    raise LmaeError(f"{pair.label}: label is {label_shape[1]}x{label_shape[0]} but its image is {width}x{height}"
                    f"{turned or scale_hint((label_shape[1], label_shape[0]), (width, height))}")


def scale_hint(label_size: tuple[int, int], image_size: tuple[int, int]) -> str:
    """' (exactly 2x the image: resized?)' where one size is a whole multiple of the other in both
    directions: a label saved at another resolution than its image looks like any other mismatch
    otherwise, and its likely cause (one of the two was resized) goes unsaid."""
    for big, small, word in ((label_size, image_size, "{k}x"), (image_size, label_size, "1/{k} of")):
        if all(s > 0 and b % s == 0 for b, s in zip(big, small)) and big[0] // small[0] == big[1] // small[1] > 1:
            k = big[0] // small[0]
            amount = "half" if word.startswith("1/") and k == 2 else word.format(k=k)
            return f" (exactly {amount} the image's size: resized?)"
    return ""


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels (a TIFF PIL has no mode
    for from its tags: `read_image` reads it, or says what it is)."""
    try:
        with Image.open(path) as img:
            check_stored_orientation(path, img)
            return img.size
    except LmaeError:
        raise
    except Exception as exc:
        tags = _tiff_tags(path) if path.suffix.lower() in (".tif", ".tiff") else None
        if tags is not None:
            return int(tags[256]), int(tags[257])
        raise LmaeError(f"{path}: unreadable image ({_reason(exc)})") from None


LABEL_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}  # lossless, by suffix


def write_label(path: Path, label: LabelFile) -> None:
    """Write a label atomically (temp file + rename), in the given mode and palette, as PNG, BMP
    or TIFF by the path's suffix (PNG for any other)."""
    file_format = LABEL_FORMATS.get(path.suffix.lower(), "PNG")
    img = Image.fromarray(label.values)
    if label.mode in ("RGB", "RGBA") and label.palette:  # a colour label read by its labelmap.txt: painted in its colours
        img = Image.fromarray(np.asarray(full_palette(label.palette, label.values), np.uint8).reshape(-1, 3)[label.values])
        img = img.convert(label.mode)
    elif label.mode in ("RGB", "RGBA", "LA"):  # a grey label read from a colour or grey + alpha file goes back as one
        img = img.convert(label.mode)
    elif label.mode == "P":
        img.putpalette(full_palette(label.palette, label.values))  # turns the L image into P, indices unchanged
    elif label.mode == "1" and label.values.max(initial=0) <= 1:  # else (void kept) 8-bit grey
        img = Image.fromarray(label.values.astype(bool))
    elif label.mode == "I" and file_format == "TIFF":  # 32-bit grey stays 32-bit
        img = Image.fromarray(label.values.astype(np.int32))
    elif label.mode.startswith("I") and file_format != "BMP":  # 16-bit grey goes back as 16-bit (BMP has none)
        img = Image.fromarray(label.values.astype(np.uint16))
    extra = {"transparency": label.transparency} if label.mode == "P" and label.transparency is not None and file_format == "PNG" else {}
    if file_format == "TIFF":
        extra = _tiff_options(label.tiff)

    # encoded in memory, then written by Python, which raises on a short write: PIL writes pixels
    # through the file descriptor without checking the count, and a nearly full disk left a
    # truncated label renamed into place as finished
    kept_chunks = label.png if file_format == "PNG" else None
    atomic_write(path, lambda f: f.write(with_png_chunks(encoded_label(img, file_format, extra), kept_chunks)))


def full_palette(palette: list[int] | None, values: np.ndarray) -> list[int]:
    """A label's palette with an entry for each of its values: a class beyond a palette of the
    classes the label had gets its VOC colour (PIL would write a palette PNG in fewer bits and drop
    it; a colour label would have none to paint it in)."""
    palette = list(palette or [])
    needed = 3 * (int(values.max(initial=0)) + 1)
    if len(palette) < needed:
        from lmae_repair.report import default_palette

        palette += default_palette().reshape(-1).tolist()[len(palette):needed]
    return palette


def encoded_label(img: Image.Image, file_format: str, options: dict) -> bytes:
    """The file's bytes. A compression PIL cannot write for this mode (group4 once a 1-bit label
    holds 2) is dropped first, the tags kept; a tag it cannot write, then, gives the pixels plainly."""
    def encode(kept: dict) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, format=file_format, **kept)
        return buffer.getvalue()

    for kept in ([options, {k: v for k, v in options.items() if k != "compression"}] if options else []):
        try:
            return encode(kept)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return encode({})


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place.

    An interrupted run therefore never leaves a partial file under the final name. A failure
    to write is an LmaeError naming `path` (not the temporary file the user never asked for).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise LmaeError(f"{path}: cannot write it ({exc.strerror or type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a quota, a folder gone: name the file
            raise LmaeError(f"{path}: cannot write it ({exc.strerror or type(exc).__name__})") from None
        raise


def distinct_files(paths: list[Path]) -> list[Path]:
    """`paths` in order, each file once however it was spelt (the same file named twice, or
    through a link)."""
    distinct: dict[Path, Path] = {}
    for path in paths:
        distinct.setdefault(path.resolve(), path)  # the first spelling
    return list(distinct.values())


STANDARD_STREAMS = {name: stream for stream, fd in (("stdout", 1), ("stderr", 2))
                    for name in (f"/dev/{stream}", f"/dev/fd/{fd}", f"/proc/self/fd/{fd}")}


REDIRECT_IT = "redirect it elsewhere (a disk with room, or /dev/null)"  # what to do about a stream that cannot be written


def write_named_file(path: Path, write) -> None:
    """Write a file the user named (`--json`, `--csv`): through a symbolic link into its target
    (the link stays a link), and straight into a special file such as /dev/stdout or a named pipe
    (renaming a temporary file over it would replace it with a plain file); any other path
    atomically (`atomic_write`)."""
    stream = STANDARD_STREAMS.get(str(path))
    if stream is not None:  # its link leads to a pipe, a terminal or the file the stream was sent to: write into the stream
        out = getattr(sys, stream)
        try:
            out.flush()  # what was printed before comes first
            write(out.buffer)
            out.buffer.flush()
        except BrokenPipeError:  # the reader went away (`--json /dev/stdout | head`): the command goes on
            silence(out)
        except OSError as exc:  # `> /dev/full`: straight into the buffer, past the guard that says so (cli.GuardedStdout)
            silence(out)
            raise LmaeError(f"{path}: cannot write to {stream} ({exc.strerror or type(exc).__name__}); {REDIRECT_IT}") from None
        return
    target = path.resolve() if path.is_symlink() else path
    if not is_special_file(target):
        atomic_write(target, write)
        return
    try:
        with open(target, "wb") as f:
            write(f)
    except OSError as exc:
        raise LmaeError(f"{path}: cannot write it ({exc.strerror or type(exc).__name__})") from None


def silence(stream) -> None:
    """Send what is still written to `stream` nowhere, its reader being gone (Python's recipe, no
    error at exit). Why not stop: `audit --json /dev/stdout --csv rows.csv | head` ended there
    with exit code 0, rows.csv never written and the pairs that failed untold in the code."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def is_special_file(path: Path) -> bool:
    """A device, named pipe or socket: something that exists but is neither a file nor a folder."""
    return path.exists() and not path.is_file() and not path.is_dir()


def _reason(exc: Exception) -> str:
    """Why PIL could not read a file, in words that do not name it: every message puts the path
    first, and PIL's "cannot identify image file '<path>'" repeated it."""
    if isinstance(exc, Image.UnidentifiedImageError) and exc.args and str(exc.args[0]).startswith("cannot identify"):
        try:  # PIL says "cannot identify image file" for a zero-byte file too: say why
            if Path(str(exc.args[0]).split("'")[1]).stat().st_size == 0:
                return "empty file"
        except (IndexError, OSError):
            pass
        return "not an image file: its contents match no image format"
    if isinstance(exc, OSError) and exc.strerror:  # 'Permission denied', not "[Errno 13] ...: 'the path again'"
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
