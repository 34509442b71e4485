"""A train refused before its first epoch leaves nothing behind."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lmae_repair.cli import app

runner = CliRunner()


def test_train_with_an_init_checkpoint_that_is_not_there_leaves_no_run_folder(tmp_path):
    for folder, array in (("images", np.zeros((64, 64, 3), np.uint8)), ("labels", np.ones((64, 64), np.uint8))):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "data" / folder / ("a.jpg" if folder == "images" else "a.png"))
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--crop", "32", "--init", str(tmp_path / "typo.safetensors"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "typo.safetensors: no such checkpoint file" in result.output
    assert not (tmp_path / "run").exists()
