"""`lmae-repair audit`: score every pair of a dataset for how likely its label is broken.

Three kinds of evidence, each giving reasons a curator can check:
- **file defects** (score 1): unreadable or truncated files, an image without a label or a label
  without an image, a label whose size differs from its image, values outside the label space, a
  colour (RGB) label, a label that is all background or void (unless such labels are common:
  then they are negatives, scored by the model's evidence, `score_empty_labels_as_data`; images
  without a label, where common, are unannotated frames, listed last, `rank_common_unlabelled_last`);
- **statistics**: the label's share of background-or-void pixels against the rest of the
  dataset (robust z-score: median and median absolute deviation), and classes that almost every
  other label has but this one lacks;
- **the model's evidence**: the pair is repaired in memory exactly as `complete` would repair it;
  the pixels it would change (background or void where the model sees an annotated class) are the
  *suspect pixels*, and their share is compared with the rest of the dataset the same way; so is
  the share of *separate* suspect pixels, those in regions touching no pixel the label already
  gives their class (`separate_suspects`): a whole object the annotator missed, rather than an
  annotated region the model would draw a little wider, so they count twice; and so is the
  share of *far look-alikes* (`far_lookalikes`): background or void pixels where the model finds
  a class more likely than not, over FAR_PIXELS from any pixel the label gives that class,
  counted against the label's annotated area. Suspect pixels need the repair's confidence
  (`--min-confidence`, 0.9 by default), which a missed defect in a hard image seldom reaches;
  this evidence does not.

Score: the positive parts of the four z-scores are summed (plus 2 per missing common class) into
`evidence`, and score = 1 - exp(-evidence / 4), in [0, 1): a label like the median scores 0, one
standing 4 deviations out scores 0.63. File defects score 1. Reasons are listed from 2 deviations;
a label whose evidence reaches 2 from several smaller ones lists those measures instead.
Rows are ranked by the evidence itself, file defects first: on a large, mostly clean dataset the
median suspect share is 0, so a few percent of suspect pixels already stands far out and many
scores round to 1.00; the evidence still orders them (a label half suspect above one with 4%).

Resuming: with `--json` or `--csv`, each pair's measurements are appended to a journal beside
that file as soon as they are made (`journal_for`). An interrupted audit run again with the same
models and options measures only the pairs the journal lacks, or whose files changed since
(`complete.resume_key`); scores are computed over all rows at the end, and the journal is
removed once the files are written.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from lmae_repair.checkpoints import CheckpointInfo
from lmae_repair.complete import (
    CompleteOptions, Completer, Loaded, PairLoader, _as_list, append_json_line, new_entry, read_json_lines, resume_key, run_settings,
)
from lmae_repair.data import DatasetIndex, absolute_text, atomic_write, is_special_file, read_image, read_pair, relative_key, write_named_file
from lmae_repair.dataset import scan_labels
from lmae_repair.defaults import DEFAULT_MIN_CONFIDENCE, DEFAULT_THRESHOLD
from lmae_repair.errors import pair_error
from lmae_repair.labelspace import DEFAULT_VOID_ID, LabelSpace, build_label_space
from lmae_repair.masking import missing_pixels
from lmae_repair.repair import Prepared
from lmae_repair.report import colour_table, outline_hidden, pair_panels

REASON_FROM = 2.0  # deviations from which a statistic becomes a reason
COMMON_CLASS = 0.9  # a class in at least this share of labels is expected in every label
MISSING_CLASS_EVIDENCE = 2.0
SCALE = 4.0
EMPTY_COMMON_SHARE = 0.05  # labels all background or void are part of the data (negatives) from this share...
EMPTY_COMMON_COUNT = 3  # ... and this many of them: then scored by evidence, not as file defects
EMPTY_LABEL = "label is all background or void"
# images without a label are the data's unannotated frames from this share of the images (and
# EMPTY_COMMON_COUNT of them): a video tool exporting every Nth frame leaves (N-1)/N of them
UNLABELLED_COMMON_SHARE = 0.25
FEW_LABELS = 5  # fewer measured labels give the medians and deviations of the scores nothing to stand on
FAR_CONFIDENCE = 0.5  # a far look-alike: the model finds its class more likely than not...
FAR_PIXELS = 10  # ... over this many pixels from any annotation of that class
NOT_FAR = 255  # in the map of far look-alikes' classes: none here
JOURNAL_SUFFIX = ".lmae-audit.jsonl"
HEATMAP_LEGEND = "lmae-heatmap-legend.png"  # in the --heatmaps folder: which colour is which class


@dataclass
class AuditOptions:
    threshold: float = DEFAULT_THRESHOLD
    device: str = "cpu"
    batch_size: int = 8
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    heatmaps: Path | None = None
    precision: str = "auto"  # as in CompleteOptions
    native_scale: bool = False  # as in CompleteOptions
    keep_void: bool = False  # as in CompleteOptions: void is not missing annotation

    def repair_options(self) -> CompleteOptions:
        """The options of the in-memory repair, as `complete` would run it (nothing written)."""
        return CompleteOptions(Path("."), self.threshold, self.device, batch_size=self.batch_size, min_confidence=self.min_confidence,
                               precision=self.precision, native_scale=self.native_scale, keep_void=self.keep_void)


def new_row(key: str, image: str | None) -> dict:
    """A row before anything is measured: counts None (null in the JSON, empty in the CSV), so
    that a pair that could not be read never looks like a clean one with 0 suspect pixels."""
    return {"label": key, "image": image, "score": 0.0, "evidence": None, "reasons": [], "suspect_pixels": None, "pixels": None,
            "missing_share": None, "suspect_share": None, "separate_share": None, "far_share": None, "classes": [], "defect": False,
            "error": None}


def file_defects(item: Loaded, space: LabelSpace) -> list[str]:
    """What is wrong with the files of a loaded pair, if anything (empty when it is usable)."""
    error = item.entry["error"]
    if error:  # unreadable, wrong size, colour label, values outside the space...
        # the row names the label already: its path is dropped from the reason, the image's kept short
        if error.startswith(f"{item.pair.label}: "):
            error = error[len(f"{item.pair.label}: "):]
        elif error.startswith(f"{item.pair.image}: "):
            error = f"image {item.pair.image.name}: {error[len(f'{item.pair.image}: '):]}"
        return [error]
    if missing_pixels(item.label.values, space.background_id, space.void_id).all():
        return [EMPTY_LABEL]
    return []


def robust_z(values: np.ndarray, floor: float) -> np.ndarray:
    """(x - median) / (1.4826 * MAD), the MAD floored so that a dataset of equal values does not
    turn tiny differences into huge scores."""
    median = np.median(values)
    spread = max(1.4826 * float(np.median(np.abs(values - median))), floor)
    return (values - median) / spread


def score_rows(rows: list[dict], space: LabelSpace) -> None:
    """Fill in score and reasons of the usable rows from the dataset's statistics."""
    score_empty_labels_as_data(rows)
    usable = [row for row in rows if not row["defect"]]
    if not usable:
        return
    # the labels' own statistics (background share, classes present) leave the negatives out: with
    # 10% of them no class was in 90% of the labels, and a label lacking one was no longer told
    annotating = np.array([not row.get("empty") for row in usable])
    missing = np.array([row["missing_share"] for row in usable])
    suspect = np.array([row["suspect_share"] or 0.0 for row in usable])  # None: no model measured it
    separate = np.array([row["separate_share"] or 0.0 for row in usable])
    far = np.array([row["far_share"] or 0.0 for row in usable])
    z_missing = np.zeros(len(usable))
    if annotating.any():
        z_missing[annotating] = robust_z(missing[annotating], 0.01)
        missing = missing[annotating]  # the median the reasons quote
    z_suspect, z_separate, z_far = robust_z(suspect, 0.001), robust_z(separate, 0.001), robust_z(far, 0.001)
    presence = np.zeros(space.num_classes)
    for row in usable:
        if not row.get("empty"):
            presence[row["classes"]] += 1
    presence /= max(int(annotating.sum()), 1)
    common = [c for c in range(space.num_classes) if presence[c] >= COMMON_CLASS and c != space.background_id]
    # the medians the reasons quote, taken once: per row, an audit of 30,000 labels spent 13 s here
    medians = {"suspect_share": np.median(suspect), "separate_share": np.median(separate), "far_share": np.median(far),
               "missing_share": np.median(missing)}
    for row, zm, zs, zp, zf in zip(usable, z_missing, z_suspect, z_separate, z_far):
        absent = [] if row.get("empty") else [c for c in common if c not in row["classes"]]  # a negative lacks them all
        evidence = max(zm, 0.0) + max(zs, 0.0) + max(zp, 0.0) + max(zf, 0.0) + MISSING_CLASS_EVIDENCE * len(absent)
        row["score"] = round(1.0 - math.exp(-evidence / SCALE), 4)
        row["evidence"] = round(evidence, 3)
        if zs >= REASON_FROM:
            row["reasons"].append(
                f"model sees annotated classes where {row['suspect_share']:.1%} of the label is background/void "
                f"(dataset median {medians['suspect_share']:.1%})"
            )
        if zp >= REASON_FROM:
            row["reasons"].append(
                f"model sees whole objects the label lacks: {row['separate_share']:.1%} of it, in regions touching no "
                f"annotation of their class (dataset median {medians['separate_share']:.1%})"
            )
        if zf >= REASON_FROM:
            row["reasons"].append(
                f"model finds annotated classes likely far from any annotation of them, on {row['far_share']:.1%} as many "
                f"pixels as the label annotates (dataset median {medians['far_share']:.1%})"
            )
        if zm >= REASON_FROM:
            row["reasons"].append(f"background/void covers {row['missing_share']:.1%} (dataset median {medians['missing_share']:.1%})")
        for c in absent:
            row["reasons"].append(f"no {space.names[c]} (present in {presence[c]:.0%} of labels)")
        if not row["reasons"] and evidence >= REASON_FROM:  # no one measure far out, several a little: say which
            parts = [(z, f"{name} {row[key] or 0.0:.2%} (median {medians[key]:.2%})") for z, name, key in (
                (zs, "suspect pixels", "suspect_share"), (zp, "separate suspect pixels", "separate_share"),
                (zf, "far look-alikes", "far_share"), (zm, "background/void", "missing_share")) if z >= 0.5]
            row["reasons"].append("several measures a little above the dataset's median: "
                                  + ", ".join(text for _, text in sorted(parts, key=lambda part: -part[0])))


