"""`lmae-repair complete` on generated datasets: layout mirroring, palette and size, refusal,
resume and the report."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import NUM_CLASSES, VOC_PALETTE, as_a_user_without_override, make_cityscapes, make_paired, make_voc
from lmae_repair.checkpoints import CheckpointInfo, save_checkpoint
from lmae_repair.cli import app
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import LabelMAE, ModelConfig

runner = CliRunner()


def complete(data, out, family, *extra):
    """complete with the untrained test family; --min-confidence 0 so that it changes pixels
    (its guesses are never 90% sure) and the pipeline has something to write."""
    return runner.invoke(app, ["complete", str(data), "--out", str(out), "--models", str(family), "--device", "cpu",
                               "--min-confidence", "0", *extra])


def test_voc_output_mirrors_layout_palette_and_size(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=4, size=40)
    (root / "classes.txt").write_text("background\nthing\n")
    first = sorted((root / "SegmentationClass").glob("*.png"))[0]
    with Image.open(first) as img:  # a palette whose background entry is transparent (tRNS)
        img.load()
        img.save(first, transparency=0)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    result = complete(root, tmp_path / "out", family)
    assert result.exit_code == 0, result.output
    for label in (root / "SegmentationClass").glob("*.png"):
        written = Image.open(tmp_path / "out" / "SegmentationClass" / label.name)
        original = Image.open(label)
        assert written.mode == "P" and written.getpalette() == original.getpalette()
        assert written.info.get("transparency") == original.info.get("transparency")
        assert written.size == original.size
        assert (tmp_path / "out" / "JPEGImages" / f"{label.stem}.jpg").is_file()
    for side_file in ("classes.txt", "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"):
        assert (tmp_path / "out" / side_file).read_bytes() == (root / side_file).read_bytes()  # a dataset of its own
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # input untouched


def test_paired_and_cityscapes_layouts_are_mirrored(tmp_path, family):
    make_paired(tmp_path / "p" / "train", count=2, size=48)
    assert complete(tmp_path / "p", tmp_path / "out_p", family, "--labels-only").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out_p" / "train" / "labels").iterdir()) == ["scene_000.png", "scene_001.png"]
    assert not (tmp_path / "out_p" / "train" / "images").exists()
    cs = make_cityscapes(tmp_path / "cs")
    assert complete(cs, tmp_path / "out_c", family, "--split", "val").exit_code == 0
    written = sorted(p.relative_to(tmp_path / "out_c").as_posix() for p in (tmp_path / "out_c" / "gtFine").rglob("*.png"))
    assert written == [f"gtFine/val/lindau/lindau_00000{i}_000019_gtFine_labelTrainIds.png" for i in range(2)]


def test_cityscapes_pixels_annotated_but_ignored_in_training_are_kept(tmp_path, family):
    """Cityscapes' train ids give 255 to the ego vehicle, guard rails and the like as well as to
    what nobody annotated; its _gtFine_labelIds.png tells them apart. The car's own bonnet was
    repainted as the classes around it; only label id 0 ("unlabeled") is missing annotation."""
    cs = make_cityscapes(tmp_path / "cs")
    label_path = cs / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png"
    train_ids = np.array(Image.open(label_path))
    train_ids[-24:] = 255  # the bonnet: annotated as ego vehicle (label id 1)
    train_ids[16:32, 48:64] = 255  # a hole nobody annotated (label id 0)
    Image.fromarray(train_ids).save(label_path)
    label_ids = np.full(train_ids.shape, 7, np.uint8)
    label_ids[-24:] = 1
    label_ids[16:32, 48:64] = 0
    Image.fromarray(label_ids).save(str(label_path).replace("labelTrainIds", "labelIds"))
    before = label_path.read_bytes()
    result = complete(cs, tmp_path / "out", family, "--split", "val")
    assert result.exit_code == 0, result.output
    written = np.array(Image.open(tmp_path / "out" / label_path.relative_to(cs)))
    assert (written[-24:] == 255).all()  # the bonnet stays as annotated
    assert (written[16:32, 48:64] != 255).all()  # the unannotated hole is filled
    assert label_path.read_bytes() == before
    audit_json = tmp_path / "audit.json"
    audited = runner.invoke(app, ["audit", str(cs), "--split", "val", "--models", str(family), "--device", "cpu", "--json", str(audit_json)])
    assert audited.exit_code == 0, audited.output
    row = next(r for r in json.loads(audit_json.read_text()) if r["label"].endswith("lindau_000000_000019_gtFine_labelTrainIds.png"))
    missing = (train_ids == 0) | ((train_ids == 255) & (label_ids == 0))  # background and the hole, not the bonnet
    assert row["missing_share"] == pytest.approx(missing.mean(), abs=1e-4)


def test_output_inside_the_dataset_is_refused(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    for out in (root, root / "fixed"):
        result = complete(root, out, family)
        assert result.exit_code == 2 and "would be written inside the input" in result.output
    assert not (root / "fixed").exists()


def test_output_into_the_images_or_labels_folder_is_refused_and_inputs_stay(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for out in (root / "images", root / "labels", root / "images" / "fixed"):
        result = runner.invoke(app, ["complete", "--images", str(root / "images"), "--labels", str(root / "labels"),
                                     "--out", str(out), "--models", str(family), "--device", "cpu"])
        assert result.exit_code == 2 and "would be written inside the input" in result.output
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_images_and_labels_folders_named_explicitly_are_mirrored_under_their_names(tmp_path, family):
    make_paired(tmp_path / "a", count=2, images="pics", labels="gts")
    (tmp_path / "a" / "classes.txt").write_text("background\nclass_1\nclass_2\nclass_3\n")
    out = tmp_path / "out"
    args = ["--images", str(tmp_path / "a" / "pics"), "--labels", str(tmp_path / "a" / "gts"), "--out", str(out),
            "--models", str(family), "--device", "cpu"]
    assert runner.invoke(app, ["complete", *args]).exit_code == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("scene_*")) == [
        "gts/scene_000.png", "gts/scene_001.png", "pics/scene_000.png", "pics/scene_001.png"]
    again = runner.invoke(app, ["complete", *args])
    assert again.exit_code == 0 and "done by an earlier run" in again.output
    assert (out / "classes.txt").read_text() == (tmp_path / "a" / "classes.txt").read_text()  # OUT is a dataset of its own


def test_a_non_empty_folder_that_is_not_an_earlier_output_is_refused(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    out = tmp_path / "my-files"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "scene_000.png").write_bytes(b"precious")
    result = complete(root, out, family)
    assert result.exit_code == 2 and "not empty and is not the output of an earlier lmae-repair run" in result.output
    assert (out / "labels" / "scene_000.png").read_bytes() == b"precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert complete(root, empty, family).exit_code == 0  # an empty folder is fine, and so is
    assert complete(root, empty, family).exit_code == 0  # a rerun into an earlier output


def test_the_output_is_checked_before_any_model_loads(tmp_path):
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["complete", str(root), "--out", str(root / "fixed"), "--models", str(tmp_path / "no-such-model")])
    assert result.exit_code == 2 and "would be written inside the input" in result.output


def test_a_pair_that_fails_on_a_rerun_leaves_no_stale_output(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    (root / "labels" / "scene_001.png").write_bytes(b"broken since the first run")
    result = complete(root, out, family)
    assert result.exit_code == 1 and "scene_001.png" in result.output
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["scene_000.png", "scene_002.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["scene_000.png", "scene_002.png"]
    assert (root / "images" / "scene_001.png").is_file()  # the input image stays


def test_voc_split_lists_in_the_output_name_only_the_pairs_it_holds(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=6)  # train: 2007_000000-3, val: 2007_000004-5
    (root / "SegmentationClass" / "2007_000001.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert complete(root, out, family, "--split", "val").exit_code == 0
    lists = out / "ImageSets" / "Segmentation"
    assert (lists / "val.txt").read_text() == "2007_000004\n2007_000005\n"
    assert not (lists / "train.txt").exists()  # no train pair in OUT yet: an empty list stopped `--split train` on OUT
    assert complete(root, out, family, "--split", "train").exit_code == 1  # 2007_000001 fails
    assert (lists / "train.txt").read_text() == "2007_000000\n2007_000002\n2007_000003\n"
    assert (lists / "val.txt").read_text() == "2007_000004\n2007_000005\n"


def test_rerun_skips_finished_pairs_and_redoes_missing_ones(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    first = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    (out / "labels" / "scene_001.png").unlink()
    stamp = (out / "labels" / "scene_000.png").stat().st_mtime_ns
    assert complete(root, out, family).exit_code == 0
    assert (out / "labels" / "scene_000.png").stat().st_mtime_ns == stamp  # skipped
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first  # redone identically


def test_an_output_label_edited_by_hand_is_redone_and_the_report_tells_the_truth(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    first = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    shutil.copyfile(root / "labels" / "scene_001.png", out / "labels" / "scene_001.png")  # the output overwritten
    result = complete(root, out, family)
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first  # redone as the first run made it
    assert json.loads((out / "lmae-report.json").read_text())["totals"]["resumed"] == 2


def test_a_full_run_after_a_labels_only_run_links_the_images(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    out = tmp_path / "out"
    assert complete(root, out, family, "--labels-only").exit_code == 0
    assert not (out / "images").exists()
    result = complete(root, out, family)
    assert result.exit_code == 0 and "done by an earlier run" in result.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["scene_000.png", "scene_001.png"]


def test_a_rerun_mirrors_an_image_replaced_or_converted_since(tmp_path, family):
    """OUT stays a mirror of the input: an image replaced by another file gets its new pixels,
    an image now saved in another format leaves no copy under its old name."""
    root = make_paired(tmp_path / "ds", count=2)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    first, second = root / "images" / "scene_000.png", root / "images" / "scene_001.png"
    replacement = np.asarray(Image.open(first))[::-1].copy()
    first.unlink()
    Image.fromarray(replacement).save(first)  # a new file where the old one was
    Image.open(second).save(second.with_suffix(".jpg"), quality=95)
    second.unlink()
    assert complete(root, out, family).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out / "images" / "scene_000.png")), replacement)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["scene_000.png", "scene_001.jpg"]


def test_a_rerun_from_another_folder_or_into_a_copied_out_reports_this_runs_paths(tmp_path, family, monkeypatch):
    """Skipped pairs are reported with paths that open from where the rerun was made, and a
    copied OUT's report points into the copy, not into the folder it was copied from."""
    root = make_paired(tmp_path / "ds", count=2)
    monkeypatch.chdir(tmp_path)
    assert complete(Path("ds"), Path("out"), family).exit_code == 0  # relative paths, from tmp_path
    monkeypatch.chdir(tmp_path / "ds" / "images")
    rerun = complete(root, tmp_path / "out", family)
    assert rerun.exit_code == 0 and "done by an earlier run" in rerun.output
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    assert all(Path(e["image"]).is_file() and Path(e["input_label"]).is_file() for e in report["pairs"])
    assert "No label was changed" not in (tmp_path / "out" / "lmae-report.html").read_text()
    shutil.copytree(tmp_path / "out", tmp_path / "copy")  # copytree keeps sizes and times, as cp -a
    assert complete(root, tmp_path / "copy", family).exit_code == 0
    report = json.loads((tmp_path / "copy" / "lmae-report.json").read_text())
    assert report["totals"]["resumed"] == 2
    assert all(Path(e["output"]).parent == (tmp_path / "copy" / "labels").absolute() for e in report["pairs"])


