"""The `lmae-repair` command line: thin typer commands over the library modules.

Exit codes: 0 all done, 1 some pairs failed, 2 usage or setup error (bad option, missing data,
unreadable checkpoint). Errors the user can fix print one line, no traceback (unless --debug).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lmae_repair import __version__
from lmae_repair.errors import DEBUG, INTERRUPTED, LmaeError, RankError, interrupt_exit_code, signal_that_ended_workers, unexpected, watch_interrupts
from lmae_repair.defaults import DEFAULT_CROP, DEFAULT_MIN_CONFIDENCE, DEFAULT_THRESHOLD

class App(typer.Typer):
    """The typer app, callable from Python with path objects among its arguments: a notebook's
    `app(["complete", data, "--out", out], standalone_mode=False)` with pathlib paths had ended
    in "TypeError: object of type 'PosixPath' has no len()" from click's parser."""

    def __call__(self, args=None, *more, **options):
        if args is not None:
            args = [os.fspath(arg) if isinstance(arg, os.PathLike) else arg for arg in args]
        return super().__call__(args, *more, **options)


app = App(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Find and complete broken semantic-segmentation labels with a Label Masked Autoencoder (L-MAE).",
)


class OneValueEach(typer.core.TyperCommand):
    """Refuses an option that takes one value given twice (`evaluate -m 0.25 -m 0.5`): click
    would keep the last one silently, and the run would answer for one value while the user
    believes it answered for both. Repeatable options (`--models`, train's `--mask-ratio`) are
    untouched.

    Also refuses an empty path (`--out "$OUT"` with OUT unset): Path("") is the current folder,
    so `audit --heatmaps ""` wrote its pictures there, `tune --out ""` its checkpoints,
    `--images "" --labels ""` paired whatever lay below it, and `--models ""` took every
    checkpoint found there."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        raw, _, given = self.make_parser(ctx).parse_args(args=list(args))
        rest = super().parse_args(ctx, args)  # first, so that --help anywhere on the line still answers
        for option in {param for param in given if isinstance(param, typer.core.TyperOption)}:
            times = sum(param is option for param in given)
            if times > 1 and not (option.multiple or option.count or option.is_flag):
                raise typer.BadParameter(f"given {times} times, but it takes one value (run the command once per value)", ctx, option)
        for param in self.params:
            values = raw.get(param.name)
            values = values if isinstance(values, (list, tuple)) else [values]
            annotation = param.type_descriptor.annotation
            if param.name in PATH_LIKE or annotation is Path or getattr(annotation, "__args__", None) == (Path,):
                if any(value == "" for value in values):
                    raise typer.BadParameter("empty path (an unset shell variable?)", ctx, param)
        return rest


PATH_LIKE = {"models", "checkpoint", "checkpoints"}  # --models, inspect, average: checkpoint, folder or family names (strings), paths all the same


command = partial(app.command, cls=OneValueEach)


class PipedConsole(Console):
    """A reader that goes away (`lmae-repair audit --json F | head`) ends the printing, not the
    work: the command goes on silently and writes its files (rich's own handling exits at once,
    with status 1, and `--json` was never written)."""

    def on_broken_pipe(self) -> None:
        from lmae_repair.data import silence

        self.quiet = True
        silence(sys.stdout)


def forget_zero_width() -> None:
    """COLUMNS=0 (or LINES=0) in the environment made rich draw everything, help, errors and
    summaries alike, at width 0, i.e. print nothing: a failed run ended with exit code 2 and not a
    word. A size of 0 is taken as unknown, as rich takes a terminal that reports none (80 wide)."""
    for name in ("COLUMNS", "LINES"):
        text = os.environ.get(name, "").strip()
        if text.isdigit() and int(text) == 0:
            del os.environ[name]


forget_zero_width()  # before any console is made: rich reads COLUMNS when one is created
# soft_wrap: a status or error line stays one line in logs and pipes, whatever the terminal width.
# No markup or emoji codes: messages carry file names, and "d[x]" or "a:b:c" must print as they
# are (styles are given as rich Text instead).
console = PipedConsole(soft_wrap=True, markup=False, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
MODELS_HELP = "Checkpoint file, folder of checkpoints, bundled family name (camvid, concrete) or hf://USER/REPO from the Hugging Face Hub (repeatable; default: the bundled family that fits the data)."
NATIVE_SCALE_HELP = "Read every pair at its own size (default: a pair at least 1.5 times the size of the models' training images is read shrunk to their scale, unless its gaps are too fine for that: README \"Working scale\")."
KEEP_VOID_HELP = "Leave every void pixel as it is and complete background only (Pascal VOC's 255 marks difficult objects and regions left out on purpose, not only borders; default: void holes are filled)."
PRECISION_HELP = "Model arithmetic: auto (bf16 on a GPU and on CPUs with native bf16, int8 on other CPUs with VNNI: linear layers, and the image branch where the checkpoint carries its int8 calibration (see inspect); else fp32), bf16, fp32 or int8 (CPU). On a CPU with VNNI, bf16 runs the image branch in int8 too (faster there)."


def fail(message: str, code: int = 2, own: bool = False) -> None:
    """Print `message` as the error and exit with `code`. Under torchrun it is said by the first
    process of each machine only (`speaks_for_machine`), unless it is this process's `own`
    (`distributed.RankError`)."""
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
    where = f"rank {rank}: " if rank != "0" else ""  # under torchrun, which process failed
    if own or speaks_for_machine():
        err_console.print(Text.assemble(("error:", "bold red"), f" {where}{message}"), highlight=False)
    raise typer.Exit(code)


def speaks_for_machine() -> bool:
    """Whether this process prints errors and interruptions: always alone; under torchrun, only
    the first process of each machine (LOCAL_RANK 0). The others meet the same missing folder,
    bad option or Ctrl-C, from the same command and files, and said it again, once per process
    (`error: rank 1: ...` under every `error: ...`); another machine's first process still speaks,
    as its files may differ."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return True
    try:
        return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0
    except ValueError:  # a malformed torchrun environment: the error that says so is printed
        return True


def guarded(function, interrupted="interrupted", several_processes: bool = False):
    """Run a command body; errors become a one-line message and exit code 2 (a traceback only
    with --debug), Ctrl-C exit code 130 (SIGTERM 143) with the `interrupted` message (or a
    function returning it, called only then, where it tells how far the run got). Only a body
    that shares its work among torchrun's processes says so (`several_processes`)."""
    give_back = watch_interrupts()
    console.quiet = False  # what one command silenced (train on torchrun's other ranks) is not the next one's
    message = interrupted if callable(interrupted) else (lambda: interrupted)
    try:
        check_environment()
        threads_as_granted()
        if not several_processes:
            refuse_torchrun(function.__qualname__.split(".")[0])  # "complete.<locals>.run": the command
        return function()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        if speaks_for_machine():
            err_console.print(message())
        raise typer.Exit(interrupt_exit_code())
    except BrokenPipeError:  # the reader went away (`... --json | head`): nothing more to say
        from lmae_repair.data import silence

        silence(sys.stdout)
        raise typer.Exit(0)
    except StdoutUnwritable as exc:
        stdout_unwritable(exc)
    except Exception as exc:
        ended_by = signal_that_ended_workers(exc)
        if ended_by is not None:  # the group's signal, noticed through a worker first: an interruption all the same
            INTERRUPTED.update(on=True, signal=ended_by)
            if speaks_for_machine():
                err_console.print(message())
            raise typer.Exit(interrupt_exit_code())
        if DEBUG["on"]:
            raise
        if isinstance(exc, LmaeError):
            fail(str(exc), own=isinstance(exc, RankError))
        if isinstance(exc, OSError) and exc.filename:
            fail(f"{exc.filename}: {exc.strerror or type(exc).__name__}")
        fail(unexpected("lmae-repair", exc))
    finally:
        give_back()  # the caller's handlers, where a notebook runs the command in its own process