def score_empty_labels_as_data(rows: list[dict]) -> None:
    """Where labels all background or void are common (at least EMPTY_COMMON_COUNT of them and
    EMPTY_COMMON_SHARE of the measured labels), they are the dataset's negatives (healthy cases,
    defect-free parts), not file defects: ranked first at score 1 they buried the labels that are
    broken. They are then scored like the others, by the model's evidence alone (their
    background share and the classes they lack are what a negative has), and their far
    look-alikes are counted against the median label's annotated area, since they annotate none.
    Rare ones stay file defects: one empty label among hundreds is most likely a slip; so do all
    of them where no model measured them (an audit of statistics only), which has no evidence."""
    measured, empty = common_empty_labels(rows)
    if not empty or any(row.get("far_pixels") is None for row in empty):  # no model measured them: nothing tells
        return  # a negative from a label emptied by mistake, so they stay file defects (`empty_labels_note`)
    annotated = [(1.0 - row["missing_share"]) * row["pixels"] for row in measured if not row.get("empty")]
    typical = float(np.median(annotated)) if annotated else 0.0
    for row in empty:
        row.update(defect=False, score=0.0, reasons=[f"{EMPTY_LABEL}, as are {len(empty)} of the {len(measured)} labels: "
                                                      "scored by the model's evidence"])
        far = row["far_pixels"]  # measured: a row without it returned above
        row["far_share"] = round(far / (far + typical + 1), 5)


