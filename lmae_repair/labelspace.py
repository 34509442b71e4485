"""The label space: which pixel values are classes, which one is background, which one is void.

Every checkpoint records its label space so that a model is never applied to labels it does not
understand. A dataset's label space comes from a `classes.txt` beside the data (one class name
per line, line number = pixel value; or `VALUE name` lines; or labelme's `labels.txt`), from
command-line flags, or from scanning the labels.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmae_repair.errors import LmaeError

VOID_NAMES = {"void", "ignore", "unlabelled", "unlabeled", "unknown", "_ignore_", "__ignore__"}
# "0 background", "1: crack", "255=ignore": a class list that gives each name its value
INDEXED_LINE = re.compile(r"(\d+)(?:\s*[:=,]\s*|\s+)(\S.*)")
# CVAT's (and datumaro's) `labelmap.txt`: "crack:250,50,83::" (name, colour, parts, actions)
LABELMAP_LINE = re.compile(r"([^:]+):\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*:[^:]*:[^:]*")
BACKGROUND_NAMES = {"background", "_background_", "bg", "backgroud"}
DEFAULT_BACKGROUND_ID = 0
DEFAULT_VOID_ID = 255


@dataclass
class LabelSpace:
    """Pixel values 0..num_classes-1 are classes; `void_id` means "no annotation here".

    `background_id` is the class that a missed object turns into (VOC-style data); it is None
    when the data has no background class and missing annotation is void (CamVid, Cityscapes).
    """

    num_classes: int
    names: list[str] = field(default_factory=list)
    background_id: int | None = DEFAULT_BACKGROUND_ID
    void_id: int = DEFAULT_VOID_ID
    palette: list[int] | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.num_classes > 255:
            raise LmaeError(f"label space: number of classes must be 1..255, got {self.num_classes}")
        if not self.names:
            self.names = [f"class_{i}" for i in range(self.num_classes)]
        if len(self.names) != self.num_classes:
            raise LmaeError(
                f"label space: {len(self.names)} class names for {self.num_classes} classes"
            )
        if self.background_id is not None and not 0 <= self.background_id < self.num_classes:
            raise LmaeError(
                f"label space: background id {self.background_id} is not a class "
                f"(0..{self.num_classes - 1}); use --background-id none if there is none"
            )
        if not 0 <= self.void_id <= 255:
            raise LmaeError(f"label space: void id {self.void_id} must be 0..255")
        if self.void_id < self.num_classes:
            raise LmaeError(
                f"label space: void value {self.void_id} is one of the class values 0..{self.num_classes - 1} "
                f"({self.names[self.void_id]}); the classes must be the values 0..N-1 with void above them: give another "
                "void value or fewer classes, or, where the labels' void lies below their classes (void 0, classes from "
                "1), remap the labels (classes from 0, void 255)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSpace":
        return cls(**data)

    def describe(self) -> str:
        background = "none" if self.background_id is None else f"{self.background_id}"
        return (
            f"{self.num_classes} classes ({', '.join(self.names)}), "
            f"background id {background}, void id {self.void_id}"
        )

    @property
    def missing_id(self) -> int:
        """The value a missed object turns into: background where there is one, void otherwise."""
        return self.void_id if self.background_id is None else self.background_id

    @property
    def has_names(self) -> bool:
        """True when the classes were named (a class list, a layout), not numbered `class_N`."""
        return self.names != [f"class_{i}" for i in range(self.num_classes)]

    def single_class_problem(self) -> str | None:
        """Why a label space of one class is almost surely misread: every label is then all one
        class or void, with nothing to learn or complete. The usual cause is a binary mask of 0
        and 255, where 255 (void by default) was meant as the object."""
        if self.num_classes > 1:
            return None
        name = self.names[0] if self.names else "class_0"
        return (f"the label space has a single class ({name}, value 0) besides void {self.void_id}, so there is nothing "
                f"to learn or complete; for masks of 0 and 255, 255 is void here: save the objects as 1 (0/1 masks), "
                "or list the classes in a classes.txt")

    def outside_values(self, values) -> list[int]:
        """The distinct values of a label array that are neither a class nor void."""
        import numpy as np

        present = np.flatnonzero(np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256))
        return [int(v) for v in present if v >= self.num_classes and v != self.void_id]

    def outside_message(self, outside: list[int]) -> str:
        shown = ", ".join(str(v) for v in outside[:5]) + (", ..." if len(outside) > 5 else "")
        return f"values outside the label space ({shown}; classes are 0-{self.num_classes - 1}, void {self.void_id})"

    def check_values(self, path, values) -> None:
        """Raise a one-line LmaeError naming `path` if the label holds values outside the space."""
        outside = self.outside_values(values)
        if outside:
            raise LmaeError(f"{path}: {self.outside_message(outside)}")

    def same_names(self, other: "LabelSpace") -> bool:
        """False when both label spaces name their classes (not `class_N`) and the names differ,
        case and spaces aside: the same values with another meaning."""
        if not (self.has_names and other.has_names):
            return True
        return [n.strip().lower() for n in self.names] == [n.strip().lower() for n in other.names]

    def same_classes(self, other: "LabelSpace") -> bool:
        """True when two label spaces give the same meaning to every pixel value."""
        return (
            self.num_classes == other.num_classes
            and self.background_id == other.background_id
            and self.void_id == other.void_id
        )


def text_lines(path: Path, errors: str = "strict") -> list[str]:
    """The lines of a class or split list: UTF-8, or UTF-16 where the file starts with its
    byte-order mark (Notepad's "Unicode", Windows PowerShell's `>`); a UTF-8 byte-order mark
    (Windows editors) is not part of the first name. A file that is not UTF-8 is read as Windows'
    "ANSI" (cp1252), as Notepad saved it: `béton` must name béton.png, not b?ton."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors).splitlines()
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace").splitlines()


