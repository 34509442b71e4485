"""`lmae-repair complete`: repair every pair of a dataset and write a completed copy of it.

OUT mirrors the input: each label is written under its path relative to the dataset root (VOC:
`OUT/SegmentationClass/x.png`; paired: `OUT/labels/x.png`; Cityscapes: `OUT/gtFine/...`, with the
label ids beside the train ids, `write_label_ids`), as a PNG in the input's mode and palette;
images are hard-linked (copied across file systems) beside them unless `labels_only`. Input
files are never written.

Pipeline: loader workers read, route and prepare pairs (`repair.prepare`); the main thread runs
the model on batches of tiles from several pairs; one writer thread encodes and writes the PNGs
while the model works on the next batch. Each finished pair is appended to
`OUT/.lmae-progress.jsonl` after its label is in place (written atomically), so a rerun of the same
command skips the finished pairs; the reports are rebuilt from that log at the end. A lock file
stops two runs from writing into the same OUT at once.
"""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from lmae_repair import __version__
from lmae_repair.checkpoints import CheckpointInfo, load_checkpoint
from lmae_repair.data import (IMAGE_SUFFIXES, absolute_text, DatasetIndex, LabelFile, Pair, atomic_write, completed_label_ids, label_ids_path,
                               read_label, read_pair, relative_key, write_label)
from lmae_repair.errors import DEBUG, LmaeError, pair_error, stop_if_interrupted, unexpected, worker_ends_quietly_on_sigterm
from lmae_repair.defaults import DEFAULT_MIN_CONFIDENCE, DEFAULT_THRESHOLD
from lmae_repair.inference import for_inference, resolve_precision
from lmae_repair.repair import Prepared, class_probabilities, finish_from, has_annotation, predict, route_and_prepare
from lmae_repair.report import REPORT_HTML, REPORT_JSON, json_report, report_totals, write_html_report

PROGRESS_LOG = ".lmae-progress.jsonl"
LOCK_FILE = ".lmae-lock"
TRAIN_LOCK_FILE = ".lmae-train-lock"  # train's, apart: complete takes a LOCK_FILE for its own earlier output
PENDING_WRITES = 4  # batches the writer may fall behind before the model waits for it
# Tiles per forward pass. On a CPU small passes are faster (measured on examples/camvid, 2 cores:
# 8 tiles 2.6 pairs/s, 64 tiles 1.8 pairs/s: big activations only churn memory); a GPU wants
# the tiles of the whole batch at once.
TILES_PER_PASS_CPU = 8
# Pixels whose class probabilities are held at once (4 bytes x classes each): a batch of large
# images is run a few at a time. 16M pixels is about 90 CamVid frames (480x368 once padded).
PIXELS_PER_PASS = 16_000_000

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are the user's business
    fcntl = None


def check_output_is_ours(out: Path) -> None:
    """Refuse an existing, non-empty OUT that no lmae-repair run wrote: its files could be
    overwritten. An earlier run's OUT (it has the progress log or the lock) is fine: that run is
    resumed."""
    if not out.is_dir() or (out / PROGRESS_LOG).exists() or (out / LOCK_FILE).exists():
        return
    if any(out.iterdir()):
        raise LmaeError(f"{out}: this folder is not empty and is not the output of an earlier lmae-repair run; choose a new or empty --out")


def check_output_is_of(index: DatasetIndex, out: Path) -> None:
    """Refuse an earlier run's OUT that holds another dataset's output: the two would mix (and
    the class list be overwritten). The dataset is the one its report names or, for a run killed
    before its report, the one its lock file names (`lock_output`)."""
    from lmae_repair.report import REPORT_JSON

    try:
        earlier = json.loads((out / REPORT_JSON).read_text()).get("data_root")
    except (OSError, ValueError, AttributeError):
        earlier = None
    if not earlier:
        try:
            earlier = (out / LOCK_FILE).read_text(encoding="utf-8", errors="surrogateescape").strip()
        except OSError:
            return
    if earlier and Path(earlier) != index.root.resolve():
        raise LmaeError(f"{out}: holds the completed copy of another dataset ({earlier}; this run reads "
                        f"{index.root.resolve()}); choose another --out")


def check_output(index: DatasetIndex, out: Path, dry_run: bool = False) -> None:
    """Everything about OUT that can be refused before any work (the CLI calls it before it
    loads the models): inside the input, not ours, or a file. A dry run writes nothing but is
    refused where the real run would be, so that it tells what the real run will do."""
    index.refuse_inside(out)
    check_output_is_ours(out)
    check_output_is_of(index, out)
    if out.exists() and not out.is_dir():
        raise LmaeError(f"{out}: cannot write the output here (a file of that name exists)")
    if not dry_run:  # refused now, not after the models have loaded
        check_can_create(out)
    if not dry_run and (out / LOCK_FILE).is_file():
        lock_output(out).close()


