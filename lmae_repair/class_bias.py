"""Per-class offsets to a checkpoint's log-probabilities, tuned for PA-mIoU on labelled pairs.

Why: the model's most probable class per pixel is not the choice that maximises PA-mIoU, the
mean over classes of the IoU over the filled pixels. A rare class (sky seen through a tree,
a sign) counts as much as a common one, and what a gap holds differs from what the model met
in training: missed objects are things, rarely road. An offset b_c added to log p_c moves the
decision between classes without touching the order of pixels within a class.

Tuning (`tune_checkpoint`, `lmae-repair tune`): damage labelled pairs as `evaluate` does with
the damage the checkpoint serves (random patches at each of its mask ratios; an objects
checkpoint: the objects damage), repair them with the checkpoint alone (no routing), keep the
class probabilities of the erased pixels it may fill, then coordinate ascent over a grid of
offsets, a class at a time, a few sweeps (`tune_offsets`). Pairs the model did not train on
tune best: the training split's probabilities are overconfident. CamVid val, objects damage,
offsets tuned on one half of the pairs and scored on the other: PA-mIoU 0.341 -> 0.410 and
0.379 -> 0.431 (tuned on CamVid train instead: 0.363 -> 0.386 on all of val); random patches at
0.25: 0.819 -> 0.827 and 0.813 -> 0.824.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lmae_repair.checkpoints import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from lmae_repair.continuation import NO_CLASS
from lmae_repair.data import DatasetIndex, read_pair
from lmae_repair.errors import LmaeError
from lmae_repair.metrics import class_ious, mean_iou

OFFSET_GRID = np.linspace(-2.0, 2.0, 21)  # candidate offsets per class (log-probability units)
SWEEPS = 3
CONTINUATION_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # candidate bonuses per direction (continuation.py)
FLOOR = 1e-6  # probabilities below this count as this (log of 0)
TUNING_PIXELS = 1_000_000  # erased pixels the offsets are tuned on: between this and twice it


def apply_class_bias(probs: torch.Tensor, bias: list[float]) -> torch.Tensor:
    """(N, H, W) probabilities reweighted by exp(bias) and renormalised (a no-op for no bias)."""
    if not bias:
        return probs
    return normalised(weigh_classes(probs, bias))


def weigh_classes(probs: torch.Tensor, bias: list[float]) -> torch.Tensor:
    """A fresh, contiguous (N, H, W) copy of `probs` with class c multiplied by exp(bias[c]) (a
    plain copy for no bias), not renormalised: more weights may follow (continuation.py)."""
    if not bias:
        return probs.clone(memory_format=torch.contiguous_format)
    weights = torch.tensor(bias, dtype=probs.dtype, device=probs.device).exp().view(-1, 1, 1)
    return (probs * weights).contiguous()


def normalised(weighted: torch.Tensor) -> torch.Tensor:
    """`weighted` divided, in place, by its sum over classes at each pixel."""
    return weighted.div_(weighted.sum(0, keepdim=True).clamp(min=FLOOR))


def served_damages(info: CheckpointInfo) -> list[tuple[str, float]]:
    """The evaluate damages a checkpoint serves in routing: (strategy, mask ratio)."""
    if info.gap_kind == "objects":
        return [("objects", 0.5)]
    return [("random", ratio) for ratio in info.slot_ratios]


class NothingToTune(LmaeError):
    """The damage erased no pixel a checkpoint could fill (an objects checkpoint on pairs without
    small objects): that checkpoint is left as it is, the others are tuned."""


class ErasedProbabilities:
    """Class probabilities of the erased pixels the checkpoint may fill, with their truth; the
    erased pixels it may not fill (outside its hidden patches) count as missed, per class.

    A uniform random sample of them, at most 2 x TUNING_PIXELS, whatever the dataset's size:
    each pixel is kept at `rate`, halved (and what is held thinned by half) whenever the sample
    outgrows that, so every pixel seen had the same chance and each IoU keeps its expected value."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        self.logs: list[np.ndarray] = []
        self.truths: list[np.ndarray] = []
        self.folds: list[np.ndarray] = []  # the parity of each pixel's pair: two halves of the pairs
        self.agreed: list[np.ndarray] = []  # (P, 2) classes continued across each pixel, down and along
        self.missed = np.zeros((2, num_classes))  # expected count in the sample, per half
        self.rate = 1.0
        self.rng = np.random.default_rng(seed)

    def add(self, probs: torch.Tensor, truth: np.ndarray, erased: np.ndarray, fillable: np.ndarray, pair: int = 0,
            agreed: np.ndarray | None = None) -> None:
        """`agreed`: the (2, H, W) classes continued across each pixel (`continuation.agreements`)."""
        chosen = erased & fillable
        kept = self.rng.random(int(chosen.sum())) < self.rate
        num_classes = self.missed.shape[1]
        self.logs.append(np.log(np.maximum(probs.numpy()[:, chosen].T[kept], FLOOR)).astype(np.float32))
        self.truths.append(truth[chosen][kept].astype(np.int64))
        self.folds.append(np.full(int(kept.sum()), pair % 2, np.int8))
        no_agreement = np.full((int(kept.sum()), 2), NO_CLASS, np.int16)
        self.agreed.append(no_agreement if agreed is None else agreed[:, chosen].T[kept])
        self.missed[pair % 2] += self.rate * np.bincount(truth[erased & ~fillable], minlength=num_classes)[:num_classes]
        while sum(len(t) for t in self.truths) > 2 * TUNING_PIXELS:
            self.rate /= 2
            halves = [self.rng.random(len(t)) < 0.5 for t in self.truths]
            self.logs = [logs[half] for logs, half in zip(self.logs, halves)]
            self.truths = [truths[half] for truths, half in zip(self.truths, halves)]
            self.folds = [folds[half] for folds, half in zip(self.folds, halves)]
            self.agreed = [agreed[half] for agreed, half in zip(self.agreed, halves)]
            self.missed /= 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(log-probabilities (P, N), truths (P,), halves (P,), missed per half and class (2, N),
        classes continued across each pixel (P, 2)) of the sample."""
        if not self.truths:
            empty = np.zeros(0, np.int64)
            return (np.zeros((0, self.missed.shape[1]), np.float32), empty, empty.astype(np.int8), self.missed,
                    np.zeros((0, 2), np.int16))
        return (np.concatenate(self.logs), np.concatenate(self.truths), np.concatenate(self.folds), self.missed,
                np.concatenate(self.agreed))


def pa_miou(logs: np.ndarray, truths: np.ndarray, missed: np.ndarray, bias: np.ndarray) -> float:
    """PA-mIoU of the choice argmax(log p + bias) over the erased pixels (missed ones wrong)."""
    return _miou_of((logs + bias).argmax(1), truths, missed)


def _miou_of(chosen: np.ndarray, truths: np.ndarray, missed: np.ndarray) -> float:
    """PA-mIoU as `evaluate` computes it (`metrics.class_ious`), the missed pixels left unpredicted."""
    num_classes = len(missed)
    confusion = np.bincount(truths * num_classes + chosen, minlength=num_classes**2).reshape(num_classes, num_classes)
    return mean_iou(class_ious(confusion, missed))


def tune_offsets(logs: np.ndarray, truths: np.ndarray, missed: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(offsets, PA-mIoU without, with them): coordinate ascent over OFFSET_GRID, a class at a
    time; an offset moves only where it gains. While class c's offset varies, the best of the
    other classes per pixel is fixed, so each trial is one comparison, not an argmax."""
    bias = np.zeros(logs.shape[1])
    before = best = pa_miou(logs, truths, missed, bias)
    for _ in range(SWEEPS):
        for c in range(len(bias)):
            others = logs + bias
            others[:, c] = -np.inf
            best_other, other_class = others.max(1), others.argmax(1)
            for value in OFFSET_GRID:
                score = _miou_of(np.where(logs[:, c] + value > best_other, c, other_class), truths, missed)
                if score > best + 1e-5:
                    best = score
                    bias = bias.copy()
                    bias[c] = value
    return bias, before, best