def common_empty_labels(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the measured rows, those of them all background or void where such labels are common:
    at least EMPTY_COMMON_COUNT and EMPTY_COMMON_SHARE of the measured ones; else none)."""
    measured = [row for row in rows if not row["defect"] or row.get("empty")]
    empty = [row for row in measured if row.get("empty")]
    return measured, empty if len(empty) >= max(EMPTY_COMMON_COUNT, EMPTY_COMMON_SHARE * len(measured)) else []


def empty_labels_note(rows: list[dict]) -> str | None:
    """What to make of many empty labels that an audit without a model left as file defects.
    Why: a CT set's slices outside the organs are empty (12 of 29 labels), and listed at score 1
    with no word they looked like 12 broken files, the labels with a real problem below them."""
    measured, empty = common_empty_labels(rows)
    if not empty or any(not row["defect"] for row in empty):  # none common, or scored as negatives by a model
        return None
    if len(empty) == len(measured):  # none annotated: 0/255 masks whose 255 is void, which the first note explains
        return None
    return (f"{len(empty)} of the {len(measured)} labels are all background or void (empty slices, or images with nothing "
            "to annotate?): without a model nothing tells them from labels emptied by mistake, so they are listed as file "
            "defects after the other file defects; with --models, what the model sees in each ranks it among the others")


def few_labels_note(rows: list[dict]) -> str | None:
    """What the scores are worth where fewer than FEW_LABELS labels were measured, and what to go
    by instead. Why: scores and reasons measure each label against the dataset's median and
    spread, and a dataset of one label is its own median: a label half void (86,400 suspect
    pixels) was audited alone at score 0.00, "0 of 1 with a reason". The suspect pixels are the
    label's own measure, so the note names the label with most of them."""
    measured = [row for row in rows if not row["defect"]]
    if not too_few_labels(rows):
        return None
    labels = f"{len(measured)} label{'s' if len(measured) > 1 else ''}"
    note = (f"only {labels} to compare: scores and reasons measure each label against the dataset's median, which needs "
            f"{FEW_LABELS} labels or more to mean anything")
    if all(row["suspect_share"] is None for row in measured):  # no model measured them
        return note
    worst = max(measured, key=lambda row: row["suspect_share"] or 0.0)
    if not worst["suspect_pixels"]:
        return f"{note}; the model would fill no pixel of {'any of them' if len(measured) > 1 else 'it'}"
    return (f"{note}; go by the suspect pixels, those the model would fill: most in {worst['label']}, "
            f"{worst['suspect_pixels']:,} ({worst['suspect_share']:.1%} of it)")