def read_class_names(path: Path) -> list[str]:
    """Read a classes.txt: one name per line; blank lines and #-comments are skipped."""
    try:
        lines = text_lines(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise LmaeError(f"{path}: cannot read class names ({exc})") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise LmaeError(f"{path}: no class names in it")
    return names


CLASS_LIST_NAMES = ("classes.txt", "labels.txt", "class_names.txt", "labelmap.txt")


def find_classes_file(root: Path, splits: tuple[Path, ...] = ()) -> Path | None:
    """classes.txt (or labels.txt) in the folder of the split read (`splits`: DATA/train/ for
    `--split train`, `DatasetIndex.split_folders`; CamVid-like copies keep it there, and it was
    missed, the classes counted from the values and void 11 made a class), the dataset root, its
    parent, or a Pascal VOC folder nested in it (root/VOCdevkit/VOC2012/). Where none has its exact name, one found as Windows and macOS
    find it, letter case aside (`Classes.txt`), or with the `.txt` that Windows adds to a file
    renamed with extensions hidden (`classes.txt.txt`, shown as classes.txt): the dataset's class
    names were ignored without a word, and its labels taken for unnamed values."""
    folders = (*splits, root, root.parent, *sorted(root.glob("VOCdevkit/*/")))
    for folder in folders:
        for name in CLASS_LIST_NAMES:
            if (folder / name).is_file():
                return folder / name
    for folder in folders:
        files: dict[str, str] = {}  # casefolded name: the file's name (the first in order where two differ in case)
        try:
            for name in sorted(entry.name for entry in os.scandir(folder) if entry.is_file()):
                files.setdefault(name.casefold(), name)
        except OSError:
            continue
        for name in CLASS_LIST_NAMES + tuple(f"{name}.txt" for name in CLASS_LIST_NAMES):
            if name in files:
                return folder / files[name]
    return None


def declared_class_names(root: Path, layout_names: list[str] | None, splits: tuple[Path, ...] = ()) -> list[str] | None:
    """The class names a dataset declares: its class list's (`find_classes_file`), else its
    layout's (Cityscapes' train ids), else None."""
    classes_file = find_classes_file(root, splits)
    return read_class_list(classes_file)[0] if classes_file is not None else layout_names


def first_names(names: list[str], limit: int = 4) -> str:
    """The first `limit` names, comma-separated, with ", ..." when there are more: for messages."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def names_agree(names: list[str], space: "LabelSpace") -> bool:
    """Whether declared class names are the label space's, case and spaces aside, a last void
    line (CamVid's `void`) not counted as a class (`label_space_from_names`). Why not only the
    first ones: a class list of 5 classes chose the bundled family of its first 3, and every
    label holding the other two failed one by one."""
    declared = label_space_from_names(names)[1] if names else names
    return [n.strip().lower() for n in declared] == [n.strip().lower() for n in space.names]


def read_class_list(path: Path) -> tuple[list[str], int | None]:
    """(names in value order, the void value if the file gives it) from a class list file.

    Four formats: one name per line, the line number its value (a last `void` line marks the
    void value: `label_space_from_names`); every line `VALUE name` (also `VALUE: name`), where a
    void name gives the void value (`255 ignore`) and unlisted values below the largest class get
    `class_N`; labelme's `labels.txt`, whose first line `__ignore__` is value -1, saved as 255, and
    whose classes start at 0 with `_background_`; CVAT's `labelmap.txt` (`name:r,g,b::`, the
    line number the value; its colours are read by `data.labelmap_colours`).
    """
    lines = read_class_names(path)
    colours = labelmap_entries(lines)
    if colours is not None:
        return [name for name, _ in colours], None
    indexed = [INDEXED_LINE.fullmatch(line) for line in lines]
    if all(indexed):
        by_value = {int(match[1]): match[2].strip() for match in indexed}
        voids = [value for value, name in by_value.items() if name.lower() in VOID_NAMES]
        void_id = max(voids) if voids else None
        classes = {value: name for value, name in by_value.items() if value != void_id}
        if not classes:
            raise LmaeError(f"{path}: no class in it, only the void value")
        if max(classes) >= 255:  # `255 lesion` for 0/255 masks: 256 classes, refused with no file named
            value = max(classes)
            raise LmaeError(f"{path}: class value {value} ({classes[value]}): classes take the values 0, 1, 2... below 255 "
                            f"(255 is void unless a line names another); for masks of 0 and {value}, save the objects as 1 "
                            f"(e.g. with numpy, (mask == {value}).astype(np.uint8) into new files) and list `1 {classes[value]}`")
        if void_id is not None and void_id < max(classes):
            raise LmaeError(void_below_classes(path, void_id, classes))
        return [classes.get(value, f"class_{value}") for value in range(max(classes) + 1)], void_id
    if lines[0].lower() == "__ignore__" and len(lines) > 1:
        return lines[1:], DEFAULT_VOID_ID
    return lines, None


def void_below_classes(path: Path, void_id: int, classes: dict[int, str]) -> str:
    """Why a class list whose void value lies below a class (`0 void`, `1 liver`: 1-based class ids
    where 0 is "not annotated", as some medical exports number them) cannot be read, with the
    remapping to do. Why: it was refused as 'label space: void value 0 is one of the class values
    0..4 (class_0)', naming neither the file nor how to renumber the labels."""
    first = min(classes)
    remap = (f"e.g. with numpy, np.where(label == 0, 255, label - 1).astype(np.uint8) into new files, and list "
             f"`0 {classes[first]}` ... `255 void`" if void_id == 0 and first == 1 else "void 255")
    return (f"{path}: void value {void_id} is one of the class values 0..{max(classes)} (classes from {first}): "
            f"lmae-repair needs the classes as the values 0..N-1 with void above them; remap the labels (classes from 0, {remap})")


def labelmap_entries(lines: list[str]) -> list[tuple[str, tuple[int, int, int]]] | None:
    """[(name, (r, g, b))] in value order where every line is CVAT's `labelmap.txt` form
    (`name:r,g,b:parts:actions`, the `# label:color_rgb:...` header being a comment), else None.
    Why: CVAT's segmentation-mask export writes its classes there, and its labels in those
    colours; the names were ignored and the colour labels refused."""
    matches = [LABELMAP_LINE.fullmatch(line) for line in lines]
    if not lines or not all(matches):
        return None
    return [(match[1].strip(), (int(match[2]), int(match[3]), int(match[4]))) for match in matches]


def void_named(class_names: list[str]) -> str | None:
    """Why a label space looks wrong for training, where one of its classes (`class_names`, in
    value order) is named like void (`void` as the first line of a plain class list makes value 0
    a class): trained so, a model predicts void and never fills it. None where no class is."""
    value = next((i for i, name in enumerate(class_names) if name.lower() in VOID_NAMES - {"unknown"}), None)
    if value is None:
        return None
    return (f"class {value} is named '{class_names[value]}', so the model would learn to predict void, never to fill it: "
            "in a plain class list a void line must come last (it is then the value after the classes), or give values "
            "(`255 void`); where the labels' void lies below their classes, remap them (classes from 0, void 255); "
            "or pass --void-id to train as it stands")


def label_space_from_names(names: list[str], void_id: int | None = None) -> tuple[int, list[str], int | None, int | None]:
    """(num_classes, names, background_id, void_id) implied by a list of class names.

    Without a `void_id`, a last name such as "void" marks the void value rather than a class
    (CamVid's classes.txt lists `void` as value 11). A name such as "background" marks the
    background class; if no name does, the data has no background class.
    """
    if void_id is None and names[-1].lower() in VOID_NAMES:
        void_id = len(names) - 1
        names = names[:-1]
    background_id = next(
        (i for i, name in enumerate(names) if name.lower() in BACKGROUND_NAMES), None
    )
    return len(names), names, background_id, void_id


_UNSET = object()


def declared_classes(root: Path | None, layout_names: list[str] | None,
                     splits: tuple[Path, ...] = ()) -> tuple[list[str], int | None | object, int | None]:
    """(class names, background id, void value) as the dataset's class list (`find_classes_file`)
    declares them, else its layout's list (Cityscapes' train ids); ([], _UNSET, None) without
    either. A void line is the void value, not a class (`label_space_from_names`)."""
    classes_file = find_classes_file(root, splits) if root is not None else None
    if classes_file is not None:
        return label_space_from_names(*read_class_list(classes_file))[1:]
    if layout_names:
        return label_space_from_names(layout_names)[1:]
    return [], _UNSET, None


def build_label_space(
    root: Path | None,
    scanned_max_value: int | None = None,
    num_classes: int | None = None,
    background_id: int | None | object = _UNSET,
    void_id: int | None = None,
    palette: list[int] | None = None,
    layout_names: list[str] | None = None,
    splits: tuple[Path, ...] = (),
) -> LabelSpace:
    """Combine classes.txt, flags and the scanned labels into one label space.

    Precedence: explicit flags, then classes.txt, then the layout's own class list (Cityscapes
    train ids), then defaults (background 0, void 255, and as many classes as the largest
    non-void value seen in the labels implies).
    """
    names, file_background, file_void = declared_classes(root, layout_names, splits)
    resolved_void = void_id if void_id is not None else (
        file_void if file_void is not None else DEFAULT_VOID_ID
    )
    if num_classes is None:
        if names:
            num_classes = len(names)
        elif scanned_max_value is not None:
            num_classes = scanned_max_value + 1
        else:
            raise LmaeError("label space: cannot tell the number of classes; pass --num-classes")
    if names and len(names) != num_classes:
        names = (names + [f"class_{i}" for i in range(len(names), num_classes)])[:num_classes]
    if background_id is _UNSET:
        background_id = DEFAULT_BACKGROUND_ID if file_background is _UNSET else file_background
    return LabelSpace(
        num_classes=num_classes,
        names=names,
        background_id=background_id,  # type: ignore[arg-type]
        void_id=resolved_void,
        palette=palette,
    )


def parse_background_id(text: str | None) -> int | None | object:
    """--background-id value: an integer, 'none', or unset (None -> use classes.txt/default)."""
    if text is None:
        return _UNSET
    if text.strip().lower() in {"none", "-1", ""}:
        return None
    try:
        return int(text)
    except ValueError:
        raise LmaeError(f"--background-id: expected an integer or 'none', got {text!r}") from None

