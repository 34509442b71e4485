"""Draw the README's before/after picture from the output of `lmae-repair complete`.

    python docs/before_after.py runs/example-completed docs/before-after-camvid.png [--pairs 2]

One row per pair (the most changed first): image | label as given | label completed | changed
pixels in their new colour over the dimmed image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from lmae_repair.checkpoints import read_info
from lmae_repair.data import read_image, read_label
from lmae_repair.report import colour_table, pair_panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("completed", type=Path, help="OUT folder of lmae-repair complete")
    parser.add_argument("picture", type=Path, help="PNG to write")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--width", type=int, default=240, help="width of each panel in pixels")
    args = parser.parse_args()

    report_file = args.completed / "lmae-report.json"
    if not report_file.is_file():
        parser.exit(2, f"error: {report_file}: no such file; give the --out folder of a finished lmae-repair complete (not --dry-run)\n")
    report = json.loads(report_file.read_text())
    entries = sorted((e for e in report["pairs"] if e["output"]), key=lambda e: -e["pixels_changed"])[: args.pairs]
    if not entries:
        parser.exit(2, f"error: {report_file}: no pair was written, so there is nothing to draw\n")
    rows = []
    for entry in entries:
        # a pair left as it is (no background-heavy patch) names no checkpoint: the run's label
        # space then, which every checkpoint of its family shares (it had been a TypeError)
        space = read_info(Path(entry["checkpoint"] or report["checkpoints"][0]["path"])).label_space
        original, repaired = read_label(Path(entry["input_label"])), read_label(Path(entry["output"]))
        colours = colour_table(space, original.palette)
        panels = pair_panels(read_image(Path(entry["image"])), original.values, repaired.values, colours)
        height = round(panels[0].shape[0] * args.width / panels[0].shape[1])
        resized = [np.asarray(Image.fromarray(p).resize((args.width, height), Image.NEAREST)) for p in panels]
        gap = np.full((height, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for panel in resized for x in (panel, gap)][:-1], axis=1))
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([x for row in rows for x in (row, gap)][:-1], axis=0)).save(args.picture, optimize=True)
    print(f"{args.picture}: {', '.join(e['label'] for e in entries)}")


if __name__ == "__main__":
    main()
