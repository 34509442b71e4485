"""--images and --labels given one file each, as a newcomer repairing a single pair would."""

from typer.testing import CliRunner

from lmae_repair.cli import app
from conftest import make_paired

runner = CliRunner()


def test_a_file_given_as_images_is_not_called_missing(tmp_path):
    root = make_paired(tmp_path / "ds", count=1)
    image, label = root / "images" / "scene_000.png", root / "labels" / "scene_000.png"
    result = runner.invoke(app, ["complete", "--images", str(image), "--labels", str(label), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {image}: not a folder (--images and --labels name the folders that hold them)")
    missing = runner.invoke(app, ["complete", "--images", str(root / "images"), "--labels", str(root / "gts"), "--out", str(tmp_path / "out")])
    assert missing.output.strip() == f"error: {root / 'gts'}: no such folder"