def refuse_torchrun(name: str) -> None:
    """Refuse a command other than train started by torchrun: each process ran the whole command,
    and `complete` under two processes failed in one of them as 'another lmae-repair run is
    writing here' (or, a moment apart, did the dataset twice)."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return  # alone: torch is not imported for this check
    from lmae_repair.distributed import ranks_from_environment

    world_size = ranks_from_environment().world_size  # WORLD_SIZE=abc: the error that says so
    if world_size > 1:
        raise LmaeError(f"{name} runs as one process, but it was started as {world_size} (WORLD_SIZE {world_size}, as torchrun "
                        f"sets it): start lmae-repair {name} without torchrun (only train shares its work among torchrun's processes)")


def threads_as_granted() -> None:
    """Keep PyTorch's threads to the CPUs Slurm granted the task (SLURM_CPUS_PER_TASK) where
    OMP_NUM_THREADS does not say otherwise. PyTorch sizes its threads by the affinity mask, so a
    job whose Slurm sets no cpuset ran one thread per core of the whole node, on cores granted to
    other jobs. Elsewhere (no Slurm, or OMP_NUM_THREADS set, as torchrun sets it) nothing changes."""
    if "SLURM_CPUS_PER_TASK" not in os.environ or os.environ.get("OMP_NUM_THREADS"):
        return  # torch is not imported for this check
    import torch

    from lmae_repair.defaults import usable_cpus

    if torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())


def check_environment() -> None:
    """Refuse a malformed LMAE_REPAIR_MAX_PIXELS before any work, as a setup error (exit code 2):
    read only when a file is opened, it had failed every pair, each as an 'unreadable label'."""
    from lmae_repair.data import max_pixels

    max_pixels()


def version_callback(value: bool) -> None:
    if value:
        console.print(f"lmae-repair {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version."),
) -> None:
    DEBUG["on"] = debug


@command()
def train(
    data: Path = typer.Argument(Path("."), help="Dataset root: Pascal VOC, Cityscapes, or images/ + labels/ folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<data folder name>, or <DATA>-runs beside DATA when the current folder is inside DATA)."),
    mask_ratio: list[float] = typer.Option([0.5], "--mask-ratio", "-m", help="Mask ratio; repeat for one checkpoint per ratio."),
    split: Optional[str] = typer.Option(None, help="Split to train on, where the layout has splits (e.g. train)."),
    images: Optional[Path] = typer.Option(None, help="Image folder, with --labels, instead of a layout."),
    labels: Optional[Path] = typer.Option(None, help="Label folder, with --images."),
    val: Optional[Path] = typer.Option(None, help="Validation dataset root."),
    val_split: Optional[str] = typer.Option(None, help="Validation split (of --val, or of DATA)."),
    preset: str = typer.Option("tiny", help="Model size: tiny (CPU-friendly, 7-10M parameters) or base (the paper's, 240-255M; both grow with the number of classes)."),
    patch_size: Optional[int] = typer.Option(None, min=2, max=128, help="Patch size in pixels (default 16)."),
    image_branch: Optional[int] = typer.Option(None, min=1, help="Add a small U-Net over the image with this many features per pixel (e.g. 16), for thin structures such as cracks. Default: the --init checkpoint's, else none; --init of a checkpoint without one grows it."),
    # two flags rather than "--branch-reads-labels/--branch-reads-image-only": typer gives the second
    # name a column of its own, which squeezed every option's help to a few characters (names cut)
    branch_reads_labels: bool = typer.Option(False, "--branch-reads-labels", help="The image branch's U-Net also reads the label, so that it can follow an annotation from where it stops into the image (README \"The method\"). Default: the --init checkpoint's (one that reads the label keeps reading it), else image only; --init of an image-only branch grows it."),
    branch_reads_image_only: bool = typer.Option(False, "--branch-reads-image-only", hidden=True),
    epochs: int = typer.Option(50, min=1, help="Epochs to train (with --resume: the total to reach)."),
    batch_size: int = typer.Option(16, min=1, help="Images per step (per process under torchrun)."),
    crop: int = typer.Option(DEFAULT_CROP, min=16, help="Training crop size; inference runs in tiles of this size."),
    lr: float = typer.Option(5e-4, min=0.0, max=1.0, help="Peak learning rate (Adam), above 0."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: Optional[int] = typer.Option(None, min=0, help="Data-loading processes per training process (default: half the cores this job may use, shared among the processes, at most 4)."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last saved epoch."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint's weights (fine-tune; same preset and label space)."),
    mask_mix: str = typer.Option("1:2:2:2", help="Weights of the masking strategies, in this order: random, label-first, background-first, objects (1:2:2, without objects, is the paper's mix)."),
    class_weighting: str = typer.Option("paper", help="Loss class weights: paper (eq. 10), inverse, or none."),
    weights_from: str = typer.Option("labels", help="Class frequencies the weights come from: labels (whole labels, the paper), or gaps (the small objects the objects strategy erases: for --gaps objects checkpoints)."),
    num_classes: Optional[int] = typer.Option(None, min=1, max=255, help="Number of classes (default: classes.txt, else scanned)."),
    background_id: Optional[str] = typer.Option(None, help="Background class id, or 'none' (default: classes.txt, else 0)."),
    void_id: Optional[int] = typer.Option(None, min=0, max=255, help="Void / unlabelled value (default: classes.txt, else 255)."),
    val_max_pairs: int = typer.Option(0, min=0, help="Validate on at most this many pairs (0: all)."),
    gaps: str = typer.Option("any", help="The labels these checkpoints are for: any, or objects: only labels whose gaps follow the image's edges (missed objects), beside a family's checkpoints for any gap (README \"Routing\"); for objects, lean --mask-mix on the objects strategy (e.g. 1:1:1:3); validation, and so best.safetensors, scores random patches, so average the epochs (--keep-epochs, lmae-repair average) and measure with evaluate --strategy objects."),
    keep_epochs: bool = typer.Option(False, "--keep-epochs", help="Also keep every epoch's weights, as epoch-NNN.safetensors, to average them afterwards with lmae-repair average."),
    photometric: bool = typer.Option(False, "--photometric", help="Also blur, shrink, JPEG-encode and brighten the training images at random, so that the model does not learn one camera's sharpness."),
    max_minutes: float = typer.Option(0.0, "--max-minutes", min=0.0, help="Time budget per mask ratio: begin no epoch that would end past it (0: none); --resume goes on later."),
) -> None:
    """Train L-MAE checkpoints (one per --mask-ratio) on a dataset with labels.

    On several GPUs: torchrun --nproc_per_node N -m lmae_repair train ... (DistributedDataParallel).
    """

    def run() -> int:
        from lmae_repair.labelspace import _UNSET, parse_background_id
        from lmae_repair.masking import parse_mix
        from lmae_repair.distributed import ranks_from_environment
        from lmae_repair.train import STATE_FILE, TrainOptions, check_option_values, load_training_data, ratio_folder, train as run_training

        console.quiet = not ranks_from_environment().is_main  # under torchrun only rank 0 prints; errors still reach stderr
        if branch_reads_labels and branch_reads_image_only:
            fail("--branch-reads-labels and --branch-reads-image-only contradict each other; give one")
        options = TrainOptions(
            out=out or Path("runs") / (data.resolve().name or "data"),  # settled below, once the data is found
            mask_ratios=list(mask_ratio),
            preset=preset,
            patch_size=patch_size,
            image_branch=image_branch,
            branch_reads_labels=True if branch_reads_labels else False if branch_reads_image_only else None,
            epochs=epochs,
            batch_size=batch_size,
            crop=crop,
            lr=lr,
            device=device,
            workers=workers,
            seed=seed,
            mask_mix=parse_mix(mask_mix),
            class_weighting=class_weighting,
            weights_from=weights_from,
            resume=resume,
            init=init,
            keep_epochs=keep_epochs,
            gaps=gaps,
            max_minutes=max_minutes,
            photometric=photometric,
        )
        check_option_values(options)  # before the scan: a typo is the one line printed
        note_workers_beyond_cpus(workers)
        if options.gaps == "objects" and (len(options.mask_mix) < 4 or options.mask_mix[3] == 0):
            # routing sends labels with missed objects to such a checkpoint, and only the objects
            # strategy shows it one in training: without it, it learns what any other file learns
            console.print(f"note: --gaps objects, but --mask-mix {mask_mix} gives the objects strategy no weight: these "
                          "checkpoints never see a missed object in training (README: e.g. --mask-mix 1:1:1:3)", highlight=False)
        if out is not None and out.exists() and not out.is_dir():  # said after the scan as "OUT/mask-0.50: Not a directory"
            raise LmaeError(f"{out}: --out names a file; give a run folder (new, or a run's to --resume)")
        space_options = {"num_classes": num_classes, "void_id": void_id}
        background = parse_background_id(background_id)
        if background is not _UNSET:
            space_options["background_id"] = background
        if out is not None:  # the run folder is known before the scan: an interruption there tells what it holds
            started["options"] = options
        training_data = load_training_data(data, split, images, labels, val, val_split, space_options, console, val_max_pairs)
        if out is None:
            options.out = outside_input(training_data.train, options.out, "-runs")
        for index in (training_data.train, training_data.val_index):
            if index is not None:  # the validation data is input too
                index.refuse_inside(options.out, "the run folder")
        console.print(f"label space: {training_data.space.describe()}")
        started["options"] = options
        best = run_training(options, training_data, console)
        table = Table(title="checkpoints")
        for column in ("mask ratio", "best checkpoint", "val PA-mIoU"):
            table.add_column(column, overflow="fold")  # a path folded, never cut to "..."
        from lmae_repair.checkpoints import read_info
        from lmae_repair.data import shell_path

        for ratio, path in zip(options.mask_ratios, best):
            info = read_info(path)
            score = info.validation.get("val_pa_miou")
            table.add_row(f"{ratio:.2f}", str(path), "-" if score is None else f"{score:.4f}")
        console.print(table)
        states = ratio_folder(options.out, options.mask_ratios[0]).name if len(options.mask_ratios) == 1 else "mask-*"
        console.print(f"run folder: {options.out} (resume with --resume; state in {states}/{STATE_FILE})")
        models = shlex.quote(str(options.out))
        held_out = "DATA"  # labelled pairs it did not train on: the validation data, where it had some
        if val is not None or val_split is not None:
            held_out = shell_path(val if val is not None else data) + (f" --split {shlex.quote(val_split)}" if val_split else "")
        console.print(f"next: lmae-repair tune {held_out} --models {models} and lmae-repair evaluate {held_out} --models {models} "
                      f"on labelled pairs it did not train on, then lmae-repair complete DATA --models {models}")
        if training_data.skipped:
            skipped = len(training_data.skipped)
            console.print(f"{skipped} pair{'s were' if skipped > 1 else ' was'} skipped when the data was scanned (listed above; an image that fails to decode during training is skipped where it is met)")
        return 1 if training_data.skipped else 0

    started: dict = {}  # the run's options, once settled: where an interruption finds what was saved

    def interrupted() -> str:
        """What an interruption kept: 'every finished epoch is saved' was said where none had ended,
        and 'nothing was saved' by a --resume interrupted while it scanned the data (the run folder
        is known before then with --out, and with --resume the epochs saved earlier are kept)."""
        from lmae_repair.train import STATE_FILE, ratio_folder

        options = started.get("options")
        if options is None and resume:  # the default --out is settled only after the scan
            return ("interrupted before training began: nothing new was saved, and any epochs an earlier run saved are "
                    "kept; run the same command again")
        if options is None or not any((ratio_folder(options.out, ratio) / STATE_FILE).exists() for ratio in options.mask_ratios):
            return "interrupted before any epoch ended: nothing was saved; run the same command again"
        return "interrupted: every finished epoch is saved; the same command with --resume continues from the last one"

    exit_with(guarded(run, interrupted, several_processes=True))


@command()
def complete(
    data: Path = typer.Argument(Path("."), help="Dataset root: Pascal VOC, Cityscapes, or images/ + labels/ folders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where the completed dataset goes (default: <DATA>-completed beside DATA)."),
    models: Optional[list[str]] = typer.Option(None, "--models", help=MODELS_HELP),
    split: Optional[str] = typer.Option(None, help="Split to repair, where the layout has splits."),
    images: Optional[Path] = typer.Option(None, help="Image folder, with --labels, instead of a layout."),
    labels: Optional[Path] = typer.Option(None, help="Label folder, with --images."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(8, min=1, help="Pairs per model batch."),
    workers: Optional[int] = typer.Option(None, min=0, help="Processes reading and preparing pairs (default: half the cores this job may use, at most 4; 0 on 2 cores or fewer)."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Background-or-void share from which a patch counts as background-heavy."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Repair in memory and report, write nothing."),
    labels_only: bool = typer.Option(False, "--labels-only", help="Write the labels only, not links to the images."),
    overwrite_labeled: bool = typer.Option(False, "--overwrite-labeled", help="Let annotated pixels inside masked patches change too, and background move the border of an annotated region (kept otherwise)."),
    min_confidence: float = typer.Option(DEFAULT_MIN_CONFIDENCE, min=0.0, max=1.0, help="Change a background pixel into a class only where the model is at least this sure (void is filled whatever the confidence, but for thin void beside annotation where the label space has a background class: README \"Do no harm\")."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    native_scale: bool = typer.Option(False, "--native-scale", help=NATIVE_SCALE_HELP),
    keep_void: bool = typer.Option(False, "--keep-void", help=KEEP_VOID_HELP),
) -> None:
    """Complete the labels of a dataset: route each pair to a checkpoint, rebuild its background-heavy patches, and write a completed copy of the dataset plus a report."""

    def run() -> int:
        from lmae_repair.complete import (CompleteOptions, check_output, complete_dataset, give_up_output, hold_output, side_files,
                                          voc_folders_not_copied)
        from lmae_repair.families import resolve_models

        target = out or beside(data, "-completed")
        device_name, arithmetic = device_and_precision(device, precision)
        options = CompleteOptions(
            target, threshold, device_name, dry_run, labels_only, overwrite_labeled,
            batch_size, default_workers() if workers is None else workers, min_confidence, arithmetic, native_scale, keep_void,
        )
        index = discover_data(data, split, images, labels)
        check_output(index, target, dry_run)  # before the models load
        lock, made = (None, False) if dry_run else hold_output(index, target)  # a run started at once is refused first
        try:
            note_workers_beyond_cpus(workers)
            unreadable: list[str] = []
            side_files(index, unreadable)
            for problem in unreadable:
                console.print(f"note: {problem}", highlight=False)
            used, checkpoints = resolve_models(models, index)
        except BaseException:
            if lock is not None:
                give_up_output(lock, target, made)
            raise
        ratios = ", ".join(f"{info.mask_ratio:.2f}" + (" for objects" if info.gap_kind == "objects" else "") for _, info in checkpoints)
        unpaired = f" and {counted(len(index.unmatched), 'file')} that could not be paired" if index.unmatched else ""
        console.print(f"{counted(len(index.pairs), 'pair')}{unpaired} ({index.layout} layout) in {index.root}; models: {used} (mask ratios {ratios}) on {options.device}, {options.precision}", highlight=False)
        progress.update(pairs=len(index.pairs))
        with PairProgress("completing", len(index.pairs) + len(index.unmatched)) as advance:

            def on_pair(entry: dict, worked: bool = True) -> None:
                if entry["error"]:
                    report_failure(entry["error"])
                else:  # called once the pair's label is written (or was, by an earlier run)
                    progress["written"] += 1
                advance(timed=worked)

            report = complete_dataset(index, checkpoints, options, on_pair, lock)
        if index.unlabelled:
            count = len(index.unlabelled)
            console.print(f"note: {count} image{'s have' if count > 1 else ' has'} no label and {'were' if count > 1 else 'was'} left alone (first: {index.unlabelled[0]}; all in lmae-report.json)", highlight=False)
        unannotated = [entry["label"] for entry in report["pairs"] if entry.get("note")]
        if unannotated:
            count = len(unannotated)
            console.print(f"note: {count} label{'s have' if count > 1 else ' has'} no annotated pixel (all void) and {'were' if count > 1 else 'was'} left as {'they are' if count > 1 else 'it is'}: nothing to complete from (first: {unannotated[0]})", highlight=False)
        from lmae_repair import __version__
        from lmae_repair.complete import other_versions

        kept, versions = other_versions(report["pairs"])
        if kept:
            console.print(f"note: {counted(len(kept), 'pair')} in {target} {'were' if len(kept) > 1 else 'was'} kept as finished by a run "
                          f"of lmae-repair {' and '.join(versions)} (this is {__version__}), whose labels may differ from this "
                          f"version's; a new --out writes them all with this one (first: {kept[0]['label']})", highlight=False)
        earlier = report["totals"].get("outputs_not_in_input", [])
        if earlier:
            count = len(earlier)
            console.print(f"note: {target} also holds {count} label{'s' if count > 1 else ''} written by an earlier run for pairs not in this input, kept as {'they are' if count > 1 else 'it is'} (first: {earlier[0]}; all in lmae-report.json)", highlight=False)
        left_out = report["totals"].get("split_lists_left_out", [])
        if left_out:
            console.print(f"note: {', '.join(left_out)} left out of {target}: none of the pairs {'they list' if len(left_out) > 1 else 'it lists'} "
                          "is in it (a run of that split into the same OUT writes it)", highlight=False)
        not_copied = voc_folders_not_copied(index)
        if not_copied and not dry_run:
            held = "SegmentationClass/ and ImageSets/" if labels_only else "SegmentationClass/, JPEGImages/ and ImageSets/"  # no images with --labels-only
            console.print(f"note: {', '.join(not_copied)} not copied to {target}, which holds the VOC dataset's {held} only "
                          "(instance masks and boxes would not match the completed labels)", highlight=False)
        print_complete_summary(report, target, dry_run)
        if report.get("report_error"):  # after the summary: the labels were written all the same
            fail(report["report_error"])
        return 1 if report["totals"]["failed"] else 0

    progress = {"pairs": None, "written": 0}  # how far the run got, for the message if it is interrupted

    def interrupted() -> str:
        """How many pairs OUT holds (those of an earlier run included), where the run got that far."""
        if dry_run:
            return "interrupted: nothing was written (--dry-run)"
        if progress["pairs"] is None:
            return "interrupted before any pair was repaired: nothing new written; run the same command again"
        return (f"interrupted: {progress['written']} of {counted(progress['pairs'], 'pair')} written, none half-written; "
                "run the same command again to do the rest")

    exit_with(guarded(run, interrupted))


def device_and_precision(device: str, precision: str) -> tuple[str, str]:
    """--device and --precision as inference will run them: cpu, cuda or cuda:N, and bf16, fp32
    or int8 (auto resolved for that device)."""
    from lmae_repair.inference import resolve_device, resolve_precision

    resolved = resolve_device(device)
    return str(resolved), resolve_precision(precision, resolved)


def check_can_write(path: Optional[Path], option: str) -> None:
    """Fail before the work, not after it, when a report file named by `option` cannot be
    written: it names a folder, or its nearest existing folder is not writable."""
    if path is None:
        return
    if path.is_dir():
        raise LmaeError(f"{path}: {option} names a folder; give a file name")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise LmaeError(f"{path}: cannot write it ({folder} is not a writable folder)")


def check_can_write_folder(folder: Optional[Path], option: str) -> None:
    """Fail before the work when the folder named by `option` cannot take files: it is a file, or
    a file cannot be made in it (tried for real, so that read-only mounts and immutable folders
    are caught too; the folder is created, as the run would)."""
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise LmaeError(f"{folder}: {option} names a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise LmaeError(f"{folder}: cannot write into it ({exc.strerror or type(exc).__name__})") from None


def beside(data: Path, suffix: str) -> Path:
    """`<DATA><suffix>` beside DATA as the user named it: a DATA that is a link (a dataset on a
    shared, often read-only mount, linked into one's own folder) gets it beside the link, not
    beside the link's target on the share."""
    path = Path(os.path.abspath(data))
    return path.parent / f"{path.name}{suffix}"


def outside_input(index, default: Path, suffix: str) -> Path:
    """A default output folder, or `<DATA><suffix>` beside DATA where the default (relative to the
    current folder) would lie inside the input: no command writes under DATA."""
    if index.input_folder_holding(default) is None:
        return default
    root = index.root.resolve()
    return root.parent / f"{root.name}{suffix}"


def report_failure(message: str) -> None:
    """One line on stderr for a pair that could not be processed."""
    err_console.print(Text.assemble(("failed:", "yellow"), f" {message}"), highlight=False)


def exit_with(code: int | None) -> None:
    """Exit code 1 when some pairs failed (documented: 0 all done, 1 some failed, 2 setup error)."""
    if code:
        raise typer.Exit(code)


@contextmanager
def stdout_kept_for(*files: Optional[Path]):
    """With `--json /dev/stdout` (or `--csv`), the tables and progress go to stderr, so that
    stdout holds the file alone (`lmae-repair audit --json /dev/stdout | jq`): printed on stdout too,
    they surrounded the JSON and `jq` refused it."""
    from lmae_repair.data import STANDARD_STREAMS

    if not any(STANDARD_STREAMS.get(str(path)) == "stdout" for path in files if path is not None):
        yield
        return
    console.file = sys.stderr
    try:
        yield
    finally:
        console.file = None  # back to whatever sys.stdout is


def default_workers() -> int:
    """Loader processes for complete: none on small machines, where they would only compete
    with the model for the same cores. The cores are those this process may use (`usable_cpus`)."""
    from lmae_repair.defaults import usable_cpus

    cores = usable_cpus()
    return 0 if cores <= 2 else min(4, cores // 2)


def note_workers_beyond_cpus(workers: Optional[int]) -> None:
    """A `--workers` above the CPUs this process may use (`usable_cpus`) is kept, but said in one
    line: PyTorch's own warning came as four lines of its source, twice, into a job's log."""
    import warnings

    from lmae_repair.defaults import usable_cpus

    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    cpus = usable_cpus()
    if workers is not None and workers > cpus:
        console.print(f"note: --workers {workers} is more than the {counted(cpus, 'CPU')} this process may use (affinity mask, "
                      f"SLURM_CPUS_PER_TASK): the loader processes share {'it' if cpus == 1 else 'them'} with the model; fewer may be faster", highlight=False)


def counted(number: int, noun: str) -> str:
    """'1 pair', '3 pairs'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def tiles_under_way(before: str = "", after: str = "") -> str:
    """'1,020/1,188 tiles' (between `before` and `after`) while the model runs (`inference.TILES`),
    else empty: a batch of large pairs takes minutes before any pair is counted."""
    inference = sys.modules.get("lmae_repair.inference")  # not imported for --help; no model runs without it
    tiles = getattr(inference, "TILES", None)
    if tiles is None or not tiles.total:
        return ""
    return f"{before}{tiles.done:,}/{tiles.total:,} tiles{after}"


def rate_text(count: int, seconds: float) -> str:
    """Pairs per second with enough digits to be useful for slow runs too."""
    if seconds <= 0:
        return "-"
    rate = count / seconds
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"


def time_left_text(remaining: int, count: int, seconds: float) -> str:
    """'0:12:34' left at this run's own pace (`count` pairs worked in `seconds`), '-' before
    the first. Why not rich's estimate: it counts the pairs an earlier run finished, skipped in
    an instant, as speed, and promised a resumed 2,000-pair run done in a minute and a half."""
    if count <= 0 or seconds <= 0:
        return "-"
    left = round(remaining * seconds / count)
    return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"


def draws_live(console: Console) -> bool:
    """Whether a progress bar may redraw itself in place: on a real terminal whose cursor moves.
    Why not rich's own `is_terminal`: it takes FORCE_COLOR=1 (which CI set-ups export for coloured
    logs) or TTY_COMPATIBLE=1 for a terminal, and the bar was redrawn ten times a second into the
    log file, 35 kB of carriage returns for 3 pairs; and with TERM=dumb on a terminal (Emacs' shell,
    some CI runners) it drew nothing until the end, while the progress lines were left out as
    well, so a long run looked hung. rich's TTY_INTERACTIVE=0/1 still decides where it is set."""
    chosen = os.environ.get("TTY_INTERACTIVE")
    if chosen in ("0", "1"):
        return chosen == "1"
    isatty = getattr(console.file, "isatty", None)
    try:
        real = bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        real = False
    return real and console.is_terminal and not console.is_dumb_terminal


@contextmanager
def drawn_or_logged(console: Console):
    """Yield whether the progress bar is drawn live (`draws_live`); where it is not, rich is told
    so for the while (`is_interactive`), so that it draws the bar once at the end, as in a pipe,
    colours kept, instead of moving the cursor of a log file."""
    live, interactive = draws_live(console), console.is_interactive
    if not live:
        console.is_interactive = False
    try:
        yield live
    finally:
        console.is_interactive = interactive


class PairProgress:
    """A rich progress bar over pairs with a pairs/s column; `advance()` counts one pair. Where
    the bar is not drawn live (a log file, a scheduler, TERM=dumb: `draws_live`) it is drawn only
    at the end, so a line of progress is printed every LOG_EVERY_S seconds instead: a long job
    must not look hung."""

    LOG_EVERY_S = 60.0

    def __init__(self, label: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} pairs/s"), TimeElapsedColumn(), TextColumn("{task.fields[left]} left"),
            TextColumn("{task.fields[tiles]}"), console=console,
        )
        self.total, self.label = total, label

    def __enter__(self):
        import time

        self.drawn = drawn_or_logged(console)
        self.live = self.drawn.__enter__()
        self.progress.__enter__()
        self.task = self.progress.add_task("pairs", total=self.total, rate="-", left="-", tiles="")
        self.started, self.count, self.done = time.perf_counter(), 0, 0
        self.logged = self.started

        def advance(timed: bool = True) -> None:
            """One pair done; `timed=False` for one that took no work (done by an earlier run):
            it moves the bar, not the pairs/s."""
            self.done += 1
            now = time.perf_counter()
            if timed:
                self.count += 1
            rate = {"rate": rate_text(self.count, now - self.started)} if timed else {}  # moved by worked pairs only
            self.progress.update(self.task, advance=1, left=self.time_left(now), **rate)
            if not self.live:
                self.log_if_due(now)

        self.lock = threading.Lock()  # the heartbeat and the pairs may both find a line due: one prints it
        self.stopped = threading.Event()
        # pairs finish a batch at a time: a batch of large pairs may take minutes, so a log gets a
        # line every LOG_EVERY_S and a terminal's bar the tiles under way every second
        self.heartbeat = None
        if self.live or self.LOG_EVERY_S > 0:
            self.heartbeat = threading.Thread(target=self.beat, daemon=True)
            self.heartbeat.start()
        return advance

    def time_left(self, now: float) -> str:
        """The pairs still to do at the pace of the pairs this run worked (`time_left_text`)."""
        return time_left_text(self.total - self.done, self.count, now - self.started)

    def log_if_due(self, now: float) -> None:
        """The progress line, where LOG_EVERY_S has passed since the last and pairs remain."""
        with self.lock:
            if now - self.logged < self.LOG_EVERY_S or self.done >= self.total:
                return
            self.logged = now
        console.print(f"{self.label}: {self.done}/{self.total} pairs, {rate_text(self.count, now - self.started)} "
                      f"pairs/s, {(now - self.started) / 60:.1f} min so far, {self.time_left(now)} left"
                      f"{tiles_under_way('; model: ', ' of the pairs under way')}", highlight=False)

    def beat(self) -> None:
        """A line every LOG_EVERY_S also while no pair finishes; on a terminal, the bar's count of
        the tiles under way, every second."""
        import time

        if self.live:
            while not self.stopped.wait(1.0):
                self.progress.update(self.task, tiles=tiles_under_way())
            return
        while not self.stopped.wait(max(self.LOG_EVERY_S - (time.perf_counter() - self.logged), 0.01)):
            self.log_if_due(time.perf_counter())

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.heartbeat is not None:
            self.heartbeat.join()
        self.progress.update(self.task, tiles="")
        self.progress.__exit__(*exc)
        self.drawn.__exit__(*exc)


