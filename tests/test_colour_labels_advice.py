"""Colour (RGB) labels: complete says to convert them, not to train a family that train would refuse."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lmae_repair.cli import app

runner = CliRunner()


def test_colour_labels_are_told_to_be_converted_not_trained_on(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "data" / "images" / f"{name}.jpg")
        colours = np.array([[128, 64, 128], [70, 70, 70], [0, 0, 142]], np.uint8)  # road, building, car
        Image.fromarray(colours[rng.integers(0, 3, (64, 64))]).save(tmp_path / "data" / "labels" / f"{name}.png")
    result = runner.invoke(app, ["complete", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "colour labels must be saved as class indices first" in result.output
    assert "lmae-repair train" not in result.output  # train skips every colour label: no usable training pair
    trained = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert trained.exit_code == 2 and "no usable training pair" in trained.output