def check_can_create(out: Path) -> None:
    """Refuse an OUT that cannot be created or written, judged by its nearest existing folder."""
    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LmaeError(f"{out}: cannot write the output here ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LmaeError(f"{out}: cannot write the output here (Permission denied in {existing})")


def make_output_folder(out: Path) -> None:
    """Create OUT, or say in one line why it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lmae-write-test-{os.getpid()}.tmp"  # a leftover is a temporary: `remove_temporaries`
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError) or (out.exists() and not out.is_dir()):
            reason = "a file of that name exists"
        raise LmaeError(f"{out}: cannot write the output here ({reason})") from None


def output_folds_case(out: Path) -> bool:
    """Whether OUT's file system takes two names differing only in letter case for one file
    (exFAT, an SMB share, a macOS volume), judged once by a probe file: there, a dataset from
    Linux holding labels/Mix.png and labels/mix.png had its second output replace the first,
    while the report counted both as repaired (`case_collisions`)."""
    probe = out / f".lmae-case-test-{os.getpid()}.tmp"  # a leftover is a temporary: `remove_temporaries`
    try:
        probe.touch()
        try:
            return (out / probe.name.upper()).exists()
        finally:
            probe.unlink()
    except OSError:
        return False  # not known: written as on any file system, as before


def case_collisions(index: DatasetIndex, pairs: list[Pair], out: Path, labels_only: bool) -> dict[str, str]:
    """The error of each pair whose output (label, or mirrored image) differs only in letter case
    from that of an earlier pair in `pairs`, by key, for an OUT that folds case: written, it would
    replace the earlier pair's output. The earlier pair is written; the later one fails."""
    owners: dict[str, tuple[Pair, Path]] = {}
    errors: dict[str, str] = {}
    for pair in pairs:
        targets = [output_label_path(out, pair.key, index)]
        if not labels_only:
            targets.append(mirrored_image_path(pair, index, out))
        clash = next(((owners[t.as_posix().casefold()], t) for t in targets if t.as_posix().casefold() in owners), None)
        if clash is not None:
            (earlier, earlier_target), target = clash
            errors[pair.key] = (f"{pair.label}: not written: its output {target.name} would replace {earlier_target.name}, that of "
                                f"{earlier.label}, as {out}'s file system does not tell letter case apart; rename one of them")
            continue
        owners.update({t.as_posix().casefold(): (pair, t) for t in targets})
    return errors


def case_refusals(index: DatasetIndex, options: CompleteOptions) -> dict[str, dict]:
    """The failed entries, by key, of the pairs `case_collisions` keeps from being written
    (none where OUT tells case apart, or in a dry run, which writes no probe)."""
    if options.dry_run or not output_folds_case(options.out):
        return {}
    clashes = case_collisions(index, index.pairs, options.out, options.labels_only)
    return {pair.key: {**new_entry(pair), "error": clashes[pair.key]} for pair in index.pairs if pair.key in clashes}


def explicit_folder_names(index: DatasetIndex) -> tuple[str, str]:
    """With --images and --labels, OUT gets one folder for each, named like them (`images` and
    `labels` where both have the same name), so that OUT is a paired dataset of its own."""
    images, labels = index.image_root.resolve().name, index.root.resolve().name
    return ("images", "labels") if images == labels else (images, labels)


def mirrored_image_path(pair: Pair, index: DatasetIndex, out: Path) -> Path:
    """Where the pair's image goes under OUT: its place relative to the dataset (or --images)."""
    if index.image_root is not None:
        return out / explicit_folder_names(index)[0] / pair.image.relative_to(index.image_root)
    return out / pair.image.relative_to(index.root)


def mirror_image(pair: Pair, index: DatasetIndex, out: Path) -> None:
    """Hard-link (or copy) the pair's image to the same relative place under OUT, replacing what
    an earlier run left there for it that no longer matches: the image replaced since, or the
    image now under another extension (its old copy would make OUT two images of one name)."""
    target = mirrored_image_path(pair, index, out)
    source = os.path.realpath(pair.image)  # a symlinked image: link its file, not the link
    if target.exists() and same_file_or_copy(target, source):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_earlier_mirrors(target, output_label_path(out, pair.key, index))
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:  # a full disk: no half-copied file left, and the error names the image in OUT
        tmp.unlink(missing_ok=True)
        raise LmaeError(f"{target}: cannot write it ({exc.strerror or type(exc).__name__})") from None


def same_file_or_copy(mirrored: Path, source: str) -> bool:
    """Whether `mirrored` is `source` (a hard link) or a copy of it as `copy2` makes one (same
    size and modification time)."""
    if os.path.samefile(mirrored, source):
        return True
    a, b = mirrored.stat(), os.stat(source)
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def remove_earlier_mirrors(target: Path, label_output: Path) -> None:
    """Images beside `target` with its name and another image extension: an earlier run's mirror
    of this pair's image before it changed format (an input cannot hold both: two images of one
    name are refused). Not where labels are written too (a folder holding both keeps its files)."""
    if target.parent == label_output.parent:
        return
    for sibling in target.parent.glob(f"{glob.escape(target.stem)}.*"):
        if sibling != target and sibling.suffix.lower() in IMAGE_SUFFIXES and sibling.is_file():
            sibling.unlink(missing_ok=True)


def side_files(index: DatasetIndex, unreadable: list[str] | None = None) -> list[Path]:
    """The dataset's files besides images and labels that a training script reads: its class
    list (classes.txt, ..., or an nnU-Net dataset.json) and, for Pascal VOC, the split lists under ImageSets/. One that
    cannot be read (a split list the run does not use, without read permission on a shared
    folder) is left out, its problem added to `unreadable`: it must not stop the run."""
    from lmae_repair.data import find_voc_root, nnunet_dataset_json
    from lmae_repair.labelspace import find_classes_file

    found = []
    classes = find_classes_file(index.root, index.split_folders)
    if classes is not None:
        found.append(classes)
    dataset_json = nnunet_dataset_json(index.root) if index.layout == "paired" else None
    if dataset_json is not None:  # an nnU-Net raw dataset's class names
        found.append(dataset_json)
    voc_root = find_voc_root(index.root) if index.layout == "voc" else None
    if voc_root is not None and (voc_root / "ImageSets").is_dir():
        found += sorted(p for p in (voc_root / "ImageSets").rglob("*") if p.is_file() and not p.name.startswith("."))
    readable = []
    for path in found:
        try:
            open(path, "rb").close()
        except OSError as exc:
            if unreadable is not None:
                unreadable.append(f"{path}: cannot read it ({exc.strerror or type(exc).__name__}); not copied to the output")
            continue
        readable.append(path)
    return readable


VOC_FOLDERS_COPIED = ("JPEGImages", "SegmentationClass", "ImageSets")


def voc_folders_not_copied(index: DatasetIndex) -> list[str]:
    """Pascal VOC: the folders beside SegmentationClass/ that OUT does not get (SegmentationObject/,
    Annotations/, ...), named so that the user does not take OUT for a copy of the whole tree that
    lost a folder. They are left out on purpose: VOC's instance masks and boxes would not match
    the completed labels."""
    from lmae_repair.data import find_voc_root

    voc_root = find_voc_root(index.root) if index.layout == "voc" else None
    if voc_root is None:
        return []
    return [f"{path.name}/" for path in sorted(voc_root.iterdir())
            if path.is_dir() and not path.name.startswith(".") and path.name not in VOC_FOLDERS_COPIED]


def copy_side_files(index: DatasetIndex, out: Path) -> None:
    """Copy `side_files` to the same places under OUT, so that OUT is a dataset of its own."""
    for source in side_files(index):
        # a class list above the dataset (beside --images and --labels folders) goes to OUT's top
        place = source.relative_to(index.root) if source.is_relative_to(index.root) else source.name
        atomic_write(out / place, lambda f, source=source: f.write(source.read_bytes()))  # small text files


def prune_split_lists(index: DatasetIndex, out: Path) -> list[str]:
    """Pascal VOC: drop from OUT's split lists (ImageSets/Segmentation/*.txt, copied from the
    input) the names whose label OUT does not hold (pairs that failed, or that no run into OUT
    has done yet), so that a training script reading OUT finds every pair it lists. Each run
    copies the input's lists afresh, so a name comes back once its pair is written.

    A list none of whose pairs OUT holds (train.txt after `--split val`) is removed from OUT
    rather than left empty: an empty list stopped `--split train` on OUT with "names no pair",
    where a missing one says which splits there are. Returns those lists, relative to DATA."""
    from lmae_repair.data import LABEL_SUFFIXES, _label_stem_candidates, by_letter_case, find_voc_root, split_list_name
    from lmae_repair.labelspace import text_lines

    voc_root = find_voc_root(index.root) if index.layout == "voc" else None
    if voc_root is None:
        return []
    labels = out / voc_root.relative_to(index.root) / "SegmentationClass"
    held = {path.relative_to(labels).with_suffix("").as_posix() for path in labels.rglob("*")  # x.png, X.PNG, x.bmp, x.tif
            if path.suffix.lower() in LABEL_SUFFIXES and not path.name.startswith(".")} if labels.is_dir() else set()
    held |= {stem for name in held for stem in _label_stem_candidates(name)}  # x_mask.png holds the pair x
    held |= {name.rsplit("/", 1)[-1] for name in held}  # as discovery, a bare name finds a label in a subfolder
    folded = by_letter_case(held)
    left_out = []
    for source in side_files(index):
        if source.suffix != ".txt" or source.parent.name != "Segmentation":
            continue
        lines = text_lines(source, errors="replace")
        kept = [line for line in lines if not line.strip() or split_list_name(line, held, folded) in held]
        if len(kept) == len(lines):
            continue
        place = source.relative_to(index.root)
        if not any(line.strip() for line in kept):
            (out / place).unlink(missing_ok=True)
            left_out.append(place.as_posix())
            continue
        text = "".join(f"{line}\n" for line in kept)
        atomic_write(out / place, lambda f, text=text: f.write(text.encode()))
    return left_out


@dataclass
class CompleteOptions:
    out: Path
    threshold: float = DEFAULT_THRESHOLD
    device: str = "cpu"
    dry_run: bool = False
    labels_only: bool = False
    overwrite_labeled: bool = False
    batch_size: int = 8  # pairs per model batch
    workers: int = 0  # loader processes; 0 = read in the main process
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # for changing background (see repair.merge)
    precision: str = "auto"  # auto, bf16, fp32 or int8 (inference.resolve_precision)
    native_scale: bool = False  # read every pair at its own size (repair.working_scale)
    keep_void: bool = False  # leave every void pixel as it is (data.read_pair)


@dataclass
class Loaded:
    """One pair after the loader: its report entry so far, its label file, and the model input."""

    pair: Pair
    entry: dict
    label: LabelFile | None = None
    choice: int | None = None
    prepared: Prepared | None = None

    def pin_memory(self) -> "Loaded":
        """Called by the DataLoader's pinning thread when the model runs on a GPU: page-locked
        inputs make the copies to the GPU asynchronous (`non_blocking=True` in repair.predict)."""
        if self.prepared is not None:
            item = self.prepared
            item.image, item.label, item.mask = item.image.pin_memory(), item.label.pin_memory(), item.mask.pin_memory()
            if item.hint is not None:
                item.hint = item.hint.pin_memory()
        return self


def new_entry(pair: Pair) -> dict:
    # absolute, as `output`: a script reading lmae-report.json from another folder opens them too
    return {"label": pair.key, "image": absolute_text(pair.image), "input_label": absolute_text(pair.label), "output": None,
            "pixels": None, "background_heavy_share": None, "checkpoint": None, "mask_ratio": None, "gap_kind": None,
            "read_at": None, "patches_masked": 0, "pixels_changed": 0, "mean_confidence": None, "error": None}


def problem_entry(problem: str, root: Path) -> dict:
    """The report entry of a file discovery could not pair ('path: problem'): a failed pair,
    keyed like a pair by its path relative to the dataset root, naming the image it concerns
    where discovery knows one (`data.Problem`, as audit's rows do; it was always null)."""
    path = problem.partition(": ")[0]
    entry = new_entry(Pair(Path(path), Path(path), relative_key(path, root)))
    image = getattr(problem, "image", None)
    entry.update(image=None if image is None else absolute_text(image), input_label=None, error=problem)
    return entry


class PairLoader(Dataset):
    """Reads a pair, routes it and prepares the model input; errors end up in the entry."""

    def __init__(self, pairs: list[Pair], checkpoints: list[tuple[Path, CheckpointInfo]], threshold: float, native_scale: bool = False,
                 keep_void: bool = False):
        self.pairs, self.checkpoints, self.threshold, self.native_scale = pairs, checkpoints, threshold, native_scale
        self.keep_void = keep_void

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Loaded:
        pair = self.pairs[i]
        item = Loaded(pair, new_entry(pair))
        try:
            image, label = read_pair(pair, self.checkpoints[0][1].label_space, with_kept=True, keep_void=self.keep_void)
            item.label = label
            item.entry["pixels"] = int(label.values.size)
            share, item.choice, item.prepared = route_and_prepare(
                image, label.values, self.checkpoints, self.threshold, rescale=not self.native_scale, kept=label.kept
            )
            item.entry["background_heavy_share"] = round(share, 4)
            if item.prepared is not None and item.prepared.size != label.values.shape:
                item.entry["read_at"] = "{1}x{0}".format(*item.prepared.size)  # shrunk to the models' scale
            if item.choice is None and not has_annotation(label.values, self.checkpoints[0][1].label_space):
                item.entry["note"] = "no annotated pixel (all void): nothing to complete from, left as it is"
        except Exception as exc:
            item.entry["error"] = pair_error(str(pair.label), exc)
        if item.entry["error"]:
            item.label = item.prepared = None
        return item


def _as_list(items: list) -> list:
    return items


@dataclass
class Completer:
    """Runs the routed models on batches of loaded pairs (models load on first use)."""

    checkpoints: list[tuple[Path, CheckpointInfo]]
    options: CompleteOptions
    # called with (prepared pair, its `class_probabilities`, checkpoint info) after each repair;
    # what it returns is added to the pair's entry (`audit` measures the model's evidence there)
    measure: Callable[[Prepared, torch.Tensor, CheckpointInfo], dict] | None = None
    _models: dict = field(default_factory=dict)

    def model(self, index: int):
        """The model of routing slot `index`, loaded once per file (a file may serve several)."""
        path = self.checkpoints[index][0]
        if path not in self._models:
            model, info = load_checkpoint(path, self.options.device)
            self._models[path] = for_inference(model, self.precision, info.int8_calibration)
        return self._models[path]

    def repair_batch(self, batch: list[Loaded]) -> list[tuple[Loaded, object]]:
        """(loaded pair, repaired label values) for each pair; errors keep the original values."""
        results = {}
        for choice in sorted({item.choice for item in batch if item.prepared is not None}):
            group = [item for item in batch if item.choice == choice and item.prepared is not None]
            for chunk in pixel_chunks(group):
                try:
                    results.update(self._repair_fitting(choice, chunk, self.tiles_per_pass))
                except Exception as exc:  # the model failed on these pairs: they fail, the run goes on
                    stop_if_interrupted(exc)
                    if DEBUG["on"]:
                        raise
                    for item in chunk:
                        item.entry["error"] = unexpected(f"{item.pair.label}: the model failed", exc)
                        item.label = None
        return [(item, results.get(id(item), None if item.label is None else item.label.values)) for item in batch]

    @property
    def precision(self) -> str:
        return resolve_precision(self.options.precision, self.options.device)

    @property
    def tiles_per_pass(self) -> int:
        return TILES_PER_PASS_CPU if self.options.device == "cpu" else TILES_PER_PASS_CPU * self.options.batch_size

    def _repair_fitting(self, choice: int, chunk: list[Loaded], tiles: int) -> dict[int, object]:
        """`_repair_chunk`, retried in halves when the GPU runs out of memory (a large
        `--batch-size` with a large preset or many damaged patches): first fewer pairs held at
        once, then fewer tiles per pass; only a single pair at one tile a pass may fail."""
        try:
            return self._repair_chunk(choice, chunk, tiles)
        except torch.cuda.OutOfMemoryError:
            if len(chunk) == 1 and tiles == 1:
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(chunk) > 1:
            half = len(chunk) // 2
            return {**self._repair_fitting(choice, chunk[:half], tiles), **self._repair_fitting(choice, chunk[half:], tiles)}
        return self._repair_fitting(choice, chunk, tiles // 2)

    def _repair_chunk(self, choice: int, chunk: list[Loaded], tiles: int) -> dict[int, object]:
        path, info = self.checkpoints[choice]
        probs = predict(self.model(choice), info, [item.prepared for item in chunk], self.options.device, tiles,
                        self.precision, self.options.overwrite_labeled)
        results = {}
        for item, prob in zip(chunk, probs):
            chosen = class_probabilities(item.prepared, prob, info)
            result = finish_from(item.prepared, chosen, info, self.options.overwrite_labeled, self.options.min_confidence)
            if self.measure is not None:
                item.entry.update(self.measure(item.prepared, chosen, info))
            item.entry.update(
                checkpoint=absolute_text(path), mask_ratio=info.mask_ratio, gap_kind=info.gap_kind, patches_masked=result.patches_masked,
                pixels_changed=result.pixels_changed,
                mean_confidence=None if result.pixels_changed == 0 else round(result.mean_confidence, 4),
            )
            results[id(item)] = result.values
        return results


def pixel_chunks(items: list[Loaded], budget: int = PIXELS_PER_PASS) -> list[list[Loaded]]:
    """Consecutive groups of items with at most `budget` padded pixels each (a larger item goes
    alone): the model's class probabilities for a group are held at once, so a batch of huge
    images must not multiply them."""
    chunks: list[list[Loaded]] = []
    size = 0
    for item in items:
        pixels = item.prepared.label.numel()
        if not chunks or size + pixels > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += pixels
    return chunks


def output_label_path(out: Path, key: str, index: DatasetIndex) -> Path:
    """Where a label goes under OUT: its path in the dataset, under the same name and format
    (`data.write_label` writes PNG, BMP or TIFF by the suffix, whose spelling is kept), so that a
    training script finds OUT's labels where it found the input's."""
    return out / (explicit_folder_names(index)[1] if index.image_root is not None else "") / key


def file_stamp(path: Path) -> str:
    """Size and modification time: what tells a file that changed since it was logged."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def resume_key(pair: Pair, settings: str) -> str:
    """What a finished pair's output depends on: its input files (size and modification time;
    for Cityscapes also the label ids, which say what is missing and are written out too) and
    the run's settings. A rerun redoes a pair whose key changed (an edited label, other models or
    options) instead of keeping an output made from something else."""
    ids = label_ids_path(pair.label)
    return "|".join([file_stamp(pair.image), file_stamp(pair.label), settings] + ([file_stamp(ids)] if ids and ids.is_file() else []))


def run_settings(checkpoints, options: CompleteOptions) -> str:
    """What changes a repaired label besides the pair's own files, as a short digest for
    `resume_key`: the checkpoints' contents (not their paths: the same models from a fresh
    clone, a container or another --models path must not redo a finished run) and the options."""
    digest = hashlib.sha256()
    for path in dict.fromkeys(path for path, _ in checkpoints):  # each file once; its slots below
        digest.update(file_digest(path).encode())
    for _, info in checkpoints:
        digest.update(f"{info.mask_ratio}:{info.gap_kind}".encode())
    precision = resolve_precision(options.precision, options.device)
    digest.update(f"{options.threshold}|{options.min_confidence}|{options.overwrite_labeled}|{precision}".encode())
    if options.native_scale:  # (added later: runs without it keep their key)
        digest.update(b"|native-scale")
    if options.keep_void:  # (the same)
        digest.update(b"|keep-void")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read once per process while its size and time stay the same."""
    stat = path.stat()
    return _digest_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def write_outputs(item: Loaded, values, index: DatasetIndex, options: CompleteOptions, settings: str = "") -> dict:
    """Write one pair's label (and image link) under OUT, then log it as finished."""
    entry = item.entry
    entry["resume_key"] = resume_key(item.pair, settings)
    entry["version"] = __version__  # the resume key has none: a rerun by another version says so (`other_versions`)
    if entry["error"] is None and not options.dry_run:
        try:
            target = output_label_path(options.out, item.pair.key, index)
            write_label(target, replace(item.label, values=values))
            write_label_ids(item.pair, item.label.values, values, target)
            if not options.labels_only:
                mirror_image(item.pair, index, options.out)
            entry["output"] = absolute_text(target)  # found again from any current folder
            entry["output_stamp"] = file_stamp(target)
        except (LmaeError, OSError) as exc:
            entry["error"] = f"{item.pair.key}: cannot write the output ({exc})"
    if entry["error"] is not None and not options.dry_run:
        remove_stale_outputs(item.pair, index, options.out)
    if not options.dry_run:
        append_json_line(options.out / PROGRESS_LOG, entry)
    return entry