def with_continuation(logs: np.ndarray, agreed: np.ndarray, bonus) -> np.ndarray:
    """The log-probabilities with each direction's bonus added to the class continued across each
    pixel (what `continuation.apply_continuation` does to the probabilities, as log p)."""
    if not any(bonus):
        return logs
    nudged = logs.copy()
    for direction, weight in enumerate(bonus):
        rows = np.nonzero(agreed[:, direction] != NO_CLASS)[0]
        nudged[rows, agreed[rows, direction]] += weight
    return nudged


def tune_choice(logs: np.ndarray, agreed: np.ndarray, truths: np.ndarray, missed: np.ndarray, grid=CONTINUATION_GRID):
    """(offsets, continuation bonuses [down, along], PA-mIoU without either, with both): the
    offsets tuned alone, then the bonuses over `grid` with those offsets, then, if a bonus was
    taken, the offsets tuned again on top of it (a bonus moves which class wins)."""
    bias, before, best = tune_offsets(logs, truths, missed)
    bonus = (0.0, 0.0)
    for down in grid:
        for along in grid:
            score = pa_miou(with_continuation(logs, agreed, (down, along)), truths, missed, bias)
            if score > best + 1e-5:
                best, bonus = score, (down, along)
    if any(bonus):
        bias, _, best = tune_offsets(with_continuation(logs, agreed, bonus), truths, missed)
    return bias, list(bonus), before, best


