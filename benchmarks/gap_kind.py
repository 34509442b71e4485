"""How well does the shape of a label's gaps tell missed objects from holes?

Run by hand; prints figures. For every pair of DATA: `repair.gap_edge_contrast` (the image's
gradient along the border of the label's gaps, over its mean) of the label as given, and of the
label after each `evaluate` damage (seeded as `evaluate` seeds it). Routing sends a label to a
family's objects checkpoint at `repair.EDGE_FOLLOWING` and above.

    python benchmarks/gap_kind.py ../shared/data/camvid/val --models camvid
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lmae_repair.data import discover, read_pair
from lmae_repair.evaluate import EvaluateOptions, degrade
from lmae_repair.families import resolve_models
from lmae_repair.repair import EDGE_FOLLOWING, gap_edge_contrast

DAMAGES = {
    "as given": None,
    "objects, half": EvaluateOptions(strategy="objects", mask_ratio=0.5),
    "random patches 0.25": EvaluateOptions(mask_ratio=0.25),
    "random patches 0.5": EvaluateOptions(mask_ratio=0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--split")
    parser.add_argument("--models", action="append")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    index = discover(args.data, args.split)
    _, checkpoints = resolve_models(args.models, index)
    space = checkpoints[0][1].label_space
    contrasts: dict[str, list[float]] = {name: [] for name in DAMAGES}
    for i, pair in enumerate(index.pairs):
        image, label = read_pair(pair, space)
        for name, options in DAMAGES.items():
            values = label.values if options is None else degrade(label.values, space, options, np.random.default_rng([args.seed, i]))[0]
            contrast = gap_edge_contrast(image, values, space)
            if contrast is not None:
                contrasts[name].append(contrast)
    print(f"{len(index.pairs)} pairs of {args.data}; routed as objects at >= {EDGE_FOLLOWING}")
    print(f"{'label':<22}{'p5':>7}{'p25':>7}{'p50':>7}{'p75':>7}{'p95':>7}{'as objects':>12}")
    for name, values in contrasts.items():
        values = np.array(values)
        p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
        share = float((values >= EDGE_FOLLOWING).mean())
        print(f"{name:<22}{p5:7.2f}{p25:7.2f}{p50:7.2f}{p75:7.2f}{p95:7.2f}{share:12.1%}")


if __name__ == "__main__":
    main()