def write_label_ids(pair: Pair, before, after, target: Path) -> None:
    """Cityscapes: beside the completed train-id label `target`, the `_gtFine_labelIds.png` that
    agrees with it (`data.completed_label_ids`: the input's label ids, filled pixels given their
    class's label id), where the input has one; an earlier run's is removed where it no longer
    does. Without them, OUT's train ids alone made every 255 pixel look missing to a second
    `complete` or `audit` (the ego vehicle, 12% of a frame, repainted), and cityscapesScripts'
    evaluation, which reads label ids, had none to read."""
    source, written = label_ids_path(pair.label), label_ids_path(target)
    if source is None or written is None:
        return
    if not source.is_file():
        written.unlink(missing_ok=True)
        return
    ids = read_label(source)
    write_label(written, replace(ids, values=completed_label_ids(ids.values, before, after)))


def label_ids_missing(pair: Pair, index: DatasetIndex, out: Path) -> bool:
    """Whether a pair an earlier run finished lacks the label ids `write_label_ids` puts in OUT
    (removed by hand since): it is done again, so that OUT holds them."""
    source, written = label_ids_path(pair.label), label_ids_path(output_label_path(out, pair.key, index))
    return source is not None and written is not None and source.is_file() and not written.is_file()


def with_this_runs_paths(entry: dict, pair: Pair, index: DatasetIndex, out: Path, checkpoints=()) -> dict:
    """An earlier run's entry for `pair` with the paths this run would write: the earlier run may
    have named DATA from another folder (relative paths that no longer open) or written into the
    OUT this one was copied from, and read the same models at another path (moved since)."""
    output = output_label_path(out, pair.key, index)
    entry = {**entry, "image": absolute_text(pair.image), "input_label": absolute_text(pair.label), "output": absolute_text(output)}
    for path, info in checkpoints:  # the same contents (the resume key says so): this run's file for its slot
        if entry.get("checkpoint") and (info.mask_ratio, info.gap_kind) == (entry["mask_ratio"], entry["gap_kind"]):
            entry["checkpoint"] = absolute_text(path)
    return entry


