"""`lmae-repair complete`: repair every pair of a dataset and write a completed copy of it.

OUT mirrors the input: each label is written under its path relative to the dataset root (VOC:
`OUT/SegmentationClass/x.png`; paired: `OUT/labels/x.png`; Cityscapes: `OUT/gtFine/...`), as a PNG
in the input's mode and palette; images are hard-linked (copied across file systems) beside them
unless `labels_only`. Input files are never written. Each finished pair is appended to
`OUT/.lmae-progress.jsonl` after its label is in place (written atomically), so a rerun of the same
command skips the finished pairs; `OUT/lmae-report.json` is rebuilt from that log at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmae_repair.checkpoints import CheckpointInfo, load_checkpoint, read_info
from lmae_repair.data import DatasetIndex, LabelFile, Pair, atomic_write, read_pair, write_label
from lmae_repair.errors import LmaeError
from lmae_repair.repair import DEFAULT_THRESHOLD, choose_checkpoint, label_heavy_share, repair_label

PROGRESS_LOG = ".lmae-progress.jsonl"
REPORT = "lmae-report.json"


def find_checkpoints(specs: list[Path]) -> list[tuple[Path, CheckpointInfo]]:
    """Checkpoint files named directly or found in folders (a run folder's best.safetensors is
    preferred over its last.safetensors); all must share one label space and patch size."""
    files: list[Path] = []
    for spec in specs:
        if spec.is_file():
            files.append(spec)
        elif spec.is_dir():
            found = sorted(spec.rglob("*.safetensors"))
            files += [f for f in found if not (f.name == "last.safetensors" and (f.parent / "best.safetensors").exists())]
        else:
            raise LmaeError(f"{spec}: no such checkpoint file or folder")
    if not files:
        raise LmaeError(f"{', '.join(map(str, specs))}: no .safetensors checkpoint found")
    checkpoints = [(f, read_info(f)) for f in files]
    first = checkpoints[0][1]
    for path, info in checkpoints[1:]:
        if not info.label_space.same_classes(first.label_space) or info.model.patch_size != first.model.patch_size:
            raise LmaeError(f"{path}: label space or patch size differs from {checkpoints[0][0]}; give one family at a time")
    return sorted(checkpoints, key=lambda c: c[1].mask_ratio)


def check_output_location(root: Path, out: Path) -> None:
    root_r, out_r = root.resolve(), out.resolve()
    if out_r == root_r or root_r in out_r.parents:
        raise LmaeError(f"{out}: the output must not be the dataset folder or inside it ({root})")


def mirror_image(pair: Pair, root: Path, out: Path) -> None:
    """Hard-link (or copy) the pair's image to the same relative place under OUT."""
    try:
        target = out / pair.image.relative_to(root)
    except ValueError:
        target = out / "images" / pair.image.name
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(pair.image, target)
    except OSError:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(pair.image, tmp)
        os.replace(tmp, target)


@dataclass
class CompleteOptions:
    out: Path
    threshold: float = DEFAULT_THRESHOLD
    device: str = "cpu"
    dry_run: bool = False
    labels_only: bool = False
    overwrite_labeled: bool = False


@dataclass
class Completer:
    """Repairs pairs one at a time with the routed checkpoint (models load on first use)."""

    checkpoints: list[tuple[Path, CheckpointInfo]]
    options: CompleteOptions
    _models: dict = field(default_factory=dict)

    def model(self, index: int):
        if index not in self._models:
            self._models[index] = load_checkpoint(self.checkpoints[index][0], self.options.device)[0]
        return self._models[index]

    def process(self, pair: Pair, index: DatasetIndex) -> dict:
        """Repair one pair and write its outputs; returns its report entry (errors included)."""
        entry = {"label": pair.key, "image": str(pair.image), "output": None, "checkpoint": None,
                 "mask_ratio": None, "patches_masked": 0, "pixels_changed": 0, "mean_confidence": None, "error": None}
        try:
            image, label = read_pair(pair)
            share = label_heavy_share(label.values, self.checkpoints[0][1], self.options.threshold)
            entry["background_heavy_share"] = round(share, 4)
            choice = choose_checkpoint(share, [info.mask_ratio for _, info in self.checkpoints])
            values = label.values
            if choice is not None:
                path, info = self.checkpoints[choice]
                result = repair_label(self.model(choice), info, image, label.values, self.options.overwrite_labeled, self.options.device)
                values = result.values
                entry.update(checkpoint=str(path), mask_ratio=info.mask_ratio, patches_masked=result.patches_masked,
                             pixels_changed=result.pixels_changed,
                             mean_confidence=None if result.pixels_changed == 0 else round(result.mean_confidence, 4))
            if not self.options.dry_run:
                target = (self.options.out / pair.key).with_suffix(".png")
                write_label(target, LabelFile(values, label.mode, label.palette))
                if not self.options.labels_only:
                    mirror_image(pair, index.root, self.options.out)
                entry["output"] = str(target)
        except LmaeError as exc:
            entry["error"] = str(exc)
        return entry


def load_progress(out: Path) -> dict[str, dict]:
    """Entries of pairs finished by an earlier run into the same OUT, by label key."""
    log = out / PROGRESS_LOG
    done: dict[str, dict] = {}
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: that pair is simply redone
            if entry.get("error") is None and entry.get("output") and Path(entry["output"]).is_file():
                done[entry["label"]] = entry
    return done


def append_progress(out: Path, entry: dict) -> None:
    with open(out / PROGRESS_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def write_report(out: Path, index: DatasetIndex, entries: list[dict], seconds: float, checkpoints) -> dict:
    totals = {
        "pairs": len(entries),
        "repaired": sum(1 for e in entries if e["pixels_changed"] > 0),
        "failed": sum(1 for e in entries if e["error"]),
        "pixels_changed": sum(e["pixels_changed"] for e in entries),
        "seconds": round(seconds, 2),
    }
    report = {
        "data": str(index.root),
        "layout": index.layout,
        "checkpoints": [{"path": str(p), "mask_ratio": info.mask_ratio} for p, info in checkpoints],
        "totals": totals,
        "pairs": entries,
    }
    atomic_write(out / REPORT, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


def complete_dataset(index: DatasetIndex, checkpoints, options: CompleteOptions, on_pair=None) -> dict:
    """Repair every pair of `index` into options.out; returns the report."""
    check_output_location(index.root, options.out)
    started = time.perf_counter()
    completer = Completer(checkpoints, options)
    if not options.dry_run:
        options.out.mkdir(parents=True, exist_ok=True)
    done = {} if options.dry_run else load_progress(options.out)
    entries = []
    for pair in index.pairs:
        entry = done.get(pair.key)
        if entry is None:
            entry = completer.process(pair, index)
            if not options.dry_run:
                append_progress(options.out, entry)
        entries.append(entry)
        if on_pair is not None:
            on_pair(entry)
    seconds = time.perf_counter() - started
    if options.dry_run:
        return {"totals": {"pairs": len(entries)}, "pairs": entries}
    return write_report(options.out, index, entries, seconds, checkpoints)
