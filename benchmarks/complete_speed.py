"""Throughput of `complete`: end to end and model only, beside the classical baselines.

Run by hand (not a test), e.g.
    python benchmarks/complete_speed.py                                  # CPU, tiny, three sizes
    python benchmarks/complete_speed.py --devices cuda --presets tiny base --batch-sizes 8 32 128
    python benchmarks/complete_speed.py --memory-pairs 5000              # resident memory over a long run

Pairs are the real CamVid examples of `examples/camvid`, resized to each size (image bilinear,
label nearest), repeated to `--pairs`. `tiny` is the bundled camvid family; `base` is the paper-size
preset with random weights (speed does not depend on the weights: which patches are hidden and
rebuilt depends on the labels only). Figures per row: end-to-end pairs/s (read, route, model,
merge, write PNGs, report), model-only pairs/s (`repair.predict` on pairs already prepared), peak
GPU memory, and the model's speed relative to nearest-labelled-pixel fill and to scikit-image's
random walker filling the same hidden patches of the same pairs in the same run (fill + merge;
the random walker on `--rw-pairs` pairs only: it is slow). `--damage 0.5` punches the holes of
the evaluate protocol into the labels first.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from lmae_repair.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint
from lmae_repair.complete import CompleteOptions, Completer, PairLoader, complete_dataset
from lmae_repair.data import discover
from lmae_repair.evaluate import erase_patches, random_walker_baseline
from lmae_repair.neighbourhood import neighbourhood_hint
from lmae_repair.repair import merge
from lmae_repair.families import find_checkpoints
from lmae_repair.model import LabelMAE, preset_config
from lmae_repair.repair import predict

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "camvid"
console = Console(width=170)


def make_dataset(folder: Path, size: tuple[int, int], count: int, damage: float = 0.0, space=None) -> Path:
    """`count` pairs from the CamVid examples at `size` (width, height), in images/ + labels/;
    with `damage`, that share of random 16-pixel patches of each label set to void (the holes
    `complete` is for, as in `lmae-repair evaluate`)."""
    sources = sorted((EXAMPLES / "labels").glob("*.png"))
    rng = np.random.default_rng(0)
    for i in range(count):
        label_path = sources[i % len(sources)]
        image_path = next((EXAMPLES / "images").glob(f"{label_path.stem}.*"))
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        Image.open(image_path).convert("RGB").resize(size, Image.BILINEAR).save(folder / "images" / f"{i:05d}.jpg", quality=92)
        label = np.array(Image.open(label_path).resize(size, Image.NEAREST))
        if damage:
            label[erase_patches(label, space, "random", damage, 16, rng)] = space.void_id
        Image.fromarray(label).save(folder / "labels" / f"{i:05d}.png")
    return folder


def family(preset: str, folder: Path, reference: list) -> list:
    """Checkpoints for a preset: the bundled camvid family for tiny, random base weights otherwise."""
    if preset == "tiny":
        return reference
    info = reference[0][1]
    config = preset_config(preset, info.label_space.num_classes)
    torch.manual_seed(0)
    model = LabelMAE(config)
    checkpoints = []
    for _, ratio_info in reference:
        path = folder / f"{preset}-mask-{ratio_info.mask_ratio:.2f}.safetensors"
        save_checkpoint(path, model, CheckpointInfo(config, ratio_info.mask_ratio, info.label_space, {"crop": 224}))
        checkpoints.append((path, load_checkpoint(path)[1]))
    return checkpoints


def end_to_end(data: Path, checkpoints, device: str, batch: int, out: Path) -> tuple[float, float | None]:
    """(pairs/s of a full `complete` run into a fresh OUT, peak GPU memory in GiB or None)."""
    shutil.rmtree(out, ignore_errors=True)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    workers = 0 if (torch.get_num_threads() <= 2 and device == "cpu") else 4
    report = complete_dataset(discover(data), checkpoints, CompleteOptions(out, device=device, batch_size=batch, workers=workers))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None
    return report["totals"]["pairs"] / report["totals"]["seconds"], peak


def model_only(loaded, checkpoints, device: str, batch: int) -> float:
    """pairs/s of `repair.predict` alone on pairs already read, routed and prepared."""
    completer = Completer(checkpoints, CompleteOptions(Path("."), device=device, batch_size=batch))
    routed = [item for item in loaded if item.prepared is not None]
    for choice in {item.choice for item in routed}:
        completer.model(choice)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(routed), batch):
            group = routed[i : i + batch]
            for choice in {item.choice for item in group}:
                items = [item.prepared for item in group if item.choice == choice]
                predict(completer.model(choice), checkpoints[choice][1], items, device, completer.tiles_per_pass)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return len(loaded) / (time.perf_counter() - start)


def baseline_rates(loaded, checkpoints, rw_pairs: int) -> tuple[float, float | None]:
    """pairs/s of nearest fill and of the random walker, filling the same hidden patches."""
    routed = [item for item in loaded if item.prepared is not None]
    start = time.perf_counter()
    for item in routed:  # the fill computed afresh (the prepared hint is that fill already)
        info, prepared = checkpoints[item.choice][1], item.prepared
        fill = neighbourhood_hint(prepared.label[None], prepared.mask[None], info.model.patch_size, info.model.num_classes)[0]
        merge(prepared, prepared.at_input(fill), None, info)
    nearest = len(loaded) / (time.perf_counter() - start)
    if importlib.util.find_spec("skimage") is None or rw_pairs == 0:
        return nearest, None
    from lmae_repair.data import read_image

    start = time.perf_counter()
    for item in routed[:rw_pairs]:
        random_walker_baseline(item.prepared, read_image(item.pair.image), checkpoints[item.choice][1])
    return nearest, min(rw_pairs, len(routed)) / (time.perf_counter() - start)


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_run(work: Path, checkpoints, device: str, pairs: int) -> None:
    """Resident memory over a long `complete` run (480x360 pairs): it must stay flat.

    48 pairs, each with its own random holes, are linked in a random order, so each batch of 8
    holds its own numbers of visible and needed patches, as real data does: repeating the same 12
    undamaged pairs in turn showed a flat line while 3,000 different crops grew by 500 MB."""
    space = checkpoints[0][1].label_space
    source = make_dataset(work / "memory-src", (480, 360), 48, damage=0.3, space=space)
    data = work / "memory"
    order = np.random.default_rng(1).integers(0, 48, pairs)
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True, exist_ok=True)
        files = sorted((source / sub).iterdir())
        for i, chosen in enumerate(order):
            (data / sub / f"{i:06d}{files[chosen].suffix}").symlink_to(files[chosen])
    samples: list[tuple[int, float]] = []
    done = [0]

    def on_pair(_entry, worked: bool = True) -> None:
        done[0] += 1
        if done[0] % max(pairs // 20, 1) == 0:
            samples.append((done[0], resident_mib()))

    start = time.perf_counter()
    complete_dataset(discover(data), checkpoints, CompleteOptions(work / "memory-out", device=device, batch_size=8), on_pair)
    seconds = time.perf_counter() - start
    table = Table(title=f"resident memory over {pairs} pairs ({pairs / seconds:.1f} pairs/s)")
    table.add_column("pairs done", justify="right")
    table.add_column("RSS MiB", justify="right")
    for count, mib in samples:
        table.add_row(str(count), f"{mib:.0f}")
    console.print(table)
    values = [mib for _, mib in samples]
    if values:
        console.print(f"RSS at 10%: {values[1] if len(values) > 1 else values[0]:.0f} MiB, at the end: {values[-1]:.0f} MiB, max {max(values):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["480x360", "500x375", "2048x1024"])
    parser.add_argument("--presets", nargs="+", default=["tiny"])
    parser.add_argument("--devices", nargs="+", default=["cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8])
    parser.add_argument("--pairs", type=int, default=96, help="pairs per size")
    parser.add_argument("--damage", type=float, default=0.0, help="share of random 16-px patches of each label set to void (0: the labels as they are)")
    parser.add_argument("--rw-pairs", type=int, default=4, help="pairs timed with the random walker (0: skip)")
    parser.add_argument("--memory-pairs", type=int, default=0, help="also watch resident memory over this many pairs")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lmae-speed-"))
    try:
        reference = find_checkpoints(["camvid"])
        table = Table(title=f"complete throughput ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})")
        for column in ("device", "preset", "size", "batch", "end to end pairs/s", "model only pairs/s", "GPU peak GiB", "model / nearest fill", "model / random walker"):
            table.add_column(column, justify="right")
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.split("x"))
            data = make_dataset(work / size_text, size, args.pairs, args.damage, reference[0][1].label_space)
            for preset in args.presets:
                checkpoints = family(preset, work, reference)
                loader = PairLoader(discover(data).pairs, checkpoints, 0.5)
                loaded = [loader[i] for i in range(len(loader))]
                nearest, walker = baseline_rates(loaded, checkpoints, args.rw_pairs)
                for device in args.devices:
                    for batch in args.batch_sizes:
                        rate, peak = end_to_end(data, checkpoints, device, batch, work / "out")
                        model_rate = model_only(loaded, checkpoints, device, batch)
                        table.add_row(
                            device, preset, size_text, str(batch), f"{rate:.1f}", f"{model_rate:.1f}",
                            "-" if peak is None else f"{peak:.2f}", f"{model_rate / nearest:.2f}",
                            "-" if walker is None else f"{model_rate / walker:.0f}",
                        )
                        console.print(f"{device} {preset} {size_text} batch {batch}: {rate:.1f} pairs/s end to end, {model_rate:.1f} model only")
                console.print(f"{size_text}: nearest fill {nearest:.1f} pairs/s" + ("" if walker is None else f", random walker {walker:.3f} pairs/s"))
        console.print(table)
        if args.memory_pairs:
            memory_run(work, reference, args.devices[0], args.memory_pairs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