def key_value_table(title: str) -> Table:
    """A two-column summary whose values fold onto more lines instead of being cut with an
    ellipsis: a path must stay whole to be copied."""
    table = Table(title=title, show_header=False)
    table.add_column(overflow="fold", max_width=24)  # on a narrow terminal the names fold, the values keep room
    table.add_column(overflow="fold", min_width=16)
    return table


def print_complete_summary(report: dict, target: Path, dry_run: bool) -> None:
    """The run in one table; files that could not be paired count as failed, not as pairs. Row
    names fit `key_value_table`'s 24 columns, details go in the values: on an 80-column terminal
    "routed to mask ratio 0.25 (objects)" was folded over two lines."""
    totals = report["totals"]
    unpaired = totals["unpaired"]
    table = key_value_table("lmae-repair complete --dry-run: nothing was written" if dry_run else "lmae-repair complete")
    table.add_row("pairs", str(totals["pairs"]))
    if unpaired:
        table.add_row("unpaired files", Text(f"{unpaired} (could not be paired)", style="red"))
    # a dry run writes nothing: its counts say what a real run would do, not what was done
    table.add_row("would be repaired" if dry_run else "repaired", str(totals["repaired"]))
    table.add_row("would stay unchanged" if dry_run else "unchanged", str(totals["unchanged"]))
    failed = f"{totals['failed']}{' (unpaired files included)' if unpaired else ''}"
    table.add_row("failed", Text(failed, style="red") if totals["failed"] else "0")
    if totals["resumed"]:
        table.add_row("done by an earlier run", str(totals["resumed"]))
    if totals.get("read_shrunk"):
        # the rule goes by size alone: tiles cut from one mosaic (a small edge tile) may be read at another scale
        table.add_row("shrunk to models' scale", f"{totals['read_shrunk']} (--native-scale reads every pair as it is)")
    share = totals["pixels_changed"] / totals["pixels"] if totals["pixels"] else 0.0
    table.add_row("pixels that would change" if dry_run else "pixels changed", f"{totals['pixels_changed']:,} ({share:.2%} of all pixels)")
    for row, (ratio, count) in enumerate(totals["pairs_by_mask_ratio"].items()):
        ratio = ratio.replace("(objects)", "(objects model)")
        table.add_row("routed to mask ratio" if row == 0 else "", f"{ratio}: {counted(count, 'pair')}")
    rate = f", {totals['pairs_per_second']} pairs/s" if totals["pairs_per_second"] else ""
    table.add_row("time", f"{totals['seconds']:.1f} s{rate}")
    if dry_run:
        table.add_row("output", f"none (without --dry-run: {target})")
    else:
        table.add_row("output", str(target))
        table.add_row("report", f"{target / 'lmae-report.html'} (and lmae-report.json)")
    console.print(table)


