"""Training: the tiny model learns generated scenes, and `lmae-repair train` works end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from typer.testing import CliRunner

from conftest import NUM_CLASSES, as_a_user_without_override, make_cityscapes, make_paired, make_scene, make_voc
from lmae_repair.checkpoints import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from lmae_repair.cli import app
from lmae_repair.data import discover
from lmae_repair.labelspace import LabelSpace
from lmae_repair.losses import lmae_loss
from lmae_repair.masking import expand_patch_mask, mixed_training_mask
from lmae_repair.model import LabelMAE, ModelConfig, preset_config
from lmae_repair.quantise import quantised_branch
from lmae_repair.train import validate

runner = CliRunner()


def test_tiny_model_overfits_a_few_generated_pairs_to_pa_miou_above_0_9(tmp_path):
    torch.manual_seed(0)
    root = make_paired(tmp_path / "ds", count=4, size=64, seed=3)
    pairs = discover(root).pairs
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    rng = np.random.default_rng(3)
    scenes = [make_scene(rng, 64, 64) for _ in range(4)]
    images = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i, _ in scenes])
    labels = torch.stack([torch.from_numpy(l).long() for _, l in scenes])

    model = LabelMAE(preset_config("tiny", NUM_CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    no_objects = torch.zeros_like(labels, dtype=torch.bool)
    for step in range(150):
        inputs, mask, _ = mixed_training_mask(labels, no_objects, 16, space, 0.5, generator=generator)
        loss = lmae_loss(model(images, inputs, mask), labels, None, expand_patch_mask(mask, (4, 4), 16))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    scores = validate(model, pairs, space, 0.5, tile=64, device=torch.device("cpu"), seed=1)
    assert scores["val_pa_miou"] > 0.9, scores


def test_train_command_writes_checkpoints_that_reload_with_metadata(tmp_path):
    make_paired(tmp_path / "ds" / "train", count=6, size=64, seed=1)
    make_paired(tmp_path / "ds" / "val", count=2, size=64, seed=2)
    (tmp_path / "ds" / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "ds"), "--split", "train", "--val-split", "val", "--out", str(out),
         "--mask-ratio", "0.25", "--mask-ratio", "0.5", "--epochs", "2", "--batch-size", "4",
         "--crop", "64", "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    assert f"then lmae-repair complete DATA --models {out}" in " ".join(result.output.split())  # what to do next
    for ratio in ("0.25", "0.50"):
        folder = out / f"mask-{ratio}"
        for name in ("best.safetensors", "last.safetensors", "state.pt", "history.jsonl"):
            assert (folder / name).is_file(), name
        model, info = load_checkpoint(folder / "last.safetensors")
        assert info.mask_ratio == float(ratio)
        assert info.label_space.names == ["background", "red", "green", "blue"]
        assert info.label_space.background_id == 0 and info.label_space.void_id == 255
        assert info.training["pairs"] == 6 and info.training["epochs"] == 2
        assert info.training["image_short_side"] == 64  # the scale larger pairs are read at (repair.working_scale)
        assert 0.0 <= info.validation["val_pa_miou"] <= 1.0
        assert len((folder / "history.jsonl").read_text().splitlines()) == 2
    inspected = runner.invoke(app, ["inspect", str(out / "mask-0.50" / "best.safetensors"), "--json"])
    assert inspected.exit_code == 0 and json.loads(inspected.output)["mask_ratio"] == 0.5
    whole_run = runner.invoke(app, ["inspect", str(out)])  # the run folder: one table per mask ratio
    assert whole_run.exit_code == 0 and whole_run.output.count("│ mask ratio ") == 2, whole_run.output
    as_json = runner.invoke(app, ["inspect", str(out), "--json"])  # one JSON document that names each file
    listed = json.loads(as_json.output)
    assert [Path(item["path"]).parent.name for item in listed] == ["mask-0.25", "mask-0.50"]
    assert [item["mask_ratio"] for item in listed] == [0.25, 0.5]


def test_train_for_object_gaps_marks_its_checkpoints_for_routing(tmp_path):
    root = make_voc(tmp_path / "voc", count=4, size=64)
    args = ["train", str(root), "--split", "train", "--out", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "4", "--crop", "64", "--workers", "0", "--mask-ratio", "0.25"]
    result = runner.invoke(app, args + ["--gaps", "objects", "--mask-mix", "1:1:1:3"])
    assert result.exit_code == 0, result.output
    _, info = load_checkpoint(tmp_path / "run" / "mask-0.25" / "best.safetensors")
    assert info.gap_kind == "objects" and info.training["mask_mix"] == [1.0, 1.0, 1.0, 3.0]
    wrong = runner.invoke(app, args + ["--gaps", "cars"])
    assert wrong.exit_code != 0 and "--gaps must be one of any, objects" in wrong.output and "Traceback" not in wrong.output


def test_resume_continues_from_the_last_saved_epoch(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    args = ["train", str(root), "--split", "train", "--val-split", "val", "--out", str(tmp_path / "run"),
            "--batch-size", "4", "--crop", "64", "--workers", "0"]
    first = runner.invoke(app, args + ["--epochs", "1"])
    assert first.exit_code == 0
    assert f"next: lmae-repair tune {root} --split val --models" in " ".join(first.output.split())  # pasteable
    again = runner.invoke(app, args + ["--epochs", "1"])
    assert again.exit_code == 2 and "--resume" in again.output
    for changed, said in ((["--lr", "1e-3"], "--lr 0.001 (started with 0.0005)"), (["--crop", "32"], "--crop 32"),
                          (["--gaps", "objects"], "--gaps objects (started with any)")):
        given = [a for i, a in enumerate(args) if changed[0] not in (a, args[i - 1])]  # each option once: a repeat is refused
        refused = runner.invoke(app, given + ["--epochs", "3", "--resume", *changed])
        assert refused.exit_code == 2 and said in refused.output and "--init" in refused.output, refused.output
    resumed = runner.invoke(app, args + ["--epochs", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "trained on" not in resumed.output
    history = (tmp_path / "run" / "mask-0.50" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3]
    _, info = load_checkpoint(tmp_path / "run" / "mask-0.50" / "last.safetensors")
    assert info.training["epochs"] == 3 and info.label_space.palette is not None
    other = make_voc(tmp_path / "other", count=6, size=64, seed=1)
    moved = runner.invoke(app, [str(other) if a == str(root) else a for a in args] + ["--epochs", "4", "--resume"])
    assert moved.exit_code == 0 and f"trained on {root.resolve()}" in " ".join(moved.output.split())


def test_a_resumed_run_trains_as_the_uninterrupted_run_did(tmp_path, monkeypatch):
    """Stopped after epoch 1 and resumed, the run's later epochs equal those of one straight run
    (same crops, masks and drop-path), with a loading worker in one and none in the other."""
    from dataclasses import replace

    import lmae_repair.train as training

    preset = training.preset_config
    monkeypatch.setattr(training, "preset_config", lambda *a, **k: replace(preset(*a, **k), drop_path=0.1))  # as base has
    root = make_paired(tmp_path / "ds", count=4, size=64)
    args = ["train", str(root), "--batch-size", "2", "--crop", "32", "--seed", "3"]
    straight = runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--epochs", "3", "--workers", "1"])
    assert straight.exit_code == 0, straight.output
    assert runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--epochs", "1", "--workers", "0"]).exit_code == 0
    assert runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--epochs", "3", "--workers", "0", "--resume"]).exit_code == 0
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / run / "mask-0.50" / "history.jsonl").read_text().splitlines()]
              for run in ("a", "b")]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_a_time_budget_ends_the_run_at_an_epochs_end_with_its_checkpoints_written(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    args = ["train", str(root), "--split", "train", "--val-split", "val", "--out", str(tmp_path / "run"),
            "--batch-size", "4", "--crop", "64", "--workers", "0"]
    limited = runner.invoke(app, args + ["--epochs", "5", "--max-minutes", "0.0001"])
    assert limited.exit_code == 0, limited.output
    assert "also training pairs" not in limited.output  # separate splits
    whole = runner.invoke(app, ["train", str(root), "--val-split", "val", "--out", str(tmp_path / "whole"),  # no --split
                                "--batch-size", "4", "--crop", "64", "--workers", "0", "--epochs", "1", "--val-max-pairs", "1"])
    assert whole.exit_code == 0 and "1 of the 1 validation pairs are also training pairs (pass --split" in " ".join(whole.output.split())
    assert load_checkpoint(tmp_path / "whole" / "mask-0.50" / "last.safetensors")[1].training["val_pairs"] == 1
    assert "stopped after epoch 1" in limited.output and "--resume" in limited.output
    folder = tmp_path / "run" / "mask-0.50"
    assert [json.loads(line)["epoch"] for line in (folder / "history.jsonl").read_text().splitlines()] == [1]
    assert (folder / "best.safetensors").is_file() and (folder / "last.safetensors").is_file()
    resumed = runner.invoke(app, args + ["--epochs", "2", "--resume"])
    assert resumed.exit_code == 0 and "stopped" not in resumed.output, resumed.output
    assert [json.loads(line)["epoch"] for line in (folder / "history.jsonl").read_text().splitlines()] == [1, 2]


def test_init_fine_tunes_from_a_checkpoint_and_refuses_another_architecture(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    args = ["train", str(root), "--split", "train", "--batch-size", "4", "--crop", "64", "--workers", "0", "--epochs", "1"]
    assert runner.invoke(app, args + ["--out", str(tmp_path / "a")]).exit_code == 0
    start = tmp_path / "a" / "mask-0.50" / "last.safetensors"
    tuned = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--init", str(start), "--lr", "1e-12"])
    assert tuned.exit_code == 0, tuned.output
    before, _ = load_checkpoint(start)
    after, info = load_checkpoint(tmp_path / "b" / "mask-0.50" / "last.safetensors")
    assert info.training["init"] == str(start)
    weight = "decoder_pred.weight" if "decoder_pred.weight" in after.state_dict() else next(iter(after.state_dict()))
    assert torch.allclose(before.state_dict()[weight], after.state_dict()[weight], atol=1e-6)  # lr ~0: weights kept
    other = runner.invoke(app, args + ["--out", str(tmp_path / "c"), "--init", str(family / "mask-0.50" / "best.safetensors")])
    assert other.exit_code == 2 and "--init" in other.output and "architecture" in other.output and "enc_depth 1 (this run: " in other.output
    classes = make_paired(tmp_path / "six", count=4, size=64)  # another label space: said first, as no option fixes it
    (classes / "classes.txt").write_text("background\na\nb\nc\nd\ne\n")
    another = runner.invoke(app, ["train", str(classes), "--batch-size", "4", "--crop", "64", "--workers", "0", "--epochs", "1",
                                  "--out", str(tmp_path / "d"), "--init", str(start)])
    assert another.exit_code == 2 and "label space" in another.output and "architecture" not in another.output, another.output


def test_a_resumed_fine_tune_names_the_checkpoint_it_started_from_and_keeps_its_image_branch(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    args = ["train", str(root), "--split", "train", "--batch-size", "4", "--crop", "64", "--workers", "0"]
    assert runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--epochs", "1", "--image-branch", "4"]).exit_code == 0
    start = tmp_path / "a" / "mask-0.50" / "last.safetensors"
    first = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--epochs", "1", "--init", str(start)])
    assert first.exit_code == 0, first.output
    # resumed as users do, without repeating --init: was refused ("saved run differs from this command")
    # and, for a start without an image branch, recorded "init": None, as if trained from random weights
    resumed = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    info = load_checkpoint(tmp_path / "b" / "mask-0.50" / "last.safetensors")[1]
    assert info.training["epochs"] == 2 and info.training["init"] == str(start.resolve()) and info.model.image_branch == 4
    other = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--epochs", "3", "--resume", "--init", str(tmp_path / "x.safetensors")])
    assert other.exit_code == 0 and "--init" in other.output and "is not used when it resumes" in " ".join(other.output.split())
    assert load_checkpoint(tmp_path / "b" / "mask-0.50" / "last.safetensors")[1].training["init"] == str(start.resolve())


def test_bad_options_and_missing_data_give_one_line_errors(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such dataset folder" in result.output
    root = make_paired(tmp_path / "ds", count=2, size=64)
    result = runner.invoke(app, ["train", str(root), "--mask-ratio", "1.5", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--mask-ratio" in result.output
    result = runner.invoke(app, ["train", str(root), "--mask-mix", "1:2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--mask-mix" in result.output
    assert "Traceback" not in result.output


def test_unusable_pairs_are_skipped_with_a_message(tmp_path):
    root = make_paired(tmp_path / "ds", count=4, size=64)
    (root / "labels" / "scene_000.png").write_text("broken")
    result = runner.invoke(app, ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "64",
                                 "--workers", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output  # trained, but some pairs failed
    assert "scene_000.png: unreadable label" in result.output
    assert "no validation pairs" in result.output and "lowest training loss" in " ".join(result.output.split())
    _, info = load_checkpoint(tmp_path / "run" / "mask-0.50" / "best.safetensors")
    assert info.training["pairs"] == 3


def test_labels_with_no_annotated_pixel_are_left_out_of_training_with_a_note(tmp_path):
    """Cityscapes' gtFine/test labels are all void: `train DATA` without --split had trained on
    them silently, spending crops on nothing."""
    root = make_cityscapes(tmp_path / "cs")
    blank = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.full((64, 128), 255, np.uint8)).save(blank)
    result = runner.invoke(app, ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                 "--workers", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"note: 1 training label holds no annotated pixel (all void), left out (first: {blank})" in output  # not "1 training labels hold"
    assert "pass --split" in output
    _, info = load_checkpoint(tmp_path / "run" / "mask-0.50" / "best.safetensors")
    assert info.training["pairs"] == 6


def test_training_does_not_read_the_cityscapes_label_ids_beside_the_train_ids(tmp_path):
    """Training reads 255 as void whatever the _gtFine_labelIds.png says (only complete keeps the
    annotated 255 pixels): it must neither spend a second decode per crop on that file nor skip a
    pair because of it."""
    root = make_cityscapes(tmp_path / "cs")
    for label in (root / "gtFine" / "train").rglob("*_labelTrainIds.png"):
        label.with_name(label.name.replace("_labelTrainIds", "_labelIds")).write_bytes(b"not a png")
    result = runner.invoke(app, ["train", str(root), "--split", "train", "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                 "--workers", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "labelIds" not in result.output


def test_images_without_a_label_are_noted_not_left_out_silently(tmp_path):
    """A Cityscapes tree whose train ids were made for one city only: train had used the rest
    without a word (complete notes such images; README: "an image without a label is only noted")."""
    root = make_cityscapes(tmp_path / "cs")
    for label in (root / "gtFine" / "val").rglob("*_labelTrainIds.png"):
        label.rename(label.with_name(label.name.replace("_labelTrainIds", "_labelIds")))
    result = runner.invoke(app, ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                 "--workers", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "note: 2 images have no label and are not trained on (first: " in output
    assert "lindau_000000_000019_leftImg8bit.png: no lindau_000000_000019_gtFine_labelTrainIds.png" in output


def test_labels_marking_void_255_against_a_classes_txt_void_line_get_the_option_that_fixes_it(tmp_path):
    root = make_paired(tmp_path / "ds", count=3, size=64)
    for path in (root / "labels").glob("*.png"):
        label = np.array(Image.open(path))
        label[:8] = 255
        Image.fromarray(label).save(path)
    (root / "classes.txt").write_text("background\nred\ngreen\nblue\nvoid\n")  # void is 4 here
    args = ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "64", "--workers", "0"]
    refused = runner.invoke(app, args + ["--out", str(tmp_path / "a")])
    assert refused.exit_code == 2
    assert "3 labels hold the value 255" in refused.output and "pass --void-id 255" in refused.output
    fixed = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--void-id", "255"])
    assert fixed.exit_code == 0, fixed.output
    assert "--void-id 255" not in fixed.output


def test_binary_masks_of_0_and_255_are_refused_with_what_255_means_here(tmp_path):
    """255 is void by default, so 0/255 masks (common in medical and remote-sensing data) would
    train a one-class model on nothing: refused, and audit says why every label looks empty."""
    root = make_paired(tmp_path / "ds", count=3, size=64)
    for path in (root / "labels").glob("*.png"):
        Image.fromarray((np.array(Image.open(path)) > 0).astype(np.uint8) * 255).save(path)
    result = runner.invoke(app, ["train", str(root), "--epochs", "1", "--crop", "64", "--workers", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "single class" in result.output and "0/1 masks" in result.output
    assert not (tmp_path / "r").exists()
    audited = runner.invoke(app, ["audit", str(root), "--device", "cpu"])
    assert "the labels hold only 0 and 255" in " ".join(audited.output.split())  # why every label looks empty


def test_masks_of_0_and_255_with_soft_edges_are_refused_not_read_as_250_classes(tmp_path):
    """0/255 masks resized with bilinear interpolation hold every value between at their edges:
    train counted 250 classes from them (a 48M-parameter model, the objects void) and trained
    without a word. Refused, saying to threshold them; --num-classes says the values are classes."""
    root = make_paired(tmp_path / "ds", count=3, size=64)
    for path in (root / "labels").glob("*.png"):
        mask = Image.fromarray((np.array(Image.open(path)) > 0).astype(np.uint8) * 255)
        mask.resize((96, 96), Image.BILINEAR).resize((64, 64), Image.BILINEAR).save(path)
    args = ["train", str(root), "--epochs", "1", "--crop", "64", "--workers", "0", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "soft edges" in result.output and "(mask >= 128)" in result.output, result.output
    assert not (tmp_path / "r").exists()
    from lmae_repair.families import soft_edged_masks

    histogram = np.zeros(256, np.int64)
    histogram[[0, 1, 2, 255]] = [900, 50, 30, 20]  # three classes and void: not soft edges
    assert soft_edged_masks(histogram, 3) is None
    histogram = np.zeros(256, np.int64)  # 21 classes (Pascal VOC in grey, no class list), mostly background, 255 void
    histogram[0], histogram[1:21], histogram[255] = 9000, 20, 500
    assert soft_edged_masks(histogram, 21) is None


def test_validation_labels_beyond_the_classes_counted_from_training_say_how_to_give_the_count(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    train_names = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for path in (root / "SegmentationClass").glob("*.png"):
        label = Image.open(path)
        values = np.array(label)
        values[values == 3] = 2
        if path.stem not in train_names:
            values[:4, :4] = 3  # a class the training labels never show
        out = Image.fromarray(values)
        out.putpalette(label.getpalette())
        out.save(path)
    result = runner.invoke(app, ["train", str(root), "--split", "train", "--val-split", "val", "--epochs", "1", "--crop", "64",
                                 "--batch-size", "4", "--workers", "0", "--out", str(tmp_path / "r")])
    text = " ".join(result.output.split())
    assert "the 3 classes were counted from the training labels' largest value" in text and "--num-classes" in text


def test_image_branch_grows_from_a_checkpoint_without_one_and_starts_from_its_predictions(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    args = ["train", str(root), "--split", "train", "--batch-size", "4", "--crop", "64", "--workers", "0", "--epochs", "1"]
    assert runner.invoke(app, args + ["--out", str(tmp_path / "a")]).exit_code == 0
    start = tmp_path / "a" / "mask-0.50" / "last.safetensors"
    grown = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--init", str(start), "--image-branch", "4", "--lr", "1e-12"])
    assert grown.exit_code == 0, grown.output
    before, _ = load_checkpoint(start)
    after, info = load_checkpoint(tmp_path / "b" / "mask-0.50" / "last.safetensors")
    assert info.model.image_branch == 4 and after.branch is not None
    assert quantised_branch(after.branch, info.int8_calibration) is not None  # calibrated for int8 on a CPU
    inspected = runner.invoke(app, ["inspect", str(tmp_path / "b" / "mask-0.50" / "last.safetensors")])
    assert inspected.exit_code == 0 and "int8 image branch" in inspected.output and "calibrated (" in inspected.output
    image, label = torch.rand(1, 3, 64, 64), torch.randint(0, 4, (1, 64, 64))
    mask = torch.rand(1, 16) < 0.5
    with torch.no_grad():
        assert torch.allclose(before.float()(image, label, mask), after.float()(image, label, mask), atol=1e-3)
    tuned = runner.invoke(app, args + ["--out", str(tmp_path / "c"), "--init", str(tmp_path / "b" / "mask-0.50" / "last.safetensors")])
    assert tuned.exit_code == 0, tuned.output  # fine-tuning keeps the checkpoint's branch
    assert load_checkpoint(tmp_path / "c" / "mask-0.50" / "last.safetensors")[1].model.image_branch == 4
    other = runner.invoke(app, args + ["--out", str(tmp_path / "d"), "--init", str(tmp_path / "b" / "mask-0.50" / "last.safetensors"), "--image-branch", "8"])
    assert other.exit_code == 2 and "--image-branch" in other.output


def test_a_branch_grows_to_read_the_labels_starting_from_its_predictions_and_complete_uses_it(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    args = ["train", str(root), "--split", "train", "--batch-size", "4", "--crop", "64", "--workers", "0", "--epochs", "1"]
    assert runner.invoke(app, args + ["--out", str(tmp_path / "a"), "--image-branch", "4"]).exit_code == 0
    start = tmp_path / "a" / "mask-0.50" / "last.safetensors"
    grown = runner.invoke(app, args + ["--out", str(tmp_path / "b"), "--init", str(start), "--branch-reads-labels", "--lr", "1e-12"])
    assert grown.exit_code == 0, grown.output
    before, _ = load_checkpoint(start)
    after, info = load_checkpoint(tmp_path / "b" / "mask-0.50" / "last.safetensors")
    assert info.model.branch_reads_labels and info.model.image_branch == 4
    assert quantised_branch(after.branch, info.int8_calibration) is not None  # calibrated with labels, for int8 on a CPU
    image, label = torch.rand(1, 3, 64, 64), torch.randint(0, 4, (1, 64, 64))
    mask = torch.rand(1, 16) < 0.5
    with torch.no_grad():
        assert torch.allclose(before.float()(image, label, mask), after.float()(image, label, mask), atol=1e-3)
    grown_file = tmp_path / "b" / "mask-0.50" / "last.safetensors"
    inspected = runner.invoke(app, ["inspect", str(grown_file)])
    assert inspected.exit_code == 0 and "reads the image and the label" in inspected.output
    tuned = runner.invoke(app, args + ["--out", str(tmp_path / "c"), "--init", str(grown_file)])
    assert tuned.exit_code == 0, tuned.output  # fine-tuning keeps what the branch reads
    assert load_checkpoint(tmp_path / "c" / "mask-0.50" / "last.safetensors")[1].model.branch_reads_labels
    completed = runner.invoke(app, ["complete", str(root), "--models", str(grown_file), "--out", str(tmp_path / "done")])
    assert completed.exit_code == 0, completed.output
    assert len(list((tmp_path / "done").rglob("*.png"))) == 6
    no_branch = runner.invoke(app, args + ["--out", str(tmp_path / "d"), "--branch-reads-labels"])
    assert no_branch.exit_code == 2 and "--image-branch" in no_branch.output


def test_a_branch_that_reads_labels_never_sees_the_true_labels_of_patches_hidden_by_a_patch_strategy():
    from lmae_repair.train import branch_view

    label = torch.randint(0, 4, (3, 16, 16))
    hidden = torch.zeros(3, 16, 16, dtype=torch.bool)
    hidden[:, :8] = True
    seen = branch_view(label, hidden, ["random", "objects", "background-first"], num_classes=5)
    assert (seen[0][:8] == 5).all() and (seen[2][:8] == 5).all()  # void: no class
    assert torch.equal(seen[1], label[1])  # the objects strategy's input is a damaged label, seen whole
    assert torch.equal(seen[:, 8:], label[:, 8:])


def test_kept_epochs_average_into_a_checkpoint_that_complete_uses(tmp_path):
    root = make_voc(tmp_path / "voc", count=6, size=64)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(root), "--split", "train", "--val-split", "val", "--out", str(out),
                                 "--epochs", "3", "--batch-size", "4", "--crop", "64", "--workers", "0", "--keep-epochs"])
    assert result.exit_code == 0, result.output
    folder = out / "mask-0.50"
    assert sorted(p.name for p in folder.glob("epoch-*")) == [f"epoch-00{e}.safetensors" for e in (1, 2, 3)]
    last, _ = load_checkpoint(folder / "last.safetensors")
    third, _ = load_checkpoint(folder / "epoch-003.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), third.state_dict().values()))
    inspected = runner.invoke(app, ["inspect", str(out)])  # kept epochs do not count as more checkpoints
    assert inspected.exit_code == 0 and inspected.output.count("│ mask ratio ") == 1, inspected.output

    averaged_file = tmp_path / "family" / "mask-0.50.safetensors"
    result = runner.invoke(app, ["average", str(folder), "--out", str(averaged_file)])
    assert result.exit_code == 0 and "averaged 3 checkpoints" in result.output, result.output
    averaged, info = load_checkpoint(averaged_file)
    epochs = [load_checkpoint(folder / f"epoch-00{e}.safetensors")[0].state_dict() for e in (1, 2, 3)]
    for name, tensor in averaged.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, sum(epoch[name] for epoch in epochs) / 3, atol=2e-3), name  # float16 file
    assert len(info.training["averaged_from"]) == 3
    completed = runner.invoke(app, ["complete", str(root), "--models", str(averaged_file.parent), "--out", str(tmp_path / "fixed")])
    assert completed.exit_code == 0, completed.output

    empty = runner.invoke(app, ["average", str(tmp_path / "voc"), "--out", str(tmp_path / "x.safetensors")])
    assert empty.exit_code == 2 and "needs at least two checkpoints, found none" in empty.output
    single = runner.invoke(app, ["average", str(averaged_file), "--out", str(tmp_path / "x.safetensors")])
    assert single.exit_code == 2 and "found only" in single.output


def test_device_names_are_checked_with_a_one_line_error(tmp_path, monkeypatch):
    """`--device cuda:3` on a machine without that GPU says so at once, instead of a CUDA error
    later; nonsense names are refused with the accepted forms."""
    root = make_paired(tmp_path / "ds", count=2, size=32)
    for name in ("gpu", "cuda:x", "cpu:1"):
        result = runner.invoke(app, ["train", str(root), "--device", name, "--out", str(tmp_path / "out")])
        assert result.exit_code != 0 and "expected auto, cpu, cuda or cuda:N" in result.output, result.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, ["train", str(root), "--device", "cuda:3", "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "has 1 CUDA GPU(s)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_training_crops_of_a_small_pair_show_its_mirror_not_black_void(tmp_path):
    """Inference extends a pair smaller than a tile by its mirror image; training crops' images must
    look the same, or the model learns borders it will never meet. Their labels there are void:
    mirrored, they would show the hidden patches' answers (see the test of an image smaller than
    the crop below)."""
    from lmae_repair.dataset import CropDataset

    root = make_paired(tmp_path / "ds", count=1, size=40)
    index = discover(root)
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    image, label, _ = CropDataset(index.pairs, space, crop=64, augment=False)[0]
    assert image.shape == (3, 64, 64) and label.shape == (64, 64)
    assert (label[40:] == 255).all() and (label[:, 40:] == 255).all() and (label[:40, :40] != 255).all()
    assert torch.equal(image[:, :, 40:], image[:, :, :40].flip(-1)[:, :, :24])


def test_train_with_no_readable_label_says_so_not_that_the_classes_are_unknown(tmp_path):
    root = make_paired(tmp_path / "ds", count=1, size=32)
    label = next((root / "labels").iterdir())
    label.write_bytes(b"")
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 2 and "no usable training pair" in result.output and "empty file" in result.output
    assert "--num-classes" not in result.output


def test_gap_counts_hold_only_the_small_objects_an_objects_checkpoint_rebuilds(tmp_path):
    """--weights-from gaps: a class that covers most of the label but never forms a small object
    (a road) weighs nothing in the counts; small objects count whole."""
    from PIL import Image

    from lmae_repair.dataset import gap_pixel_counts

    root = make_paired(tmp_path / "ds", count=1, size=64)
    label = np.full((64, 64), 1, np.uint8)  # one region of class 1: 4096 pixels, too large
    label[4:12, 4:12] = 2  # 64 pixels
    label[40:44, 40:50] = 3  # 40 pixels
    label[50:52, 2:4] = 255  # void never counts
    Image.fromarray(label).save(next((root / "labels").iterdir()))
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    counts = gap_pixel_counts(discover(root).pairs, space, crop=64)  # largest object: 10% of 64 x 64
    assert counts[:4] == [0, 0, 64, 40] and sum(counts) == 104


def test_weights_from_gaps_is_recorded_and_a_wrong_source_is_a_one_line_error(tmp_path):
    root = make_voc(tmp_path / "voc", count=4, size=64)
    args = ["train", str(root), "--split", "train", "--out", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "4", "--crop", "64", "--workers", "0", "--mask-ratio", "0.25", "--gaps", "objects"]
    result = runner.invoke(app, args + ["--weights-from", "gaps"])
    assert result.exit_code == 0, result.output
    assert "loss weights (paper, from gaps)" in result.output
    _, info = load_checkpoint(tmp_path / "run" / "mask-0.25" / "best.safetensors")
    assert info.training["weights_from"] == "gaps"
    wrong = runner.invoke(app, args + ["--weights-from", "crops"])
    assert wrong.exit_code != 0 and "--weights-from: expected labels or gaps" in wrong.output
    assert "Traceback" not in wrong.output


def test_a_run_started_inside_the_dataset_writes_beside_it_and_never_under_it(tmp_path, monkeypatch):
    root = make_paired(tmp_path / "ds", count=4, size=64)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    args = ["--epochs", "1", "--batch-size", "4", "--crop", "64", "--workers", "0"]
    inside = runner.invoke(app, ["train", str(root), "--out", str(root / "labels" / "run"), *args])
    assert inside.exit_code == 2 and "would be written inside the input" in inside.output
    monkeypatch.chdir(root)  # `cd ds && lmae-repair train`: DATA is the current folder
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ds-runs" / "mask-0.50" / "last.safetensors").is_file()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_an_interrupted_run_says_how_to_go_on(tmp_path, monkeypatch):
    import lmae_repair.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lmae_repair.train, "train", interrupted)
    root = make_paired(tmp_path / "ds", count=2, size=64)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--crop", "64", "--workers", "0"])
    assert result.exit_code == 130 and "nothing was saved; run the same command again" in result.output  # no epoch ended


def test_photometric_training_crops_change_the_image_only_and_record_it(tmp_path):
    """--photometric: the crops' images are blurred, shrunk, re-encoded or brightened at random
    (never their labels), and the checkpoint says it was trained so; without it images are as read."""
    from lmae_repair.dataset import CropDataset, photometric_jitter

    root = make_paired(tmp_path / "ds", count=2, size=64)
    index = discover(root)
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    torch.manual_seed(0)
    plain = [CropDataset(index.pairs, space, crop=64, augment=False)[0] for _ in range(2)]
    assert torch.equal(plain[0][0], plain[1][0])
    image = plain[0][0]
    changed = [photometric_jitter(image, np.random.default_rng(seed)) for seed in range(20)]
    assert all(out.shape == image.shape and out.dtype == image.dtype and 0.0 <= out.min() and out.max() <= 1.0 for out in changed)
    differs = [float((out - image).abs().mean()) > 0.01 for out in changed]
    assert 5 <= sum(differs) < 20  # most draws change the image, some leave it as read
    torch.manual_seed(1)
    jittered = CropDataset(index.pairs, space, crop=64, augment=True, photometric=True)
    for _ in range(4):  # the whole 64 x 64 pair, perhaps flipped: its label as read
        label = jittered[0][1]
        assert torch.equal(label, plain[0][1]) or torch.equal(label, plain[0][1].flip(-1))
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2",
                                 "--crop", "32", "--workers", "0", "--photometric"])
    assert result.exit_code == 0, result.output
    _, info = load_checkpoint(next((tmp_path / "run").rglob("last.safetensors")))
    assert info.training["photometric"] is True


def test_runs_that_cannot_be_meant_are_refused_before_any_training(tmp_path):
    """Each refused before an epoch runs (no run folder is made): two ratios sharing a folder, a
    ratio that hides no patch, labels with no annotated pixel, validation data of other classes
    or holding the run folder, a run folder whose state.pt is gone."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    args = ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "64", "--workers", "0"]
    out = tmp_path / "r"
    for extra, said in ((["-m", "0.5", "-m", "0.501"], "would both train into mask-0.50/"),
                        (["-m", "0.01"], "hides none of the 16 patches"),
                        (["--patch-size", "128"], "--crop 64 must be a multiple of the patch size 128, at least 256"),
                        (["--patch-size", "64"], "--crop 64 must be a multiple of the patch size 64, at least 128")):
        result = runner.invoke(app, args + ["--out", str(out), *extra])
        assert result.exit_code == 2 and said in result.output, result.output
        assert not out.exists()
    void = make_paired(tmp_path / "void", count=2, size=64)
    for label in (void / "labels").iterdir():
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(label)
    result = runner.invoke(app, ["train", str(void), "--num-classes", "3", "--out", str(out), "--crop", "64"])
    assert result.exit_code == 2 and "no training label holds an annotated pixel" in result.output
    (root / "classes.txt").write_text("void\nsky\nroad\ncar\n")  # void first: trained as a class, it would never be filled
    result = runner.invoke(app, args + ["--out", str(out)])
    assert result.exit_code == 2 and "class 0 is named 'void'" in result.output and not out.exists(), result.output
    (root / "classes.txt").unlink()
    other = make_paired(tmp_path / "other", count=2, size=64)
    (other / "classes.txt").write_text("sky\nroad\ncar\ntree\n")
    (root / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    result = runner.invoke(app, args + ["--out", str(out), "--val", str(other)])
    assert result.exit_code == 2 and "are not the training data's" in result.output, result.output
    (other / "classes.txt").unlink()
    result = runner.invoke(app, args + ["--out", str(other / "run"), "--val", str(other)])
    assert result.exit_code == 2 and "inside the input" in result.output and not (other / "run").exists()
    assert runner.invoke(app, args + ["--out", str(out)]).exit_code == 0
    (out / "mask-0.50" / "state.pt").unlink()
    for again in ([], ["--resume"]):
        result = runner.invoke(app, args + ["--out", str(out), *again])
        assert result.exit_code == 2 and "mask-0.50" in result.output, result.output


def test_average_refuses_to_write_over_one_of_its_inputs_and_counts_each_file_once(tmp_path):
    root = make_paired(tmp_path / "ds", count=2, size=64)
    out = tmp_path / "r"
    args = ["train", str(root), "--epochs", "2", "--batch-size", "2", "--crop", "64", "--workers", "0", "--keep-epochs", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    first, second = sorted((out / "mask-0.50").glob("epoch-*.safetensors"))
    result = runner.invoke(app, ["average", str(first), str(second), "--out", str(first)])
    assert result.exit_code == 2 and "one of the checkpoints being averaged" in result.output
    result = runner.invoke(app, ["average", str(first), str(first), "--out", str(tmp_path / "avg.safetensors")])
    assert result.exit_code == 2 and "at least two checkpoints" in result.output
    best = out / "mask-0.50" / "best.safetensors"  # the run's own best, which average replaced without a word
    kept = best.read_bytes()
    result = runner.invoke(app, ["average", str(out / "mask-0.50"), "--out", str(best)])
    assert result.exit_code == 2 and "the training run's own best.safetensors" in result.output, result.output
    assert best.read_bytes() == kept


def one_pair_dataset(root):
    """root/images/a.jpg and root/labels/a.png: the least a train command needs to get going."""
    for folder, array in (("images", np.zeros((64, 64, 3), np.uint8)), ("labels", np.ones((64, 64), np.uint8))):
        (root / folder).mkdir(parents=True)
        Image.fromarray(array).save(root / folder / ("a.jpg" if folder == "images" else "a.png"))


@pytest.mark.parametrize("option, told", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--class-weighting", "inverted"], "unknown class weighting 'inverted'"),
    (["--mask-ratio", "2"], "--mask-ratio must be between 0.01 and 0.99, got 2"),
    (["--device", "gpu"], "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_a_wrong_option_value_is_the_one_line_printed(tmp_path, option, told):
    one_pair_dataset(tmp_path / "data")
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", *option])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and told in lines[0]  # no scan notes before it


def test_train_with_an_init_checkpoint_that_is_not_there_leaves_no_run_folder(tmp_path):
    one_pair_dataset(tmp_path / "data")
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--crop", "32", "--init", str(tmp_path / "typo.safetensors"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "typo.safetensors: no such checkpoint file" in result.output
    assert not (tmp_path / "run").exists()


def test_train_with_an_init_run_folder_or_family_name_names_the_checkpoint_files_to_give(tmp_path, family):
    one_pair_dataset(tmp_path / "data")
    args = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", "--crop", "32", "--device", "cpu"]
    result = runner.invoke(app, args + ["--init", str(family)])  # a run folder, as --models takes: was 'no such checkpoint file'
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "no such" not in text, text
    assert f"{family}: a folder, not a checkpoint file: name one of its checkpoints ({family / 'mask-0.25' / 'best.safetensors'}" in text
    result = runner.invoke(app, args + ["--init", "concrete"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "concrete: a bundled family, not a checkpoint file" in text and "mask-0.50.safetensors" in text, text
    assert not (tmp_path / "run").exists()


def test_an_init_of_another_label_space_on_unnamed_labels_says_which_options_would_match_it(tmp_path):
    config = ModelConfig(num_classes=3, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    start = tmp_path / "camvid-like.safetensors"  # no background class, void 3 (CamVid's layout of values)
    save_checkpoint(start, LabelMAE(config), CheckpointInfo(config, 0.5, LabelSpace(3, ["sky", "road", "car"], background_id=None, void_id=3)))
    label = np.zeros((64, 64), np.uint8)
    label[:, 20:40], label[:, 40:] = 1, 3  # a few pairs copied without the dataset's classes.txt: 3 is scanned as a class
    for folder, array in (("images", np.zeros((64, 64, 3), np.uint8)), ("labels", label)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "data" / folder / ("a.jpg" if folder == "images" else "a.png"))
    result = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", "--crop", "32",
                                 "--init", str(start), "--device", "cpu"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "a checkpoint can only start a model of the same classes" in text, text
    assert "say so: --num-classes 3 --background-id none --void-id 3" in text
    tiny = tmp_path / "tiny.safetensors"  # the same classes at the architecture train builds by default
    save_checkpoint(tiny, LabelMAE(preset_config("tiny", 3)), CheckpointInfo(preset_config("tiny", 3), 0.5, read_info(start).label_space))
    told = runner.invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1", "--crop", "32",
                               "--init", str(tiny), "--device", "cpu", "--num-classes", "3", "--background-id", "none", "--void-id", "3"])
    assert told.exit_code == 0, told.output
    # the fine-tuned file keeps the classes' names, not class_0, class_1, class_2
    assert read_info(tmp_path / "run" / "mask-0.50" / "best.safetensors").label_space.names == ["sky", "road", "car"]


def test_with_a_time_budget_the_progress_bar_ends_where_the_run_will_stop_not_at_every_epoch():
    """`train --max-minutes 1` with the default 50 epochs showed 'ETA 0:58:08' after a few steps
    of a run that stopped a minute in: the ETA counted the epochs the budget never begins."""
    import time
    from rich.console import Console
    from rich.progress import Progress

    from lmae_repair.train import BudgetTimeRemainingColumn, epoch_plan, epochs_within_budget

    clock = [0.0]
    progress = Progress(BudgetTimeRemainingColumn(), console=Console(file=open("/dev/null", "w")), get_time=lambda: clock[0])
    task = progress.add_task("m=0.50", total=250, deadline=time.monotonic() + 60.0)
    for second in (0.0, 15.0, 30.0):  # a step every 15 s: 248 steps to go would take an hour
        clock[0] = second
        progress.advance(task)
    shown = progress.columns[0].render(progress.tasks[0]).plain
    hours, minutes, seconds = (int(part) for part in shown.split(":"))
    assert hours * 3600 + minutes * 60 + seconds <= 60, shown
    unlimited = progress.add_task("m=0.25", total=250)  # no budget: the plain estimate
    for second in (30.0, 45.0, 60.0):
        clock[0] = second
        progress.advance(unlimited)
    assert progress.columns[0].render(progress.tasks[1]).plain.startswith("1:"), "an hour and more"
    # after an epoch the bar counts to the epochs that fit (next_epoch_would_overrun's rule)
    assert epochs_within_budget(1.0, 35.0, [35.0], 49) == 0  # 35 + 35 > 60: the run stops
    assert epochs_within_budget(10.0, 60.0, [60.0], 49) == 9
    assert epochs_within_budget(1000.0, 60.0, [60.0], 4) == 4  # --epochs comes first
    assert epoch_plan(0, 50, 1.0) == "epochs 1-50 (fewer if --max-minutes 1 runs out first)"
    assert epoch_plan(2, 4, 0.0) == "epochs 3-4"
    assert epoch_plan(0, 1, 1.0) == "epoch 1"  # at least one epoch always runs


def test_an_image_smaller_than_the_crop_is_named_and_trains_on_its_own_pixels_not_mirrored_copies(tmp_path):
    """A 50x300 inspection photo in a 224 crop was filled out with four mirrored copies of itself,
    labels included, without a word: the hidden patches' answers lay beside them in the copies,
    and the photo's pixels weighed four times in the loss. The run now names such images, and
    their crops' labels beyond the image are void (not learned), the image mirrored as inference
    mirrors it."""
    from conftest import write_pair
    from lmae_repair.dataset import CropDataset

    root = make_paired(tmp_path / "ds", count=3, size=64, seed=1)
    rng = np.random.default_rng(5)
    image, label = make_scene(rng, 20, 64)  # 64 wide, 20 high: smaller than a 32 crop
    write_pair(root / "images" / "strip.png", root / "labels" / "strip.png", image, label)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4",
                                 "--crop", "32", "--workers", "0"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "note: 1 of the 4 training images is smaller than the 32-pixel crop" in said
    assert "strip.png, 64x20" in said and "whose labels are not trained on (void)" in said

    pair = next(p for p in discover(root).pairs if p.label.name == "strip.png")
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    crops = CropDataset([pair], space, 32)
    for seed in range(6):
        image_t, label_t, _ = crops[(0, seed)]
        assert label_t.shape == (32, 32)
        assert (label_t[20:] == 255).all() and (label_t[:20] != 255).any()  # no mirrored labels below the image
        assert image_t[:, 20:].abs().sum() > 0  # the image itself is mirrored, not black


def test_validation_of_a_pair_smaller_than_a_tile_hides_only_its_own_patches_and_no_answer_shows_in_its_mirror():
    from lmae_repair.inference import mirror_pad
    from lmae_repair.masking import mask_count
    from lmae_repair.train import hide_within_image

    rng = np.random.default_rng(2)
    image, label = make_scene(rng, 20, 40)  # (20, 40): whole patches 32 x 48, padded to a 64 tile
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    _, padded = mirror_pad(image, label.astype(np.int64), 64, 64)
    mask, seen = hide_within_image(padded, (20, 40), (32, 48), 16, space, 0.5, torch.Generator().manual_seed(0))
    grid = mask.view(4, 4)
    assert not grid[2:].any() and not grid[:, 3:].any()  # padding patches are never hidden, as in repair.prepare
    assert int(grid.sum()) == mask_count(2 * 3, 0.5)  # floor(L*m) of the pair's own grid
    hidden = expand_patch_mask(grid.flatten()[None], (4, 4), 16)[0].numpy()[:20, :40]
    mirrored_hidden = np.pad(hidden, ((0, 44), (0, 24)), mode="symmetric")
    outside = np.ones((64, 64), bool)
    outside[:20, :40] = False
    assert (seen.numpy()[mirrored_hidden & outside] == 255).all()  # the mirror shows the hidden pixels void
    assert (seen[:20, :40] == padded[:20, :40]).all()  # the pair itself as given: the model hides its patches


def test_an_epoch_trains_on_every_pair_when_the_batch_size_does_not_divide_them(tmp_path):
    """20 pairs with the default --batch-size 16 trained on 16 of them a epoch (30 pairs: still 16),
    the last part-batch dropped, while the run said '20 training pairs'."""
    root = make_paired(tmp_path / "ds", count=6, size=32, seed=4)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "4",
                                 "--crop", "32", "--workers", "0"])
    assert result.exit_code == 0, result.output
    history = (tmp_path / "run" / "mask-0.50" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["images"] for line in history] == [6, 6]


def test_a_full_disk_at_the_first_epochs_state_leaves_a_run_folder_that_the_same_command_starts_again(tmp_path, monkeypatch):
    """state.pt, the largest file, is written after the checkpoints: a disk that filled up there
    left best and last without the state, which --resume refused (no state.pt) and the same
    command refused too (a run exists): the user had to delete files by hand."""
    import lmae_repair.train
    from lmae_repair.errors import LmaeError

    def disk_full(path, *args, **kwargs):
        raise LmaeError(f"{path}: cannot write it (No space left on device)")

    root = make_paired(tmp_path / "ds", count=2, size=64)
    args = ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--crop", "64",
            "--workers", "0", "--keep-epochs"]
    with monkeypatch.context() as patched:
        patched.setattr(lmae_repair.train, "save_state", disk_full)
        full = runner.invoke(app, args)
    assert full.exit_code == 2 and "No space left on device" in full.output
    assert not [p for p in (tmp_path / "run" / "mask-0.50").iterdir() if not p.name.startswith(".")]  # no checkpoint of an epoch it cannot resume
    again = runner.invoke(app, args)  # space freed: the same command
    assert again.exit_code == 0, again.output
    assert (tmp_path / "run" / "mask-0.50" / "state.pt").is_file()


def test_a_second_train_into_the_same_run_folder_is_refused_while_the_first_trains(tmp_path):
    """The same job submitted twice (a scheduler's requeue, a second terminal): both runs trained
    into one run folder and each wrote over the other's files, leaving best.safetensors of one
    command beside the history and state.pt of the other, with exit 0 for both."""
    from lmae_repair.complete import TRAIN_LOCK_FILE, lock_output

    root = make_paired(tmp_path / "ds", count=2, size=64)
    folder = tmp_path / "run" / "mask-0.50"
    folder.mkdir(parents=True)
    args = ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--crop", "64", "--workers", "0"]
    held = lock_output(folder, name=TRAIN_LOCK_FILE)  # what the first run holds while it trains
    try:
        second = runner.invoke(app, args)
        assert second.exit_code == 2 and "another lmae-repair run is writing here" in second.output, second.output
        assert not (folder / "last.safetensors").exists()
    finally:
        held.close()
    assert runner.invoke(app, args).exit_code == 0
    # the lock train leaves is not the mark of an earlier complete: complete --out the run folder (a slip) is refused
    slip = runner.invoke(app, ["complete", str(root), "--models", str(folder / "best.safetensors"), "--out", str(folder)])
    assert slip.exit_code == 2 and "not the output of an earlier lmae-repair run" in slip.output, slip.output
    assert not (folder / "labels").exists()


def test_a_run_folder_that_cannot_be_written_is_refused_before_any_epoch(tmp_path):
    """A read-only run folder (a colleague's run, given to --resume; an empty folder made for the
    run): refused at once, naming the folder, not after an epoch nor by the name of a lock file."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    folder = tmp_path / "run" / "mask-0.50"
    folder.mkdir(parents=True, mode=0o555)
    command = [sys.executable, "-m", "lmae_repair", "train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--batch-size", "2", "--crop", "64", "--workers", "0"]
    result = subprocess.run(as_a_user_without_override(command), capture_output=True, text=True)
    assert result.returncode == 2 and f"error: {folder}: cannot write here (Permission denied)" in result.stderr, result.stderr
    assert "epoch 1" not in result.stdout
    folder.chmod(0o755)


def test_val_split_beside_images_and_labels_needs_val(tmp_path, monkeypatch):
    """--val-split names a split of DATA; with --images/--labels DATA is the current folder by
    default, and a val/ folder there (another dataset) was validated on without a word."""
    data = make_paired(tmp_path / "train", count=2)
    here = tmp_path / "here"
    make_paired(here / "val", count=2, seed=1)
    monkeypatch.chdir(here)
    args = ["train", "--images", str(data / "images"), "--labels", str(data / "labels"), "--crop", "32", "--epochs", "1"]
    result = runner.invoke(app, args + ["--val-split", "val", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--val-split val" in result.output and "--val DATA" in result.output, result.output
    assert not (tmp_path / "run").exists()
    result = runner.invoke(app, args + ["--val", str(here / "val"), "--out", str(tmp_path / "run2")])
    assert result.exit_code == 0 and "2 validation pairs" in result.output, result.output


def test_an_objects_checkpoint_without_the_objects_strategy_is_noted(tmp_path):
    """--gaps objects --mask-mix 1:2:2:0 trained a checkpoint for missed objects that never saw
    one, without a word."""
    data = make_paired(tmp_path / "ds", count=2)
    args = ["train", str(data), "--crop", "32", "--epochs", "1", "--gaps", "objects"]
    result = runner.invoke(app, args + ["--mask-mix", "1:2:2:0", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0 and "never see a missed object" in result.output, result.output
    result = runner.invoke(app, args + ["--mask-mix", "1:1:1:3", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0 and "never see a missed object" not in result.output, result.output


def test_a_crop_larger_than_every_training_image_is_refused_before_any_epoch(tmp_path):
    """`--crop 100000` on 64x64 images was killed for memory in the loader: each crop would be
    its image mirrored thousands of times over, none of it trained on. It is refused up front,
    saying the largest image and the largest crop that makes sense; the default crop, which
    small images train at (filled out with their mirror image), is never refused."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--crop", "100000",
                                 "--workers", "0"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "--crop 100000 is larger than every training image (the largest: " in said and "scene_000.png, 64x64)" in said, said
    assert "give --crop 224 or less" in said and "epoch 1" not in said
    assert not (tmp_path / "run").exists()


def test_every_ratio_folder_is_checked_before_the_first_ratio_trains(tmp_path):
    """`-m 0.25 -m 0.5` with mask-0.50/ locked by another train (or read-only): only the first
    ratio's folder was locked up front, so the refusal came after the 0.25 model had trained."""
    from lmae_repair.complete import TRAIN_LOCK_FILE, lock_output

    root = make_paired(tmp_path / "ds", count=2, size=64)
    second = tmp_path / "run" / "mask-0.50"
    second.mkdir(parents=True)
    args = ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2", "--crop", "32",
            "--workers", "0", "-m", "0.25", "-m", "0.5"]
    held = lock_output(second, name=TRAIN_LOCK_FILE)
    try:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and f"{second}: another lmae-repair run is writing here" in " ".join(result.output.split())
        assert "epoch 1" not in result.output and not (tmp_path / "run" / "mask-0.25" / "last.safetensors").exists()
    finally:
        held.close()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (second / "best.safetensors").is_file() and (tmp_path / "run" / "mask-0.25" / "best.safetensors").is_file()


def test_a_ratio_folder_that_cannot_be_made_is_refused_before_the_first_ratio_trains(tmp_path):
    """`-m 0.25 -m 0.5` into a read-only run folder holding mask-0.25/ only (made writable for the
    run): mask-0.50/ cannot be made there, which is said before the 0.25 model trains."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    run = tmp_path / "run"
    (run / "mask-0.25").mkdir(parents=True)
    run.chmod(0o555)
    command = [sys.executable, "-m", "lmae_repair", "train", str(root), "--out", str(run), "--epochs", "1", "--batch-size", "2",
               "--crop", "32", "--workers", "0", "-m", "0.25", "-m", "0.5"]
    try:
        result = subprocess.run(as_a_user_without_override(command), capture_output=True, text=True)
    finally:
        run.chmod(0o755)
    assert result.returncode == 2 and f"error: {run / 'mask-0.50'}: cannot write the output here (Permission denied in {run})" \
        in " ".join(result.stderr.split()), result.stderr
    assert "epoch 1" not in result.stdout and not (run / "mask-0.25" / "last.safetensors").exists()


def test_validation_labels_with_no_annotated_pixel_are_refused_before_any_epoch_or_left_out(tmp_path):
    """All-void --val labels scored nothing: every epoch's val PA-mIoU was NaN, no epoch counted as
    best, and the run ended after training with 'best.safetensors: no such checkpoint file'."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    val = make_paired(tmp_path / "val", count=2, size=64, seed=4)
    blank = sorted((val / "labels").iterdir())
    for label in blank:
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(label)
    out = tmp_path / "r"
    args = ["train", str(root), "--val", str(val), "--num-classes", "4", "--epochs", "1", "--batch-size", "2", "--crop", "64",
            "--workers", "0", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no validation label holds an annotated pixel" in result.output, result.output
    assert not out.exists()
    make_paired(tmp_path / "good", count=1, size=64, seed=5)
    (tmp_path / "good" / "labels" / "scene_000.png").replace(blank[0])  # one of the two annotated again
    (tmp_path / "good" / "images" / "scene_000.png").replace(val / "images" / blank[0].name)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"note: 1 validation label holds no annotated pixel (all void), left out (first: {blank[1]})" in " ".join(result.output.split())
    _, info = load_checkpoint(out / "mask-0.50" / "best.safetensors")
    assert info.training["val_pairs"] == 1 and 0.0 <= info.validation["val_pa_miou"] <= 1.0


def test_a_ratio_of_another_label_space_is_refused_in_a_run_folder_holding_a_family(tmp_path):
    """-m 0.25 --num-classes 5 into a run folder of 4-class checkpoints trained, and then every
    `--models OUT` was refused: the checkpoints of one family must share one label space."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    out = tmp_path / "r"
    args = ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "64", "--workers", "0", "--out", str(out)]
    assert runner.invoke(app, args + ["-m", "0.5", "--num-classes", "4"]).exit_code == 0
    for extra, said in ((["--num-classes", "5"], "this run's label space (5 classes"),
                        (["--num-classes", "4", "--patch-size", "8"], "this run's patch size (8) differs")):
        result = runner.invoke(app, args + ["-m", "0.25", *extra])
        assert result.exit_code == 2, result.output
        assert said in result.output and str(out / "mask-0.50" / "best.safetensors") in " ".join(result.output.split())
        assert not (out / "mask-0.25").exists()
    assert runner.invoke(app, args + ["-m", "0.25", "--num-classes", "4"]).exit_code == 0  # the same label space joins it


def test_a_run_resumed_with_another_seed_or_photometric_setting_is_refused(tmp_path):
    """Both were taken without a word: the history and checkpoints then said --seed 5 or
    photometric for epochs trained otherwise, and the new seed hid other validation patches, so
    best.safetensors was chosen by comparing figures of different masks."""
    root = make_paired(tmp_path / "ds", count=4, size=64)
    args = ["train", str(root), "--val", str(root), "--batch-size", "2", "--crop", "32", "--workers", "0", "--out", str(tmp_path / "r")]
    assert runner.invoke(app, args + ["--epochs", "1"]).exit_code == 0
    for changed, said in ((["--seed", "5"], "--seed 5 (started with 0)"),
                          (["--photometric"], "--photometric given (started without it)")):
        refused = runner.invoke(app, args + ["--epochs", "2", "--resume", *changed])
        assert refused.exit_code == 2 and said in " ".join(refused.output.split()), refused.output
    assert len((tmp_path / "r" / "mask-0.50" / "history.jsonl").read_text().splitlines()) == 1
    assert runner.invoke(app, args + ["--epochs", "2", "--resume", "--seed", "0"]).exit_code == 0


def test_a_run_resumed_with_another_architecture_says_which_option_differs(tmp_path):
    """--resume --patch-size 8 of a patch-16 run said only 'saved run differs from this command
    (model, label space or mask ratio)', leaving the user to guess which option."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    args = ["train", str(root), "--batch-size", "2", "--crop", "32", "--workers", "0", "--out", str(tmp_path / "r")]
    assert runner.invoke(app, args + ["--epochs", "1"]).exit_code == 0
    for changed, said in ((["--patch-size", "8"], "patch_size 16 (this run: 8)"), (["-m", "0.504"], "mask ratio 0.5 (this run: 0.504)")):
        refused = runner.invoke(app, args + ["--epochs", "2", "--resume", *changed])
        assert refused.exit_code == 2 and said in " ".join(refused.output.split()), refused.output


def test_validation_that_hides_no_annotated_pixel_still_gives_a_best_checkpoint(tmp_path):
    """One validation pair annotated in a single patch that its (seeded) validation mask leaves
    visible: PA-mIoU is NaN every epoch, which beat nothing, so the run ended with
    'best.safetensors: no such checkpoint file' (exit code 2) after training."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    val = make_paired(tmp_path / "val", count=1, size=64, seed=4)
    label = np.full((64, 64), 255, np.uint8)
    label[0:16, 32:48] = 1  # patch (0, 2): visible in the validation mask of seed 0, pair 0, ratio 0.5 on a 4x4 grid
    Image.fromarray(label).save(val / "labels" / "scene_000.png")
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", str(root), "--val", str(val), "--num-classes", "4", "--epochs", "2", "--batch-size", "2",
                                 "--crop", "32", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (out / "mask-0.50" / "history.jsonl").read_text().splitlines()]
    assert [record["val_pa_miou"] for record in history] == [None, None]  # the case this test is about (null: NaN is not JSON)
    _, info = load_checkpoint(out / "mask-0.50" / "best.safetensors")
    assert info.validation["epoch"] == 2


def test_a_run_resumed_on_other_validation_pairs_is_refused_and_moved_ones_are_noted(tmp_path):
    """Resumed without --val, a validated run compared its best PA-mIoU with the negative
    training loss, so no later epoch could become best.safetensors; with --val-max-pairs changed,
    it compared figures of two sets. Both went on without a word."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    val = make_paired(tmp_path / "val", count=3, size=64, seed=4)
    args = ["train", str(root), "--batch-size", "2", "--crop", "32", "--workers", "0", "--out", str(tmp_path / "r"), "--epochs"]
    assert runner.invoke(app, args + ["1", "--val", str(val), "--val-max-pairs", "2"]).exit_code == 0
    for changed, said in (([], "no validation pairs (saved with 2 validation pairs)"),
                          (["--val", str(val)], "3 validation pairs (saved with 2 validation pairs)")):
        refused = runner.invoke(app, args + ["2", "--resume", *changed])
        assert refused.exit_code == 2 and said in " ".join(refused.output.split()), refused.output
    moved = tmp_path / "moved"
    val.rename(moved)
    resumed = runner.invoke(app, args + ["2", "--resume", "--val", str(moved), "--val-max-pairs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert f"validated on {val.resolve()}; it goes on with {moved.resolve()}" in " ".join(resumed.output.split())


def test_a_ratio_already_served_by_a_file_in_the_run_folder_is_refused_before_training(tmp_path):
    """-m 0.5 --out FAMILY beside an average written there as mask-0.50.safetensors trained, and
    then `--models FAMILY` was refused: both files served mask ratio 0.50."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    args = ["train", str(root), "--epochs", "1", "--batch-size", "2", "--crop", "32", "--workers", "0", "-m", "0.5"]
    assert runner.invoke(app, args + ["--out", str(tmp_path / "r")]).exit_code == 0
    family = tmp_path / "family"
    family.mkdir()
    (tmp_path / "r" / "mask-0.50" / "best.safetensors").replace(family / "mask-0.50.safetensors")
    result = runner.invoke(app, args + ["--out", str(family)])
    assert result.exit_code == 2, result.output
    assert f"{family / 'mask-0.50.safetensors'} already serves mask ratio 0.50 (any gaps)" in " ".join(result.output.split())
    assert not (family / "mask-0.50").exists()


def test_spread_out_label_values_are_refused_not_counted_as_classes_nobody_uses(tmp_path):
    """Labels of 0, 10, 20, 30 (and 0, 128 with 255 void) with no class list: train counted 31
    classes (129), 27 never seen, 30 a class rather than void, and trained without a word; complete
    said to train on them. Refused saying how to remap them; --num-classes trains as they stand."""
    from lmae_repair.families import sparse_values

    root = make_paired(tmp_path / "ds", count=2, size=64)
    for path in (root / "labels").glob("*.png"):
        values = np.array(Image.open(path)) % 4
        Image.fromarray((values * 10).astype(np.uint8)).save(path)
    args = ["train", str(root), "--epochs", "1", "--crop", "64", "--workers", "0", "--out", str(tmp_path / "r")]
    told = " ".join(runner.invoke(app, args).output.split())
    assert "the labels hold only the values 0, 10, 20, 30" in told and "lut[[0, 10, 20, 30]] = np.arange(4)" in told, told
    assert not (tmp_path / "r").exists()
    completed = " ".join(runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o")]).output.split())
    assert "27 never occur" in completed and "train a family for it" not in completed, completed
    histogram = np.zeros(256, np.int64)
    histogram[[0, 128, 255]] = 100
    assert "lut[[0, 128]] = np.arange(2)" in sparse_values(histogram, 129)
    histogram = np.zeros(256, np.int64)
    histogram[[0, 1, 3, 255]] = 100  # one class absent from a few labels: classes all the same
    assert sparse_values(histogram, 4) is None
    assert sparse_values(np.zeros(256, np.int64), 1) is None  # no label read (colour labels): not spread-out values


def test_a_training_loss_of_nan_is_never_kept_as_best_without_validation(tmp_path, monkeypatch):
    """A NaN validation PA-mIoU counts as best until a real one comes (no hidden annotated pixel);
    that rule also took a NaN training loss, without validation, for the best epoch: the run ended
    well, with a best.safetensors of NaN weights, which complete would then use."""
    import lmae_repair.train as train_module

    real = train_module.lmae_loss
    monkeypatch.setattr(train_module, "lmae_loss", lambda *args, **kwargs: real(*args, **kwargs) * float("nan"))
    root = make_paired(tmp_path / "ds", count=2, size=64)
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", str(root), "--num-classes", "4", "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                 "--workers", "0", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert not (out / "mask-0.50" / "best.safetensors").exists()


def test_history_writes_a_pa_miou_of_nothing_as_null_not_bare_nan(tmp_path):
    """Validation whose hidden patches held no annotated pixel: history.jsonl said
    "val_pa_miou": NaN, which is not JSON (jq and strict parsers reject the file); it says null."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    val = make_paired(tmp_path / "val", count=1, size=64, seed=4)
    label = np.full((64, 64), 255, np.uint8)
    label[0:16, 32:48] = 1  # visible in the validation mask of seed 0 (see the test above): PA-mIoU of nothing
    Image.fromarray(label).save(val / "labels" / "scene_000.png")
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", str(root), "--val", str(val), "--num-classes", "4", "--epochs", "1", "--batch-size", "2",
                                 "--crop", "32", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    lines = (out / "mask-0.50" / "history.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=strict) for line in lines]
    assert records[0]["val_pa_miou"] is None and records[0]["epoch"] == 1


def test_resuming_a_tuned_run_says_a_new_best_drops_the_tuned_offsets(tmp_path):
    """`tune VAL --models RUN/mask-0.50` (in place), then `train --resume --epochs 3`: a later
    epoch that became best rewrote best.safetensors without the tuned class offsets, silently.
    The offsets were tuned for the old weights (as `average` drops them), so they are not carried
    over; the run says so when it resumes and when best.safetensors is replaced."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    val = make_paired(tmp_path / "val", count=2, size=64, seed=4)
    out = tmp_path / "r"
    args = ["train", str(root), "--batch-size", "2", "--crop", "32", "--workers", "0", "--out", str(out), "--epochs"]
    assert runner.invoke(app, args + ["1"]).exit_code == 0
    tuned = runner.invoke(app, ["tune", str(val), "--models", str(out / "mask-0.50")])
    assert tuned.exit_code == 0, tuned.output
    best = out / "mask-0.50" / "best.safetensors"
    assert read_info(best).class_bias
    result = runner.invoke(app, args + ["3", "--resume"])
    assert result.exit_code == 0, result.output
    told = " ".join(result.output.split())
    assert f"{best} holds class offsets tuned by lmae-repair tune" in told, told
    assert not read_info(best).class_bias  # a later epoch (lower training loss) became best
    assert f"{best} replaced by epoch" in told and "tune again" in told, told


def test_a_class_list_inside_the_split_folder_names_the_classes_of_that_split(tmp_path):
    """DATA/train/{images,labels}/ with DATA/train/classes.txt (a CamVid-like copy), `--split
    train`: the list was looked for only in DATA and its parent, so train counted the classes from
    the values and its void value became a class; audit and complete read them so too."""
    from lmae_repair.audit import label_space_of_data
    from lmae_repair.families import dataset_evidence

    root = tmp_path / "ds"
    make_paired(root / "train", count=2, size=64)
    make_paired(root / "val", count=1, size=64, seed=3)
    for path in (root / "train" / "labels").glob("*.png"):
        values = np.array(Image.open(path))
        values[:8] = 4  # the void line's value
        Image.fromarray(values).save(path)
    (root / "train" / "classes.txt").write_text("background\nred\ngreen\nblue\nvoid\n")
    index = discover(root, "train")
    assert label_space_of_data(index).describe() == label_space_of_data(discover(root / "train")).describe()
    assert label_space_of_data(index).void_id == 4 and label_space_of_data(index).num_classes == 4
    assert dataset_evidence(index)[1] == ["background", "red", "green", "blue", "void"]
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", str(root), "--split", "train", "--epochs", "1", "--batch-size", "2", "--crop", "32",
                                 "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    space = read_info(out / "mask-0.50" / "best.safetensors").label_space
    assert (space.num_classes, space.void_id, space.names) == (4, 4, ["background", "red", "green", "blue"])


def test_messages_of_an_interrupted_run_say_what_was_saved_and_what_never_started(tmp_path, monkeypatch):
    """Interrupted in its first epoch, train said 'every finished epoch is saved' (none was); and
    resuming a ratio that never started (the run stopped during an earlier ratio) said 'no saved
    epoch to resume (killed before the first one ended?)'."""
    import lmae_repair.train as train_module

    root = make_paired(tmp_path / "ds", count=2, size=64)
    args = ["train", str(root), "--batch-size", "2", "--crop", "32", "--workers", "0", "--out", str(tmp_path / "r")]
    real_epoch = train_module.run_epoch

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "run_epoch", interrupted)
    result = runner.invoke(app, args + ["-m", "0.25", "--epochs", "1"])
    told = " ".join(result.output.split())
    assert result.exit_code == 130, result.output
    assert "every finished epoch is saved" not in told and "before any epoch ended: nothing was saved" in told, told
    monkeypatch.setattr(train_module, "run_epoch", real_epoch)
    assert runner.invoke(app, args + ["-m", "0.25", "--epochs", "1"]).exit_code == 0
    monkeypatch.setattr(train_module, "run_epoch", interrupted)
    result = runner.invoke(app, args + ["-m", "0.25", "-m", "0.5", "--epochs", "2", "--resume"])
    assert "interrupted: every finished epoch is saved" in " ".join(result.output.split()), result.output
    monkeypatch.setattr(train_module, "run_epoch", real_epoch)
    result = runner.invoke(app, args + ["-m", "0.25", "-m", "0.5", "--epochs", "1", "--resume"])
    told = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'r' / 'mask-0.50'}: not started yet, nothing to resume; training it from the start" in told, told
    assert "killed before the first one ended" not in told, told


def test_history_of_an_infinite_training_loss_is_written_not_a_crash(tmp_path):
    """A diverging run's mean training loss can overflow to inf: write_history (allow_nan=False
    since NaN became null) raised 'Out of range float values are not JSON compliant' after the
    epoch's state was saved, and again at every later epoch of --resume. inf is null too."""
    from lmae_repair.train import write_history

    path = tmp_path / "history.jsonl"
    write_history(path, [{"epoch": 1, "train_loss": float("inf"), "val_pa_miou": float("nan")},
                         {"epoch": 2, "train_loss": -float("inf"), "val_pa_miou": 0.5}])

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    records = [json.loads(line, parse_constant=strict) for line in path.read_text().splitlines()]
    assert [(r["train_loss"], r["val_pa_miou"]) for r in records] == [(None, None), (None, 0.5)]


def test_init_of_a_label_reading_branch_with_branch_reads_image_only_says_which_option_to_leave_out(tmp_path):
    """train --help said --branch-reads-image-only makes the --init checkpoint's branch image only; with a
    branch that reads the label it was refused as "architecture differs ... pass the same --preset,
    --patch-size and --image-branch", none of which the user had changed."""
    root = make_voc(tmp_path / "voc", count=6, size=64)
    config = preset_config("tiny", NUM_CLASSES, image_branch=4, branch_reads_labels=True)
    start = tmp_path / "reads-labels.safetensors"
    save_checkpoint(start, LabelMAE(config), CheckpointInfo(config, 0.5, LabelSpace(NUM_CLASSES, background_id=0, void_id=255), {"crop": 64}))
    result = runner.invoke(app, ["train", str(root), "--split", "train", "--batch-size", "4", "--crop", "64", "--workers", "0",
                                 "--epochs", "1", "--out", str(tmp_path / "run"), "--init", str(start), "--branch-reads-image-only"])
    assert result.exit_code == 2, result.output
    assert "leave out --branch-reads-image-only" in result.output and "--patch-size" not in result.output, result.output
    assert not list((tmp_path / "run").rglob("*.safetensors"))
    help_text = " ".join(runner.invoke(app, ["train", "--help"], terminal_width=200).output.replace("│", " ").split())
    assert "--branch-reads-image-only: image only" not in help_text


def test_a_run_on_one_pair_counts_it_in_the_singular_and_so_does_inspect(tmp_path):
    """A run on one training and one validation pair said '1 training pairs, 1 validation pairs',
    and inspect 'validation data ..., 1 pairs'."""
    make_paired(tmp_path / "ds" / "train", count=1, size=64, seed=1)
    make_paired(tmp_path / "ds" / "val", count=1, size=64, seed=2)
    (tmp_path / "ds" / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tmp_path / "ds"), "--split", "train", "--val-split", "val", "--out", str(out),
                                 "--epochs", "1", "--crop", "64", "--workers", "0"])
    told = " ".join(result.output.split())
    assert result.exit_code == 0, told
    assert "1 training pair, 1 validation pair, device" in told, told
    shown = runner.invoke(app, ["inspect", str(out / "mask-0.50" / "best.safetensors")])
    assert shown.exit_code == 0 and "1 pairs" not in shown.output and ", 1 pair" in shown.output, shown.output


def test_training_labels_all_void_are_refused_in_one_line_without_a_note_that_every_class_cannot_be_learnt(tmp_path):
    """Labels all void (with a classes.txt) printed 'note: no training label holds background,
    red, green, ...: the model cannot learn them' before the error that says the real cause."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    (root / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    for label in (root / "labels").iterdir():
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(label)
    result = runner.invoke(app, ["train", str(root), "--epochs", "1", "--crop", "64", "--workers", "0", "--out", str(tmp_path / "run")])
    told = " ".join(result.output.split())
    assert result.exit_code == 2, told
    assert "no training label holds an annotated pixel (all void): nothing to learn from" in told
    assert "cannot learn" not in told


def test_a_training_loss_that_becomes_nan_stops_the_run_saying_when_what_is_kept_and_to_lower_the_lr(tmp_path, monkeypatch):
    """A diverging run (too high --lr) trained on to its last epoch with NaN weights and then
    ended with 'best.safetensors: no such checkpoint file' (or, validated, kept NaN weights as
    best). It stops at the NaN epoch, saves nothing of it, and says what is kept and what to try."""
    import lmae_repair.train as train_module

    real, calls = train_module.lmae_loss, []

    def nan_from_the_second_step(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (float("nan") if len(calls) >= 2 else 1.0)

    monkeypatch.setattr(train_module, "lmae_loss", nan_from_the_second_step)
    root = make_paired(tmp_path / "ds", count=2, size=64)
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", str(root), "--num-classes", "4", "--epochs", "3", "--batch-size", "2", "--crop", "32",
                                 "--workers", "0", "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "training loss became NaN in epoch 2" in message and "keeps epoch 1 " in message and "lower --lr" in message
    assert "no such checkpoint" not in message
    assert len((out / "mask-0.50" / "history.jsonl").read_text().splitlines()) == 1
    model, _ = load_checkpoint(out / "mask-0.50" / "best.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    calls.extend([1, 1])  # NaN from the first step, validated: nothing kept, not NaN weights as best
    val = make_paired(tmp_path / "val", count=1, size=64, seed=4)
    result = runner.invoke(app, ["train", str(root), "--val", str(val), "--num-classes", "4", "--epochs", "2", "--batch-size", "2",
                                 "--crop", "32", "--workers", "0", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2, result.output
    assert "NaN in epoch 1" in " ".join(result.output.split()) and "nothing was saved" in result.output
    assert not (tmp_path / "v" / "mask-0.50" / "best.safetensors").exists()


def test_an_interrupted_scan_of_a_resumed_run_says_its_saved_epochs_are_kept_not_that_nothing_was_saved(tmp_path, monkeypatch):
    """Ctrl-C while `train --resume` scanned the data said 'nothing was saved', though the run's
    earlier epochs were there: the run folder was only looked at once the scan was over."""
    import lmae_repair.train as train_module

    root = make_paired(tmp_path / "ds", count=2, size=64)
    args = ["train", str(root), "--batch-size", "2", "--crop", "32", "--workers", "0"]
    assert runner.invoke(app, args + ["--out", str(tmp_path / "r"), "--epochs", "1"]).exit_code == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "load_training_data", interrupted)
    result = runner.invoke(app, args + ["--out", str(tmp_path / "r"), "--epochs", "2", "--resume"])
    told = " ".join(result.output.split())
    assert result.exit_code == 130 and "every finished epoch is saved" in told and "nothing was saved" not in told, told
    monkeypatch.chdir(tmp_path)  # the default --out, settled after the scan: the earlier epochs are still kept
    result = runner.invoke(app, args + ["--epochs", "2", "--resume"])
    told = " ".join(result.output.split())
    assert result.exit_code == 130 and "any epochs an earlier run saved are kept" in told and "nothing was saved" not in told, told
    result = runner.invoke(app, args + ["--out", str(tmp_path / "new"), "--epochs", "1"])
    assert result.exit_code == 130 and "nothing was saved" in " ".join(result.output.split())  # true there