def test_report_paths_open_from_another_folder_than_the_run(tmp_path, family, monkeypatch):
    """A script reading lmae-report.json runs elsewhere than `complete` did: the images, input
    labels and checkpoints it names open from there too, as the outputs do."""
    make_paired(tmp_path / "ds", count=2)
    shutil.copytree(family, tmp_path / "models-here")
    monkeypatch.chdir(tmp_path)
    assert complete(Path("ds"), Path("out"), Path("models-here")).exit_code == 0  # relative paths, as typed
    monkeypatch.chdir(tmp_path / "out")
    report = json.loads(Path("lmae-report.json").read_text())
    for entry in report["pairs"]:
        for field in ("image", "input_label", "output", "checkpoint"):
            assert Path(entry[field]).is_file(), (field, entry[field])
    assert all(Path(c["path"]).is_file() for c in report["checkpoints"])


def test_labels_of_pairs_gone_from_the_input_are_kept_and_listed(tmp_path, family):
    """A pair removed from the input after a run: its label in OUT stays (it may be another
    split's work) but the rerun says so and the report lists it; the other pairs are skipped."""
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    (root / "labels" / "scene_002.png").unlink()
    (root / "images" / "scene_002.png").unlink()
    result = complete(root, out, family)
    assert result.exit_code == 0, result.output
    assert "1 label written by an earlier run for pairs not in this input" in result.output
    assert (out / "labels" / "scene_002.png").is_file()
    report = json.loads((out / "lmae-report.json").read_text())
    assert report["totals"]["outputs_not_in_input"] == ["labels/scene_002.png"] and report["totals"]["resumed"] == 2


def test_an_uppercase_png_label_keeps_its_name(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    (root / "labels" / "scene_000.png").rename(root / "labels" / "scene_000.PNG")
    assert complete(root, tmp_path / "out", family).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["scene_000.PNG", "scene_001.png"]


def test_rerun_redoes_pairs_whose_input_or_options_changed(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    edited = root / "labels" / "scene_001.png"
    values = np.array(Image.open(edited))
    values[:, :] = values[0, 0]  # the curator fixed this label by hand since the first run
    Image.fromarray(values).save(edited)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    result = complete(root, out, family)
    assert result.exit_code == 0
    now = {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    assert [name for name in stamps if now[name] != stamps[name]] == ["scene_001.png"]
    assert complete(root, out, family, "--threshold", "0.9").exit_code == 0  # other options: all redone
    again = {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    assert all(again[name] != now[name] for name in now)


def test_a_rerun_from_another_folder_or_with_the_same_models_elsewhere_redoes_nothing(tmp_path, family, monkeypatch):
    """A scheduler runs the job from another folder, or a fresh clone holds the same models at
    another path: the finished pairs are still finished."""
    root = make_paired(tmp_path / "ds", count=3)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert complete(root, Path("out"), family).exit_code == 0  # a relative --out
    moved = tmp_path / "models-copy"
    shutil.copytree(family, moved)
    monkeypatch.chdir(tmp_path)
    result = complete(root, tmp_path / "a" / "out", moved)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "out" / "lmae-report.json").read_text())["totals"]["resumed"] == 3


def test_a_rerun_with_the_models_moved_reports_the_checkpoints_where_they_are_now(tmp_path, family):
    """The models moved since the first run (the same files: nothing is redone): the report names
    each pair's checkpoint where this run read it, not where the first run did."""
    root = make_paired(tmp_path / "ds", count=3)
    first = tmp_path / "models-then"
    shutil.copytree(family, first)
    assert complete(root, tmp_path / "out", first).exit_code == 0
    now = tmp_path / "models-now"
    first.rename(now)
    result = complete(root, tmp_path / "out", now)
    assert result.exit_code == 0 and "done by an earlier run" in result.output, result.output
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    assert report["totals"]["resumed"] == 3
    assert all(Path(entry["checkpoint"]).is_file() and Path(entry["checkpoint"]).is_relative_to(now) for entry in report["pairs"])


def test_a_run_killed_before_its_report_is_not_taken_over_by_another_dataset(tmp_path, family):
    from lmae_repair.complete import lock_output

    root, other = make_paired(tmp_path / "ds", count=2), make_paired(tmp_path / "other", count=2, seed=4)
    out = tmp_path / "out"
    out.mkdir()
    lock_output(out, root.resolve()).close()  # what a run killed part-way leaves: its lock, no report
    (out / ".lmae-progress.jsonl").write_text("")
    refused = complete(other, out, family)
    assert refused.exit_code == 2 and "holds the completed copy of another dataset" in refused.output
    assert complete(root, out, family).exit_code == 0  # the first job still finishes


def test_report_lists_every_pair_and_failures(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3)
    (root / "labels" / "scene_002.png").write_text("broken")
    result = complete(root, tmp_path / "out", family)
    assert result.exit_code == 1 and "scene_002.png: unreadable label" in result.output
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    assert report["totals"]["pairs"] == 3 and report["totals"]["failed"] == 1
    page = (tmp_path / "out" / "lmae-report.html").read_text()
    assert "Failed pairs (1)" in page and "scene_002.png: unreadable label" in page  # named on the page too
    void_id = json.loads(runner.invoke(app, ["inspect", str(family), "--json"]).output)[0]["label_space"]["void_id"]
    assert f"void ({void_id}: not annotated)" in page  # the legend says which value is the missing annotation
    entries = {e["label"]: e for e in report["pairs"]}
    good = entries["labels/scene_000.png"]
    assert good["mask_ratio"] in (0.25, 0.5) and good["checkpoint"].endswith("best.safetensors")
    assert good["patches_masked"] > 0 and good["pixels_changed"] >= 0 and good["error"] is None
    changed = np.array(Image.open(tmp_path / "out" / "labels" / "scene_000.png")) != np.array(Image.open(root / "labels" / "scene_000.png"))
    assert int(changed.sum()) == good["pixels_changed"]
    (root / "labels" / "lonely.png").write_bytes((root / "labels" / "scene_000.png").read_bytes())  # no image
    result = complete(root, tmp_path / "out", family)
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    totals = report["totals"]  # the same counts as the printed table
    assert (totals["pairs"], totals["unpaired"], totals["failed"]) == (3, 1, 2) and len(report["pairs"]) == 4
    assert "│ pairs " in result.output and "│ 3 " in result.output.split("│ pairs ")[1].split("\n")[0]
    page = (tmp_path / "out" / "lmae-report.html").read_text()  # the counts add up there too
    assert "3 pairs (2 of them done by an earlier run into this folder): 2 repaired, 0 unchanged, 1 failed; 1 file that could not be paired;" in page


def test_dry_run_writes_nothing_says_so_and_is_refused_where_the_real_run_would_be(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    result = complete(root, tmp_path / "out", family, "--dry-run")
    assert result.exit_code == 0 and "repaired" in result.output and "nothing was written" in result.output
    assert not (tmp_path / "out").exists()
    # the rows say what a real run would do: "repaired 2" read as labels written
    assert "would be repaired" in result.output and "pixels that would change" in result.output
    assert "│ repaired " not in result.output and "│ pixels changed " not in result.output
    mine = tmp_path / "my-files"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused = complete(root, mine, family, "--dry-run")
    assert refused.exit_code == 2 and "not the output of an earlier lmae-repair run" in refused.output


def test_without_models_and_no_bundled_family_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "empty"))
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and f"lmae-repair train {root} --mask-ratio" in " ".join(result.output.split())


def test_colour_labels_that_no_family_reads_are_not_sent_to_train_a_family(tmp_path):
    """Every label an RGB colour image: the advice was to train a family on them, which would
    skip every one of them too."""
    root = make_paired(tmp_path / "ds", count=2)
    for label in (root / "labels").glob("*.png"):
        values = np.array(Image.open(label))
        Image.fromarray(np.stack([values * 60, values * 20, values * 0], -1).astype(np.uint8)).save(label)
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "out")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "colour (RGB) label" in text and "needs class indices" in text
    assert "lmae-repair train" not in text
    trained = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert trained.exit_code == 2 and "no usable training pair" in trained.output  # what the advice had led to


def test_a_family_chosen_by_its_palette_alone_says_so(tmp_path, monkeypatch):
    """Most VOC tools write the same palette: a named family (concrete) picked without a class
    list to confirm its classes must say so, and a class list that does confirm them silences it."""
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "models_root"))
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    names = ["background", "rust", "dent", "hole"]
    space = LabelSpace(NUM_CLASSES, names=names, background_id=0, void_id=255, palette=VOC_PALETTE)
    save_checkpoint(tmp_path / "models_root" / "metal" / "mask-0.50.safetensors", LabelMAE(config), CheckpointInfo(config, 0.5, space, {"crop": 32}))
    root = make_voc(tmp_path / "voc", count=2)
    args = ["complete", str(root), "--device", "cpu", "--dry-run"]
    guessed = runner.invoke(app, args + ["--out", str(tmp_path / "o1")])
    assert guessed.exit_code == 0, guessed.output
    assert "bundled family 'metal' (chosen by its label values and palette alone" in " ".join(guessed.output.split())
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    confirmed = runner.invoke(app, args + ["--out", str(tmp_path / "o2")])
    assert confirmed.exit_code == 0 and "palette alone" not in confirmed.output


