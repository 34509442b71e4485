"""`lmae-repair evaluate`: damage complete labels on purpose, repair them as `complete` would, score.

This is the paper's protocol made available on any dataset whose labels are complete, so a user
can see what a checkpoint family is worth on their own data before trusting it.

Damage (`degrade`), drawn per pair from `seed` and the pair's position, so every method and
every run sees the same damage:
- patch strategies (`random`, `background-first`, `label-first`): the label is cut into
  `patch_size` squares and floor(L * mask_ratio) of them are set to void: at random, the most
  background-or-void ones first, or the most annotated ones first;
- `objects`: connected regions of one class (8-connected; background excluded) covering at most
  `max_object_share` of the image are the objects; `mask_ratio` of them (per label, rounded at
  random) are set to the dataset's missing value: background where the label space has one (a
  missed defect in VOC-style data), void otherwise (CamVid, Cityscapes).
The erased pixels are the damaged ones whose true value is a class.

Repair: route, hide and rebuild each damaged label exactly as `complete` does (`repair.prepare`,
the same checkpoints, the same do-no-harm merge). Baselines fill the *same* hidden patches under
the same merge rule, so only the predictor differs:
- `nearest`: each pixel takes the class of the nearest annotated pixel: the model's neighbourhood
  hint (`repair.repair_hint`: where missing annotation is void, any annotated pixel, those in the
  hidden patches too; where a background class exists, those outside the hidden patches);
- `random-walker` (`--baselines all`, needs scikit-image): scikit-image's random walker seeded
  with the annotated pixels outside the hidden patches, on the image.
The intact labels are repaired too: a tool that changes good labels is not safe to run.

Figures per method: PA-mIoU (mIoU over the erased pixels), global mIoU (over every annotated
pixel of the repaired labels), per-class IoU over the erased pixels, share of erased pixels
restored, precision of changed pixels (changed pixels whose new value is the true class; pixels
whose truth is void do not count), and share of the pixels of intact labels changed.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lmae_repair import __version__
from lmae_repair.complete import CompleteOptions, Completer, Loaded, new_entry
from lmae_repair.data import DatasetIndex, absolute_text, read_pair
from lmae_repair.defaults import DEFAULT_MIN_CONFIDENCE, DEFAULT_THRESHOLD
from lmae_repair.errors import LmaeError, pair_error
from lmae_repair.labelspace import LabelSpace
from lmae_repair.dataset import label_tensor
from lmae_repair.masking import TRAINING_STRATEGIES, erase_objects, mask_count, patch_background_ratio, small_objects
from lmae_repair.metrics import ConfusionMatrix
from lmae_repair.neighbourhood import neighbourhood_hint
from lmae_repair.repair import Prepared, merge, route_and_prepare

STRATEGIES = TRAINING_STRATEGIES  # the damages: the patch strategies of training, and objects
BASELINES = ("nearest", "all")
MODEL = "lmae-repair"


@dataclass
class EvaluateOptions:
    mask_ratio: float = 0.5
    strategy: str = "random"
    seed: int = 0
    patch_size: int = 16
    max_object_share: float = 0.05
    baselines: str = "nearest"
    threshold: float = DEFAULT_THRESHOLD
    device: str = "cpu"
    batch_size: int = 8
    max_pairs: int = 0
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    precision: str = "auto"  # as in CompleteOptions
    native_scale: bool = False  # as in CompleteOptions


def unknown_strategy(strategy: str) -> LmaeError:
    return LmaeError(f"--strategy: unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")


def erase_patches(label: np.ndarray, space: LabelSpace, strategy: str, ratio: float, patch: int, rng) -> np.ndarray:
    """(H, W) bool: the pixels of the floor(L * ratio) patches chosen by `strategy`.

    The same choice as training's `masking.strategy_mask`, drawn from a numpy generator so that
    a seed gives the damage every recorded `evaluate` figure was measured on."""
    height, width = label.shape
    share = patch_background_ratio(label_tensor(label, space), patch, space)
    rows, cols = share.shape
    share = share.flatten().numpy()
    jitter = rng.random(rows * cols)  # random order among equal scores
    if strategy == "random":
        scores = jitter
    elif strategy == "background-first":
        scores = share + jitter * 1e-4
    elif strategy == "label-first":
        scores = 1.0 - share + jitter * 1e-4
    else:
        raise unknown_strategy(strategy)
    chosen = np.zeros(rows * cols, bool)
    chosen[np.argsort(-scores)[: mask_count(rows * cols, ratio)]] = True
    return np.kron(chosen.reshape(rows, cols), np.ones((patch, patch), bool))[:height, :width].astype(bool)


def degrade(label: np.ndarray, space: LabelSpace, options: EvaluateOptions, rng) -> tuple[np.ndarray, np.ndarray]:
    """(damaged label, erased pixels): the damage described in the module docstring."""
    if options.strategy == "objects":
        erased = erase_objects(label, space, options.mask_ratio, options.max_object_share * label.size, rng)
        value = space.missing_id
    else:
        erased = erase_patches(label, space, options.strategy, options.mask_ratio, options.patch_size, rng)
        value = space.void_id
    damaged = label.copy()
    damaged[erased] = value
    return damaged, erased & (label < space.num_classes) & (label != value)


def nearest_baseline(item: Prepared, info) -> np.ndarray:
    """The hidden patches filled with the nearest annotated pixel (the model's neighbourhood hint,
    `repair.repair_hint`: in a void label space any annotated pixel, else those outside the hidden
    patches), merged as `complete` merges the model's prediction."""
    space, p = info.label_space, info.model.patch_size
    fill = item.hint if item.hint is not None else neighbourhood_hint(item.label[None], item.mask[None], p, space.num_classes)[0]
    return merge(item, item.at_input(fill), None, info).values


