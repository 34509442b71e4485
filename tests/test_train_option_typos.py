"""A typo in a train option is told at once, in one line, before the labels are scanned."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lmae_repair.cli import app

runner = CliRunner()


@pytest.mark.parametrize("option, told", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--class-weighting", "inverted"], "unknown class weighting 'inverted'"),
    (["--mask-ratio", "2"], "--mask-ratio must be between 0.01 and 0.99, got 2"),
    (["--device", "gpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_a_wrong_option_value_is_the_one_line_printed(tmp_path, option, told):
    for folder, array in (("images", np.zeros((64, 64, 3), np.uint8)), ("labels", np.ones((64, 64), np.uint8))):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "data" / folder / ("a.jpg" if folder == "images" else "a.png"))
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", *option])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and told in lines[0]  # no scan notes before it