def test_checkpoint_that_does_not_fit_cityscapes_says_what_to_do(tmp_path):
    """--models naming a family of other classes (the bundled camvid on Cityscapes' 19 train
    ids): the error says what to do, not only that they do not fit."""
    wide = ModelConfig(num_classes=2, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    other = tmp_path / "binary.safetensors"
    save_checkpoint(other, LabelMAE(wide), CheckpointInfo(wide, 0.5, LabelSpace(2, background_id=0, void_id=255), {"crop": 32}))
    cs = make_cityscapes(tmp_path / "cs")
    result = runner.invoke(app, ["complete", str(cs), "--out", str(tmp_path / "o"), "--models", str(other)])
    assert result.exit_code == 2 and "does not fit the labels" in result.output
    message = " ".join(result.output.split())
    assert "class names: road, sidewalk, building, wall, fence, pole, ...)" in message  # cut with "...", not silently
    assert f"or train a family for it with `lmae-repair train {cs} " in message


def test_one_label_with_another_palette_does_not_decide_the_family(tmp_path, monkeypatch):
    """Without a class list, the family is confirmed by the labels' palette: the first label of
    the sample, saved by another tool with its own colours, made the choice fail ("nothing names
    the classes (no classes.txt, no palette)") though the others carry the family's palette."""
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "models_root"))
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    space = LabelSpace(NUM_CLASSES, names=["background", "rust", "dent", "hole"], background_id=0, void_id=255, palette=VOC_PALETTE)
    save_checkpoint(tmp_path / "models_root" / "metal" / "mask-0.50.safetensors", LabelMAE(config), CheckpointInfo(config, 0.5, space, {"crop": 32}))
    root = make_voc(tmp_path / "voc", count=4)
    first = sorted((root / "SegmentationClass").glob("*.png"))[0]
    with Image.open(first) as img:
        img.load()
        img.putpalette([0, 0, 0, 255, 255, 0, 0, 255, 255, 255, 0, 255] + [128] * (252 * 3))
        img.save(first)
    result = runner.invoke(app, ["complete", str(root), "--device", "cpu", "--dry-run", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "bundled family 'metal'" in result.output


def test_bundled_family_by_name_and_by_label_space(tmp_path, family, monkeypatch):
    """`--models NAME` picks models/NAME; without --models the family whose label space fits wins."""
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "models_root"))
    bundled = tmp_path / "models_root"
    bundled.mkdir()
    family.rename(bundled / "shapes")
    wide = ModelConfig(num_classes=2, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    save_checkpoint(bundled / "binary" / "mask-0.50.safetensors", LabelMAE(wide),
                    CheckpointInfo(wide, 0.5, LabelSpace(2, background_id=0, void_id=255), {"crop": 32}))
    root = make_paired(tmp_path / "ds", count=2)  # values 0..3: only "shapes" can read them
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o1"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "bundled family 'shapes'" in result.output
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o2"), "--models", "binary"])
    assert result.exit_code == 2 and "does not fit the labels" in result.output
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o3"), "--models", "nosuch"])
    assert result.exit_code == 2 and "bundled families: binary, shapes" in result.output


def test_batching_and_loader_workers_do_not_change_the_output(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=5, size=40)
    assert complete(root, tmp_path / "one", family, "--batch-size", "1", "--workers", "0").exit_code == 0
    assert complete(root, tmp_path / "many", family, "--batch-size", "4", "--workers", "2").exit_code == 0
    for label in (tmp_path / "one" / "labels").iterdir():
        assert label.read_bytes() == (tmp_path / "many" / "labels" / label.name).read_bytes()


def test_a_gpu_out_of_memory_retries_smaller_passes_with_the_same_output(tmp_path, family, monkeypatch):
    """A large --batch-size on a GPU may run out of memory: the pairs are retried in halves (fewer
    pairs, then fewer tiles a pass) instead of failing, and come out as an unhindered run writes them."""
    import lmae_repair.complete as complete_module

    root = make_paired(tmp_path / "ds", count=5, size=40)
    assert complete(root, tmp_path / "plain", family, "--batch-size", "4", "--workers", "0").exit_code == 0
    real_predict, passes = complete_module.predict, []

    def predict_that_fits_one_pair_at_two_tiles(model, info, items, device, tiles, *args):
        passes.append((len(items), tiles))
        if len(items) > 1 or tiles > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict(model, info, items, device, tiles, *args)

    monkeypatch.setattr(complete_module, "predict", predict_that_fits_one_pair_at_two_tiles)
    result = complete(root, tmp_path / "retried", family, "--batch-size", "4", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert (1, 2) in passes and passes[0][0] > 1
    for label in (tmp_path / "plain" / "labels").iterdir():
        assert label.read_bytes() == (tmp_path / "retried" / "labels" / label.name).read_bytes()


def test_html_report_shows_the_changed_pairs(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3)
    assert complete(root, tmp_path / "out", family).exit_code == 0
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    changed = [e for e in report["pairs"] if e["pixels_changed"] > 0]
    page = (tmp_path / "out" / "lmae-report.html").read_text()
    assert changed and page.count("<img ") == 4 * len(changed)  # image, original, repaired, changes
    for entry in changed:
        assert entry["label"] in page
    assert report["totals"]["repaired"] == len(changed)


def test_a_second_run_into_the_same_output_is_refused_while_the_first_holds_it(tmp_path, family):
    from lmae_repair.complete import lock_output

    root = make_paired(tmp_path / "ds", count=2)
    out = tmp_path / "out"
    out.mkdir()
    held = lock_output(out)
    try:
        result = complete(root, out, family)
        assert result.exit_code == 2 and "another lmae-repair run is writing here" in result.output
        no_model = runner.invoke(app, ["complete", str(root), "--out", str(out), "--models", str(tmp_path / "no-such-model")])
        assert "another lmae-repair run is writing here" in no_model.output  # said before any model loads
    finally:
        held.close()
    assert complete(root, out, family).exit_code == 0


def test_a_symlinked_image_is_mirrored_as_a_file_that_opens(tmp_path, family):
    """A relative symlink inside DATA must not become a dangling link inside OUT."""
    root = make_paired(tmp_path / "ds", count=2, size=40)
    raw = tmp_path / "ds" / "raw"
    raw.mkdir()
    image = sorted((root / "images").iterdir())[0]
    image.rename(raw / image.name)
    image.symlink_to(f"../raw/{image.name}")
    assert complete(root, tmp_path / "out", family).exit_code == 0
    mirrored = tmp_path / "out" / "images" / image.name
    assert not mirrored.is_symlink() and Image.open(mirrored).size == (40, 40)


def test_the_output_of_another_dataset_is_refused_as_out(tmp_path, family):
    """Completing dataset B into the folder that holds dataset A's completed copy would mix the
    two; a rerun of A into it resumes as before."""
    first = make_paired(tmp_path / "a", count=2, size=40)
    second = make_paired(tmp_path / "b", count=2, size=40, seed=1)
    assert complete(first, tmp_path / "out", family).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")}
    result = complete(second, tmp_path / "out", family)
    assert result.exit_code == 2 and "another dataset" in result.output and str(first.resolve()) in result.output
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")} == before
    assert complete(first, tmp_path / "out", family).exit_code == 0


def test_an_all_void_label_is_left_as_it_is_and_said_so(tmp_path, family):
    """A label with no annotated pixel was never annotated: completing it would be the model's
    own segmentation with void squares left over, not a completion."""
    root = make_paired(tmp_path / "ds", count=3, size=40)
    empty = sorted((root / "labels").iterdir())[0]
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(empty)
    result = complete(root, tmp_path / "out", family)
    assert result.exit_code == 0 and "1 label has no annotated pixel" in result.output
    assert (tmp_path / "out" / "labels" / empty.name).read_bytes() == empty.read_bytes()
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    entry = next(e for e in report["pairs"] if e["label"].endswith(empty.name))
    assert entry["pixels_changed"] == 0 and "nothing to complete" in entry["note"]


def test_bmp_and_tiff_labels_come_out_under_the_same_name_and_format(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3, size=40)
    labels = sorted((root / "labels").iterdir())
    for label, suffix in zip(labels, (".bmp", ".tif")):
        Image.open(label).save(label.with_suffix(suffix))
        label.unlink()
    assert complete(root, tmp_path / "out", family).exit_code == 0
    for label, suffix, file_format in zip(labels, (".bmp", ".tif"), ("BMP", "TIFF")):
        written = tmp_path / "out" / "labels" / label.with_suffix(suffix).name
        assert Image.open(written).format == file_format and Image.open(written).size == (40, 40)
    assert sorted(p.suffix for p in (tmp_path / "out" / "labels").iterdir()) == [".bmp", ".png", ".tif"]


def test_a_log_that_is_no_terminal_gets_progress_lines_during_a_long_run(tmp_path, family, monkeypatch):
    from lmae_repair.cli import PairProgress

    monkeypatch.setattr(PairProgress, "LOG_EVERY_S", 0.0)  # a line after every pair instead of every minute
    result = complete(make_paired(tmp_path / "ds", count=3), tmp_path / "out", family, "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert "completing: 1/3 pairs" in result.output and "completing: 2/3 pairs" in result.output
    assert "completing: 3/3" not in result.output  # the last one is the summary's


def test_a_log_gets_progress_lines_while_a_batch_of_large_pairs_is_repaired(tmp_path, family, monkeypatch):
    """Pairs finish a batch at a time: 14 Cityscapes pairs of 2048x1024 on a CPU ran 7 minutes
    with no line in the log, then one saying "1/14 pairs"."""
    import time

    from lmae_repair.cli import PairProgress
    from lmae_repair.complete import Completer

    monkeypatch.setattr(PairProgress, "LOG_EVERY_S", 0.2)
    repair_batch = Completer.repair_batch

    def slow_batch(self, batch):
        time.sleep(1.0)  # a batch of pairs that takes many minutes
        return repair_batch(self, batch)

    monkeypatch.setattr(Completer, "repair_batch", slow_batch)
    result = complete(make_paired(tmp_path / "ds", count=3), tmp_path / "out", family, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "completing: 0/3 pairs" in result.output


def test_progress_lines_say_how_far_the_model_is_through_the_tiles_of_a_slow_batch(tmp_path, family, monkeypatch):
    """One 6000x4000 tile took 10 minutes on 2 CPU cores, and its log said only '0/1 pairs, 0.00
    pairs/s' every minute: no sign of how much was left. The lines now count the tiles done."""
    import time

    import lmae_repair.complete as complete_module
    import lmae_repair.inference as inference
    from lmae_repair.cli import PairProgress

    monkeypatch.setattr(PairProgress, "LOG_EVERY_S", 0.2)
    monkeypatch.setattr(complete_module, "TILES_PER_PASS_CPU", 1)  # one pass per tile
    batches = inference._same_shape_batches

    def slow_passes(windows, tiles_per_pass):
        for chunk in batches(windows, tiles_per_pass):
            yield chunk
            time.sleep(0.6)  # each pass a while, as a large tile's passes on a CPU

    monkeypatch.setattr(inference, "_same_shape_batches", slow_passes)
    result = complete(make_paired(tmp_path / "ds", count=3), tmp_path / "out", family, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("completing: 0/3 pairs")]
    assert any("; model: 1/3 tiles of the pairs under way" in line for line in lines), result.output
    assert any("; model: 2/3 tiles of the pairs under way" in line for line in lines), result.output
    assert inference.TILES.total == 0  # nothing under way once the run is over


def test_pairs_far_larger_than_the_training_images_are_read_at_their_scale_and_written_at_their_own(tmp_path, family):
    from lmae_repair.checkpoints import load_checkpoint

    for path in family.rglob("*.safetensors"):  # the models say they were trained on 64-pixel images
        model, info = load_checkpoint(path)
        info.training["image_short_side"] = 64
        save_checkpoint(path, model, info)
    root = make_paired(tmp_path / "data", count=3, size=128)
    for label_path in (root / "labels").glob("*.png"):  # annotated everywhere but for a hole of whole patches
        label = np.array(Image.open(label_path))
        label[label == 0] = 1
        label[32:96, 32:96] = 255
        Image.fromarray(label).save(label_path)
    result = complete(root, tmp_path / "out", family)
    assert result.exit_code == 0, result.output
    assert "shrunk to models' scale" in result.output  # the summary says so (a row of the table)
    assert "--native-scale reads every pair" in " ".join(result.output.split())  # and how to read them as they are
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    assert report["totals"]["read_shrunk"] == 3
    assert {entry["read_at"] for entry in report["pairs"]} == {"64x64"}
    for label in (root / "labels").glob("*.png"):
        assert Image.open(tmp_path / "out" / "labels" / label.name).size == (128, 128)
    native = complete(root, tmp_path / "native", family, "--native-scale")
    assert native.exit_code == 0, native.output
    report = json.loads((tmp_path / "native" / "lmae-report.json").read_text())
    assert report["totals"]["read_shrunk"] == 0 and {entry["read_at"] for entry in report["pairs"]} == {None}


def test_an_image_that_cannot_be_mirrored_leaves_no_temporary_and_names_its_place_in_out(tmp_path, family, monkeypatch):
    """A full disk while an image is copied into OUT (where a hard link is not possible)."""
    import errno

    def no_link(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full(source, target):
        Path(target).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lmae_repair.complete.os.link", no_link)
    monkeypatch.setattr(shutil, "copy2", disk_full)
    root, out = make_paired(tmp_path / "ds", count=2), tmp_path / "out"
    result = complete(root, out, family)
    assert result.exit_code != 0
    assert f"{out / 'images' / 'scene_000.png'}: cannot write it (No space left on device)" in result.output
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    assert not (out / "images" / "scene_000.png").exists() and not (out / "labels" / "scene_000.png").exists()


def test_pairs_whose_output_cannot_be_written_count_as_failed_not_repaired(tmp_path, family, monkeypatch):
    """An OUT that turned read-only (or a full disk): the table and the report say 0 repaired, 2
    failed, no pixel changed, not 2 repaired and 2 failed out of 2 pairs."""
    import errno

    def read_only(target, label):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("lmae_repair.complete.write_label", read_only)
    root, out = make_paired(tmp_path / "ds", count=2), tmp_path / "out"
    result = complete(root, out, family)
    assert result.exit_code == 1
    totals = json.loads((out / "lmae-report.json").read_text())["totals"]
    assert (totals["pairs"], totals["repaired"], totals["unchanged"], totals["failed"], totals["pixels_changed"]) == (2, 0, 0, 2, 0)


def test_a_voc_name_with_spaces_in_a_split_list_is_that_pair_not_its_first_word(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=3, splits={"val": ["2007_000000", "2007_000001"]})
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / f"2007_000002{suffix}").rename(root / folder / f"crack wall 7{suffix}")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000000\r\ncrack wall 7  \r\n\r\n2007_000001\r\n")
    out = tmp_path / "out"
    result = complete(root, out, family, "--split", "val")
    assert result.exit_code == 0, result.output  # was 1: "val.txt lists crack, but neither this label nor its image exists"
    assert "lists crack" not in result.output
    assert (out / "SegmentationClass" / "crack wall 7.png").is_file()
    assert "crack wall 7" in (out / "ImageSets" / "Segmentation" / "val.txt").read_text()


def test_voc_split_lists_in_the_output_keep_bmp_tiff_and_upper_case_labels(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=4, splits={"val": ["2007_000000", "2007_000001", "2007_000002", "2007_000003"]})
    labels = root / "SegmentationClass"
    Image.open(labels / "2007_000001.png").save(labels / "2007_000001.bmp")
    Image.open(labels / "2007_000002.png").save(labels / "2007_000002.tif")
    (labels / "2007_000003.png").rename(labels / "2007_000003.PNG")
    for name in ("2007_000001.png", "2007_000002.png"):
        (labels / name).unlink()
    out = tmp_path / "out"
    assert complete(root, out, family, "--split", "val").exit_code == 0
    assert sorted(p.name for p in (out / "SegmentationClass").iterdir()) == [
        "2007_000000.png", "2007_000001.bmp", "2007_000002.tif", "2007_000003.PNG"]
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == (root / "ImageSets" / "Segmentation" / "val.txt").read_text()


def test_a_voc_split_list_naming_files_with_their_extension_names_those_pairs(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=3, splits={"val": ["2007_000000.jpg", "2007_000001.png", "2007_000002"]})
    out = tmp_path / "out"
    result = complete(root, out, family, "--split", "val")
    assert result.exit_code == 0, result.output  # was 1, those two pairs left out
    assert "neither this label nor its image exists" not in result.output  # "lists 2007_000000.jpg, but neither this label..."
    assert len(list((out / "SegmentationClass").iterdir())) == 3
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "2007_000000.jpg\n2007_000001.png\n2007_000002\n"


def test_a_voc_label_named_with_a_mask_suffix_is_the_pair_its_split_list_names(tmp_path, family):
    """x_mask.png pairs with x.jpg, but the split list's x was "neither this label nor its image
    exists": reported as failed (dropped with --split) and left out of OUT's list."""
    root = make_voc(tmp_path / "voc", count=3, splits={"val": ["2007_000000", "2007_000001"]})
    (root / "SegmentationClass" / "2007_000001.png").rename(root / "SegmentationClass" / "2007_000001_mask.png")
    out = tmp_path / "out"
    result = complete(root, out, family, "--split", "val")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "SegmentationClass").iterdir()) == ["2007_000000.png", "2007_000001_mask.png"]
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "2007_000000\n2007_000001\n"


def test_a_pair_in_a_voc_subfolder_listed_by_its_name_stays_in_the_output_list(tmp_path, family):
    """--split val repairs SegmentationClass/siteB/x.png for a listed x, but OUT's val.txt dropped x."""
    root = make_voc(tmp_path / "voc", count=3, splits={"val": ["2007_000000", "2007_000001"]})
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / "siteB").mkdir()
        (root / folder / f"2007_000001{suffix}").rename(root / folder / "siteB" / f"2007_000001{suffix}")
    out = tmp_path / "out"
    assert complete(root, out, family, "--split", "val").exit_code == 0
    assert (out / "SegmentationClass" / "siteB" / "2007_000001.png").is_file()
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "2007_000000\n2007_000001\n"


def test_a_mistyped_models_folder_is_named_with_the_variable_that_set_it(tmp_path, monkeypatch):
    root = make_paired(tmp_path / "ds", count=1)
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "modles"))
    for extra in ([], ["--models", "camvid"]):
        result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "out"), "--dry-run", *extra])
        assert result.exit_code == 2
        assert f"{tmp_path / 'modles'}, set by LMAE_REPAIR_MODELS" in result.output, result.output