def too_few_labels(rows: list[dict]) -> bool:
    """Whether some but fewer than FEW_LABELS labels were measured, so that their scores and
    reasons compare nothing (`few_labels_note`). Each row of --json / --csv says it
    (`few_labels`): a script read score 0.0 as a clean label, the note being on the terminal only."""
    measured = sum(not row["defect"] for row in rows)
    return 0 < measured < FEW_LABELS


def audit_dataset(
    index: DatasetIndex, checkpoints, options: AuditOptions, on_pair=None, space: LabelSpace | None = None,
    journal: Path | None = None,
) -> list[dict]:
    """Rows for every pair and every unmatched file, sorted by score, highest first. Without
    checkpoints (no model fits the labels) the rows hold file defects and statistics only, in
    `space` (`label_space_of_data`): no pixel is suspect. `journal` (`journal_for`): rows of
    pairs finished by an earlier run are taken from it, and each new row is added to it.
    `on_pair(error, worked)` follows each pair, `worked` False for those taken from the journal."""
    space = space or checkpoints[0][1].label_space
    rows = [defect_row(problem, index.root, failed=True) for problem in index.unmatched]
    rows += [defect_row(problem, index.root, failed=False) for problem in index.unlabelled]
    settings = audit_settings(checkpoints, options, space)
    # the paths too: a row names its image as this run found it (a moved dataset is measured again)
    keys = {pair.key: f"{resume_key(pair, settings)}|{pair.image}|{pair.label}" for pair in index.pairs}
    done = {}
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)  # where the --json / --csv file will go
        done = read_journal(journal, keys)
        if options.heatmaps is not None:  # a heatmap deleted since is drawn again
            done = {key: row for key, row in done.items() if not has_heatmap(row) or heatmap_path(options.heatmaps, key).is_file()}
    for pair in index.pairs:
        if pair.key in done:
            rows.append(done[pair.key])
            if on_pair is not None:
                on_pair(done[pair.key]["error"], False)
    todo = [pair for pair in index.pairs if pair.key not in done]
    colours = heatmap_colours(index, space) if options.heatmaps is not None and checkpoints is not None else None
    for item, values in _audited_pairs(todo, checkpoints, options, space):
        rows.append(pair_row(item, values, space, options, colours))
        if journal is not None:
            append_json_line(journal, {**rows[-1], "resume_key": keys[item.pair.key]})
        if on_pair is not None:
            on_pair(rows[-1]["error"], True)
    score_rows(rows, space)
    few = too_few_labels(rows)
    for row in rows:
        row["few_labels"] = few
    rank_common_unlabelled_last(rows)
    if colours is not None and any(has_heatmap(row) for row in rows):
        write_heatmap_legend(options.heatmaps, space, colours, rows)
    return sorted(rows, key=rank_key)