def remove_stale_outputs(pair: Pair, index: DatasetIndex, out: Path) -> None:
    """A pair that failed leaves nothing under OUT: an earlier run's completed label (and image
    link) for it would no longer match its input. OUT is this run's (locked, see
    `check_output_is_ours`), so only files lmae-repair wrote are removed."""
    label = output_label_path(out, pair.key, index)
    for path in (label, label_ids_path(label), mirrored_image_path(pair, index, out)):
        if path is None:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a folder or an unwritable file: left as it is


def other_versions(entries: list[dict]) -> tuple[list[dict], list[str]]:
    """The finished pairs an earlier run of another lmae-repair version wrote (kept as done: the
    resume key holds the models, options and inputs, not the code), and those versions ('an
    earlier version' where the log predates recording it). A rerun into an old OUT says so once,
    since that version may have written other labels; it refuses nothing."""
    other = [entry for entry in entries if entry.get("error") is None and entry.get("version") != __version__]
    versions = sorted({str(entry["version"]) for entry in other if entry.get("version")})
    if any(not entry.get("version") for entry in other):
        versions.append("an earlier version that did not record it")
    return other, versions


def load_progress(out: Path, index: DatasetIndex) -> dict[str, dict]:
    """Entries of pairs finished by an earlier run into the same OUT, by label key (the last
    entry of a pair wins). An output that is gone, or was changed since it was written (edited
    by hand), does not count as finished: the pair is redone and the report tells the truth.
    The output is looked for where this OUT holds it, not at the path the log recorded: an OUT
    copied or moved since keeps the old paths in its log."""
    done: dict[str, dict] = {}
    for entry in read_json_lines(out / PROGRESS_LOG):
        output = output_label_path(out, entry.get("label") or "", index)
        stamp = file_stamp(output) if entry.get("output") and entry.get("label") and output.is_file() else "missing"
        # logs of earlier versions have no stamp: their outputs count as they are
        if entry.get("error") is None and stamp != "missing" and stamp == entry.get("output_stamp", stamp):
            done[entry["label"]] = entry
        else:
            done.pop(entry.get("label"), None)
    return done