def test_a_log_line_cut_short_by_a_kill_or_a_full_disk_does_not_swallow_the_next_runs_first_pair(tmp_path, family):
    """A run killed (or stopped by a full disk) while it appended to the progress log leaves a
    line without its newline; the rerun's first record was appended onto it, so that one pair
    was lost from the log and done again by every later rerun."""
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    log = out / ".lmae-progress.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # the third pair's line cut short
    assert complete(root, out, family).exit_code == 0
    result = complete(root, out, family)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "lmae-report.json").read_text())["totals"]["resumed"] == 3  # nothing done a third time


def test_a_split_list_that_cannot_be_read_is_left_out_of_out_with_a_note_and_the_run_goes_on(tmp_path, family):
    """A VOC dataset on a shared folder with one split list not readable (train.txt, while the
    run reads --split val) stopped complete before any pair with 'OUT/.../train.txt: cannot write
    it (Permission denied)', naming a file of the writable OUT for a file of the input."""
    root = make_voc(tmp_path / "voc", count=6)
    train_list = root / "ImageSets" / "Segmentation" / "train.txt"
    train_list.chmod(0)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lmae_repair", "complete", str(root), "--split", "val", "--out", str(out),
               "--models", str(family), "--device", "cpu", "--min-confidence", "0"]
    result = subprocess.run(as_a_user_without_override(command), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"note: {train_list}: cannot read it (Permission denied); not copied to the output" in " ".join(result.stdout.split())
    assert sorted(p.name for p in (out / "SegmentationClass").iterdir()) == ["2007_000004.png", "2007_000005.png"]
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text() == "2007_000004\n2007_000005\n"
    assert not (out / "ImageSets" / "Segmentation" / "train.txt").exists()


def test_the_default_output_of_a_linked_dataset_goes_beside_the_link(tmp_path, family, monkeypatch):
    """A dataset linked into one's own folder from a shared (often read-only) mount: the default
    OUT went beside the link's target, into the share (refused there, or written into other
    people's folder), where README says '<DATA>-completed beside DATA'."""
    share = make_paired(tmp_path / "share" / "camvid", count=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "camvid").symlink_to(share, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "mine")
    result = runner.invoke(app, ["complete", "camvid", "--models", str(family), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "mine" / "camvid-completed" / "labels").iterdir()) == ["scene_000.png", "scene_001.png"]
    assert sorted(p.name for p in (tmp_path / "share").iterdir()) == ["camvid"]


def test_one_label_and_one_image_without_read_permission_fail_alone_in_one_line_each(tmp_path, family):
    """Files without read permission among many (a shared folder): the rest is completed, and
    each is named once with the problem, not as "[Errno 13] Permission denied: 'the path again'"."""
    root = make_paired(tmp_path / "ds", count=4)
    (root / "labels" / "scene_001.png").chmod(0)
    (root / "images" / "scene_002.png").chmod(0)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lmae_repair", "complete", str(root), "--out", str(out), "--models", str(family),
               "--device", "cpu", "--min-confidence", "0"]
    result = subprocess.run(as_a_user_without_override(command), capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: {root / 'labels' / 'scene_001.png'}: unreadable label (Permission denied)",
                      f"failed: {root / 'images' / 'scene_002.png'}: unreadable image (Permission denied)"], result.stderr
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["scene_000.png", "scene_003.png"]


def test_checkpoint_of_fewer_classes_names_the_values_it_cannot_read(tmp_path):
    """--models concrete (3 classes) on Pascal VOC's 21: the refusal listed the values seen, cut
    in the middle, and left the user to work out which of them the checkpoint lacks."""
    narrow = ModelConfig(num_classes=2, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    other = tmp_path / "binary.safetensors"
    save_checkpoint(other, LabelMAE(narrow), CheckpointInfo(narrow, 0.5, LabelSpace(2, background_id=0, void_id=255), {"crop": 32}))
    root = make_voc(tmp_path / "voc", count=4)
    for path in (root / "SegmentationClass").glob("*.png"):  # every label holds 3 as well as what it had
        with Image.open(path) as img:
            values = np.array(img)
        values[:4, :4] = 3
        written = Image.fromarray(values, "P")
        written.putpalette(VOC_PALETTE)
        written.save(path)
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o"), "--models", str(other)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "does not fit the labels" in message
    assert "2, 3 are neither its classes (0-1) nor its void (255), in 4 of the 4 labels sampled" in message, message


def test_keep_void_leaves_every_void_pixel_and_still_completes_background(tmp_path, family):
    """Pascal VOC's 255 marks difficult objects left out on purpose as well as borders: complete
    filled such a void blob (patches mostly void count as a hole), even with background, whatever
    the model's confidence. --keep-void leaves every void pixel; background is still completed."""
    root = make_voc(tmp_path / "voc", count=3, size=64)
    for path in (root / "SegmentationClass").glob("*.png"):
        with Image.open(path) as img:
            values = np.array(img)
        values[8:40, 8:40] = 255  # a difficult object, wholly void
        values[48:50, :] = 255  # and a thin band, as along a border
        written = Image.fromarray(values, "P")
        written.putpalette(VOC_PALETTE)
        written.save(path)
    labels = sorted((root / "SegmentationClass").glob("*.png"))

    def void_changed(out):
        total = 0
        for label in labels:
            before, after = np.array(Image.open(label)), np.array(Image.open(out / "SegmentationClass" / label.name))
            total += int(((before == 255) & (after != 255)).sum())
        return total

    assert complete(root, tmp_path / "filled", family).exit_code == 0
    assert void_changed(tmp_path / "filled") > 0  # what the option is for: without it, the blob is filled
    result = complete(root, tmp_path / "kept", family, "--keep-void")
    assert result.exit_code == 0, result.output
    assert void_changed(tmp_path / "kept") == 0
    report = json.loads((tmp_path / "kept" / "lmae-report.json").read_text())
    assert report["totals"]["pixels_changed"] > 0  # background is still completed
    for label in labels:  # each written file keeps the VOC palette
        assert Image.open(tmp_path / "kept" / "SegmentationClass" / label.name).getpalette() == Image.open(label).getpalette()
    rerun = complete(root, tmp_path / "filled", family, "--keep-void")  # another option: every pair done again
    assert rerun.exit_code == 0 and void_changed(tmp_path / "filled") == 0


def test_cityscapes_report_draws_the_train_ids_in_cityscapes_colours(tmp_path):
    """Cityscapes' train-id labels are grey PNGs with no palette, and the HTML report drew them in
    VOC colours (road black, building green): a driving team reads them in Cityscapes' own."""
    from base64 import b64decode
    from io import BytesIO
    import re

    from lmae_repair.data import CITYSCAPES_COLOURS, CITYSCAPES_NAMES

    config = ModelConfig(num_classes=19, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2,
                         neighbour_hint=True, refine_channels=4)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "cs-model.safetensors", LabelMAE(config),
                    CheckpointInfo(config, 0.5, LabelSpace(19, list(CITYSCAPES_NAMES), background_id=None), {"crop": 32}))
    cs = make_cityscapes(tmp_path / "cs")
    label_path = cs / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png"
    train_ids = np.array(Image.open(label_path))
    train_ids[16:48, 32:96] = 255  # a hole for the model to fill, so that the pair is pictured
    Image.fromarray(train_ids).save(label_path)
    assert complete(cs, tmp_path / "out", tmp_path / "cs-model.safetensors", "--split", "val").exit_code == 0
    page = (tmp_path / "out" / "lmae-report.html").read_text()
    assert '<i style="background:rgb(128, 64, 128)"></i>road' in page
    assert '<i style="background:rgb(0, 0, 142)"></i>car' in page
    original = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)[1]  # image, original label, ...
    drawn = np.array(Image.open(BytesIO(b64decode(original))).convert("RGB")).reshape(-1, 3)
    assert {tuple(int(v) for v in c) for c in np.unique(drawn, axis=0)} <= set(CITYSCAPES_COLOURS) | {(255, 255, 255)}


