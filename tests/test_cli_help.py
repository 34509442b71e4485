"""What a newcomer reads first: `lmae-repair --help` and each command's --help."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from typer.testing import CliRunner

from lmae_repair.cli import app

runner = CliRunner()


def test_command_list_gives_each_command_its_sentence_without_a_break_in_the_middle():
    # a wide terminal: every summary fits one row, so a summary split over rows is a stray line break
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 0
    rows = [line.strip("│ ").split(None, 1) for line in result.output.splitlines()]
    for command in app.registered_commands:
        summary = " ".join(inspect.cleandoc(command.callback.__doc__).split("\n\n")[0].split())
        name = command.name or command.callback.__name__
        assert [name, summary] in [[row[0], row[1].strip()] for row in rows if len(row) == 2], (name, result.output)


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


def test_help_answers_on_a_line_that_gives_an_option_twice():
    """A user appends --help to the command they were typing: the help, not the refusal of the
    repeated option that the run itself would get."""
    result = runner.invoke(app, ["evaluate", "data", "-m", "0.25", "-m", "0.5", "--help"])
    assert result.exit_code == 0 and "--mask-ratio" in result.output and "given 2 times" not in result.output
    refused = runner.invoke(app, ["evaluate", "data", "-m", "0.25", "-m", "0.5"])
    assert refused.exit_code == 2 and "given 2 times" in refused.output


def readme_section(readme: str, heading: str) -> str:
    """The text of one README section: from its heading to the next heading of its level or above."""
    import re

    start = readme.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = re.compile(r"^#{1,%d} " % level, re.M).search(readme, start + len(heading))
    return readme[start:end.start() if end else None]


def test_readme_section_of_each_command_names_every_option_it_has():
    """A user reads a command's README section for its options: each visible option must be named
    there (audit, evaluate and tune had options that only --help listed)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sections = {"train": ["## Training", "### Label space"], "average": ["## Training"],
                "complete": ["## Completing a dataset"], "audit": ["## Auditing a dataset"],
                "evaluate": ["## Evaluating checkpoints"], "tune": ["### Tuning class offsets"],
                "push": ["## Sharing checkpoint families"], "inspect": ["## Checkpoints"]}
    commands = typer.main.get_command(app).commands
    assert set(commands) == set(sections)
    for name, command in commands.items():
        text = "".join(readme_section(readme, heading) for heading in sections[name])
        for param in command.params:
            names = [n for n in param.opts + param.secondary_opts if n.startswith("--")]
            if param.hidden or not names:
                continue
            assert any(re.search(re.escape(n) + r"(?![\w-])", text) for n in names), (name, names)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to write stdout to")
@pytest.mark.parametrize("args", [["--version"], ["--help"], ["complete", "--help"]])
def test_help_or_version_into_a_stdout_that_cannot_be_written_is_one_line_not_a_traceback(args):
    """`lmae-repair --version > /dev/full`: typer answers these before any command's `guarded`,
    so the StdoutUnwritable meant to be one line came out as a traceback, exit code 1 (README:
    a stdout that cannot be written is a one-line error, exit code 2)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "lmae_repair", *args], stdout=full, stderr=subprocess.PIPE, text=True)
    told = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert told.startswith("error: cannot write to stdout (No space left on device)"), told
    assert "Traceback" not in told and "Exception ignored" not in told, told


def test_the_app_called_from_python_takes_path_objects_as_a_notebook_passes_them(family, capsys):
    """`app(["inspect", Path(...)], standalone_mode=False)` from a notebook, where paths are
    pathlib objects, had ended in "TypeError: object of type 'PosixPath' has no len()" from
    click's parser. Each argument that is a path is taken as its text."""
    assert app(["inspect", family / "mask-0.25" / "best.safetensors"], standalone_mode=False) in (None, 0)
    assert "mask ratio" in capsys.readouterr().out


@pytest.mark.parametrize("args,code", [(["--help"], 0), ([], 2), (["labels"], 2), (["labels", "twenty"], 2)])
def test_the_label_branch_prototype_prints_its_usage_not_an_index_error(args, code):
    """`python benchmarks/label_branch_prototype.py --help` (or with no arguments) crashed with
    IndexError after loading torch; it now prints how to run it."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "label_branch_prototype.py"
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    assert "label_branch_prototype.py labels 20" in result.stdout + result.stderr
