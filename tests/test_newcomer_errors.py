"""Mistakes of a first hour with the tool: each gets one line that says what is wrong and what to do."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lmae_repair.cli import app

runner = CliRunner()


def write_image(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def write_label(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ones((size[1], size[0]), np.uint8)).save(path)


def test_images_without_labels_says_so_and_how_pairs_are_made(tmp_path):
    write_image(tmp_path / "data" / "images" / "a.jpg")
    write_image(tmp_path / "data" / "images" / "b.jpg")
    (tmp_path / "data" / "labels").mkdir()
    result = runner.invoke(app, ["complete", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "2 images without a label" in message and "a.jpg" in message
    assert "pair by file name" in message
    assert not (tmp_path / "out").exists()


def test_labels_named_unlike_their_images_names_one_of_them(tmp_path):
    write_image(tmp_path / "data" / "images" / "frame_001.jpg")
    write_label(tmp_path / "data" / "labels" / "gt_001.png")
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "gt_001.png: no image with the same name" in message and "1 image without a label" in message