def compact_progress(out: Path) -> None:
    """Rewrite OUT's progress log with the last entry of each pair alone, the one `load_progress`
    goes by, where it holds more: each rerun that redoes the pairs (another --min-confidence,
    other models) appended a line per pair, and 4 runs of 16 pairs left 64 lines, read at every
    start. Atomic, and the entries kept are the same lines, so a kill leaves either log."""
    path = out / PROGRESS_LOG
    entries = list(read_json_lines(path))
    latest = {entry.get("label"): entry for entry in entries}  # later lines win, as in load_progress
    latest.pop(None, None)  # an entry without a label finishes no pair
    if len(latest) == len(entries):
        return
    text = "".join(json.dumps(entry) + "\n" for entry in latest.values())
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json_lines(path: Path):
    """The records of a JSON-lines log (`append_json_line`), none if it does not exist; a line
    cut short by a kill is skipped, so its pair is simply done again."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def append_json_line(path: Path, record: dict) -> None:
    """One record added to a JSON-lines log (`complete`'s progress, `audit`'s journal) the moment
    it is known: a killed run loses at most the line it was writing. A line left without its
    newline (a kill or a full disk mid-write) is ended first, so that the record written after
    it is a line of its own and not lost with it."""
    try:
        with open(path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode("utf-8"))
    except OSError as exc:  # a full disk, a quota: name the file, as `atomic_write` does
        raise LmaeError(f"{path}: cannot write it ({exc.strerror or type(exc).__name__})") from None


_NOTED_NO_LOCKS: set[str] = set()


def note_no_locks(out: Path, exc: OSError) -> None:
    """A shared file system without locks (Lustre mounted without `flock`, NFS without its lock
    service: ENOSYS, ENOLCK, EOPNOTSUPP) had every run refused as 'another lmae-repair run is
    writing here', though none was. The run goes on unlocked, and says so once per folder."""
    if str(out) not in _NOTED_NO_LOCKS:
        _NOTED_NO_LOCKS.add(str(out))
        print(f"note: {out}: its file system takes no locks ({exc.strerror or type(exc).__name__}): a second run "
              "into it at the same time would not be refused", file=sys.stderr, flush=True)


