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