def journal_for(json_file: Path | None, csv_file: Path | None) -> Path | None:
    """Where an audit keeps its finished pairs: a hidden file beside its --json file (else its
    --csv file); None without either, or where that is a special file such as /dev/stdout, since
    nothing of such a run outlives it."""
    target = json_file if json_file is not None else csv_file
    if target is None or is_special_file(target):  # through a link too: is_file() follows it
        return None
    return target.with_name(f".{target.name}{JOURNAL_SUFFIX}")


def audit_settings(checkpoints, options: AuditOptions, space: LabelSpace) -> str:
    """What a pair's row depends on besides its files: the models' contents and the options that
    change a repair (`complete.run_settings`), and whether heatmaps are drawn; without models, the
    label space the data gave (a classes.txt added since changes what counts as background)."""
    heatmaps = f"|heatmaps={options.heatmaps}" if options.heatmaps is not None else ""
    if checkpoints is None:
        return f"statistics only|{json.dumps(space.to_dict(), sort_keys=True)}{heatmaps}{'|keep-void' if options.keep_void else ''}"
    return run_settings(checkpoints, options.repair_options()) + heatmaps


def read_journal(journal: Path, keys: dict[str, str]) -> dict[str, dict]:
    """Rows an earlier run finished, by label key: those whose pair is still in the dataset with the
    same files and settings (`keys`: each pair's current resume key). A line cut short by a kill
    is skipped, and that pair measured again."""
    done: dict[str, dict] = {}
    fields = set(new_row("", None))  # a journal of an older version lacks some: measured again
    for row in read_json_lines(journal):
        if keys.get(row.get("label")) == row.get("resume_key") and fields <= set(row):
            done[row["label"]] = {key: value for key, value in row.items() if key != "resume_key"}
    return done


def rank_key(row: dict) -> tuple:
    """Worst first: file defects (unreadable or unpaired files before labels that are only all
    background or void, which may be a dataset's empty slices), then by evidence (which keeps
    ordering where scores round to 1); the images of a dataset's unannotated frames
    (`rank_common_unlabelled_last`) last of all."""
    return (bool(row.get("unannotated")), not row["defect"], bool(row["defect"] and row.get("empty")), -(row["evidence"] or 0.0),
            row["label"])


def common_unlabelled(rows: list[dict]) -> tuple[int, list[dict]]:
    """(how many images the rows concern, the rows of images without a label where those are common:
    at least EMPTY_COMMON_COUNT and UNLABELLED_COMMON_SHARE of the images; else none)."""
    unlabelled = [row for row in rows if row.get("unlabelled")]
    images = sum(1 for row in rows if not row.get("unpaired") or row.get("unlabelled"))
    return images, unlabelled if len(unlabelled) >= max(EMPTY_COMMON_COUNT, UNLABELLED_COMMON_SHARE * images) else []


def rank_common_unlabelled_last(rows: list[dict]) -> None:
    """Where images without a label are common (`common_unlabelled`), they are frames nobody annotated
    (a video tool exports labels of every Nth frame; `complete` leaves them alone), not broken
    labels: ranked first at score 1, a video's unlabelled frames filled the table and buried the
    labels that are broken. They are then listed last at score 0, saying so. Rare ones stay file
    defects: a label lost among hundreds."""
    images, unlabelled = common_unlabelled(rows)
    for row in unlabelled:
        row.update(score=0.0, unannotated=True,
                   reasons=[f"{row['reasons'][0]}, as are {len(unlabelled)} of the {images} images: left unannotated, listed last"])


def unlabelled_note(rows: list[dict]) -> str | None:
    """What the images listed last at score 0 are (`rank_common_unlabelled_last`), where there are any."""
    images, unlabelled = common_unlabelled(rows)
    if not unlabelled:
        return None
    return (f"{len(unlabelled)} of the {images} images have no label (frames left unannotated, as a video annotation tool "
            "exports every Nth frame?): they are listed last, at score 0, and complete leaves them alone")


