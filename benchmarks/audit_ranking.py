"""Does `lmae-repair audit` put the broken labels first?

Run by hand; prints figures. Protocol (issue 5): copy a dataset's pairs into a paired layout, break
a known 20% of the labels (seeded, among the labels the breakage can change) in one way, run the
real audit on the copy and report the precision at k = the number broken (the share of the top k
that are broken ones; with k equal to the number broken it is also the recall: the share of the
broken labels in audit's top 20%).

Breakages: `patches` (random 16-px patches set to void at ratio 0.5 for CamVid-style data, to the
missing value otherwise: the `evaluate` patch damage) and `objects` (half of the objects up to 5%
of the image set to the missing value: the `evaluate` objects damage).

    python benchmarks/audit_ranking.py ../shared/data/camvid/val --models camvid
    python benchmarks/audit_ranking.py ../shared/data/concrete-voc --split val --models concrete
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lmae_repair.audit import AuditOptions, audit_dataset
from lmae_repair.data import discover, read_label
from lmae_repair.defaults import DEFAULT_MIN_CONFIDENCE
from lmae_repair.evaluate import EvaluateOptions, degrade
from lmae_repair.families import resolve_models
from lmae_repair.labelspace import find_classes_file
from lmae_repair.inference import resolve_device


def build_copy(pairs, space, kind: str, share: float, seed: int, work: Path) -> set[str]:
    """Paired copy under `work` with `share` of the labels broken; returns their keys.

    The broken ones are drawn (seeded) among the labels the breakage can change: a concrete
    label whose only defect covers more than 5% of the image has no object to erase, and
    drawing it would break fewer than `share` of the labels."""
    options = EvaluateOptions(strategy="objects" if kind == "objects" else "random", mask_ratio=0.5)
    damaged = {}
    for i, pair in enumerate(pairs):
        values, erased = degrade(read_label(pair.label).values, space, options, np.random.default_rng([seed, i]))
        if erased.any():
            damaged[i] = values
    wanted = int(round(share * len(pairs)))
    if len(damaged) < wanted:
        print(f"{kind}: only {len(damaged)} of {len(pairs)} labels can be broken this way; all of them are")
    rng = np.random.default_rng(seed)
    broken = set(rng.choice(sorted(damaged), min(wanted, len(damaged)), replace=False).tolist())
    (work / "images").mkdir(parents=True, exist_ok=True)
    (work / "labels").mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(pairs):
        label = read_label(pair.label)
        shutil.copy(pair.image, work / "images" / f"{pair.label.stem}{pair.image.suffix}")
        out = Image.fromarray(damaged[i] if i in broken else label.values)
        if label.palette:
            out.putpalette(label.palette)
        out.save(work / "labels" / f"{pair.label.stem}.png")
    return {f"labels/{pairs[i].label.stem}.png" for i in broken}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--split")
    parser.add_argument("--models", action="append")
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kinds", nargs="+", default=["patches", "objects"])
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE)
    args = parser.parse_args()

    index = discover(args.data, args.split)
    _, checkpoints = resolve_models(args.models, index)
    space = checkpoints[0][1].label_space
    classes = find_classes_file(index.root)
    print(f"{len(index.pairs)} pairs of {args.data}; {args.share:.0%} broken; models {[str(p) for p, _ in checkpoints]}")
    print(f"{'breakage':<10}{'broken':>8}{'precision@k':>13}{'seconds':>9}")
    for kind in args.kinds:
        work = Path(tempfile.mkdtemp(prefix=f"lmae-audit-{kind}-"))
        broken = build_copy(index.pairs, space, kind, args.share, args.seed, work)
        if classes is not None:
            shutil.copy(classes, work / "classes.txt")
        started = time.perf_counter()
        rows = audit_dataset(discover(work), checkpoints, AuditOptions(device=str(resolve_device(args.device)), min_confidence=args.min_confidence))
        seconds = time.perf_counter() - started
        top = [row["label"] for row in rows[: len(broken)]]
        precision = sum(key in broken for key in top) / max(len(broken), 1)
        print(f"{kind:<10}{len(broken):>8}{precision:>13.3f}{seconds:>9.1f}")
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