def test_cityscapes_labels_without_label_ids_are_noted_as_filled_whole(tmp_path, family):
    """Run on a complete output (train ids only) or on train ids whose labelIds were left behind,
    complete repainted the ego vehicle's bonnet (12% of each frame) without a word: nothing says
    those 255 pixels are annotated. A note names how many labels lack the file and what follows."""
    cs = make_cityscapes(tmp_path / "cs")
    val = cs / "gtFine" / "val" / "lindau"
    first = val / "lindau_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.full((64, 128), 7, np.uint8)).save(str(first).replace("labelTrainIds", "labelIds"))
    result = complete(cs, tmp_path / "out", family, "--split", "val", "--dry-run")
    assert result.exit_code == 0, result.output
    assert (f"note: 1 of 2 Cityscapes labels have no _gtFine_labelIds.png beside them (first: "
            f"{val / 'lindau_000001_000019_gtFine_labelTrainIds.png'}), so nothing tells") in " ".join(result.output.split())
    Image.fromarray(np.full((64, 128), 7, np.uint8)).save(val / "lindau_000001_000019_gtFine_labelIds.png")
    result = complete(cs, tmp_path / "out2", family, "--split", "val", "--dry-run")
    assert result.exit_code == 0 and "labelIds" not in result.output, result.output


def test_a_voc_split_list_none_of_whose_pairs_out_holds_is_left_out_with_a_note(tmp_path, family):
    """`complete --split val` wrote an empty ImageSets/Segmentation/train.txt into OUT, and a
    training script reading OUT's train split then stopped with "names no pair"."""
    root = make_voc(tmp_path / "voc", count=6, splits={"train": [f"2007_00000{i}" for i in range(4)],
                                                       "val": ["2007_000004", "2007_000005"],
                                                       "trainval": [f"2007_00000{i}" for i in range(6)]})
    out = tmp_path / "out"
    result = complete(root, out, family, "--split", "val")
    assert result.exit_code == 0, result.output
    lists = out / "ImageSets" / "Segmentation"
    assert sorted(p.name for p in lists.iterdir()) == ["trainval.txt", "val.txt"]
    assert (lists / "trainval.txt").read_text() == "2007_000004\n2007_000005\n"
    assert "ImageSets/Segmentation/train.txt" in " ".join(result.output.split())
    assert json.loads((out / "lmae-report.json").read_text())["totals"]["split_lists_left_out"] == ["ImageSets/Segmentation/train.txt"]
    again = complete(out, tmp_path / "again", family, "--split", "train")
    assert again.exit_code == 2 and "no such split file" in again.output and "names no pair" not in again.output


def test_a_voc_folder_that_complete_does_not_copy_is_named_in_a_note(tmp_path, family):
    """SegmentationObject/ (VOC's instance masks) was left out of OUT without a word, so OUT
    looked like a copy of the whole VOC tree that had lost a folder."""
    root = make_voc(tmp_path / "voc", count=3)
    (root / "SegmentationObject").mkdir()
    Image.open(root / "SegmentationClass" / "2007_000000.png").save(root / "SegmentationObject" / "2007_000000.png")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "2007_000000.xml").write_text("<annotation/>")
    out = tmp_path / "out"
    result = complete(root, out, family)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Annotations/, SegmentationObject/" in said and "not copied" in said
    assert not (out / "SegmentationObject").exists() and not (out / "Annotations").exists()
    assert "not copied" not in " ".join(complete(make_voc(tmp_path / "plain", count=3), tmp_path / "out2", family).output.split())


def test_an_rgb_voc_label_of_voc_colours_is_completed_and_written_in_the_voc_palette(tmp_path, family):
    """A VOC label saved as RGB by a tool that dropped its palette failed as 'colour (RGB) label
    with no palette mapping'; its colours are all VOC colour-map entries, so it is read as their
    indices and written as VOC writes its labels: a palette PNG."""
    from lmae_repair.report import default_palette

    root = make_voc(tmp_path / "voc", count=3)
    path = root / "SegmentationClass" / "2007_000001.png"
    values = np.array(Image.open(path))
    Image.fromarray(default_palette()[values]).save(path)
    out = tmp_path / "out"
    result = complete(root, out, family)
    assert result.exit_code == 0, result.output
    with Image.open(out / "SegmentationClass" / "2007_000001.png") as written:
        assert written.mode == "P" and written.getpalette() == default_palette().reshape(-1).tolist()
        repaired = np.array(written)
    assert np.array_equal(repaired[values != 0], values[values != 0])  # its annotation kept


def cityscapes_with_label_ids(root: Path) -> Path:
    """make_cityscapes with a _gtFine_labelIds.png beside each val label, as in real Cityscapes:
    the bottom rows the ego vehicle (train id 255, label id 1), a hole nobody annotated (255 and
    0), the rest the label ids of the train ids (standard table: 0 road 7, 1 sidewalk 8, 2 building
    11, 3 wall 12)."""
    make_cityscapes(root)
    for label_path in sorted((root / "gtFine" / "val").rglob("*_labelTrainIds.png")):
        train_ids = np.array(Image.open(label_path))
        label_ids = np.array([7, 8, 11, 12], np.uint8)[train_ids]
        train_ids[-24:], label_ids[-24:] = 255, 1
        train_ids[16:32, 48:64], label_ids[16:32, 48:64] = 255, 0
        Image.fromarray(train_ids).save(label_path)
        Image.fromarray(label_ids).save(str(label_path).replace("labelTrainIds", "labelIds"))
    return root


def test_cityscapes_output_holds_label_ids_that_agree_with_the_completed_train_ids(tmp_path, family):
    """OUT held the completed train ids alone: a second complete (or audit) on OUT then took every
    255 for missing and repainted the ego vehicle, and cityscapesScripts, which reads label ids,
    had none. Each train-id label now has its label ids beside it: the input's, with the filled
    pixels given their class's label id, so that a second run changes only what the first could."""
    cs = cityscapes_with_label_ids(tmp_path / "cs")
    out, again = tmp_path / "out", tmp_path / "again"
    assert complete(cs, out, family, "--split", "val").exit_code == 0
    for source in sorted((cs / "gtFine" / "val").rglob("*_labelTrainIds.png")):
        before = np.array(Image.open(source))
        ids_before = np.array(Image.open(str(source).replace("labelTrainIds", "labelIds")))
        after = np.array(Image.open(out / source.relative_to(cs)))
        written = Image.open(str(out / source.relative_to(cs)).replace("labelTrainIds", "labelIds"))
        filled = after != before
        assert filled[16:32, 48:64].all() and not filled[-24:].any()
        expected = np.where(filled, np.array([7, 8, 11, 12, 0], np.uint8)[np.minimum(after, 4)], ids_before)
        assert written.mode == "L" and (np.array(written) == expected).all()
    assert complete(out, again, family, "--split", "val").exit_code == 0
    for source in sorted((cs / "gtFine" / "val").rglob("*_labelTrainIds.png")):
        before = np.array(Image.open(source))
        first, second = (np.array(Image.open(folder / source.relative_to(cs))) for folder in (out, again))
        missing_in_input = (before == 0) | ((before == 255) & (np.arange(before.shape[0])[:, None] < before.shape[0] - 24))
        assert (second[-24:] == 255).all()  # the ego vehicle, not repainted
        assert not ((second != first) & ~missing_in_input).any()