def _audited_pairs(pairs: list, checkpoints, options: AuditOptions, space: LabelSpace):
    """(loaded pair, its labels as `complete` would repair them) for each of `pairs`; without
    checkpoints, the labels as they are."""
    if checkpoints is None:
        for pair in pairs:
            item = Loaded(pair, new_entry(pair))
            try:
                item.label = read_pair(pair, space, with_kept=True, keep_void=options.keep_void)[1]
            except Exception as exc:
                item.entry["error"] = pair_error(str(pair.label), exc)
            yield item, None
        return
    completer = Completer(checkpoints, options.repair_options(), measure=far_lookalikes)
    loader = torch.utils.data.DataLoader(
        PairLoader(pairs, checkpoints, options.threshold, options.native_scale, options.keep_void), batch_size=options.batch_size,
        collate_fn=_as_list
    )
    with torch.inference_mode():
        for batch in loader:
            yield from completer.repair_batch(batch)


def label_space_of_data(index: DatasetIndex) -> LabelSpace:
    """The label space the dataset's own files say (classes.txt, a layout's class list, else the
    values its labels hold, void 255): what `audit` uses when no model fits the labels. Labels
    with no class value at all (unreadable, or all void) are defects whatever the space: one
    class then stands in."""
    scan = scan_labels(index.pairs)
    largest = scan.max_value(DEFAULT_VOID_ID)
    return build_label_space(index.root, scanned_max_value=0 if largest is None else largest, palette=scan.palette,
                             layout_names=index.known_class_names, splits=index.split_folders)


def defect_row(problem: str, root: Path, failed: bool) -> dict:
    """A file discovery could not pair: 'path: no label with the same name' and the like,
    keyed like a pair by its path relative to the dataset root, naming the image it concerns
    where discovery knows one (`data.Problem`)."""
    path, _, reason = problem.partition(": ")
    image = getattr(problem, "image", None)
    row = new_row(relative_key(path, root), None if image is None else absolute_text(image))
    row.update(score=1.0, defect=True, reasons=[reason or problem], error=problem if failed else None, unpaired=True,
               unlabelled=not failed)  # not failed: an image without a label (`index.unlabelled`)
    return row


def pair_row(item: Loaded, values, space: LabelSpace, options: AuditOptions, colours: np.ndarray | None = None) -> dict:
    row = new_row(item.pair.key, absolute_text(item.pair.image))  # opens from any folder, as a script reads the report
    far_map = item.entry.pop("far_lookalike_classes", None)  # not for the journal: for the heatmap
    problems = file_defects(item, space)
    if problems:
        row.update(score=1.0, defect=True, reasons=problems, error=item.entry["error"], empty=problems == [EMPTY_LABEL])
        if item.entry["error"] is not None:  # a file that could not be used: nothing measured
            return row
    original = item.label.values  # also a label all background or void: complete fills it where it can
    missing = missing_pixels(original, space.background_id, space.void_id)
    if item.label.kept is not None:  # annotated, though void (Cityscapes' ego vehicle): not missing
        missing &= ~item.label.kept
    row.update(
        pixels=int(original.size),
        missing_share=round(float(missing.mean()), 5),
        classes=[int(c) for c in np.unique(original) if c < space.num_classes],
    )
    if values is None:  # no model: nothing measured, so no suspect count (None, not 0)
        row.update(suspect_pixels=None)
        return row
    suspect = values != original
    far = item.entry.get("far_lookalikes", 0)  # absent: the routing left the pair as it is
    annotated = int((~missing).sum())  # a class other than background (no value outside the space gets here)
    row.update(suspect_pixels=int(suspect.sum()), suspect_share=round(float(suspect.mean()), 5),
               separate_share=round(float(separate_suspects(original, values).mean()), 5),
               far_share=round(far / (far + annotated + 1), 5), far_pixels=int(far))
    if far_map is not None and far_map.shape != original.shape:  # measured at the models' scale (read shrunk)
        far_map = cv2.resize(far_map, original.shape[::-1], interpolation=cv2.INTER_NEAREST)
    far_seen = far_map is not None and bool((far_map != NOT_FAR).any())
    if options.heatmaps is not None and has_heatmap(row):  # the rule the count and a rerun's clean-up go by
        write_heatmap(options.heatmaps, item, values, colours, far_map if far_seen else None)
    return row


