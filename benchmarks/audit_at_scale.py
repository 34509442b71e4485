"""Does `lmae-repair audit` keep the broken labels first in a large, mostly clean dataset?

Run by hand; prints figures. Builds N small pairs (random crops of a dataset's pairs, seeded),
damages every fifth label (one class set to the missing value, or a void rectangle of a third of
the crop's side, alternately), runs the real audit on the copy, and reports the precision at
k = the number damaged, beside how many scores round to 1.00. On a large dataset most labels have
no suspect pixel, so a few percent of them already scores 1.00: the ranking must not depend on
the rounded score (seventeenth session: 0.548 ordered by name within ties, 0.832 by evidence).

    python benchmarks/audit_at_scale.py ../shared/data/camvid/val --pairs 3000 --crop 96
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lmae_repair.audit import AuditOptions, audit_dataset
from lmae_repair.data import discover, read_label
from lmae_repair.families import resolve_models
from lmae_repair.inference import resolve_device
from lmae_repair.labelspace import find_classes_file


def build(source: Path, out: Path, count: int, crop: int, seed: int, space) -> set[str]:
    """The copy under `out`; returns the keys of the damaged labels."""
    rng = random.Random(seed)
    pairs = discover(source).pairs
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir(parents=True)
    classes = find_classes_file(source)
    if classes is not None:
        shutil.copy(classes, out / classes.name)
    damaged = set()
    for i in range(count):
        pair = pairs[i % len(pairs)]
        image = Image.open(pair.image).convert("RGB")
        label = read_label(pair.label).values
        x, y = rng.randrange(0, image.width - crop), rng.randrange(0, image.height - crop)
        values = label[y : y + crop, x : x + crop].copy()
        present = [v for v in np.unique(values) if v < space.num_classes and v != space.background_id]
        if i % 5 == 0 and present:
            if i % 10 == 0:
                values[values == rng.choice(present)] = space.missing_id
            else:
                a, b = rng.randrange(0, crop // 2), rng.randrange(0, crop // 2)
                values[b : b + crop // 3, a : a + crop // 3] = space.void_id
            damaged.add(f"labels/p{i:05d}.png")
        image.crop((x, y, x + crop, y + crop)).save(out / "images" / f"p{i:05d}.jpg", quality=92)
        Image.fromarray(values).save(out / "labels" / f"p{i:05d}.png")
    return damaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--models", default=None)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    index = discover(args.data)
    used, checkpoints = resolve_models([args.models] if args.models else None, index)
    space = checkpoints[0][1].label_space
    with tempfile.TemporaryDirectory() as work:
        copy = Path(work) / "copy"
        damaged = build(args.data, copy, args.pairs, args.crop, args.seed, space)
        started = time.perf_counter()
        rows = audit_dataset(discover(copy), checkpoints, AuditOptions(device=str(resolve_device(args.device))))
        seconds = time.perf_counter() - started
    by_name_in_ties = sorted(rows, key=lambda row: (-row["score"], row["label"]))  # the rule before 2026-11-24

    def precision(ranked: list[dict]) -> float:
        return sum(row["label"] in damaged for row in ranked[: len(damaged)]) / len(damaged)

    print(f"{args.pairs} crops of {args.crop}x{args.crop} from {args.data}; models {used}; {len(damaged)} damaged")
    print(f"precision at k={len(damaged)}: {precision(rows):.3f} (ranked by score alone, ties by name: "
          f"{precision(by_name_in_ties):.3f}); scores of 1.00: {sum(row['score'] == 1.0 for row in rows)}; audit {seconds:.0f} s")


if __name__ == "__main__":
    main()