def test_cityscapes_label_ids_in_the_output_are_written_with_labels_only_redone_when_missing_and_removed_with_their_pair(tmp_path, family):
    """The label ids are labels (`--labels-only` writes them), a finished pair whose label ids
    were deleted from OUT is done again (identically), and a pair that fails later leaves no
    label ids behind, as it leaves no train ids."""
    cs = cityscapes_with_label_ids(tmp_path / "cs")
    out = tmp_path / "out"
    assert complete(cs, out, family, "--split", "val", "--labels-only").exit_code == 0
    city = out / "gtFine" / "val" / "lindau"
    first = {p.name: p.read_bytes() for p in city.iterdir()}
    assert sorted(first) == [f"lindau_00000{i}_000019_gtFine_{kind}.png" for i in range(2) for kind in ("labelIds", "labelTrainIds")]
    (city / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    assert complete(cs, out, family, "--split", "val", "--labels-only").exit_code == 0
    assert {p.name: p.read_bytes() for p in city.iterdir()} == first
    (cs / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png").write_bytes(b"not a png")
    assert complete(cs, out, family, "--split", "val", "--labels-only").exit_code == 1
    assert sorted(p.name for p in city.iterdir()) == [f"lindau_000000_000019_gtFine_{kind}.png" for kind in ("labelIds", "labelTrainIds")]


def test_out_keeps_split_list_lines_that_name_a_written_pair_by_path_quotes_or_letter_case(tmp_path):
    """OUT's split lists keep the lines whose pair OUT holds, spelt as discovery reads them: a
    Windows path, a quoted path or another letter case kept naming the pair only in the input."""
    from lmae_repair.complete import prune_split_lists
    from lmae_repair.data import discover

    root = make_voc(tmp_path / "voc", count=4, splits={"val": ["2007_000000"]})
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / f"2007_000000{suffix}").rename(root / folder / f"IMG_01{suffix}")
    lines = ["img_01", "JPEGImages\\2007_000001.jpg", '"C:\\VOC\\2007_000002.jpg"', "2007_000003"]
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    (out / "SegmentationClass").mkdir(parents=True)
    for name in ("IMG_01", "2007_000001", "2007_000002"):  # 2007_000003 not written (failed)
        shutil.copy(root / "SegmentationClass" / f"{name}.png", out / "SegmentationClass" / f"{name}.png")
    prune_split_lists(discover(root, split="val"), out)
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text().splitlines() == lines[:3]


def written_report(tmp_path, pairs, space=None, **html_options):
    """An HTML report written from `pairs` of (name, image, original, repaired, palette) arrays,
    saved as real files as `complete` leaves them (input under ds/, output under out/); returns
    the page and the pictures it embeds, decoded, four per pair shown."""
    import base64
    import io
    import re

    from lmae_repair.report import write_html_report

    space = space or LabelSpace(num_classes=3, names=["background", "crack", "spalling"], background_id=0, void_id=255)
    out, entries = tmp_path / "out", []
    for name, image, original, repaired, palette in pairs:
        paths = {"image": tmp_path / "ds" / "images" / f"{name}.png", "input_label": tmp_path / "ds" / "labels" / f"{name}.png",
                 "output": out / "labels" / f"{name}.png"}
        for path, values in ((paths["input_label"], original), (paths["output"], repaired)):
            path.parent.mkdir(parents=True, exist_ok=True)
            label = Image.fromarray(values)
            if palette is not None:
                label.putpalette(palette)
            label.save(path)
        paths["image"].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(paths["image"])
        entries.append({"label": f"labels/{name}.png", **{k: str(v) for k, v in paths.items()}, "pixels": original.size,
                        "pixels_changed": int((original != repaired).sum()), "mask_ratio": 0.5, "gap_kind": "any",
                        "patches_masked": 4, "mean_confidence": 0.95, "read_at": None, "error": None})
    totals = {"pairs": len(entries), "repaired": len(entries), "unchanged": 0, "failed": 0, "unpaired": 0,
              "pixels_changed": sum(e["pixels_changed"] for e in entries), "pixels": sum(e["pixels"] for e in entries)}
    page = write_html_report(out, {"data": str(tmp_path / "ds"), "totals": totals, "pairs": entries}, space, **html_options).read_text()
    pictures = [np.array(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"))
                for uri in re.findall(r'src="data:image/(?:png|jpeg);base64,([^"]+)"', page)]
    return page, pictures


def legend_colours(page):
    import re

    return {tuple(int(c) for c in rgb) for rgb in re.findall(r"background:rgb\((\d+), (\d+), (\d+)\)", page)}


def test_html_report_draws_every_label_in_the_legend_colours_when_some_labels_have_no_palette(tmp_path):
    """A dataset whose labels were saved by two tools, some with a palette and some as grey
    values: each was drawn in its own colours (the grey ones in VOC colours) under one legend,
    that of the last pair drawn, so a class shown green had no green in the legend."""
    rng = np.random.default_rng(0)
    palette = [40, 40, 40, 0, 255, 255, 255, 0, 255] + [0] * (768 - 9)
    pairs = []
    for name, with_palette in (("a", True), ("b", False), ("c", True)):
        original = rng.integers(0, 3, (32, 32)).astype(np.uint8)
        repaired = original.copy()
        original[:8, :8] = 0
        repaired[:8, :8] = 2
        pairs.append((name, rng.integers(0, 255, (32, 32, 3)).astype(np.uint8), original, repaired, palette if with_palette else None))
    page, pictures = written_report(tmp_path, pairs)
    legend = legend_colours(page)
    assert len(pictures) == 12
    for label_panel in [pictures[i] for i in range(12) if i % 4 in (1, 2)]:
        assert {tuple(int(c) for c in rgb) for rgb in label_panel.reshape(-1, 3)} <= legend


def test_html_report_shows_a_thin_filled_crack_of_a_large_label_on_the_changed_pixels_picture(tmp_path):
    """A thumbnail 320 pixels wide keeps one pixel in 7.5 x 7.5 of a 2400-pixel-wide label: a
    1-pixel crack the repair drew showed as a few scattered dots, as if little had changed."""
    height, width = 1600, 2400
    original = np.zeros((height, width), np.uint8)
    repaired = original.copy()
    rows = np.arange(200, 1400)
    repaired[rows, rows + 300] = 1  # a diagonal crack, 1200 pixels long
    image = np.full((height, width, 3), 100, np.uint8)
    page, pictures = written_report(tmp_path, [("big", image, original, repaired, None)])
    changes = pictures[3]
    assert changes.shape[1] == 320
    crack = (changes == (128, 0, 0)).all(axis=2)  # crack's colour (VOC's class 1), as in the legend
    assert "rgb(128, 0, 0)" in page
    assert crack.sum() >= 1200 * 320 // width  # at least one pixel per thumbnail column it crosses
    assert crack.any(axis=1).sum() >= (1400 - 200) * changes.shape[0] // height - 1  # and per row: a line, not dots


def test_html_report_links_each_changed_label_to_its_repaired_file_and_lists_them_all(tmp_path):
    """The page named 12 pairs, as text, and sent the reader to the JSON for the rest: a curator
    of 1,000 pairs could neither see which labels changed nor open one from the page."""
    from html.parser import HTMLParser
    from urllib.parse import unquote

    rng = np.random.default_rng(1)
    pairs = []
    for i, name in enumerate(['<b>&"x\'', "a b&amp;c"] + [f"p{i:02d}" for i in range(13)]):
        original = rng.integers(0, 3, (16, 16)).astype(np.uint8)
        repaired = original.copy()
        repaired[: i + 1, 0] = (original[: i + 1, 0] + 1) % 3  # i + 1 pixels changed: a known order
        pairs.append((name, rng.integers(0, 255, (16, 16, 3)).astype(np.uint8), original, repaired, None))
    page, _ = written_report(tmp_path, pairs)

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self.href = [], None

        def handle_starttag(self, tag, attrs):
            assert tag not in ("script", "link")  # self-contained: opens offline
            if tag == "a":
                self.href = dict(attrs)["href"]

        def handle_data(self, data):
            if self.href is not None:
                self.links.append((self.href, data))
                self.href = None

    parser = Links()
    parser.feed(page)
    assert "<b>&" not in page and "&lt;b&gt;&amp;&quot;x&#x27;.png" in page  # escaped, not markup
    assert len(parser.links) == 12 + 15  # the pictured pairs' captions, then every changed label
    for href, text in parser.links:
        target = tmp_path / "out" / unquote(href)
        assert target.is_file() and target.name == text.split("/")[-1]  # opens the file it names
    listed = [text for _, text in parser.links[12:]]
    assert listed == [f"labels/{name}.png" for name, *_ in reversed(pairs)]  # most changed first
    from lmae_repair.report import changed_pairs_list

    entries = [{"label": "labels/x.png", "output": str(tmp_path / "out" / "labels" / "x.png"), "pixels": 100,
                "pixels_changed": 1 if i == 0 else 10, "mask_ratio": 0.5, "gap_kind": "any", "mean_confidence": 0.9} for i in range(5)]
    short = changed_pairs_list(tmp_path / "out", entries, limit=2)
    assert short.count("<a ") == 2 and "... and 3 more" in short and "All changed labels (5)" in short
    assert "<0.1%" not in short and "<0.1%" in changed_pairs_list(tmp_path / "out", [dict(entries[0], pixels=10_000)])


def test_html_report_says_what_its_terms_mean_and_the_share_of_pixels_changed(tmp_path):
    """The page wrote "172 patches rebuilt" and "mean confidence 0.46" with no word on what they
    mean (read as a quarter of the label redrawn, and a doubtful repair), and gave the pixels
    changed without the share the printed summary gives."""
    original = np.zeros((20, 10), np.uint8)
    repaired = original.copy()
    repaired[:5, :2] = 1  # 10 of 200 pixels
    page, _ = written_report(tmp_path, [("a", np.zeros((20, 10, 3), np.uint8), original, repaired, None)])
    assert "10 pixels changed (5.00% of all pixels)" in page
    assert "only their void or background pixels may change" in page and "<i>Mean confidence</i> is" in page


def test_the_note_on_voc_folders_not_copied_does_not_claim_images_that_labels_only_leaves_out(tmp_path, family):
    """With --labels-only, the note naming SegmentationObject/ as not copied said OUT held the
    VOC dataset's JPEGImages/, which --labels-only does not write."""
    root = make_voc(tmp_path / "voc", count=3)
    (root / "SegmentationObject").mkdir()
    result = complete(root, tmp_path / "out", family, "--labels-only")
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "SegmentationObject/ not copied" in said, said
    assert not (tmp_path / "out" / "JPEGImages").exists() and "JPEGImages" not in said, said


def test_report_entries_of_unpaired_files_name_their_image_where_one_is_known(tmp_path, family):
    """lmae-report.json gave `"image": null` for a JPEG label, two labels of one name and two
    labels naming one image, though discovery knew the image (as audit's rows now name it)."""
    from conftest import add_files_left_unpaired

    root = make_paired(tmp_path / "ds", count=2, seed=1)
    add_files_left_unpaired(root)
    (root / "labels" / "orphan.png").write_bytes((root / "labels" / "c_mask.png").read_bytes())  # no image at all
    result = complete(root, tmp_path / "out", family)
    assert result.exit_code == 1, result.output
    entries = {e["label"]: e for e in json.loads((tmp_path / "out" / "lmae-report.json").read_text())["pairs"]}
    for key, image_name in (("labels/jl.jpg", "jl.png"), ("labels/d.png", "d.png"), ("images/c.png", "c.png")):
        assert entries[key]["image"] == str((root / "images" / image_name).absolute()), (key, entries[key])
        assert entries[key]["error"]
    assert entries["labels/orphan.png"]["image"] is None and entries["labels/orphan.png"]["error"]
    totals = json.loads((tmp_path / "out" / "lmae-report.json").read_text())["totals"]
    assert (totals["pairs"], totals["unpaired"]) == (2, 4), totals  # an unpaired file naming its image is still no pair


def test_html_report_says_how_many_pairs_an_earlier_run_did(tmp_path, family):
    """The printed summary of a rerun said 'done by an earlier run 2'; the page said nothing of
    it, so a curator reading it took every pair for this run's work."""
    root, out = make_paired(tmp_path / "ds", count=3), tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    assert " of them done by an earlier run" not in (out / "lmae-report.html").read_text()
    (out / "labels" / "scene_000.png").unlink()  # redone; the other two are taken as they are
    assert complete(root, out, family).exit_code == 0
    assert json.loads((out / "lmae-report.json").read_text())["totals"]["resumed"] == 2
    assert "<p>3 pairs (2 of them done by an earlier run into this folder): " in (out / "lmae-report.html").read_text()


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_summary_table_fits_80_columns_without_folding_a_row_name(dry_run, monkeypatch):
    """In 80 columns "routed to mask ratio 0.25 (objects)" and "failed (unpaired files included)"
    were folded over two lines: the table is as many lines there as on a wide terminal."""
    from rich.console import Console

    from lmae_repair import cli

    totals = {"pairs": 12, "unpaired": 1, "repaired": 8, "unchanged": 3, "failed": 2, "resumed": 4, "read_shrunk": 2,
              "pixels_changed": 1029, "pixels": 600_000, "seconds": 27.9, "pairs_per_second": 0.43,
              "pairs_by_mask_ratio": {"0.25 (objects)": 3, "0.50": 4, "0.75": 5}}

    def rendered(width):
        console = Console(width=width, record=True, file=io.StringIO())
        monkeypatch.setattr(cli, "console", console)
        cli.print_complete_summary({"totals": totals}, Path("/o"), dry_run)
        return console.export_text()

    narrow, wide = rendered(80), rendered(200)
    assert len(narrow.splitlines()) == len(wide.splitlines()), narrow
    for shown in ("0.25 (objects model): 3 pairs", "2 (unpaired files included)", "unpaired files", "done by an earlier run"):
        assert shown in narrow


def test_html_report_embeds_photos_as_jpeg_and_label_pictures_as_png_and_needs_nothing_online(tmp_path):
    """12 CamVid pairs made a 3.7 MB page: the photos were PNG. They are JPEG now; the label
    pictures stay PNG, whose colours match the legend exactly."""
    import re

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]  # smooth shading with grain, as a camera frame has
    photo = np.clip(np.stack([xx * 2, yy * 2, xx + yy], -1) + rng.integers(0, 12, (96, 128, 3)), 0, 255).astype(np.uint8)
    original = rng.integers(0, 3, (96, 128)).astype(np.uint8)
    repaired = original.copy()
    repaired[:20, :20] = 2
    page, pictures = written_report(tmp_path, [("a", photo, original, repaired, None)])
    kinds = re.findall(r'<img src="data:image/(png|jpeg);base64,', page)
    assert kinds == ["jpeg", "png", "png", "png"]
    assert len(pictures) == 4 and np.abs(pictures[0].astype(int) - photo).mean() < 8  # the photo, a little lossy
    assert {tuple(rgb) for rgb in pictures[1].reshape(-1, 3)} <= legend_colours(page)  # label colours exact
    assert not re.search(r'(src|href)="(https?:)?//', page)  # every picture inside the page: it opens offline


def test_html_report_outlines_changed_regions_so_a_black_fill_shows_over_the_dimmed_photo(tmp_path):
    """CamVid's labels carry no palette, so sky (class 0) is drawn black: filled sky over the
    dimmed photo was nearly invisible on the changed-pixels picture. Such a region gets a
    one-pixel white ring; the fill keeps its class colour, and a fill that shows is not ringed."""
    original = np.ones((40, 60), np.uint8)
    repaired = original.copy()
    repaired[10:20, 20:35] = 0  # filled as class 0: black in VOC colours
    photo = np.full((40, 60, 3), 40, np.uint8)  # a dark photo, dimmed further on the picture
    _, pictures = written_report(tmp_path, [("sky", photo, original, repaired, None)])
    changes = pictures[3]
    white = (changes == (255, 255, 255)).all(axis=2)
    ring = np.zeros_like(white)
    ring[9:21, 19:36] = True
    ring[10:20, 20:35] = False
    assert (white == ring).all()
    assert (changes[10:20, 20:35] == (0, 0, 0)).all()  # the fill in its legend colour
    bright = repaired.copy()
    bright[10:20, 20:35] = 2  # a colour that shows over the dimmed photo: not ringed
    _, pictures = written_report(tmp_path / "bright", [("sky", photo, original, bright, None)])
    assert not (pictures[3] == (255, 255, 255)).all(axis=2).any()


def test_outputs_differing_only_in_case_are_not_written_over_each_other_where_out_folds_case(tmp_path, family, monkeypatch):
    """labels/Mix.png and labels/mix.png (possible on Linux) into an OUT on exFAT, an SMB share or
    a macOS volume: the second write replaced the first while the report counted both repaired.
    No such file system here: the probe is made to say OUT folds case."""
    from conftest import make_scene, write_pair
    from lmae_repair import complete as complete_module

    root = make_paired(tmp_path / "ds", count=2, size=48)
    rng = np.random.default_rng(5)
    for name in ("Mix", "mix"):
        write_pair(root / "images" / f"{name}.jpg", root / "labels" / f"{name}.png", *make_scene(rng, 48, 48))
    assert not complete_module.output_folds_case(tmp_path)  # Linux tells them apart: both written, as before

    monkeypatch.setattr(complete_module, "output_folds_case", lambda out: True)
    out = tmp_path / "out"
    result = complete(root, out, family, "--workers", "0")
    assert result.exit_code == 1, result.output
    assert "mix.png: not written" in result.output and "that of" in result.output and "Mix.png" in result.output
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["Mix.png", "scene_000.png", "scene_001.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["Mix.jpg", "scene_000.png", "scene_001.png"]
    report = json.loads((out / "lmae-report.json").read_text())
    assert report["totals"]["failed"] == 1 and report["totals"]["pairs"] == 4
    failed = [entry["label"] for entry in report["pairs"] if entry["error"]]
    assert failed == ["labels/mix.png"]


def test_time_left_counts_only_the_pace_of_this_runs_pairs_not_those_an_earlier_run_finished(monkeypatch, capsys):
    """A rerun of a 2,000-pair run killed at 240 pairs said 1.3 pairs/s and '0:01:24' left: the
    240 pairs skipped in an instant counted as speed. 1,744 pairs at 1.3/s are 22 minutes."""
    import time

    from lmae_repair import cli

    monkeypatch.setattr(cli.PairProgress, "LOG_EVERY_S", 0.0)  # a line after every pair
    clock = iter([100.0, 100.0] + [100.0] * 90 + [110.0, 110.0, 110.0, 110.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock, 110.0))
    progress = cli.PairProgress("completing", 100)
    progress.LOG_EVERY_S = 1e9  # no heartbeat thread racing the clock
    with progress as advance:
        progress.LOG_EVERY_S = 0.0
        for _ in range(90):
            advance(timed=False)  # done by the earlier run
        advance()  # one pair worked, in 10 s: 9 pairs left take 90 s
        assert progress.progress.tasks[0].fields["left"] == "0:01:30"
    assert "completing: 91/100 pairs, 0.10 pairs/s, 0.2 min so far, 0:01:30 left" in capsys.readouterr().out


def test_reruns_that_redo_every_pair_keep_one_progress_line_per_pair(tmp_path, family):
    """Each rerun with other options appended a line per pair to OUT/.lmae-progress.jsonl, read
    at every start: 4 runs of 16 pairs left 64 lines. A run keeps the last line of each pair."""
    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    for threshold in ("0.5", "0.9", "0.5"):
        assert complete(root, out, family, "--threshold", threshold).exit_code == 0
    lines = [json.loads(line) for line in (out / ".lmae-progress.jsonl").read_text().splitlines()]
    assert len(lines) == 6  # the run before's, kept as the last run started, and the last run's (9 before)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    assert complete(root, out, family, "--threshold", "0.5").exit_code == 0  # the kept lines still tell what is finished
    assert {p.name: p.stat().st_mtime_ns for p in (out / "labels").iterdir()} == stamps
    assert len((out / ".lmae-progress.jsonl").read_text().splitlines()) == 3


def test_a_geotiff_no_data_border_stays_void_and_the_holes_beside_it_are_filled(tmp_path, family):
    """A tile whose left part lies outside the satellite swath (image 0 there, declared by GDAL's
    GDAL_NODATA tag, label void): `complete` filled that border with classes. Kept as it is, it
    still counted as a gap when choosing the working scale, so the tile was shrunk 4x and its
    16-pixel holes, 4 pixels once shrunk, were left void."""
    from PIL import TiffImagePlugin, TiffTags

    from lmae_repair.checkpoints import load_checkpoint

    for path in family.rglob("*.safetensors"):  # the models say they were trained on 64-pixel images
        model, info = load_checkpoint(path)
        info.training["image_short_side"] = 64
        save_checkpoint(path, model, info)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (256, 256, 3), dtype=np.uint8)
    label = np.where(np.arange(256)[:, None] % 64 < 32, 1, 2).astype(np.uint8).repeat(256, axis=1)
    image[:, :128], label[:, :128] = 0, 255  # outside the swath
    holes = [(slice(32, 48), slice(160, 176)), (slice(192, 208), slice(208, 224))]
    for hole in holes:
        label[hole] = 255
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[42113] = "0"
    tags.tagtype[42113] = TiffTags.ASCII
    Image.fromarray(image).save(root / "images" / "tile.tif", tiffinfo=tags)
    Image.fromarray(label).save(root / "labels" / "tile.tif", compression="tiff_lzw")
    result = complete(root, tmp_path / "out", family)
    assert result.exit_code == 0, result.output
    written = np.array(Image.open(tmp_path / "out" / "labels" / "tile.tif"))
    assert (written[:, :128] == 255).all()  # no data: not a class
    assert all((written[hole] != 255).all() for hole in holes)
    assert (written[:, 128:] != 255).all() and np.array_equal(written[label != 255], label[label != 255])


def test_the_transparent_part_of_a_geotiff_with_an_alpha_band_stays_void(tmp_path, family):
    """gdalwarp -dstalpha writes the part of a tile outside the scene as alpha 0 (an 8-bit RGBA
    GeoTIFF, no GDAL_NODATA tag): `complete` filled its void with classes. A PNG photo's
    transparent pixels are read as before."""
    from PIL import TiffImagePlugin, TiffTags

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    image = np.dstack([rng.integers(1, 256, (64, 64, 3), dtype=np.uint8), np.full((64, 64), 255, np.uint8)])
    label = np.where(np.arange(64)[:, None] % 32 < 16, 1, 2).astype(np.uint8).repeat(64, axis=1)
    image[:, :16, 3], label[:, :16] = 0, 255  # outside the scene
    label[32:48, 32:48] = 255  # a hole
    geo = TiffImagePlugin.ImageFileDirectory_v2()
    geo[33550] = (10.0, 10.0, 0.0)
    geo.tagtype[33550] = TiffTags.DOUBLE
    Image.fromarray(image, "RGBA").save(root / "images" / "tile.tif", tiffinfo=geo)
    Image.fromarray(image, "RGBA").save(root / "images" / "photo.png")
    Image.fromarray(label).save(root / "labels" / "tile.tif")
    Image.fromarray(label).save(root / "labels" / "photo.png")
    result = complete(root, tmp_path / "out", family, "--native-scale")
    assert result.exit_code == 0, result.output
    tile = np.array(Image.open(tmp_path / "out" / "labels" / "tile.tif"))
    photo = np.array(Image.open(tmp_path / "out" / "labels" / "photo.png"))
    assert (tile[:, :16] == 255).all() and (tile[32:48, 32:48] != 255).all()
    assert (photo[:, :16] != 255).any()  # a photo's transparency says nothing of its label


def test_a_log_under_force_color_gets_progress_lines_not_a_bar_redrawn_in_place(tmp_path, family, monkeypatch):
    """CI set-ups export FORCE_COLOR=1 for coloured logs; rich then took the log file for a
    terminal: the bar was redrawn ten times a second into it (35 kB of carriage returns for 3
    pairs) and the progress lines a log gets were left out."""
    from lmae_repair import cli

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.setattr(cli.console, "is_interactive", True)  # what rich decides at start under FORCE_COLOR=1
    monkeypatch.setattr(cli.PairProgress, "LOG_EVERY_S", 0.0)
    result = complete(make_paired(tmp_path / "ds", count=3), tmp_path / "out", family, "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert "completing: 1/3 pairs" in result.output
    assert "\r" not in result.output and "\x1b[2K" not in result.output  # no line erased and drawn again
    assert cli.console.is_interactive  # told otherwise for the bar's while only


def test_the_progress_bar_is_drawn_live_on_a_real_terminal_only(monkeypatch):
    """TERM=dumb on a terminal (Emacs' shell, some CI runners) drew no bar until the end and no
    progress lines either: a long run looked hung."""
    import io

    from rich.console import Console

    from lmae_repair.cli import draws_live

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert draws_live(Console(file=Terminal()))
    assert not draws_live(Console(file=io.StringIO()))
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not draws_live(Console(file=io.StringIO()))  # coloured, but a file
    monkeypatch.setenv("TERM", "dumb")
    assert not draws_live(Console(file=Terminal()))
    monkeypatch.setenv("TTY_INTERACTIVE", "1")  # rich's own switch still decides
    assert draws_live(Console(file=io.StringIO()))


def test_report_paths_of_data_named_with_dotdot_are_tidy_and_open(tmp_path, family, monkeypatch):
    """DATA given as `../shared/data/...` (as this README's own examples do) put
    `/work/main/../shared/data/...` in every path of lmae-report.json: it opened, but a script
    comparing it with the dataset's own paths took it for another file."""
    root = make_paired(tmp_path / "ds", count=2)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    result = complete(Path("../here/../ds"), Path("../out"), family)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "lmae-report.json").read_text())
    for entry in report["pairs"]:
        for name in ("image", "input_label", "output"):
            assert ".." not in Path(entry[name]).parts and Path(entry[name]).is_file(), entry[name]
        assert entry["input_label"] == str(root / entry["label"])
    from lmae_repair.data import absolute_text

    nested = tmp_path / "deep" / "a"
    nested.mkdir(parents=True)
    (tmp_path / "jump").symlink_to(nested)  # jump/.. is deep, not tmp_path: kept as given
    assert absolute_text(tmp_path / "jump" / ".." / "a") == str(tmp_path / "jump" / ".." / "a")


