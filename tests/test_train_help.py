"""lmae-repair train --help on the terminals people have: every option readable."""

import typer.main
from typer.testing import CliRunner

from lmae_repair.cli import app

runner = CliRunner()


def test_train_help_shows_every_option_name_and_help_whole_on_common_terminals():
    names = [name for param in typer.main.get_command(app).commands["train"].params if not param.hidden
             for name in param.opts if name.startswith("--")]
    for width in (80, 100):
        result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": str(width)}, terminal_width=width)
        assert result.exit_code == 0
        for name in names:
            assert f"│ {name} " in result.output, (width, name)
    assert "…" not in result.output  # at 100 columns no help text is cut short either
    assert "random, label-first, background-first, objects" in " ".join(result.output.replace("│", " ").split())