def random_walker_baseline(item: Prepared, image: np.ndarray, info) -> np.ndarray:
    """scikit-image's random walker on the image, seeded with the annotated pixels outside the
    hidden patches; the hidden missing pixels are what it labels."""
    from skimage.segmentation import random_walker

    space = info.label_space
    label = item.original
    hidden = item.hidden_at_input(info.model.patch_size).numpy()
    # every pixel that is not a seed is labelled (0), void ones too: marking them inactive (-1)
    # can cut a hidden region off from every seed, and the solver then never converges (minutes
    # on one CamVid frame); only the hidden pixels' labels are used (`merge`)
    seeds = np.where(label < space.num_classes, label.astype(np.int32) + 1, 0)
    seeds[hidden] = 0
    if not (seeds > 0).any() or not hidden.any():
        return item.original.copy()
    with warnings.catch_warnings():  # its solver and tolerance notes are not the user's concern
        warnings.simplefilter("ignore")
        walked = random_walker(image.astype(np.float32) / 255.0, seeds, beta=130, mode="cg_j", channel_axis=-1)
    prediction = np.where(walked > 0, walked - 1, space.void_id)
    return merge(item, torch.from_numpy(prediction).long(), None, info).values


@dataclass
class Scores:
    """Running totals of one method."""

    num_classes: int
    erased: ConfusionMatrix = field(init=False)
    overall: ConfusionMatrix = field(init=False)
    changed: int = 0
    changed_right: int = 0
    intact_changed: int = 0
    intact_pixels: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.erased = ConfusionMatrix(self.num_classes)
        self.overall = ConfusionMatrix(self.num_classes)

    def add_damaged(self, repaired: np.ndarray, damaged: np.ndarray, truth: np.ndarray, erased: np.ndarray) -> None:
        as_tensor = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
        self.erased.update(as_tensor(repaired[erased]), as_tensor(truth[erased]))
        self.overall.update(as_tensor(repaired), as_tensor(truth))
        changed = (repaired != damaged) & (truth < self.num_classes)
        self.changed += int(changed.sum())
        self.changed_right += int((changed & (repaired == truth)).sum())

    def add_intact(self, repaired: np.ndarray, truth: np.ndarray) -> None:
        self.intact_changed += int((repaired != truth).sum())
        self.intact_pixels += truth.size

    def summary(self, space: LabelSpace) -> dict:
        ious = self.erased.iou().tolist()
        nan_to_none = lambda v: None if v != v else round(v, 4)  # noqa: E731
        return {
            "pa_miou": nan_to_none(self.erased.miou()),
            "miou": nan_to_none(self.overall.miou()),
            "restored": nan_to_none(self.erased.pixel_accuracy()),
            "precision": nan_to_none(self.changed_right / self.changed if self.changed else float("nan")),
            "intact_changed": nan_to_none(self.intact_changed / self.intact_pixels if self.intact_pixels else float("nan")),
            "class_iou": {name: nan_to_none(v) for name, v in zip(space.names, ious)},
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Case:
    """One pair under evaluation: its image, truth and damage, and both versions made ready."""

    index: int
    image: np.ndarray
    truth: np.ndarray
    damaged: np.ndarray
    erased: np.ndarray
    versions: dict = field(default_factory=dict)  # "damaged" / "intact" -> Loaded
    objects: int = 0  # objects damage: the label's objects small enough to be erased


def load_case(index: int, pair, checkpoints, options: EvaluateOptions, space: LabelSpace) -> Case:
    """Read, damage, route and prepare one pair (LmaeError when it cannot be read)."""
    image, label_file = read_pair(pair, space, with_kept=True)
    truth = label_file.values
    rng = np.random.default_rng([options.seed, index])
    damaged, erased = degrade(truth, space, options, rng)
    case = Case(index, image, truth, damaged, erased)
    if options.strategy == "objects":
        case.objects = len(small_objects(truth, space, options.max_object_share * truth.size))
    for name, values in (("damaged", damaged), ("intact", truth)):
        loaded = Loaded(pair, new_entry(pair), replace(label_file, values=values))
        _, loaded.choice, loaded.prepared = route_and_prepare(image, values, checkpoints, options.threshold, rescale=not options.native_scale,
                                                                kept=label_file.kept)
        case.versions[name] = loaded
    return case


def checked_methods(options: EvaluateOptions) -> list[str]:
    """The methods to score; a clear error for options that cannot work."""
    if options.strategy not in STRATEGIES:
        raise unknown_strategy(options.strategy)
    if not 0.0 < options.mask_ratio <= 1.0:
        raise LmaeError(f"--mask-ratio must be in (0, 1], got {options.mask_ratio}")
    if options.baselines not in BASELINES:
        raise LmaeError(f"--baselines: expected nearest or all, got {options.baselines!r}")
    if options.baselines == "nearest":
        return [MODEL, "nearest"]
    if importlib.util.find_spec("skimage") is None:
        raise LmaeError("--baselines all needs scikit-image for the random walker: pip install scikit-image (or pip install -e \".[baselines]\" in a checkout)")
    return [MODEL, "nearest", "random-walker"]


def evaluate_dataset(index: DatasetIndex, checkpoints, options: EvaluateOptions, on_pair=None, on_error=None) -> dict:
    """Run the protocol over the dataset; returns the figures of the model and the baselines."""
    methods = checked_methods(options)
    space = checkpoints[0][1].label_space
    scores = {name: Scores(space.num_classes) for name in methods}
    completer = Completer(checkpoints, CompleteOptions(
        Path("."), options.threshold, options.device, batch_size=options.batch_size,
        min_confidence=options.min_confidence, precision=options.precision,
    ))
    pairs = index.pairs[: options.max_pairs or None]
    used = erased_pixels = objects = unannotated = 0
    routed: dict[str, int] = {}
    batch: list[Case] = []

    def score(cases: list[Case]) -> None:
        nonlocal used, erased_pixels, objects, unannotated
        scored = score_cases(cases, completer, checkpoints, scores, on_pair, on_error)
        used += len(scored)
        # labels all void have nothing to erase: told apart from a damage too light (`nothing_erased_reason`)
        unannotated += sum(1 for case in scored if not (case.truth < space.num_classes).any())
        erased_pixels += sum(int(case.erased.sum()) for case in scored)
        objects += sum(case.objects for case in scored)
        for case in scored:
            served = checkpoint_served(checkpoints, case.versions["damaged"].choice)
            routed[served] = routed.get(served, 0) + 1

    with torch.inference_mode():
        for position, pair in enumerate(pairs):
            try:
                batch.append(load_case(position, pair, checkpoints, options, space))
            except Exception as exc:
                message = pair_error(str(pair.label), exc)
                if on_error is not None:
                    on_error(message)
                if on_pair is not None:
                    on_pair()
            if len(batch) >= options.batch_size:
                score(batch)
                batch = []
        if batch:
            score(batch)
    return {
        "data": str(index.root),
        "layout": index.layout,
        # absolute: `push --evaluate-json` run from another folder checks these are the family's files
        "models": list(dict.fromkeys(absolute_text(path) for path, _ in checkpoints)),
        "strategy": options.strategy,
        "mask_ratio": options.mask_ratio,
        "patch_size": options.patch_size,
        "max_object_share": options.max_object_share if options.strategy == "objects" else None,
        "missing_value": space.missing_id if options.strategy == "objects" else space.void_id,
        "seed": options.seed,
        "min_confidence": options.min_confidence,
        "threshold": options.threshold,
        "max_pairs": options.max_pairs,
        "baselines": options.baselines,
        "device": options.device,
        "precision": options.precision,  # as it ran (auto resolved): bf16 and int8 move the figures a little
        "native_scale": options.native_scale,
        "version": __version__,
        "pairs": used,
        "erased_pixels": erased_pixels,
        "unannotated": unannotated,  # pairs whose label holds no class at all (all void)
        "objects": objects if options.strategy == "objects" else None,  # small enough to be erased
        "routed": dict(sorted(routed.items())),  # damaged pairs per checkpoint: what the model's figures measure
        "methods": {name: scores[name].summary(space) for name in methods},
    }


def checkpoint_served(checkpoints, choice: int | None) -> str:
    """'objects.safetensors (mask ratio 0.25, objects gaps)': the checkpoint that routing gave a
    damaged label, as the figures' reader needs it: the same family scores very differently where
    a light damage sends its labels to another checkpoint. None: 'none (left as it is)'."""
    if choice is None:
        return "none (left as it is)"
    path, info = checkpoints[choice]
    return f"{Path(path).name} (mask ratio {info.mask_ratio:g}, {info.gap_kind} gaps)"


def score_cases(cases: list[Case], completer: Completer, checkpoints, scores: dict[str, Scores], on_pair=None,
                on_error=None) -> list[Case]:
    """Repair both versions of each case (damaged, intact) with the model in one batch and with
    each baseline, add them to `scores` (the time of each method too); returns the cases scored.
    A case the model failed on is reported through `on_error` and left out of every method's
    figures, so that all methods are scored on the same pairs."""
    loaded = [case.versions[name] for case in cases for name in ("damaged", "intact")]
    started = time.perf_counter()
    outputs = {id(item): values for item, values in completer.repair_batch(loaded)}
    scores[MODEL].seconds += time.perf_counter() - started
    scored = []
    for case in cases:
        failed = [item for item in case.versions.values() if outputs[id(item)] is None]
        if failed:  # the model failed on this pair (its message is in the entry)
            if on_error is not None:
                on_error(failed[0].entry["error"])
        else:
            for name, item in case.versions.items():
                results = {MODEL: outputs[id(item)]}
                for method in list(scores)[1:]:
                    started = time.perf_counter()
                    results[method] = baseline_output(method, item, case.image, checkpoints)
                    scores[method].seconds += time.perf_counter() - started
                for method, repaired in results.items():
                    if name == "damaged":
                        scores[method].add_damaged(repaired, case.damaged, case.truth, case.erased)
                    else:
                        scores[method].add_intact(repaired, case.truth)
            scored.append(case)
        if on_pair is not None:
            on_pair()
    return scored


def baseline_output(method: str, item: Loaded, image: np.ndarray, checkpoints) -> np.ndarray:
    """A baseline's repaired label for one loaded version (unchanged if it was not routed)."""
    if item.prepared is None:
        return item.label.values
    info = checkpoints[item.choice][1]
    if method == "nearest":
        return nearest_baseline(item.prepared, info)
    return random_walker_baseline(item.prepared, image, info)


def rerun_command(result: dict) -> str:
    """The `lmae-repair evaluate` command line that measures `result` again (the `command` of
    `--json`): every setting that moves a figure, so that a paper's table can be re-run from it.
    `--batch-size` is left out: it changes the speed, not the figures."""
    import shlex

    source = ["--images", result["images"], "--labels", result["labels"]] if result.get("images") else [absolute_text(result["data"])]
    if result.get("split"):
        source += ["--split", result["split"]]
    words = ["lmae-repair", "evaluate", *source]
    for model in result["models"]:
        words += ["--models", model]
    words += ["--strategy", result["strategy"], "--mask-ratio", repr(result["mask_ratio"]), "--seed", str(result["seed"]),
              "--patch-size", str(result["patch_size"])]
    if result["max_object_share"] is not None:
        words += ["--max-object-share", repr(result["max_object_share"])]
    # repr: every digit given (f"{x:g}" kept six, so -m 0.1234567 came back as 0.123457)
    words += ["--max-pairs", str(result["max_pairs"]), "--threshold", repr(result["threshold"]),
              "--min-confidence", repr(result["min_confidence"]), "--baselines", result["baselines"],
              "--device", result["device"], "--precision", result["precision"]]
    if result["native_scale"]:
        words.append("--native-scale")
    return shlex.join(str(word) for word in words)