def test_a_class_list_of_more_classes_than_a_family_knows_does_not_choose_it(tmp_path, monkeypatch):
    """A class list naming 6 classes whose first 4 are a bundled family's: that family was chosen
    (names compared only as far as the family's went), and every label holding the other two
    failed one by one. Such a family now does not fit (nor do its files given as --models); a
    last void line is still no class."""
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "models_root"))
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    names = ["background", "rust", "dent", "hole"]
    space = LabelSpace(NUM_CLASSES, names=names, background_id=0, void_id=255)
    family = tmp_path / "models_root" / "metal"
    save_checkpoint(family / "mask-0.50.safetensors", LabelMAE(config), CheckpointInfo(config, 0.5, space, {"crop": 32}))
    root = make_paired(tmp_path / "ds", count=2)
    (root / "classes.txt").write_text("\n".join(names + ["stain", "scratch"]) + "\n")
    args = ["complete", str(root), "--device", "cpu", "--dry-run"]
    chosen = runner.invoke(app, args + ["--out", str(tmp_path / "o1")])
    told = " ".join(chosen.output.split())
    assert chosen.exit_code == 2 and "no bundled family (metal) fits these labels" in told, told
    given = runner.invoke(app, args + ["--out", str(tmp_path / "o2"), "--models", str(family)])
    assert given.exit_code == 2 and "does not fit the labels" in " ".join(given.output.split()), given.output
    (root / "classes.txt").write_text("\n".join(names + ["void"]) + "\n")
    assert runner.invoke(app, args + ["--out", str(tmp_path / "o3")]).exit_code == 0