def collect(path: Path, index: DatasetIndex, max_pairs: int = 0, seed: int = 0, device: str = "cpu",
            batch_size: int = 8, on_pair=None, on_error=None) -> tuple[CheckpointInfo, ErasedProbabilities]:
    """Damage each pair as the checkpoint's served damages say and gather its probabilities;
    `on_error(message)` hears of each pair that cannot be read (left out)."""
    from lmae_repair.complete import CompleteOptions, Completer
    from lmae_repair.evaluate import EvaluateOptions, degrade
    from lmae_repair.repair import as_the_model_sees, continuation_agreements, gap_probabilities, predict, prepare

    info = read_info(path)
    completer = Completer([(path, info)], CompleteOptions(Path("."), device=device, batch_size=batch_size))
    model, precision = completer.model(0), completer.precision
    space, p = info.label_space, info.model.patch_size
    gathered = ErasedProbabilities(space.num_classes, seed)
    pairs = index.pairs[: max_pairs or None]
    for strategy, ratio in served_damages(info):
        options = EvaluateOptions(mask_ratio=ratio, strategy=strategy, seed=seed)
        slot = info if strategy == "objects" else replace(info, mask_ratio=ratio)  # hides as routing would
        for start in range(0, len(pairs), batch_size):
            cases = []
            for position, pair in enumerate(pairs[start: start + batch_size], start):
                try:
                    image, label_file = read_pair(pair, space)
                except LmaeError as exc:
                    if on_error is not None:
                        on_error(str(exc))
                    continue  # unreadable pairs tune nothing
                damaged, erased = degrade(label_file.values, space, options, np.random.default_rng([seed, position]))
                if erased.any():
                    cases.append((prepare(*as_the_model_sees(image, damaged, [slot]), slot, original=damaged), label_file.values, erased, position))
            if cases:
                with torch.inference_mode():
                    probs = predict(model, slot, [c[0] for c in cases], device, completer.tiles_per_pass, precision)
                for (item, truth, erased, position), prob in zip(cases, probs):
                    agreed = continuation_agreements(item, info)
                    gathered.add(gap_probabilities(item, prob, info), truth, erased, item.fillable_pixels(p, space).numpy(), position, agreed)
            if on_pair is not None:
                on_pair(min(batch_size, len(pairs) - start))
    return info, gathered


def held_out(logs: np.ndarray, agreed: np.ndarray, truths: np.ndarray, folds: np.ndarray, missed: np.ndarray,
             grid=CONTINUATION_GRID) -> tuple[float, float]:
    """PA-mIoU (without, with offsets and bonuses) on one half of the pairs with them tuned on the
    other, averaged over both ways round: what they are worth on pairs they were not tuned on."""
    before, after = [], []
    for half in (0, 1):
        tuning, scoring = folds == half, folds != half
        bias, bonus, _, _ = tune_choice(logs[tuning], agreed[tuning], truths[tuning], missed[half], grid)
        before.append(pa_miou(logs[scoring], truths[scoring], missed[1 - half], np.zeros_like(bias)))
        after.append(pa_miou(with_continuation(logs[scoring], agreed[scoring], bonus), truths[scoring], missed[1 - half], bias))
    return float(np.mean(before)), float(np.mean(after))


def tune_checkpoint(path: Path, index: DatasetIndex, out: Path, max_pairs: int = 0, seed: int = 0,
                    device: str = "cpu", on_pair=None, on_error=None, split: str | None = None) -> dict:
    """Tune a checkpoint's class offsets on `index` (its `split`) and write it, offsets included,
    and where they were tuned (the data's absolute path, as training records it), to `out`."""
    info, gathered = collect(path, index, max_pairs, seed, device, on_pair=on_pair, on_error=on_error)
    logs, truths, folds, missed, agreed = gathered.arrays()
    if not len(truths):
        raise NothingToTune(f"{index.root}: the damage erased no annotated pixel that {path.name} could fill; nothing to tune on")
    bias, bonus, before, after = tune_choice(logs, agreed, truths, missed.sum(0))
    figures = {"pa_miou_before": round(before, 4), "pa_miou_after": round(after, 4)}
    if len(np.unique(folds)) == 2:
        figures["held_out_before"], figures["held_out_after"] = (round(v, 4) for v in held_out(logs, agreed, truths, folds, missed))
    model, info = load_checkpoint(path)
    info.class_bias = [round(float(b), 3) for b in bias]
    info.continuation = bonus
    pairs = len(index.pairs[: max_pairs or None])
    info.training = {**info.training, "class_bias_tuned_on": {"data": str(index.root.resolve()), "split": split, "pairs": pairs, "damages": served_damages(info),
                                                               "seed": seed, **figures}}
    save_checkpoint(out, model, info, half=_stored_half(path))
    return {"bias": info.class_bias, "continuation": bonus, **figures, "pixels": int(round((len(truths) + missed.sum()) / gathered.rate))}


def _stored_half(path: Path) -> bool:
    """Whether the file holds float16 weights (bundled checkpoints do: keep them that size)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        name = next(iter(f.keys()))
        return f.get_slice(name).get_dtype() in ("F16", "BF16")
