"""evaluate --max-pairs 1, the first thing a newcomer tries on their own data."""

from typer.testing import CliRunner

from lmae_repair.cli import app
from conftest import make_paired

runner = CliRunner()


def test_the_title_counts_one_pair_in_the_singular(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--max-pairs", "1"])
    assert result.exit_code == 0, result.output
    assert "random damage at 0.5: 1 pair, " in result.output
