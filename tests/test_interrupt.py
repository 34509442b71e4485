"""Interrupting `complete` with SIGKILL and running it again: nothing half-written, same result."""

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


def test_sigkill_part_way_then_rerun_gives_the_uninterrupted_result(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=60, size=96)
    subprocess.run(complete_command(root, tmp_path / "reference", family), check=True, capture_output=True)

    out = tmp_path / "out"
    process = subprocess.Popen(complete_command(root, out, family, "--batch-size", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / ".lmae-progress.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.005)
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