@command()
def evaluate(
    data: Path = typer.Argument(Path("."), help="Dataset with complete labels: Pascal VOC, Cityscapes, or images/ + labels/."),
    models: Optional[list[str]] = typer.Option(None, "--models", help=MODELS_HELP),
    mask_ratio: float = typer.Option(0.5, "--mask-ratio", "-m", help="Share of patches (patch strategies) or of objects (objects) to erase."),
    strategy: str = typer.Option("random", help="Damage: random, background-first or label-first patches set to void, or objects set to the missing value."),
    seed: int = typer.Option(0, min=0, help="Seed of the damage (the same for every method)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    baselines: str = typer.Option("nearest", help="nearest (nearest labelled pixel fill), or all (adds scikit-image's random walker)."),
    patch_size: int = typer.Option(16, min=1, max=512, help="Side of the erased patches, in pixels."),
    max_object_share: float = typer.Option(0.05, min=0.0, max=1.0, help="objects: largest object erased, as a share of the image."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate on, where the layout has splits (e.g. val)."),
    images: Optional[Path] = typer.Option(None, help="Image folder, with --labels, instead of a layout."),
    labels: Optional[Path] = typer.Option(None, help="Label folder, with --images."),
    max_pairs: int = typer.Option(0, min=0, help="Evaluate on the first N pairs only (0: all)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(8, min=1, help="Pairs per model batch."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Background-or-void share from which a patch counts as background-heavy (as in complete)."),
    min_confidence: float = typer.Option(DEFAULT_MIN_CONFIDENCE, min=0.0, max=1.0, help="Change a background pixel into a class only where the model is at least this sure (void is filled whatever the confidence, but for thin void beside annotation where the label space has a background class: README \"Do no harm\")."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    native_scale: bool = typer.Option(False, "--native-scale", help=NATIVE_SCALE_HELP),
) -> None:
    """Damage complete labels on purpose, repair them as complete would, and score the repair against the truth, beside classical baselines (the paper's protocol, on your data)."""

    def run() -> int:
        import json

        from lmae_repair.data import absolute_text, write_named_file
        from lmae_repair.evaluate import EvaluateOptions, checked_methods, evaluate_dataset, rerun_command
        from lmae_repair.families import resolve_models

        device_name, arithmetic = device_and_precision(device, precision)
        options = EvaluateOptions(
            mask_ratio, strategy, seed, patch_size, max_object_share, baselines, threshold,
            device_name, batch_size, max_pairs, min_confidence, arithmetic, native_scale,
        )
        checked_methods(options)
        check_can_write(json_file, "--json")
        index = discover_data(data, split, images, labels)
        if json_file is not None:
            index.refuse_inside(json_file, "--json")
        used, checkpoints = resolve_models(models, index)
        total = min(len(index.pairs), max_pairs or len(index.pairs))
        console.print(f"{counted(total, 'pair')} ({index.layout} layout) in {index.root}; models: {used}; damage: {strategy} at {mask_ratio}, seed {seed}", highlight=False)
        if index.unlabelled:  # as complete and train note them: a video's unlabelled frames were left out without a word
            console.print(f"note: {index.unlabelled_images_note('not scored')}", highlight=False)
        failures = list(index.unmatched)
        for problem in failures:
            report_failure(problem)

        def on_error(message: str) -> None:
            failures.append(message)
            report_failure(message)

        with PairProgress("evaluating", total) as advance:
            result = evaluate_dataset(index, checkpoints, options, advance, on_error)
        result["failed"] = failures
        result.update(split=split, images=images and absolute_text(images), labels=labels and absolute_text(labels))
        result["command"] = rerun_command(result)
        if json_file is not None:  # before printing: a reader that goes away (`| head`) ends the printing
            text = json.dumps(result, indent=2)
            write_named_file(json_file, lambda f: f.write(text.encode()))
        nothing_erased = bool(result["pairs"]) and not result["erased_pixels"]
        if nothing_erased:  # a table of dashes would read as a result
            console.print(f"nothing scored: the damage erased no annotated pixel in {counted(result['pairs'], 'pair')} "
                          f"({nothing_erased_reason(result)})", highlight=False)
        else:
            print_evaluation(result)
        if strategy != "objects" and mask_ratio >= 1.0:
            console.print("note: at --mask-ratio 1 every patch is erased, so every label is all void: with nothing annotated to "
                          "complete from, complete leaves such labels as they are", highlight=False)
        if json_file is not None:
            console.print(f"figures written to {json_file}")
        return 1 if failures or nothing_erased else 0

    with stdout_kept_for(json_file):
        exit_with(guarded(run))


def nothing_erased_reason(result: dict) -> str:
    """Why an `evaluate` damage erased nothing, and what to change: for objects, whether the pairs
    held no object under the size limit at all or the random draw took none of those they held.
    Labels that hold no class at all (all void) come first: a damage has nothing to erase there,
    and the advice to raise --mask-ratio sent the user after the wrong cause."""
    if result.get("unannotated") == result["pairs"]:
        return (f"{'no label holds an' if result['pairs'] > 1 else 'the label holds no'} annotated pixel (all void): evaluate damages "
                "complete labels and scores the repair against them; give it pairs whose labels are annotated")
    if result["strategy"] != "objects":
        return (f"raise --mask-ratio, or lower --patch-size: only whole patches are erased, none where {result['patch_size']} "
                "pixels is more than an image's side")
    limit = f"{result['max_object_share'] * 100:g}%"
    if not result["objects"]:
        return (f"none holds an object (a connected region of one class, not background) of at most {limit} of its image: "
                "raise --max-object-share, or evaluate more pairs")
    return (f"{counted(result['objects'], 'object')} of at most {limit} of the image, and the draw at --mask-ratio "
            f"{result['mask_ratio']} took none: raise --mask-ratio or try another --seed")


def print_evaluation(result: dict) -> None:
    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    methods = result["methods"]
    title = f"{result['strategy']} damage at {result['mask_ratio']}: {counted(result['pairs'], 'pair')}, {result['erased_pixels']:,} erased pixels"
    table = Table(title=title)
    columns = ("PA-mIoU", "mIoU", "restored", "precision", "intact changed", "seconds")
    table.add_column("method", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for name, figures in methods.items():
        values = [figures[k] for k in ("pa_miou", "miou", "restored", "precision")]
        intact = figures["intact_changed"]
        table.add_row(name, *map(cell, values), "-" if intact is None else f"{intact:.2%}", f"{figures['seconds']:.1f}")
    console.print(table)
    if result["routed"]:  # none where every pair failed
        served = ", ".join(f"{name}: {counted(count, 'pair')}" for name, count in result["routed"].items())
        console.print(f"damaged labels repaired with {served}", highlight=False)
    console.print("restored: share of erased pixels given back their true class; precision: share of changed pixels now right; "
                  "intact changed: share of the pixels of the undamaged labels that the repair changed (where missing annotation is void, "
                  "as in CamVid, that is the labels' own void, which every method fills)", style="dim")
    classes = Table(title="IoU per class over the erased pixels")
    classes.add_column("class")
    for name in methods:
        classes.add_column(name, justify="right")
    for class_name in next(iter(methods.values()))["class_iou"]:
        classes.add_row(class_name, *(cell(methods[m]["class_iou"][class_name]) for m in methods))
    console.print(classes)


@command()
def audit(
    data: Path = typer.Argument(Path("."), help="Dataset root: Pascal VOC, Cityscapes, or images/ + labels/ folders."),
    models: Optional[list[str]] = typer.Option(None, "--models", help=MODELS_HELP),
    top: int = typer.Option(20, "--top", min=1, help="Rows of the table printed."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write every pair, highest score first, to this JSON file."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="The same as a CSV table."),
    heatmaps: Optional[Path] = typer.Option(None, "--heatmaps", help="Write, per pair, a picture of where the model suspects missing annotation."),
    split: Optional[str] = typer.Option(None, help="Split to audit, where the layout has splits."),
    images: Optional[Path] = typer.Option(None, help="Image folder, with --labels, instead of a layout."),
    labels: Optional[Path] = typer.Option(None, help="Label folder, with --images."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(8, min=1, help="Pairs per model batch."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, min=0.0, max=1.0, help="Background-or-void share from which a patch counts as background-heavy (as in complete)."),
    min_confidence: float = typer.Option(DEFAULT_MIN_CONFIDENCE, min=0.0, max=1.0, help="Count a background pixel as suspect only where the model is at least this sure."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    native_scale: bool = typer.Option(False, "--native-scale", help=NATIVE_SCALE_HELP),
    keep_void: bool = typer.Option(False, "--keep-void", help="Void is not missing annotation: neither counted as missing nor suspect (as complete --keep-void)."),
) -> None:
    """List the labels that look broken, worst first: file defects, statistics against the rest of the dataset, and where the model sees annotated classes the label lacks."""

    def run() -> int:
        from lmae_repair.audit import (AuditOptions, audit_dataset, empty_labels_note, few_labels_note, journal_for, label_space_of_data,
                                       unlabelled_note, write_csv, write_json)
        from lmae_repair.families import NoFamilyFits, resolve_models

        device_name, arithmetic = device_and_precision(device, precision)
        options = AuditOptions(threshold, device_name, batch_size, min_confidence, heatmaps, arithmetic, native_scale, keep_void)
        check_can_write(json_file, "--json")
        check_can_write(csv_file, "--csv")
        if json_file is not None and csv_file is not None and json_file.resolve() == csv_file.resolve():
            raise LmaeError(f"{json_file}: --json and --csv name the same file; give each its own")
        index = discover_data(data, split, images, labels)
        for path, option in ((json_file, "--json"), (csv_file, "--csv"), (heatmaps, "--heatmaps")):
            if path is not None:
                index.refuse_inside(path, option)
        space = None
        try:
            used, checkpoints = resolve_models(models, index)
        except NoFamilyFits as exc:  # files and statistics need no model: audit them, say what is missing
            used, checkpoints, space = "none", None, label_space_of_data(index)
            console.print(f"note: {exc.reason}, so this audit checks files and label statistics only, without the "
                          f"model's evidence{' (and writes no heatmaps)' if heatmaps is not None else ''}"
                          + (f"; {exc.advice}" if exc.advice else ""), highlight=False)
            problem = space.single_class_problem() if exc.advice else None  # else the reason said it
            if problem:
                console.print(f"note: {problem}", highlight=False)
        if checkpoints is not None:  # after refuse_inside: it makes the folder, so not where no heatmap is drawn
            check_can_write_folder(heatmaps, "--heatmaps")
        console.print(f"{counted(len(index.pairs), 'pair')} ({index.layout} layout) in {index.root}; models: {used}", highlight=False)
        for problem in index.unmatched:
            report_failure(problem)
        journal = journal_for(json_file, csv_file)
        resumed = 0
        with PairProgress("auditing", len(index.pairs)) as advance:

            def on_pair(error: str | None, worked: bool) -> None:
                nonlocal resumed
                if error:
                    report_failure(error)
                resumed += not worked
                advance(timed=worked)

            rows = audit_dataset(index, checkpoints, options, on_pair, space, journal)
        files = [(path, write) for path, write in ((json_file, write_json), (csv_file, write_csv)) if path is not None]
        for path, write in files:  # before printing: a reader that goes away (`| head`) ends the printing
            write(path, rows)
        if journal is not None:
            journal.unlink(missing_ok=True)  # the files hold every row now
        if resumed:  # its journal is not named: it was just removed, and a user went looking for it
            console.print(f"{counted(resumed, 'pair')} measured by an earlier, interrupted run, taken from its journal "
                          "(removed now that the report holds every row)", highlight=False)
        print_audit(rows, top)
        for note in (empty_labels_note(rows), unlabelled_note(rows), few_labels_note(rows)):
            if note:
                console.print(f"note: {note}", highlight=False)
        for path, _ in files:
            console.print(f"all {len(rows)} rows written to {path}")
        if heatmaps is not None and checkpoints is not None:
            from lmae_repair.audit import HEATMAP_LEGEND, has_heatmap, remove_stale_heatmaps

            drawn = sum(1 for row in rows if has_heatmap(row))
            removed = remove_stale_heatmaps(heatmaps, rows)
            legend = f" (which colour is which class: {heatmaps / HEATMAP_LEGEND})" if (heatmaps / HEATMAP_LEGEND).is_file() else ""
            console.print(f"heatmaps of the {counted(drawn, 'label')} where the model sees what the label lacks written to {heatmaps}{legend}"
                          if drawn else "the model sees nothing the labels lack, so no heatmap was written", highlight=False)
            if removed:
                console.print(f"removed from {heatmaps} the heatmap{'s' if removed > 1 else ''} an earlier run drew of "
                              f"{counted(removed, 'label')} that {'have' if removed > 1 else 'has'} none now", highlight=False)
        return 1 if any(row["error"] for row in rows) else 0

    resumes = "the same command goes on from the pairs already measured" if json_file or csv_file else "nothing was written"
    with stdout_kept_for(json_file, csv_file):
        exit_with(guarded(run, f"interrupted: {resumes}"))


REASONS_MIN_WIDTH = 40  # a reasons column narrower than this folds a reason over 5 to 8 lines: they go beneath instead


def print_audit(rows: list[dict], top: int) -> None:
    """The `top` rows as a table; where the terminal leaves the reasons column under
    REASONS_MIN_WIDTH (80 columns left it 24), the table goes without it and the reasons follow
    it by rank, at the terminal's width (`reasons_by_rank`)."""
    flagged = sum(1 for row in rows if row["reasons"])
    shown = rows[:top]
    table = audit_table(f"labels most likely broken ({flagged} of {len(rows)} with a reason)", shown)
    room = console.width - console.measure(table).maximum - 3  # the reasons column's border and padding
    if room >= REASONS_MIN_WIDTH or not any(row["reasons"] for row in shown):
        table.add_column("reasons", justify="left", overflow="fold", ratio=2)
        for cells, row in zip(audit_cells(shown), shown):
            table.add_row(*cells, "; ".join(row["reasons"]) or "-")
        console.print(table)
        return
    for cells in audit_cells(shown):
        table.add_row(*cells)
    console.print(table)
    console.print(reasons_by_rank(shown))


def audit_table(title: str, shown: list[dict]) -> Table:
    """The top-K table's columns but the reasons; a label path is kept on one line where it fits in
    48 characters (it is what a curator copies): the reasons wrap instead."""
    table = Table(title=title)
    longest_label = max((len(row["label"]) for row in shown), default=5)
    for column, justify in (("#", "right"), ("score", "right"), ("label", "left"), ("suspect pixels", "right")):
        width = min(longest_label, 48) if column == "label" else None
        table.add_column(column, justify=justify, overflow="fold", min_width=width)
    return table


def audit_cells(shown: list[dict]) -> list[tuple[str, str, str, str]]:
    """Rank, score, label and suspect pixels of each shown row, as the table prints them."""
    return [(str(rank), f"{row['score']:.2f}", row["label"], "-" if row["suspect_pixels"] is None else f"{row['suspect_pixels']:,}")
            for rank, row in enumerate(shown, 1)]


def reasons_by_rank(shown: list[dict]) -> Table:
    """The reasons of each shown row that has any, by its rank (#) in the table above, each reason
    on its own lines at the terminal's width (a borderless grid: wrapped lines stay indented under
    the reason, not under the rank)."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("#", "", "reasons")
    for rank, row in enumerate(shown, 1):
        for number, reason in enumerate(row["reasons"]):
            grid.add_row(str(rank) if number == 0 else "", "-", reason)
    return grid


@command()
def push(
    run_dir: Path = typer.Argument(..., help="A training run folder (one best checkpoint per mask ratio), or a family folder."),
    repo_id: str = typer.Argument(..., help="Hub repository, owner/name or hf://owner/name (created if missing; uploaded to its main branch)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    evaluate_json: Optional[Path] = typer.Option(None, "--evaluate-json", help="An `lmae-repair evaluate --json` file whose figures go into the model card."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build the files and the model card into --staging and list them; send nothing."),
    staging: Optional[Path] = typer.Option(None, "--staging", help="Where to build the upload (default: a temporary folder)."),
) -> None:
    """Upload a checkpoint family to the Hugging Face Hub with a generated model card (needs HF_TOKEN)."""

    def run() -> None:
        import json
        import tempfile

        from lmae_repair.hub import build_upload, figures_of_another_family, prepare_staging, push_family, push_target, refuse_offline_push

        repo = push_target(repo_id)
        if not dry_run:
            refuse_offline_push(repo)
        figures = None
        if evaluate_json is not None:
            try:
                result = json.loads(evaluate_json.read_text())
                figures = evaluation_markdown(result)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LmaeError(f"{evaluate_json}: not an evaluate --json file ({exc})") from None
            problem = figures_of_another_family(result, run_dir)
            if problem:
                raise LmaeError(f"{evaluate_json}: {problem}")
        with tempfile.TemporaryDirectory(prefix="lmae-push-") as temporary:
            folder = staging or Path(temporary)
            prepare_staging(folder)
            operations = build_upload(run_dir, repo, folder, figures)
            table = Table(title=f"{'would upload' if dry_run else 'uploading'} to {repo}")
            table.add_column("file")
            table.add_column("bytes", justify="right")
            for operation in operations:
                table.add_row(operation.path_in_repo, f"{Path(operation.path_or_fileobj).stat().st_size:,}")
            console.print(table)
            if dry_run:
                console.print(f"dry run: nothing sent; files in {folder}" if staging else
                              "dry run: nothing sent; the files were built in a temporary folder, now removed "
                              "(--staging DIR keeps them, to read the model card)")
                return
            url = push_family(operations, repo, private, f"lmae-repair family from {run_dir.name}")
            console.print(f"uploaded: {url}\nuse it with --models hf://{repo}")

    guarded(run)


def evaluation_markdown(result: dict) -> str:
    """The figures of an `evaluate --json` file as a markdown table for a model card."""
    lines = [f"{result['strategy']} damage at {result['mask_ratio']}, {result['pairs']} pairs of {result['data']} (seed {result['seed']}):", "",
             "| method | PA-mIoU | restored | precision | intact changed |", "| --- | --- | --- | --- | --- |"]
    for name, figures in result["methods"].items():
        cells = ["-" if figures[k] is None else f"{figures[k]:.3f}" for k in ("pa_miou", "restored", "precision")]
        intact = "-" if figures["intact_changed"] is None else f"{figures['intact_changed']:.2%}"
        lines.append(f"| {name} | {' | '.join(cells)} | {intact} |")
    return "\n".join(lines)


@command()
def average(
    checkpoints: list[str] = typer.Argument(..., help="Local checkpoints of one model (e.g. a run's epoch-NNN.safetensors from train --keep-epochs), or a ratio folder holding them."),
    out: Path = typer.Option(..., "--out", "-o", help="The averaged checkpoint to write (.safetensors, added where the name lacks it)."),
    half: bool = typer.Option(True, "--half/--full", help="Store float16 weights (half the size, as the bundled models) or float32."),
) -> None:
    """Average the weights of several checkpoints of one model into one (weight averaging).

    A small model trained at a constant learning rate swings from epoch to epoch; the average of its epochs beat every single epoch for the bundled camvid models (models/camvid/README.md)."""

    def run() -> None:
        from lmae_repair.checkpoints import average_checkpoints, read_info, save_checkpoint
        from lmae_repair.data import distinct_files
        from lmae_repair.train import EPOCH_FILES, STATE_FILE

        from lmae_repair.families import not_a_local_path, with_checkpoint_suffix

        missing = [spec for spec in checkpoints if not Path(spec).exists()]  # str: Path("hf://o/n") reads hf:/o/n
        if missing:
            raise LmaeError(not_a_local_path(missing[0], "average"))
        paths = [Path(spec) for spec in checkpoints]
        if out.is_dir():  # was "cannot write it (Is a directory)", after the checkpoints were read
            raise LmaeError(f"{out}: --out names a folder; give the averaged checkpoint's file name (e.g. {out / 'averaged.safetensors'})")
        target = with_checkpoint_suffix(out)
        files = [f for path in paths for f in (sorted(path.glob(EPOCH_FILES)) if path.is_dir() else [path])]
        files = distinct_files(files)  # a file named twice counts once
        if target.resolve() in {f.resolve() for f in files}:
            raise LmaeError(f"{target}: --out is one of the checkpoints being averaged; write the average elsewhere")
        if target.name in ("best.safetensors", "last.safetensors") and (target.parent / STATE_FILE).is_file():
            # `average RUN/mask-0.50 --out RUN/mask-0.50/best.safetensors` replaced the run's best without a word
            raise LmaeError(f"{target}: --out is the training run's own {target.name}; write the average beside it "
                            f"(e.g. {target.parent / 'averaged.safetensors'}) and pass that to --models")
        if len(files) < 2:
            found = f"only {files[0]}" if files else "none"
            ratio_folders = sorted(f.name for path in paths if path.is_dir() for f in path.glob("mask-*") if any(f.glob(EPOCH_FILES)))
            hint = (f"name one ratio's folder, e.g. {paths[0] / ratio_folders[0]}" if ratio_folders
                    else "train with --keep-epochs")
            raise LmaeError(f"{', '.join(map(str, paths))}: averaging needs at least two checkpoints, found {found} ({hint})")
        model, info = average_checkpoints(files)
        save_checkpoint(target, model, info, half=half)
        added = "" if target == out else " (.safetensors added: --models and inspect find a folder's checkpoints by it)"
        console.print(f"averaged {len(files)} checkpoints ({files[0].name} ... {files[-1].name}) into {target}{added}", highlight=False)
        if any(info.class_bias or any(info.continuation) for info in map(read_info, files)):
            console.print(f"note: the class offsets and continuation bonuses the checkpoints carried were tuned for their own "
                          f"weights and are not carried over; tune the average: lmae-repair tune DATA --models {target}", highlight=False)

    guarded(run)


@command()
def tune(
    data: Path = typer.Argument(Path("."), help="Dataset with complete labels that the checkpoints did not train on (e.g. your validation split)."),
    models: Optional[list[str]] = typer.Option(None, "--models", help=MODELS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write the tuned checkpoints to, under their own names (default: each checkpoint in place; a bundled family's go to ./<family>-tuned, or beside DATA when the current folder is inside it)."),
    split: Optional[str] = typer.Option(None, help="Split to tune on, where the layout has splits (e.g. val)."),
    images: Optional[Path] = typer.Option(None, help="Image folder, with --labels, instead of a layout."),
    labels: Optional[Path] = typer.Option(None, help="Label folder, with --images."),
    max_pairs: int = typer.Option(0, min=0, help="Tune on the first N pairs only (0: all)."),
    seed: int = typer.Option(0, min=0, help="Seed of the damage."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Tune each checkpoint's class offsets for PA-mIoU on labelled pairs (damaged as evaluate damages them, with the damage the checkpoint serves) and store them in the checkpoint.

    The model's most probable class is not the choice that maximises the mean IoU over the filled pixels: rare classes count as much as common ones. Tune on pairs the checkpoint did not train on (README "Tuning class offsets")."""

    def run() -> int:
        from lmae_repair.checkpoints import read_info
        from lmae_repair.class_bias import NothingToTune, served_damages, tune_checkpoint
        from lmae_repair.data import atomic_write
        from lmae_repair.families import resolve_models
        from lmae_repair.inference import resolve_device

        index = discover_data(data, split, images, labels)
        used, checkpoints = resolve_models(models, index)
        files = list(dict.fromkeys(path for path, _ in checkpoints))
        device_name = str(resolve_device(device))
        folder = tuned_copies_folder(index, files, used, out)
        pairs = min(len(index.pairs), max_pairs or len(index.pairs))
        # under --out, each file keeps its place in its run folder: mask-0.25/best.safetensors and
        # mask-0.50/best.safetensors must not land on one name, and a run of one ratio keeps its
        # mask-<ratio>/ folder too, so that --models OUT reads it like the run
        common = Path(os.path.commonpath([str(run_folder_of(path)) for path in files]))
        targets = {path: path if folder is None else folder / Path(os.path.abspath(path)).relative_to(common) for path in files}
        for target in targets.values():  # written once every pair is measured: refused now, not then
            check_can_write(target, "tune")
        failures = list(index.unmatched)
        for problem in failures:
            report_failure(problem)

        def on_error(message: str) -> None:  # once per pair, not per checkpoint and damage
            if message not in failures:
                failures.append(message)
                report_failure(message)

        for path in files:
            target = targets[path]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with PairProgress(f"tuning {path.name}", pairs * len(served_damages(read_info(path)))) as advance:
                    result = tune_checkpoint(path, index, target, max_pairs, seed, device_name,
                                             on_pair=lambda n: [advance() for _ in range(n)], on_error=on_error, split=split)
            except NothingToTune as exc:  # one checkpoint of a family: the others are still tuned
                kept = "left as it is"
                if folder is not None:  # the family under --out stays whole, this file as it was
                    atomic_write(target, lambda f, source=path: f.write(source.read_bytes()))
                    kept = f"copied unchanged to {target}"
                failures.append(str(exc))
                report_failure(f"{exc}: {kept} (tune on more pairs, or on pairs with the gaps it serves)")
                continue
            print_tune_result(path, target, result, checkpoints[0][1].label_space.names, in_place=folder is None)
        return 1 if failures else 0

    exit_with(guarded(run))


def discover_data(data: Path, split: str | None, images: Path | None, labels: Path | None):
    """The dataset's pairs, with discovery's notes printed (`data.discover_noted`) and, for the
    commands that repair or judge labels, a note on Cityscapes labels whose annotated 255 pixels
    nothing tells from missing annotation (`data.label_ids_missing_note`; training ignores 255)."""
    from lmae_repair.data import discover_noted, label_ids_missing_note

    index = discover_noted(console, data, split, images, labels)
    if note := label_ids_missing_note(index.pairs):
        console.print(f"note: {note}", highlight=False)
    return index


def run_folder_of(checkpoint: Path) -> Path:
    """The training run (or family) folder a checkpoint belongs to: above its mask-<ratio>/ folder.
    Links are not followed: a Hub download's files are links into the cache's blobs/, and the
    tuned copies were named by those blobs' hashes, without .safetensors."""
    from lmae_repair.train import RATIO_FOLDER_PREFIX

    folder = Path(os.path.abspath(checkpoint)).parent
    return folder.parent if folder.name.startswith(RATIO_FOLDER_PREFIX) else folder


def tuned_copies_folder(index, files: list[Path], used: str, out: Path | None) -> Path | None:
    """Where `tune` writes: --out (refused inside the data), or for a bundled family or a family
    downloaded from the Hub a folder of copies (the bundled files stay as shipped, the cached
    ones as the repository's commit has them); None: each checkpoint in place."""
    from lmae_repair.families import bundled_models_dir
    from lmae_repair.hub import cached_repo_of

    folder = out
    if folder is not None:
        index.refuse_inside(folder, "--out")
        if folder.exists() and not folder.is_dir():  # was "OUT: File exists"
            raise LmaeError(f"{folder}: --out names a file; give a folder for the tuned checkpoints")
        return folder  # made where a tuned file is written, once `check_can_write` has passed
    if any(bundled_models_dir().resolve() in path.resolve().parents for path in files):
        name, kept = files[0].parent.name, f"{used} is bundled with lmae-repair and"
    elif cached := next(filter(None, map(cached_repo_of, files)), None):  # the cache's copy must stay the commit's files
        name, kept = cached.split("/")[1], f"the Hugging Face cache's download of hf://{cached}"
    else:
        return None
    folder = outside_input(index, Path(f"{name}-tuned"), f"-{name}-tuned")
    console.print(f"{kept} stays as it is: the tuned copies go to {folder}/ (use them with --models {folder})", highlight=False)
    return folder


def print_tune_result(path: Path, target: Path, result: dict, names: list[str], in_place: bool) -> None:
    """The figures before and after the offsets, and a note when they lose on held-out pairs."""
    from lmae_repair.checkpoints import continuation_text, offsets_text

    offsets = offsets_text(names, result["bias"], nonzero_only=True)
    held_out = ""
    if "held_out_after" in result:
        held_out = (f"; tuned on one half of the pairs and scored on the other: {result['held_out_before']:.3f} -> "
                    f"{result['held_out_after']:.3f}")
    console.print(f"{target}: PA-mIoU on {result['pixels']} erased pixels {result['pa_miou_before']:.3f} -> "
                  f"{result['pa_miou_after']:.3f}{held_out} (offsets: {offsets or 'none'}; continuation: "
                  f"{continuation_text(result['continuation'])})", highlight=False)
    if "held_out_after" not in result:  # one pair (or all in one half): nothing to check the offsets against
        keep = "the file now carries them" if in_place else f"{path} itself is unchanged"
        console.print(f"note: too few pairs to score the offsets on pairs they were not tuned on; offsets from so few "
                      f"rarely carry over to other labels: tune on more pairs, 20 or more ({keep})", highlight=False)
    elif round(result["held_out_after"], 3) < round(result["held_out_before"], 3):
        keep = "the file now carries them; tune with --out to compare before replacing" if in_place else f"{path} itself is unchanged"
        console.print(f"note: on pairs they were not tuned on the offsets lose; tune on more pairs ({keep})", highlight=False)


@command()
def inspect(
    checkpoint: str = typer.Argument(..., help="A .safetensors checkpoint written by lmae-repair train, a run or family folder, or a bundled family name."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw metadata as JSON: one object for a file, a list of objects with their \"path\" for a folder or family."),
) -> None:
    """Show what a checkpoint says about itself: architecture, label space, training, validation.

    Every checkpoint of a folder is shown, also where they do not form one family or some cannot be read: the error (exit code 2) then follows them."""

    def run() -> None:
        import json

        from lmae_repair.checkpoints import read_info, strict_json
        from lmae_repair.families import checkpoint_files, find_checkpoints

        try:  # a family in routing order (a file serving two slots: once)
            paths, refused = list(dict.fromkeys(path for path, _ in find_checkpoints([checkpoint]))), None
        except LmaeError as exc:  # a folder that --models refuses is what one inspects to see why
            paths, refused = checkpoint_files([checkpoint]), str(exc)
        if Path(checkpoint).is_file():  # one file: its own error, exit code 2, as any command gives
            if as_json:
                print(strict_json(json.loads(read_info(paths[0]).to_json())))  # NaN (a PA-mIoU of nothing) as null
            else:
                print_checkpoint(paths[0])
            return
        failures, documents = [], []
        for path in paths:
            try:
                if as_json:
                    documents.append({"path": str(path), **json.loads(read_info(path).to_json())})
                else:
                    print_checkpoint(path)
            except LmaeError as exc:
                failures.append(str(exc))
                report_failure(str(exc))
        if as_json:  # one document, so that json.load reads it
            print(strict_json(documents))
        if refused:  # still a setup error (exit code 2), as --models would take it, once every file is shown
            raise LmaeError(f"{checkpoint}: {len(failures)} of {len(paths)} checkpoints unreadable" if refused in failures else refused)

    guarded(run)


def print_checkpoint(checkpoint: Path) -> None:
    from lmae_repair.checkpoints import continuation_text, load_checkpoint, offsets_text

    model, info = load_checkpoint(checkpoint)
    table = key_value_table(str(checkpoint))
    trained_at = info.training.get("trained_mask_ratio")
    serving = f" (trained at {trained_at:.2f})" if trained_at not in (None, info.mask_ratio) else ""
    table.add_row("mask ratio", f"{info.mask_ratio:.2f}{serving}")
    if info.serve_ratios:
        table.add_row("also serves", ", ".join(f"mask ratio {r:.2f}" for r in info.serve_ratios))
    table.add_row("gaps", "any" if info.gap_kind == "any" else "those that follow the image's edges (missed objects)")
    table.add_row("parameters", f"{model.num_parameters() / 1e6:.2f}M")
    table.add_row("model", ", ".join(f"{k}={v}" for k, v in info.model.to_dict().items()))
    table.add_row("label space", info.label_space.describe())
    for key, value in validation_rows(info):
        table.add_row(key, value)
    for key in ("data", "layout", "split", "pairs", "preset", "epochs", "crop", "train_seconds", "device", "init", "command"):
        if info.training.get(key) is not None:
            table.add_row(f"training {key}", str(info.training[key]))
    recipe = training_recipe(info.training)
    if recipe:
        table.add_row("training recipe", recipe)
    if info.training.get("image_short_side"):
        table.add_row("working scale", f"images' short side {info.training['image_short_side']} px (larger pairs are read shrunk to it: README \"Working scale\")")
    if "averaged_from" in info.training:
        averaged = info.training["averaged_from"]
        table.add_row("averaged", f"weights of {len(averaged)} checkpoints: {Path(averaged[0]).name} ... {Path(averaged[-1]).name}")
    if model.branch is not None:
        table.add_row("image branch", "reads the image and the label" if info.model.branch_reads_labels else "reads the image")
        calibrated = f"calibrated ({len(info.int8_calibration)} activation ranges)" if info.int8_calibration else "not calibrated: float32 U-Net on a CPU"
        table.add_row("int8 image branch", calibrated)
    if info.context_patches:
        table.add_row("attends within", f"{info.context_patches} patches of the patches it rebuilds")
    if info.class_bias:
        table.add_row("class offsets", offsets_text(info.label_space.names, info.class_bias))
    if any(info.continuation):
        table.add_row("continuation", continuation_text(info.continuation))
    tuned_on = info.training.get("class_bias_tuned_on")
    if tuned_on and (info.class_bias or any(info.continuation)):
        split = f", split {tuned_on['split']}" if tuned_on.get("split") else ""
        table.add_row("tuned on", f"{tuned_on.get('data')}{split}, {tuned_on.get('pairs')} pairs: PA-mIoU "
                                  f"{tuned_on.get('pa_miou_before')} -> {tuned_on.get('pa_miou_after')}")
    table.add_row("package version", info.package_version)
    console.print(table)


def validation_rows(info) -> list[tuple[str, str]]:
    """`inspect`'s rows for a checkpoint's validation figures: named as validation figures (they
    stood as bare `val_pa_miou`, `epoch`, `tile` beside the training rows), with the data they were
    measured on (kept in the training record but never shown), or why there are none."""
    training, validation = info.training, info.validation
    if not validation:
        averaged = training.get("averaged_from")
        why = (f"an average of {len(averaged)} checkpoints: measure it with lmae-repair evaluate" if averaged
               else "trained without validation data" if "data" in training else "none recorded")
        return [("validation", f"none ({why})")]
    rows = [(f"validation {key.removeprefix('val_')}", str(value)) for key, value in validation.items()]
    if training.get("val_data"):
        split = f", split {training['val_split']}" if training.get("val_split") else ""
        pairs = f", {counted(training['val_pairs'], 'pair')}" if training.get("val_pairs") is not None else ""
        same = training["val_data"] == training.get("data") and training.get("val_split") == training.get("split")
        rows.append(("validation data", f"{training['val_data']}{split}{pairs}" + (" (the training data: not held out)" if same else "")))
    return rows


def training_recipe(training: dict) -> str:
    """The training options a checkpoint records that its command line shows only where they
    were typed (defaults are not): the learning rate, batch, mask mix, class weighting, seed."""
    parts = [f"{label} {training[key]}" for key, label in (("lr", "lr"), ("batch_size", "batch"), ("seed", "seed"))
             if training.get(key) is not None]
    if training.get("mask_mix"):
        parts.append("mask mix " + ":".join(f"{weight:g}" for weight in training["mask_mix"]))
    if training.get("class_weighting"):
        parts.append(f"class weighting {training['class_weighting']} (from {training.get('weights_from', 'labels')})")
    if training.get("photometric"):
        parts.append("photometric augmentation")
    return ", ".join(parts)


def main() -> None:
    printable_stdout()
    sys.stdout = GuardedStdout(sys.stdout)
    try:
        app(args=debug_first(sys.argv[1:]), prog_name="lmae-repair")
    except StdoutUnwritable as exc:  # --help, --version: answered before any command's `guarded`
        try:
            stdout_unwritable(exc)
        except typer.Exit as end:
            sys.exit(end.exit_code)


def printable_stdout() -> None:
    """Let stdout print any file name, as stderr does (Python gives stderr `backslashreplace`).
    Why: where stdout is strict, with PYTHONIOENCODING=utf-8 (set in many Dockerfiles) and a
    file name that is not UTF-8, or an ASCII or cp1252 stdout (a redirected one on Windows) and a
    name such as 日本.png, the run did all its work and then failed on its summary, exit code 2,
    'unexpected UnicodeEncodeError'. A UTF-8 stream writes such a name's own bytes back, as
    Python does in the C locale; any other escapes what it cannot encode."""
    import codecs

    stream = sys.stdout
    if getattr(stream, "errors", None) != "strict" or not hasattr(stream, "reconfigure"):
        return
    utf8 = codecs.lookup(stream.encoding).name == "utf-8"
    stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


class StdoutUnwritable(Exception):
    """stdout itself could not be written (`> /dev/full`, a full disk under a redirect): said as
    such (`guarded`), where it was 'unexpected OSError: [Errno 28] No space left on device',
    naming no file. Not an OSError, so that no handler of a pair's files takes it for one."""


def stdout_unwritable(exc: StdoutUnwritable) -> None:
    """Say `exc` in one line, exit code 2 (`fail`), for `guarded` and for what typer answers
    itself (`--help` into `> /dev/full` was a traceback, exit code 1). What is still buffered
    goes nowhere, not into an error at exit."""
    from lmae_repair.data import silence

    silence(sys.stdout)
    if DEBUG["on"]:
        raise exc
    fail(str(exc))


class GuardedStdout:
    """sys.stdout, whose write and flush errors (a closed reader aside: BrokenPipeError, see
    `PipedConsole`) become `StdoutUnwritable`; everything else is the stream's own."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            from lmae_repair.data import REDIRECT_IT

            raise StdoutUnwritable(f"cannot write to stdout ({exc.strerror or type(exc).__name__}); {REDIRECT_IT}") from exc

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def debug_first(args: list[str]) -> list[str]:
    """`--debug` is an option of lmae-repair itself, but users add it at the end of the command
    that failed (`lmae-repair complete data --debug`), which typer refused as "No such option":
    it is moved before the command."""
    if "--debug" in args[1:] and "--" not in args[: args.index("--debug")]:
        return ["--debug"] + [arg for arg in args if arg != "--debug"]
    return args


if __name__ == "__main__":
    sys.exit(main())
