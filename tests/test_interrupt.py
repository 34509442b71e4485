"""Interrupting runs with SIGKILL and SIGTERM, and two runs at once, with real processes: nothing half-written,
nothing lost, the same result."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import make_paired

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def complete_command(data, out, family, *extra):
    return [sys.executable, "-m", "lmae_repair", "complete", str(data), "--out", str(out),
            "--models", str(family), "--device", "cpu", *extra]


def outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "labels").iterdir())}


def wait_for_logged_pairs(out, count, timeout=120):
    """Return once the run writing into `out` has logged `count` finished pairs (or on timeout)."""
    log = out / ".lmae-progress.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= count):
        time.sleep(0.005)


def test_sigkill_part_way_then_rerun_gives_the_uninterrupted_result(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=60, size=96)
    subprocess.run(complete_command(root, tmp_path / "reference", family), check=True, capture_output=True)

    out = tmp_path / "out"
    process = subprocess.Popen(complete_command(root, out, family, "--batch-size", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_logged_pairs(out, 3)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed part-way, not finished
    written = list((out / "labels").glob("*.png"))
    assert 3 <= len(written) < 60
    for path in written:  # every file under its final name is whole
        Image.open(path).load()

    rerun = subprocess.run(complete_command(root, out, family), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert outputs(out) == outputs(tmp_path / "reference")
    assert not list(out.rglob("*.tmp"))  # temporaries of the killed run are cleaned up


def test_sigterm_says_what_was_kept_and_the_rerun_finishes(tmp_path, family):
    """`kill` or a job scheduler's time limit sends SIGTERM: the run stops as on Ctrl-C, with the
    message and the shell's exit code for SIGTERM, not silently."""
    root = make_paired(tmp_path / "ds", count=200, size=96)
    out = tmp_path / "out"
    process = subprocess.Popen(complete_command(root, out, family, "--batch-size", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_logged_pairs(out, 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait() == 143
    assert "run the same command again" in process.stderr.read()
    written = list((out / "labels").glob("*.png"))
    assert 3 <= len(written) < 200
    rerun = subprocess.run(complete_command(root, out, family), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list((out / "labels").glob("*.png"))) == 200


def test_sigterm_to_the_whole_process_group_with_loader_workers_prints_no_traceback(tmp_path, family):
    """A scheduler's time limit (Slurm, `timeout`, `docker stop`) signals every process of the job,
    the loader workers too: the run stops as on a SIGTERM to it alone, without PyTorch's
    'DataLoader worker ... killed by signal' traceback."""
    root = make_paired(tmp_path / "ds", count=200, size=96)
    out = tmp_path / "out"
    process = subprocess.Popen(complete_command(root, out, family, "--batch-size", "1", "--workers", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_logged_pairs(out, 3)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait() == 143
    stderr = process.stderr.read()
    assert "run the same command again" in stderr
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr


def test_two_runs_into_the_same_output_the_second_refuses_and_the_first_finishes(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=400, size=96)
    out = tmp_path / "out"
    first = subprocess.Popen(complete_command(root, out, family, "--batch-size", "1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_logged_pairs(out, 1)
    second = subprocess.run(complete_command(root, out, family), capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
    assert second.returncode == 2 and "another lmae-repair run is writing here" in second.stderr
    assert first.wait() == 0, first.stderr.read()
    report = json.loads((out / "lmae-report.json").read_text())
    assert report["totals"]["pairs"] == 400 and report["totals"]["failed"] == 0
    assert len(list((out / "labels").glob("*.png"))) == 400


def train_command(data, out, *extra):
    return [sys.executable, "-m", "lmae_repair", "train", str(data), "--out", str(out), "--batch-size", "2",
            "--crop", "32", "--workers", "0", "--device", "cpu", *extra]


def epochs_in(history):
    return [json.loads(line)["epoch"] for line in history.read_text().splitlines()] if history.exists() else []


def test_train_killed_part_way_resumes_from_the_last_saved_epoch(tmp_path):
    root = make_paired(tmp_path / "ds", count=8, size=64)
    run = tmp_path / "run"
    history = run / "mask-0.50" / "history.jsonl"
    process = subprocess.Popen(train_command(root, run, "--epochs", "500"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(epochs_in(history)) < 2:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved = epochs_in(history)
    assert 2 <= len(saved) < 500 and saved == list(range(1, len(saved) + 1))

    total = len(saved) + 2
    resumed = subprocess.run(train_command(root, run, "--epochs", str(total), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {len(saved)}" in resumed.stdout.replace("\n", " ")
    assert epochs_in(history) == list(range(1, total + 1))  # nothing lost, nothing trained twice
    from lmae_repair.checkpoints import load_checkpoint

    _, info = load_checkpoint(run / "mask-0.50" / "last.safetensors")
    assert info.training["epochs"] == total
    assert not list(run.rglob("*.tmp"))


def ctrl_c_on_the_third_batch(monkeypatch):
    """Makes `complete` meet a Ctrl-C as it repairs its third batch; returns the real
    `repair_batch`, to put back."""
    from lmae_repair.complete import Completer

    real, calls = Completer.repair_batch, []

    def interrupted(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(Completer, "repair_batch", interrupted)
    return real


def test_an_interrupted_rerun_with_other_models_leaves_no_report_of_the_earlier_run(tmp_path, family, monkeypatch):
    """The earlier run's lmae-report.json named other checkpoints and other pixel counts than the
    labels the interrupted rerun had already replaced: a script reading it was told wrong."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.complete import Completer

    root, out = make_paired(tmp_path / "ds", count=4, size=40), tmp_path / "out"
    args = ["complete", str(root), "--out", str(out), "--models", str(family), "--device", "cpu", "--batch-size", "1", "--workers", "0"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "lmae-report.json").is_file()

    real = ctrl_c_on_the_third_batch(monkeypatch)
    other_options = args + ["--min-confidence", "0"]
    result = CliRunner().invoke(app, other_options)
    assert result.exit_code == 130
    assert not (out / "lmae-report.json").exists() and not (out / "lmae-report.html").exists()

    monkeypatch.setattr(Completer, "repair_batch", real)
    assert CliRunner().invoke(app, other_options).exit_code == 0
    report = json.loads((out / "lmae-report.json").read_text())
    assert report["totals"]["resumed"] == 2
    for entry in report["pairs"]:  # every entry describes the file OUT holds
        stat = (out / entry["label"]).stat()
        assert entry["output_stamp"] == f"{stat.st_size}:{stat.st_mtime_ns}"


def test_a_ctrl_c_that_library_code_swallows_still_stops_complete(tmp_path, family, monkeypatch):
    """Seen once: Ctrl-C landed while PyTorch was importing lazily; PyTorch swallowed the
    KeyboardInterrupt, the half-imported module then failed with AttributeError, and the run went
    on marking pairs failed. The interrupt is remembered, so the failure stops the run instead."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.complete import Completer
    from lmae_repair.errors import INTERRUPTED

    def swallowed_interrupt(self, index):
        INTERRUPTED["on"] = True  # what the SIGINT handler records before raising
        raise AttributeError("module 'torch._dynamo' has no attribute 'guards'")

    monkeypatch.setattr(Completer, "model", swallowed_interrupt)
    root = make_paired(tmp_path / "ds", count=3)
    result = CliRunner().invoke(app, ["complete", str(root), "--out", str(tmp_path / "out"), "--models", str(family),
                                      "--device", "cpu"])
    assert result.exit_code == 130 and "interrupted" in result.output
    assert "failed:" not in result.output


def test_ctrl_c_keeps_the_pairs_written_so_far_and_says_how_to_go_on(tmp_path, family, monkeypatch):
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.complete import Completer

    real = ctrl_c_on_the_third_batch(monkeypatch)
    root = make_paired(tmp_path / "ds", count=4, size=40)
    args = ["complete", str(root), "--out", str(tmp_path / "out"), "--models", str(family), "--device", "cpu", "--batch-size", "1", "--workers", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130 and "run the same command again" in result.output
    assert len(list((tmp_path / "out" / "labels").glob("*.png"))) == 2
    monkeypatch.setattr(Completer, "repair_batch", real)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and len(list((tmp_path / "out" / "labels").glob("*.png"))) == 4



def test_an_interrupted_complete_says_how_many_pairs_are_written_earlier_runs_included(tmp_path, family, monkeypatch):
    """The message said only 'each pair finished before this point is written': a user could not
    tell whether 2 or 2,000 pairs were left. It counts the pairs OUT holds, those of an earlier
    interrupted run too; a dry run says nothing was written."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app

    from lmae_repair.complete import Completer

    real = ctrl_c_on_the_third_batch(monkeypatch)
    root, out = make_paired(tmp_path / "ds", count=6, size=40), tmp_path / "out"
    args = ["complete", str(root), "--out", str(out), "--models", str(family), "--device", "cpu", "--batch-size", "1", "--workers", "0"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 130 and "interrupted: 2 of 6 pairs written" in first.output, first.output
    monkeypatch.setattr(Completer, "repair_batch", real)
    ctrl_c_on_the_third_batch(monkeypatch)
    second = CliRunner().invoke(app, args)  # 2 from the first run, 2 more before its third batch
    assert second.exit_code == 130 and "interrupted: 4 of 6 pairs written" in second.output, second.output
    assert len(list((out / "labels").glob("*.png"))) == 4
    monkeypatch.setattr(Completer, "repair_batch", real)
    ctrl_c_on_the_third_batch(monkeypatch)
    dry = CliRunner().invoke(app, args + ["--dry-run"])
    assert dry.exit_code == 130 and "nothing was written (--dry-run)" in dry.output, dry.output


def test_a_command_run_in_process_gives_back_the_signal_handlers_and_clears_the_interrupt(tmp_path, family, monkeypatch):
    """From a notebook (`app([...], standalone_mode=False)`) the commands run in the kernel's own
    process. Their Ctrl-C/SIGTERM handlers had stayed installed after the command returned, so a
    SIGTERM to the kernel (`kill`, a scheduler) raised KeyboardInterrupt in it instead of ending
    it; and after an interrupted command the remembered interrupt stayed on, so every later error
    of one pair in library code (`errors.pair_error`) became a KeyboardInterrupt."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.complete import Completer
    from lmae_repair.errors import INTERRUPTED, pair_error

    handlers = lambda: {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # noqa: E731
    before = handlers()
    assert CliRunner().invoke(app, ["inspect", str(family)]).exit_code == 0
    assert handlers() == before

    def swallowed_interrupt(self, index):
        INTERRUPTED["on"] = True  # what the SIGINT handler records before raising
        raise AttributeError("module 'torch._dynamo' has no attribute 'guards'")

    monkeypatch.setattr(Completer, "model", swallowed_interrupt)
    root = make_paired(tmp_path / "ds", count=2)
    result = CliRunner().invoke(app, ["complete", str(root), "--out", str(tmp_path / "out"), "--models", str(family), "--device", "cpu"])
    assert result.exit_code == 130
    assert handlers() == before and not INTERRUPTED["on"]
    assert "unexpected ValueError" in pair_error("x.png", ValueError("odd"))


def test_a_file_system_without_locks_is_said_once_and_the_run_goes_on(tmp_path, family, monkeypatch):
    """On a shared file system that takes no locks (Lustre without `flock`, NFS without its lock
    service), flock fails with ENOLCK or ENOSYS, and every complete or train was refused as
    'another lmae-repair run is writing here' though none was."""
    import errno

    from typer.testing import CliRunner

    from lmae_repair import complete as complete_module
    from lmae_repair.cli import app

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(complete_module.fcntl, "flock", no_locks)
    root = make_paired(tmp_path / "ds", count=2, size=32)
    out = tmp_path / "out"
    args = ["complete", str(root), "--out", str(out), "--models", str(family), "--device", "cpu", "--workers", "0"]
    said = []
    for _ in range(2):  # the second run finds the first's lock file
        result = CliRunner().invoke(app, args)
        said.append(" ".join(result.output.split()))
        assert result.exit_code == 0, result.output
        assert "another lmae-repair run" not in said[-1], said[-1]
    assert len(list((out / "labels").glob("*.png"))) == 2
    assert f"note: {out}: its file system takes no locks (No locks available)" in said[0], said[0]
    assert said[0].count("takes no locks") == 1, said[0]  # though complete locks twice (before the models load, then to write)
