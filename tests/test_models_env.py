"""LMAE_REPAIR_MODELS set to a folder that is not there: the error says that the variable moved it."""

from typer.testing import CliRunner

from lmae_repair.cli import app
from conftest import make_paired

runner = CliRunner()


def test_a_mistyped_models_folder_is_named_with_the_variable_that_set_it(tmp_path, monkeypatch):
    root = make_paired(tmp_path / "ds", count=1)
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "modles"))
    for extra in ([], ["--models", "camvid"]):
        result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "out"), "--dry-run", *extra])
        assert result.exit_code == 2
        assert f"{tmp_path / 'modles'}, set by LMAE_REPAIR_MODELS" in result.output, result.output
