"""docs/before_after.py, which the README has a newcomer run after the first complete."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "before_after.py"


def test_a_folder_without_a_report_is_one_line_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "runs" / "example-completed"), str(tmp_path / "p.png")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'runs' / 'example-completed' / 'lmae-report.json'}: no such file; give the --out folder "
        "of a finished lmae-repair complete (not --dry-run)"]
    assert not (tmp_path / "p.png").exists()


def test_a_pair_complete_left_unchanged_is_drawn_not_a_traceback(tmp_path, family):
    """A label with no background-heavy patch is left as it is and its report entry names no
    checkpoint; drawn among the `--pairs` (fewer pairs changed than asked for), it had ended in
    "TypeError: expected str, bytes or os.PathLike object, not NoneType". Its label space is the
    run's (one family, one label space)."""
    import json

    import numpy as np
    from typer.testing import CliRunner

    from conftest import make_paired, write_pair
    from lmae_repair.cli import app

    root = make_paired(tmp_path / "ds", count=1)
    full = np.full((64, 64), 2, np.uint8)  # every pixel a class: nothing to complete
    write_pair(root / "images" / "full.png", root / "labels" / "full.png", np.zeros((64, 64, 3), np.uint8), full)
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["complete", str(root), "--out", str(out), "--models", str(family), "--device", "cpu"]).exit_code == 0
    assert None in [entry["checkpoint"] for entry in json.loads((out / "lmae-report.json").read_text())["pairs"]]
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), str(tmp_path / "p.png")], capture_output=True, text=True)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "p.png").stat().st_size > 0
