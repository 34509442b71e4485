"""Would the image branch alone rank labels with missed objects first? (issue 5, an experiment)

A model with an image branch (`--image-branch`) has a small U-Net that segments the image without
reading the label (its auxiliary head). Where it is confident of an annotated class on pixels the
label leaves as background or void, an object may be missing. This script breaks a known share of
the labels as `audit_ranking.py` does (objects damage by default) and prints the precision at k
of ranking the pairs by a few such statistics, and how the branch sees the erased pixels.

    python benchmarks/audit_by_image_branch.py ../shared/data/concrete-voc --split val --checkpoint models/concrete/mask-0.75.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from audit_ranking import build_copy
from lmae_repair.checkpoints import load_checkpoint
from lmae_repair.data import discover, read_pair
from lmae_repair.masking import missing_pixels
from lmae_repair.model import ImageBranch


def branch_probabilities(model, image: np.ndarray) -> np.ndarray:
    """(N, H, W) class probabilities of the image branch's own head, for an (H, W, 3) uint8 image."""
    height, width = image.shape[:2]
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    multiple = ImageBranch.MULTIPLE
    tensor = torch.nn.functional.pad(tensor, (0, (-width) % multiple, 0, (-height) % multiple), mode="replicate")
    with torch.inference_mode():
        logits = model.branch.head(model.branch((tensor - model.mean) / model.std))
    return logits.softmax(1)[0, :, :height, :width].numpy()


def statistics(annotated_prob: np.ndarray, missing: np.ndarray) -> dict[str, float]:
    """Per-pair evidence of a missed object: confident pixels on missing ones, the largest
    confident blob, and confident pixels more than 3 pixels from any annotation."""
    confident = (annotated_prob > 0.9) & missing
    count, _, stats, _ = cv2.connectedComponentsWithStats(confident.astype(np.uint8), connectivity=8)
    near = cv2.dilate((~missing).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    return {
        "confident pixels": float(confident.sum()),
        "largest confident blob": float(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0.0,
        "confident pixels away from annotation": float((confident & ~near).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--split")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with an image branch")
    parser.add_argument("--kind", default="objects", choices=["objects", "patches"])
    parser.add_argument("--share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, info = load_checkpoint(args.checkpoint)
    if model.branch is None:
        raise SystemExit(f"{args.checkpoint}: this checkpoint has no image branch")
    space = info.label_space
    work = Path(tempfile.mkdtemp(prefix="lmae-audit-branch-"))
    originals = {pair.label.stem: pair for pair in discover(args.data, args.split).pairs}
    broken = build_copy(list(originals.values()), space, args.kind, args.share, args.seed, work)
    keys, rows, on_erased, on_annotated = [], [], [], []
    for pair in discover(work).pairs:
        image, label = read_pair(pair, space)
        probs = branch_probabilities(model, np.asarray(image))
        missing = missing_pixels(label.values, space.background_id, space.void_id)
        annotated_prob = 1 - probs[space.background_id] if space.background_id is not None else probs.max(0)
        key = f"labels/{pair.label.stem}.png"
        if key in broken:  # how the branch sees the erased pixels, against the annotated ones of intact labels
            erased = read_pair(originals[pair.label.stem], space)[1].values != label.values
            on_erased.append(annotated_prob[erased].mean())
        elif (~missing).any():
            on_annotated.append(annotated_prob[~missing].mean())
        keys.append(key)
        rows.append(statistics(annotated_prob, missing))
    k = len(broken)
    print(f"branch probability of an annotated class, median over pairs of the mean: {np.median(on_erased):.2f} on "
          f"erased pixels, {np.median(on_annotated):.2f} on annotated pixels of intact labels")
    print(f"{len(keys)} pairs, {k} broken ({args.kind}); precision at k of ranking by the image branch of {args.checkpoint}:")
    for name in rows[0]:
        order = np.argsort(-np.array([row[name] for row in rows]), kind="stable")
        hits = sum(keys[j] in broken for j in order[:k])
        print(f"  {name:<40} {hits / k:.3f}")
    order = np.argsort(-np.array([row["confident pixels"] for row in rows]), kind="stable")
    top = min(40, len(keys))
    print(f"intact among the {top} pairs with the most confident pixels on missing ones: {sum(keys[j] not in broken for j in order[:top])}")


if __name__ == "__main__":
    main()
