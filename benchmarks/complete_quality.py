"""How much of a deliberately damaged dataset does `lmae-repair complete` restore?

Run by hand; prints figures. Protocol (issue 3): copy a paired dataset, erase random 16-pixel
patches of every label to void at ratio 0.5 (fixed seed), run the real `lmae-repair complete`
command on the damaged copy, and score its output against the original labels over the erased
pixels only (PA-mIoU, pixel accuracy). The nearest-labelled-pixel fill of the same damaged labels
is scored the same way. Then `complete` runs on the intact labels and the share of pixels it
changed is reported.

    python benchmarks/complete_quality.py ../shared/data/camvid/val --models runs/x [--max-pairs 0]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lmae_repair.data import discover, read_label
from lmae_repair.families import resolve_models
from lmae_repair.metrics import ConfusionMatrix
from lmae_repair.neighbourhood import nearest_fill


def erase_patches(label: np.ndarray, rng: np.random.Generator, patch: int, ratio: float) -> np.ndarray:
    """Boolean (H, W): pixels of randomly chosen patches (floor(L*ratio) of the L patches)."""
    h, w = label.shape
    gh, gw = -(-h // patch), -(-w // patch)
    chosen = np.zeros(gh * gw, bool)
    chosen[rng.choice(gh * gw, int(gh * gw * ratio), replace=False)] = True
    return np.kron(chosen.reshape(gh, gw), np.ones((patch, patch), bool))[:h, :w]


def run_complete(data: Path, out: Path, models: list[str], extra: list[str]) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "lmae_repair", "complete", str(data), "--out", str(out)]
    for spec in models:
        command += ["--models", spec]
    subprocess.run(command + extra, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="paired dataset with complete labels (images/ + labels/)")
    parser.add_argument("--models", action="append", default=None)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pairs", type=int, default=0)
    parser.add_argument("--extra", default="", help="more options for complete, e.g. '--device cuda'")
    args = parser.parse_args()

    index = discover(args.data)
    _, checkpoints = resolve_models(args.models, index)
    space = checkpoints[0][1].label_space
    missing_value = space.void_id  # the protocol erases to void, whatever the label space
    pairs = index.pairs[: args.max_pairs or None]
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lmae-quality-"))
    damaged_root, intact_root = work / "damaged", work / "intact"
    truths, erased_masks = {}, {}
    for pair in pairs:
        label = read_label(pair.label).values
        erased = erase_patches(label, rng, args.patch, args.ratio) & (label != space.void_id)
        damaged = label.copy()
        damaged[erased] = missing_value
        for root, values in ((damaged_root, damaged), (intact_root, label)):
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "labels").mkdir(parents=True, exist_ok=True)
            shutil.copy(pair.image, root / "images" / pair.image.name)
            Image.fromarray(values).save(root / "labels" / f"{pair.label.stem}.png")
        truths[pair.label.stem], erased_masks[pair.label.stem] = label, erased
    if (args.data / "classes.txt").is_file():
        for root in (damaged_root, intact_root):
            shutil.copy(args.data / "classes.txt", root / "classes.txt")

    models = args.models or []
    extra = args.extra.split()
    seconds = run_complete(damaged_root, work / "damaged-out", models, extra)
    run_complete(intact_root, work / "intact-out", models, extra)

    n = space.num_classes
    model_cm, nearest_cm = ConfusionMatrix(n), ConfusionMatrix(n)
    changed = total = 0
    for stem, truth in truths.items():
        erased = erased_masks[stem]
        target = torch.from_numpy(truth[erased].astype(np.int64))
        repaired = read_label(work / "damaged-out" / "labels" / f"{stem}.png").values
        model_cm.update(torch.from_numpy(repaired[erased].astype(np.int64)), target)
        damaged = read_label(damaged_root / "labels" / f"{stem}.png").values
        nearest = nearest_fill(damaged, damaged < n, missing_value)
        nearest_cm.update(torch.from_numpy(nearest[erased].astype(np.int64)), target)
        intact_out = read_label(work / "intact-out" / "labels" / f"{stem}.png").values
        changed += int((intact_out != truth).sum())
        total += truth.size
    print(f"\n{len(truths)} pairs of {args.data}, random {args.patch}-px patches erased at ratio {args.ratio} (seed {args.seed})")
    print(f"{'method':<28}{'PA-mIoU':>9}{'pixel acc':>11}")
    print(f"{'lmae-repair complete':<28}{model_cm.miou():>9.3f}{model_cm.pixel_accuracy():>11.3f}")
    print(f"{'nearest labelled pixel':<28}{nearest_cm.miou():>9.3f}{nearest_cm.pixel_accuracy():>11.3f}")
    print(f"intact labels: {changed / total:.3%} of pixels changed")
    print(f"complete on the damaged copy: {seconds:.1f} s ({len(truths) / seconds:.1f} pairs/s incl. start-up)")
    print(f"outputs kept in {work}")


if __name__ == "__main__":
    main()