def test_palette_labels_of_another_palette_are_not_said_to_have_none(tmp_path, monkeypatch):
    """Palette labels in a tool's own colours, whose values fit a named family: the error said
    'nothing names the classes (no classes.txt, no palette)' of labels that carry a palette."""
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(tmp_path / "models_root"))
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    space = LabelSpace(NUM_CLASSES, names=["background", "rust", "dent", "hole"], background_id=0, void_id=255, palette=VOC_PALETTE)
    save_checkpoint(tmp_path / "models_root" / "metal" / "mask-0.50.safetensors", LabelMAE(config), CheckpointInfo(config, 0.5, space, {"crop": 32}))
    root = make_paired(tmp_path / "ds", count=2)
    for path in (root / "labels").glob("*.png"):
        label = Image.open(path)
        label.putpalette([10, 10, 10, 250, 0, 250, 0, 250, 250, 90, 90, 0] + [0] * 756)
        label.save(path)
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o"), "--dry-run"])
    told = " ".join(result.output.split())
    assert result.exit_code == 2 and "no classes.txt, and their palette is not the family's" in told and "no palette" not in told, told


@pytest.mark.parametrize("where", ["write_html_report", "atomic_write"])
def test_a_report_that_cannot_be_written_still_shows_the_summary_and_says_the_labels_were(tmp_path, family, monkeypatch, where):
    """The disk filling while the HTML report was written, after every label and the JSON: exit
    code 2 with no summary, as if nothing had been written (README: exit 2 means a setup error).
    `atomic_write`: where a full disk really shows, as the LmaeError naming the file that it
    makes of the OSError; only a bare OSError was caught, so that case still had no summary."""
    import errno
    import os

    import lmae_repair.complete as complete_module

    def full_disk(out, report, space, top=12):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "lmae-report.html"))

    real_replace = os.replace

    def full_disk_at_rename(src, dst, *args, **kwargs):
        if str(dst).endswith("lmae-report.html"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    if where == "atomic_write":
        monkeypatch.setattr(os, "replace", full_disk_at_rename)
    else:
        monkeypatch.setattr(complete_module, "write_html_report", full_disk)
    root = make_paired(tmp_path / "ds", count=2, size=32)
    out = tmp_path / "out"
    result = complete(root, out, family)
    told = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "lmae-repair complete" in told and "repaired" in told, told  # the summary
    assert f"{out / 'lmae-report.html'}: " in told and "No space left on device" in told, told
    assert "the labels and lmae-report.json were written" in told, told
    assert len(list((out / "labels").glob("*.png"))) == 2 and (out / "lmae-report.json").is_file()
    assert not list(out.glob(".lmae-report.html.*")), "a temporary file was left behind"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to write stdout to")
def test_a_stdout_that_cannot_be_written_is_named_as_such(tmp_path, family):
    """`complete data --out X > /dev/full` said 'lmae-repair: unexpected OSError: [Errno 28] No
    space left on device', leaving the user to guess which file was full."""
    root = make_paired(tmp_path / "ds", count=2, size=32)
    command = [sys.executable, "-m", "lmae_repair", "complete", str(root), "--out", str(tmp_path / "out"),
               "--models", str(family), "--device", "cpu"]
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)
    told = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert told.startswith("error: cannot write to stdout (No space left on device)"), told
    assert "unexpected" not in told and "Exception ignored" not in told, told



def test_default_loader_workers_count_the_cpus_the_job_may_use_not_the_node(tmp_path, monkeypatch):
    """On a 64-core node, a Slurm job granted 2 CPUs (its affinity mask, or SLURM_CPUS_PER_TASK
    where Slurm set none) got 4 loader processes for complete and for train, from
    os.cpu_count(), all on its 2 cores beside the model's threads."""
    import os

    from lmae_repair.cli import default_workers
    from lmae_repair.train import TrainOptions, make_loader

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_workers() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # taskset -c 0,1
    assert default_workers() == 0
    pairs = make_paired(tmp_path / "ds", count=2, size=32)
    from lmae_repair.data import discover

    index = discover(pairs)
    options = TrainOptions(out=tmp_path / "run", mask_ratios=[0.5], crop=32, batch_size=2)
    space = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
    assert make_loader(index.pairs, space, options, torch.device("cpu")).num_workers == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")  # granted 2, no mask set
    assert default_workers() == 0
    assert make_loader(index.pairs, space, options, torch.device("cpu")).num_workers == 1


def test_more_workers_than_usable_cpus_is_one_note_not_pytorchs_warning(tmp_path, family, monkeypatch):
    """`--workers 16` in a job granted one CPU printed PyTorch's 'This DataLoader will create 16
    worker processes in total. Our suggested max number of worker ...' with its source line,
    twice, into the job's log; it is now one line that says what was granted."""
    import os
    import warnings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # taskset -c 0
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    root = make_paired(tmp_path / "ds", count=2, size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = complete(root, tmp_path / "out", family, "--workers", "2", "--batch-size", "1")
    told = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "note: --workers 2 is more than the 1 CPU this process may use" in told, told
    assert not [w for w in caught if "This DataLoader will create" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="PyTorch runs one thread here already")
def test_slurm_cpus_per_task_bounds_pytorchs_threads_unless_omp_num_threads_is_set(tmp_path, family, monkeypatch):
    """A Slurm job granted 1 CPU (SLURM_CPUS_PER_TASK=1) with no cpuset ran PyTorch's one thread
    per core of the node; OMP_NUM_THREADS, where set, still decides."""
    threads = torch.get_num_threads()
    root = make_paired(tmp_path / "ds", count=1, size=32)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert complete(root, tmp_path / "out", family, "--dry-run").exit_code == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(threads)
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
        assert complete(root, tmp_path / "out", family, "--dry-run").exit_code == 0
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)


def test_the_page_of_a_run_on_one_pair_that_changed_nothing_says_so_in_the_singular(tmp_path):
    """One pair, already complete: the page said '1 pairs: ...' and 'The 0 most-changed pairs
    are shown ..., and every changed label is listed below them'."""
    label = np.zeros((32, 32), np.uint8)
    label[8:20, 8:20] = 1
    page, pictures = written_report(tmp_path, [("only", np.zeros((32, 32, 3), np.uint8), label, label.copy(), None)])
    text = " ".join(page.split())
    assert "<p>1 pair: " in text and "1 pairs" not in text
    assert "No label was changed, so none is pictured; the full report" in text and "most-changed" not in text
    assert not pictures


def test_a_run_started_at_the_same_moment_into_the_same_output_is_refused_before_its_models_load(tmp_path, family, monkeypatch):
    """Two runs started at once into one OUT both passed the check for a lock (none was held
    yet); the one refused then loaded its models and printed its progress line before 'another
    lmae-repair run is writing here'. The other run is made to lock OUT just after the check."""
    import lmae_repair.complete as complete_module
    import lmae_repair.families as families

    root = make_paired(tmp_path / "ds", count=2)
    out = tmp_path / "out"
    held, loads, real_check, real_resolve = [], [], complete_module.check_output, families.resolve_models

    def check_then_the_other_run_locks(index, target, dry_run=False):
        real_check(index, target, dry_run)
        target.mkdir(exist_ok=True)
        held.append(complete_module.lock_output(target, index.root.resolve()))

    monkeypatch.setattr(complete_module, "check_output", check_then_the_other_run_locks)
    monkeypatch.setattr(families, "resolve_models", lambda *args: loads.append(1) or real_resolve(*args))
    try:
        result = complete(root, out, family)
    finally:
        for lock in held:
            lock.close()
    assert result.exit_code == 2 and "another lmae-repair run is writing here" in result.output
    assert not loads and "models:" not in result.output  # refused first, alone
    monkeypatch.setattr(complete_module, "check_output", real_check)

    missing = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "new"), "--models", str(tmp_path / "no-such-model")])
    assert missing.exit_code == 2 and not (tmp_path / "new").exists()  # the OUT made to lock it is removed again
    assert complete(root, out, family).exit_code == 0


def test_a_rerun_into_an_output_written_by_another_version_says_its_finished_pairs_were_kept(tmp_path, family):
    """The resume key holds the models, options and inputs, not lmae-repair's version: a rerun
    into an OUT an older version wrote skipped its pairs as done without a word, though that
    version may have written other labels. It says so once; a same-version rerun says nothing."""
    from lmae_repair import __version__
    from lmae_repair.complete import PROGRESS_LOG

    root = make_paired(tmp_path / "ds", count=3)
    out = tmp_path / "out"
    assert complete(root, out, family).exit_code == 0
    log = out / PROGRESS_LOG
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {entry["version"] for entry in entries} == {__version__}
    again = complete(root, out, family)
    assert again.exit_code == 0 and "kept as finished by a run of lmae-repair" not in again.output
    labels = {path.name: path.read_bytes() for path in (out / "labels").iterdir()}

    entries[0]["version"] = "0.0.1"
    for entry in entries[1:]:
        del entry["version"]  # a log of a version that did not record it
    log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    older = complete(root, out, family)
    told = " ".join(older.output.split())
    assert older.exit_code == 0, older.output
    assert (f"3 pairs in {out} were kept as finished by a run of lmae-repair 0.0.1 and an earlier version that did not "
            f"record it (this is {__version__})") in told, told
    assert {path.name: path.read_bytes() for path in (out / "labels").iterdir()} == labels  # kept, not redone
