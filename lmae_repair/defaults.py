"""Defaults of the command line, shared by its commands, in a module light enough for `--help`.

The library's functions take them as arguments (`repair.finish`'s `min_confidence` defaults to 0,
no floor), so a caller sees what it asked for."""

# A patch is background-heavy from this share of background-or-void pixels (routing, hiding).
DEFAULT_THRESHOLD = 0.5
# A background pixel becomes a class only where the model is at least this sure (repair.merge);
# void is always filled. 0.9 kept the bundled concrete model under 0.5% of intact pixels changed
# (README, "Measured").
DEFAULT_MIN_CONFIDENCE = 0.9
# Training crop, and the tile `complete` repairs in: images smaller than it train too, filled out
# with their mirror image (README, "Training"); a larger crop is refused beyond every image.
DEFAULT_CROP = 224


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (`taskset -c 0`, a Slurm job's
    cpuset, a container's `--cpuset-cpus`), not the machine's count, and no more than Slurm
    granted the task (SLURM_CPUS_PER_TASK, where it set no mask). `os.cpu_count()` counts every
    core of the node: a job granted 2 of a 64-core node got 4 loader processes beside the model's
    threads, all on its 2 cores (PyTorch itself sizes its threads by the mask)."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity masks
        cpus = os.cpu_count() or 1
    try:
        granted = int(os.environ.get("SLURM_CPUS_PER_TASK", ""))
    except ValueError:
        granted = 0
    return max(1, min(cpus, granted) if granted > 0 else cpus)