def separate_suspects(original: np.ndarray, repaired: np.ndarray) -> np.ndarray:
    """The suspect pixels (changed by the repair) in regions of one new class that touch no pixel
    the label already gives that class, 8-connected: where the model sees an object the annotator
    missed altogether, not an annotated one it would draw wider or finish. On labels with
    objects erased, counting these beside all suspect pixels put more of the broken ones first
    (`benchmarks/audit_ranking.py`, README "Auditing a dataset")."""
    separate = np.zeros(original.shape, bool)
    suspect = repaired != original
    for cls in np.unique(repaired[suspect]):
        _, regions = cv2.connectedComponents((suspect & (repaired == cls)).astype(np.uint8), connectivity=8)
        beside_class = cv2.dilate((original == cls).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        touching = np.unique(regions[beside_class])
        separate |= (regions > 0) & ~np.isin(regions, touching[touching > 0])
    return separate


def far_lookalikes(item: Prepared, chosen: torch.Tensor, info: CheckpointInfo) -> dict:
    """{"far_lookalikes": count} for one repaired pair (`Completer.measure`): its fillable
    pixels (background or void in the patches the model rebuilt) where the model gives some
    non-background class c probability FAR_CONFIDENCE or more (`chosen`: its
    `class_probabilities`), over FAR_PIXELS from every pixel the label gives c.

    Why: a missed defect in a hard image is often seen, but not surely enough for the repair to
    change it (0.9 by default), while the pixels the model is unsure about beside annotated
    regions are mostly where it would draw them wider. Concrete val, half the defects of 20% of
    the labels erased (`benchmarks/audit_ranking.py`, seeds 0-4): precision at k 0.473 on average
    without this evidence, 0.556 with it (0.5 and 10 px; 0.7 and 5-20 px gave 0.51-0.57); CamVid
    val and the patch breakages unchanged at 1.000."""
    space, original = info.label_space, item.original
    fillable = item.fillable_pixels(info.model.patch_size, space).numpy()
    where = np.full(original.shape, NOT_FAR, np.uint8)  # each far look-alike's class, for --heatmaps
    for c in range(space.num_classes):
        if c == space.background_id:
            continue
        seen = fillable & (chosen[c].numpy() >= FAR_CONFIDENCE)
        if not seen.any():
            continue
        elsewhere = (original != c).astype(np.uint8)
        if not elsewhere.all():  # where the label has no c at all, every such pixel is far from it
            seen &= cv2.distanceTransform(elsewhere, cv2.DIST_L2, 3) > FAR_PIXELS
        where[seen] = c
    return {"far_lookalikes": int((where != NOT_FAR).sum()), "far_lookalike_classes": where}


def heatmap_colours(index: DatasetIndex, space: LabelSpace) -> np.ndarray:
    """One colour table for every heatmap of an audit, the one its legend shows: the palette most
    of the labels carry (else the label space's). Each label drawn in its own palette gave grey
    labels VOC colours beside palette labels, and no legend could hold for both."""
    from lmae_repair.families import dataset_evidence

    return colour_table(space, dataset_evidence(index)[2])


def write_heatmap_legend(folder: Path, space: LabelSpace, colours: np.ndarray, rows: list[dict]) -> None:
    """`HEATMAP_LEGEND` in the heatmaps folder: each class's colour and name, and what full and
    half strength mean, so that a heatmap can be read without the README. Not written where a
    label's own heatmap would take that name."""
    path = folder / HEATMAP_LEGEND
    if any(heatmap_path(folder, row["label"]) == path for row in rows):
        return
    from PIL import ImageDraw

    lines = ["Heatmap colours (the image is dimmed; coloured pixels are where the model sees what the label lacks):",
             "full colour: the class the model would fill in (suspect pixels)",
             "white outline: around suspect pixels whose colour hardly shows over the dimmed image (a class drawn black)",
             "half strength: a class the model finds likely, far from any annotation of it (far look-alikes)"]
    names = list(enumerate(space.names))
    swatch, line = 14, 20
    picture = Image.new("RGB", (760, line * (len(lines) + len(names)) + 12), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    def text(xy: tuple[int, int], words: str) -> None:
        try:
            draw.text(xy, words, fill=(0, 0, 0))
        except UnicodeError:  # Pillow without FreeType draws Latin-1 only: a class named 道路 must not fail the audit
            draw.text(xy, words.encode("latin-1", "replace").decode("latin-1"), fill=(0, 0, 0))

    for i, words in enumerate(lines):
        text((8, 6 + i * line), words)
    for i, (value, name) in enumerate(names):
        y = 6 + (len(lines) + i) * line
        draw.rectangle((8, y, 8 + swatch, y + swatch), fill=tuple(int(c) for c in colours[value]), outline=(150, 150, 150))
        text((8 + swatch + 8, y + 1), f"{value}: {name}")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def write_heatmap(folder: Path, item: Loaded, repaired: np.ndarray, colours: np.ndarray, far_map: np.ndarray | None = None) -> None:
    """The image dimmed, with the suspect pixels in the colour (`heatmap_colours`) of the class the
    model sees there, and the far look-alikes (`far_lookalikes`, where the model is less sure) in
    that colour at half strength over the image. Suspect pixels whose colour hardly shows over
    the dimmed image (a class drawn black) are outlined in white, as on the HTML report."""
    image = read_image(item.pair.image)
    overlay = pair_panels(image, item.label.values, repaired, colours)[3]
    suspect = repaired != item.label.values
    if far_map is not None:
        far = (far_map != NOT_FAR) & ~suspect
        overlay[far] = (image[far] * 0.35 + colours[far_map[far]] * 0.5).clip(0, 255).astype(np.uint8)
    overlay = outline_hidden(overlay, overlay, image, suspect)  # far look-alikes are never suspect: their colours stay
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="PNG")
    atomic_write(heatmap_path(folder, item.pair.key), lambda f: f.write(buffer.getvalue()))


def has_heatmap(row: dict) -> bool:
    """Whether --heatmaps pictures this row: the model sees something it lacks (suspect pixels or
    far look-alikes). The far look-alikes by their count where the row has it: a negative's
    far_share is computed again once the dataset is scored (`score_empty_labels_as_data`), against
    the median label's area, and a few pixels of a large image round to 0 there; judged by that,
    its heatmap, drawn while it was measured, was deleted again as stale by the same run."""
    far = row.get("far_pixels")
    return bool(row["suspect_pixels"]) or bool(row["far_share"] if far is None else far)


def heatmap_path(folder: Path, key: str) -> Path:
    return (folder / key).with_suffix(".png")


def remove_stale_heatmaps(folder: Path, rows: list[dict]) -> int:
    """Delete the heatmap an earlier run drew for a row of this audit that has none now (its
    label fixed since, now unreadable, or without its image), so that the folder pictures what
    this report says, not what the model saw in a label that is gone; the number removed. Only
    this audit's rows' own heatmap paths are touched (pictures of other pairs, such as another
    split audited into the same folder, stay), and never a path outside the folder (a file
    outside the dataset root is keyed by its absolute path)."""
    removed = 0
    for row in rows:
        key = Path(row["label"])
        if has_heatmap(row) or key.is_absolute() or ".." in key.parts:
            continue
        path = heatmap_path(folder, row["label"])
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


PUBLIC_FIELDS = ("label", "image", "score", "evidence", "reasons", "suspect_pixels", "pixels", "missing_share", "suspect_share",
                 "separate_share", "far_share", "few_labels")


def public(row: dict) -> dict:
    return {key: row[key] for key in PUBLIC_FIELDS}


def write_json(path: Path, rows: list[dict]) -> None:
    text = json.dumps([public(row) for row in rows], indent=2)
    write_named_file(path, lambda f: f.write(text.encode()))


def csv_value(value) -> str | float | int:
    """A value as the CSV writes it: None empty, a flag true/false as in the JSON (not Python's True)."""
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else value


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(PUBLIC_FIELDS)
    for row in rows:
        writer.writerow([" | ".join(row[k]) if k == "reasons" else csv_value(row[k]) for k in PUBLIC_FIELDS])
    # a file name that is not UTF-8 is written back as the bytes it has on disk, so a script can open it
    write_named_file(path, lambda f: f.write(buffer.getvalue().encode("utf-8", errors="surrogateescape")))