def lock_output(out: Path, data_root: Path | None = None, name: str = LOCK_FILE):
    """Hold an exclusive lock on OUT for this run; a second run into the same OUT is refused. The
    lock file keeps the dataset's root (`data_root`), so that a run killed before its report
    is not taken over by another dataset (`check_output_is_of`). `train` locks its run folders
    under another `name`, so that `complete --out` a run folder is still refused as not its own."""
    try:
        handle = open(out / name, "a", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:  # a read-only run folder (train): the folder named, not the lock file inside
        raise LmaeError(f"{out}: cannot write here ({exc.strerror or type(exc).__name__})") from None
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                note_no_locks(out, exc)  # not held by another run: the file system takes no locks
            else:
                handle.close()
                raise LmaeError(f"{out}: another lmae-repair run is writing here; wait for it or choose another --out") from None
    if data_root is not None:
        handle.truncate(0)
        handle.write(f"{data_root}\n")
        handle.flush()
    return handle


def hold_output(index: DatasetIndex, out: Path):
    """OUT made and locked (`lock_output`) before the models load, for `complete_dataset(lock=)`.
    Why: two runs started at once into one OUT both passed `check_output` (no lock yet), and the
    one refused loaded its models and printed its progress line before 'another lmae-repair run
    is writing here'. Returns (lock, whether this run made OUT) for `give_up_output`."""
    made = not out.exists()
    make_output_folder(out)
    return lock_output(out, index.root.resolve()), made


def give_up_output(lock, out: Path, made: bool) -> None:
    """Release OUT held by `hold_output` when the run ends before `complete_dataset` (no model
    fits, a Ctrl-C while they load): an OUT this run made and left holding only its lock file is
    removed again (the lock file removed while still held), as it was before OUT was locked early;
    a lock file naming this dataset would refuse a later run of another dataset into it."""
    try:
        if made and [entry.name for entry in out.iterdir()] == [LOCK_FILE]:
            (out / LOCK_FILE).unlink()
            lock.close()
            out.rmdir()  # fails, left alone, where another run has since put a file in it
    except OSError:
        pass
    finally:
        lock.close()


def remove_temporaries(out: Path) -> None:
    """Delete the temporary files of a run that was killed (`atomic_write` names them .NAME.*.tmp);
    safe because this run holds the lock on OUT."""
    for leftover in out.rglob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def remove_earlier_report(out: Path) -> None:
    """Delete an earlier run's reports when this run starts: it may replace the labels they
    describe (other models or options, inputs changed since), and if it is interrupted, a script
    reading OUT must not take the old figures for what OUT holds. This run writes them anew from
    the progress log once it finishes, so a report in OUT means a finished run."""
    from lmae_repair.report import REPORT_HTML, REPORT_JSON

    for name in (REPORT_JSON, REPORT_HTML):
        (out / name).unlink(missing_ok=True)


def run_pipeline(index: DatasetIndex, todo: list[Pair], checkpoints, options: CompleteOptions, on_pair, settings: str = "") -> list[dict]:
    """Load, repair and write `todo`; returns the new entries in dataset order."""
    completer = Completer(checkpoints, options)
    loader = DataLoader(
        PairLoader(todo, checkpoints, options.threshold, options.native_scale, options.keep_void), batch_size=options.batch_size,
        num_workers=options.workers, collate_fn=_as_list, pin_memory=options.device.startswith("cuda"),
        prefetch_factor=2 if options.workers else None, persistent_workers=False,
        worker_init_fn=worker_ends_quietly_on_sigterm,
    )
    entries: list[dict] = []
    pending: deque[Future] = deque()

    def collect(future: Future) -> None:
        entry = future.result()
        entries.append(entry)
        if on_pair is not None:
            on_pair(entry)

    with ThreadPoolExecutor(max_workers=1) as writer, torch.inference_mode():
        try:
            for batch in loader:
                for item, values in completer.repair_batch(batch):
                    pending.append(writer.submit(write_outputs, item, values, index, options, settings))
                while len(pending) > PENDING_WRITES * options.batch_size or (pending and pending[0].done()):
                    collect(pending.popleft())
        finally:  # also on Ctrl-C: the writes already under way finish, and the progress counts them
            while pending:
                collect(pending.popleft())
    return entries


def write_reports(out: Path, report: dict, space) -> str | None:
    """Write lmae-report.json, then lmae-report.html; None, or what could not be written and
    what was. They come after every label: a full disk there failed the command with exit code 2
    and no summary, as if nothing had been written, though every label had been (and each
    report is written atomically: none is left half-written). A full disk comes as the LmaeError
    `atomic_write` makes of it, naming the file; catching OSError alone missed every real one."""
    written = "the labels"
    try:
        atomic_write(out / REPORT_JSON, lambda f: f.write(json.dumps(report, indent=2).encode()))
        written += f" and {REPORT_JSON}"
        write_html_report(out, report, space)
    except LmaeError as exc:
        return f"{exc}; {written} were written"
    except OSError as exc:
        where = exc.filename or out / (REPORT_HTML if REPORT_JSON in written else REPORT_JSON)
        return f"{where}: {exc.strerror or type(exc).__name__}; {written} were written"
    return None


def complete_dataset(index: DatasetIndex, checkpoints, options: CompleteOptions, on_pair=None, lock=None) -> dict:
    """Repair every pair of `index` into options.out; returns the report (written unless dry run).
    `on_pair(entry, worked)` is called once per pair; worked is False for pairs finished by an
    earlier run and for files that could not be paired. `lock`: OUT's lock from `hold_output`,
    taken by the caller before the models loaded (else taken here); released at the end."""
    if lock is None:
        check_output(index, options.out, options.dry_run)
    started = time.perf_counter()
    if not options.dry_run:
        if lock is None:
            make_output_folder(options.out)
            lock = lock_output(options.out, index.root.resolve())
        remove_temporaries(options.out)
        compact_progress(options.out)
        remove_earlier_report(options.out)
        copy_side_files(index, options.out)
    try:
        settings = run_settings(checkpoints, options)
        finished = {} if options.dry_run else load_progress(options.out, index)
        done = {pair.key: with_this_runs_paths(finished[pair.key], pair, index, options.out, checkpoints) for pair in index.pairs
                if pair.key in finished and finished[pair.key].get("resume_key") == resume_key(pair, settings)
                and not label_ids_missing(pair, index, options.out)}
        refused = case_refusals(index, options)
        for key in refused:
            done.pop(key, None)  # an earlier run's (logged before this check): its output is the other pair's file
        if not options.dry_run and not options.labels_only:  # an earlier --labels-only run wrote no images
            for pair in [pair for pair in index.pairs if pair.key in done]:
                try:
                    mirror_image(pair, index, options.out)
                except (LmaeError, OSError):
                    del done[pair.key]  # redone, where the failure is reported like any other
        todo = [pair for pair in index.pairs if pair.key not in done and pair.key not in refused]
        unpaired = [problem_entry(problem, index.root) for problem in index.unmatched]
        for entry in [done[pair.key] for pair in index.pairs if pair.key in done] + list(refused.values()) + unpaired:
            if on_pair is not None:
                on_pair(entry, worked=False)  # counted at once: no work, so not in pairs/s
        new = {e["label"]: e for e in run_pipeline(index, todo, checkpoints, options, on_pair, settings)}
        entries = [done.get(pair.key) or refused.get(pair.key) or new[pair.key] for pair in index.pairs] + unpaired
        totals = report_totals(entries, time.perf_counter() - started, resumed=len(done))
        totals["unlabelled_images"] = len(index.unlabelled)
        # Labels an earlier run wrote for pairs this input no longer has (removed, renamed, or
        # another --split into the same OUT): kept, since removing them could undo other work,
        # but listed so that OUT is not taken for a mirror of this input alone.
        current = {pair.key for pair in index.pairs}
        totals["outputs_not_in_input"] = sorted(key for key in finished if key not in current)
        if options.dry_run:
            return {"data": str(index.root), "layout": index.layout, "totals": totals, "pairs": entries}
        totals["split_lists_left_out"] = prune_split_lists(index, options.out)
        report = json_report(index, entries, totals, checkpoints)
        report["report_error"] = write_reports(options.out, report, checkpoints[0][1].label_space)
        return report
    finally:
        if lock is not None:
            lock.close()
