"""`lmae-repair audit`: every file defect is named, a label with an erased object ranks above its
intact twin, and the JSON / CSV / heatmap outputs hold what a curator needs."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_paired, make_scene, write_pair
from lmae_repair.cli import app

runner = CliRunner()


def audit(data, family, *extra):
    return runner.invoke(app, ["audit", str(data), "--models", str(family), "--device", "cpu", *extra])


def broken_dataset(root):
    """Eight good pairs plus one of each file defect."""
    make_paired(root, count=8, size=64, seed=4)
    rng = np.random.default_rng(9)
    image, label = make_scene(rng)
    write_pair(root / "images" / "truncated.png", root / "labels" / "truncated.png", image, label)
    data = (root / "labels" / "truncated.png").read_bytes()
    (root / "labels" / "truncated.png").write_bytes(data[: len(data) // 2])
    write_pair(root / "images" / "lonely.png", root / "labels" / "elsewhere" / "x.png", image, label)
    (root / "labels" / "elsewhere" / "x.png").unlink()
    write_pair(root / "images" / "orphan_label_image_missing.png", root / "labels" / "no_image.png", image, label)
    (root / "images" / "orphan_label_image_missing.png").unlink()
    write_pair(root / "images" / "small.png", root / "labels" / "small.png", image, label[:32, :32])
    outside = label.copy()
    outside[:4, :4] = 9
    write_pair(root / "images" / "outside.png", root / "labels" / "outside.png", image, outside)
    write_pair(root / "images" / "colour.png", root / "labels" / "colour.png", image, label)
    Image.fromarray(np.stack([label * 60, label * 30, label * 0], -1)).save(root / "labels" / "colour.png")
    write_pair(root / "images" / "empty.png", root / "labels" / "empty.png", image, np.zeros_like(label))
    return root


def test_each_file_defect_is_reported_with_score_one(tmp_path, family):
    root = broken_dataset(tmp_path / "ds")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    result = audit(root, family, "--json", str(tmp_path / "a.json"), "--top", "30")
    assert result.exit_code == 1, result.output  # some pairs could not be read
    rows = {row["label"]: row for row in json.loads((tmp_path / "a.json").read_text())}
    expected = {
        "labels/truncated.png": "unreadable label",
        "images/lonely.png": "no label",
        "labels/no_image.png": "no image",
        "labels/small.png": "32x32 but its image is 64x64",
        "labels/outside.png": "values outside the label space (9",
        "labels/colour.png": "colour (RGB) label",
        "labels/empty.png": "all background or void",
    }
    for key, reason in expected.items():
        assert rows[key]["score"] == 1.0, key
        if key != "labels/empty.png":  # all background: measured as complete would repair it
            assert rows[key]["suspect_pixels"] is None, key  # not measured, so not 0 ("looks clean")
        assert any(reason in text for text in rows[key]["reasons"]), (key, rows[key]["reasons"])
    assert isinstance(rows["labels/empty.png"]["suspect_pixels"], int)
    good = [row for key, row in rows.items() if key.startswith("labels/scene_")]
    assert len(good) == 8 and all(row["score"] < 1.0 for row in good)
    assert list(rows) == sorted(rows, key=lambda k: -rows[k]["score"])  # highest first
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing modified


def test_the_images_the_report_names_open_from_another_folder(tmp_path, family, monkeypatch):
    """A script reads audit.json and the CSV elsewhere than the audit ran, DATA given relative."""
    broken_dataset(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    audit(Path("ds"), family, "--json", "a.json", "--csv", "a.csv")
    monkeypatch.chdir(tmp_path / "ds" / "labels")
    rows = json.loads((tmp_path / "a.json").read_text())
    named = [row["image"] for row in rows if row["image"] is not None]
    assert len(named) == 8 + 6 and all(Path(image).is_file() for image in named), named  # the lonely image too
    with open(tmp_path / "a.csv", newline="") as f:
        assert [row["image"] for row in csv.DictReader(f) if row["image"]] == named


def test_labels_no_model_fits_are_still_audited_for_files_and_statistics(tmp_path):
    """No --models and no bundled family fits (generated classes 0..3, no class list): audit says
    so and still ranks what needs no model, file defects first, then a label that lost most of
    its annotation; no pixel counts as suspect, since no model looked."""
    root = broken_dataset(tmp_path / "ds")
    for path in (root / "labels" / "outside.png", root / "images" / "outside.png"):
        path.unlink()  # its 9 is a class of the space read from the data, no defect
    image, label = make_scene(np.random.default_rng(5))
    label[:] = 0  # its annotation erased to background, but for one small region
    label[:6, :6] = 1
    write_pair(root / "images" / "stripped.png", root / "labels" / "stripped.png", image, label)
    result = runner.invoke(app, ["audit", str(root), "--device", "cpu", "--json", str(tmp_path / "a.json"), "--top", "30"])
    assert result.exit_code == 1, result.output  # some pairs could not be read
    assert "no bundled family" in result.output and "files and label statistics only" in result.output
    assert "Traceback" not in result.output
    rows = json.loads((tmp_path / "a.json").read_text())
    defects = {"labels/truncated.png", "images/lonely.png", "labels/no_image.png", "labels/small.png",
               "labels/colour.png", "labels/empty.png"}
    assert {row["label"] for row in rows[: len(defects)]} == defects
    assert all(row["score"] == 1.0 for row in rows[: len(defects)])
    assert rows[len(defects)]["label"] == "labels/stripped.png"
    assert any("background/void covers" in reason for reason in rows[len(defects)]["reasons"])
    assert all(row["suspect_pixels"] is None for row in rows[len(defects):])

    only_broken = tmp_path / "only_broken"  # no readable label at all: each still named, no crash
    write_pair(only_broken / "images" / "a.png", only_broken / "labels" / "a.png", image, label)
    (only_broken / "labels" / "a.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["audit", str(only_broken), "--device", "cpu"])
    assert result.exit_code == 1 and "unreadable label" in result.output, result.output


def test_a_label_with_an_erased_object_ranks_above_its_intact_twin(tmp_path, trained_family):
    root = make_paired(tmp_path / "ds", count=10, size=64, seed=2)
    image = np.array(Image.open(root / "images" / "scene_000.png"))
    label = np.array(Image.open(root / "labels" / "scene_000.png"))
    erased = label.copy()
    largest = np.bincount(label[label > 0]).argmax()
    erased[erased == largest] = 0  # the annotator missed the objects of its largest class
    write_pair(root / "images" / "twin_erased.png", root / "labels" / "twin_erased.png", image, erased)
    result = audit(root, trained_family, "--json", str(tmp_path / "a.json"), "--csv", str(tmp_path / "a.csv"), "--heatmaps", str(tmp_path / "maps"))
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "a.json").read_text())
    order = [row["label"] for row in rows]
    assert order.index("labels/twin_erased.png") < order.index("labels/scene_000.png")
    suspects = {row["label"]: row["suspect_pixels"] for row in rows}
    assert suspects["labels/twin_erased.png"] > 0.5 * (label == largest).sum() > 0  # the model sees the missed objects
    assert suspects["labels/scene_000.png"] == 0
    with open(tmp_path / "a.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["label"] for row in table] == order
    assert {"label", "image", "score", "reasons", "suspect_pixels"} <= set(table[0])
    assert (tmp_path / "maps" / "labels" / "twin_erased.png").is_file()
    drawn = [row["label"] for row in rows if row["suspect_pixels"] or row["far_share"]]  # far look-alikes pictured too
    pictures = [p for p in (tmp_path / "maps").rglob("*.png") if p.name != "lmae-heatmap-legend.png"]  # the colour key beside them
    assert sorted(str(p.relative_to(tmp_path / "maps")) for p in pictures) == sorted(drawn)
    said = f"heatmaps of the {len(drawn)} label{'' if len(drawn) == 1 else 's'} where the model sees what the label lacks written to"
    assert said in " ".join(result.output.split())


def test_a_rerun_leaves_no_heatmap_of_a_label_that_has_none_now(tmp_path, trained_family):
    """A curator audits with --heatmaps, fixes the labels it found and audits again into the same
    folder: the heatmap of a label that is now clean, or now unreadable, must not stay behind
    as if the model still saw something there; the folder holds the heatmaps of the labels the
    report says it pictures, no more."""
    root = make_paired(tmp_path / "ds", count=6, size=64, seed=2)
    label = np.array(Image.open(root / "labels" / "scene_000.png"))
    image = np.array(Image.open(root / "images" / "scene_000.png"))
    erased = label.copy()
    erased[erased == np.bincount(label[label > 0]).argmax()] = 0
    for name in ("fixed_later", "broken_later"):
        write_pair(root / "images" / f"{name}.png", root / "labels" / f"{name}.png", image, erased)
    maps, report = tmp_path / "maps", tmp_path / "a.json"
    first = audit(root, trained_family, "--json", str(report), "--heatmaps", str(maps))
    assert first.exit_code == 0, first.output
    assert (maps / "labels" / "fixed_later.png").is_file() and (maps / "labels" / "broken_later.png").is_file()

    Image.fromarray(label).save(root / "labels" / "fixed_later.png")  # annotated again: as its intact twin
    (root / "labels" / "broken_later.png").write_bytes(b"not a png")  # now a file defect: nothing measured
    second = audit(root, trained_family, "--json", str(report), "--heatmaps", str(maps))
    assert second.exit_code == 1, second.output
    rows = {row["label"]: row for row in json.loads(report.read_text())}
    assert rows["labels/fixed_later.png"]["suspect_pixels"] == rows["labels/scene_000.png"]["suspect_pixels"]
    drawn = sorted(key for key, row in rows.items() if row["suspect_pixels"] or row["far_share"])
    assert sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.png") if p.name != "lmae-heatmap-legend.png") == drawn
    assert "labels/broken_later.png" not in drawn
    gone = "2 labels that have" if "labels/fixed_later.png" not in drawn else "1 label that has"
    assert f"an earlier run drew of {gone} none now" in " ".join(second.output.split())  # the summary says what went


def test_the_heatmap_clean_up_never_touches_a_file_outside_the_heatmaps_folder(tmp_path):
    """An image without a label found outside the dataset root (--images elsewhere) is keyed by
    its absolute path: the clean-up must not take that path for a heatmap and delete it."""
    from lmae_repair.audit import new_row, remove_stale_heatmaps

    outside = tmp_path / "images" / "lonely.png"
    outside.parent.mkdir()
    outside.write_bytes(b"an input image")
    (tmp_path / "maps" / "labels").mkdir(parents=True)
    (tmp_path / "maps" / "labels" / "gone.png").write_bytes(b"old heatmap")
    rows = [new_row(str(outside.with_suffix(".jpg")), None), new_row("labels/gone.png", None)]
    assert remove_stale_heatmaps(tmp_path / "maps", rows) == 1
    assert outside.read_bytes() == b"an input image" and not (tmp_path / "maps" / "labels" / "gone.png").exists()


def test_the_table_keeps_each_label_path_on_one_line(tmp_path, family):
    """The top-K table is what a curator copies paths from: at 80 columns (a pipe, a log) the
    reasons wrap, the label path does not."""
    root = broken_dataset(tmp_path / "ds")
    image, label = make_scene(np.random.default_rng(3))
    long_name = "seq05vd_frame_001234_left"
    write_pair(root / "images" / f"{long_name}.png", root / "labels" / f"{long_name}.png", image, label[:32, :32])
    result = audit(root, family, "--top", "20")
    assert result.exit_code in (0, 1), result.output
    table = result.output[result.output.index("labels most likely broken"):]
    for name in (f"labels/{long_name}.png", "labels/scene_000.png", "labels/no_image.png"):
        assert name in table, name
    assert str(root) not in table  # reasons do not repeat the label's full path


def test_report_files_inside_the_dataset_are_refused_and_the_labels_stay(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2, size=64)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for option, target in (("--json", root / "labels" / "scene_000.png"), ("--csv", root / "report.csv"),
                            ("--heatmaps", root / "heat")):
        result = audit(root, family, option, str(target))
        assert result.exit_code == 2 and "would be written inside the input" in result.output, (option, result.output)
    evaluated = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--json", str(root / "labels" / "scene_001.png")])
    assert evaluated.exit_code == 2 and "would be written inside the input" in evaluated.output
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_the_json_is_written_even_when_the_reader_of_the_table_goes_away(tmp_path, family):
    """`lmae-repair audit --json F | head -2`: head closes the pipe early; F must still be written."""
    import subprocess
    import sys

    root = make_paired(tmp_path / "ds", count=3, size=64)
    rows = tmp_path / "rows.json"
    command = [sys.executable, "-m", "lmae_repair", "audit", str(root), "--models", str(family), "--device", "cpu",
               "--json", str(rows)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    assert len(json.loads(rows.read_text())) == 3


def test_in_a_mostly_clean_dataset_the_worst_labels_still_come_first_where_scores_round_to_one():
    """3,000 labels, most with no suspect pixel: every label with a few percent of them scores
    1.00, and the order among them was alphabetical; it must follow the evidence, defects first."""
    from lmae_repair.audit import new_row, rank_key, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(300):
        row = new_row(f"labels/{i:04d}.png", None)
        row.update(missing_share=0.1, suspect_share=0.0, pixels=100, classes=[1, 2])
        rows.append(row)
    shares = {"labels/0001.png": 0.04, "labels/0002.png": 0.5, "labels/0003.png": 0.2}
    for row in rows:
        row["suspect_share"] = shares.get(row["label"], 0.0)
    defect = new_row("labels/zzzz.png", None)
    defect.update(score=1.0, defect=True, reasons=["label is all background or void"])
    rows.append(defect)
    score_rows(rows, LabelSpace(3, background_id=0, void_id=255))
    assert all(rows[i]["score"] == 1.0 for i in (1, 2, 3))  # saturated: the score alone cannot order them
    ranked = [row["label"] for row in sorted(rows, key=rank_key)]
    assert ranked[:4] == ["labels/zzzz.png", "labels/0002.png", "labels/0003.png", "labels/0001.png"]


def test_a_label_scored_from_several_small_deviations_says_which():
    """No measure 2 deviations out, but their sum is: the row names them instead of showing none."""
    from lmae_repair.audit import REASON_FROM, new_row, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(20):
        row = new_row(f"labels/{i:04d}.png", None)
        spread = 0.001 * (i % 5)  # a dataset whose shares vary a little
        row.update(missing_share=0.1 + 10 * spread, suspect_share=0.01 + spread, separate_share=0.005 + spread,
                   far_share=0.002, pixels=100, classes=[1, 2])
        rows.append(row)
    odd = rows[0]
    odd.update(missing_share=0.145, suspect_share=0.0145, separate_share=0.0095)  # each 1.7 deviations out
    score_rows(rows, LabelSpace(3, background_id=0, void_id=255))
    assert odd["evidence"] >= REASON_FROM and len(odd["reasons"]) == 1, odd
    assert odd["reasons"][0].startswith("several measures a little above the dataset's median: ")
    assert "suspect pixels 1.45% (median 1.20%)" in odd["reasons"][0]
    assert all(row["reasons"] for row in rows if row["evidence"] >= REASON_FROM)


def test_a_whole_missed_object_is_told_from_an_annotated_region_drawn_wider():
    """Suspect pixels that touch an annotation of their class widen it; a region that touches none
    is an object the annotator missed, and a label with one outranks a label whose suspect pixels
    are as many but only widen what is there."""
    from lmae_repair.audit import new_row, rank_key, score_rows, separate_suspects
    from lmae_repair.labelspace import LabelSpace

    label = np.zeros((40, 40), np.uint8)
    label[5:15, 5:15] = 1  # an annotated object of class 1
    repaired = label.copy()
    repaired[5:15, 15:18] = 1  # the same object drawn 3 pixels wider
    repaired[25:35, 25:35] = 1  # a whole class-1 object the label lacks
    repaired[15:18, 5:10] = 2  # a class-2 region beside the class-1 object: no class 2 annotated there
    separate = separate_suspects(label, repaired)
    assert separate[25:35, 25:35].all() and separate[15:18, 5:10].all()
    assert not separate[5:15, 15:18].any() and separate.sum() == 100 + 15

    rows = []
    for i in range(50):
        row = new_row(f"labels/{i:02d}.png", None)
        row.update(missing_share=0.9, suspect_share=0.0, separate_share=0.0, pixels=1600, classes=[0, 1])
        rows.append(row)
    rows[1].update(suspect_share=0.03, separate_share=0.0)  # wider
    rows[2].update(suspect_share=0.03, separate_share=0.03)  # a missed object
    score_rows(rows, LabelSpace(3, background_id=0, void_id=255))
    assert [row["label"] for row in sorted(rows, key=rank_key)][:2] == ["labels/02.png", "labels/01.png"]
    assert any("whole objects the label lacks" in reason for reason in rows[2]["reasons"])


def test_far_lookalikes_count_what_the_model_finds_likely_far_from_any_annotation_of_it():
    """Pixels the model finds more likely class 1 than not, over 10 pixels from the label's class
    1, are far look-alikes (an object the annotator may have missed, though the repair is not sure
    enough to draw it); the same beside the annotation, or at 0.45, are not; and a label with
    many of them ranks first, with the reason."""
    import torch

    from lmae_repair.audit import far_lookalikes, new_row, rank_key, score_rows
    from lmae_repair.checkpoints import CheckpointInfo
    from lmae_repair.labelspace import LabelSpace
    from lmae_repair.model import ModelConfig
    from lmae_repair.repair import prepare

    space = LabelSpace(3, background_id=0, void_id=255)
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    info = CheckpointInfo(config, 0.75, space, {"crop": 64})
    label = np.zeros((64, 64), np.uint8)
    label[:8] = 1  # class 1 annotated along the top
    item = prepare(np.zeros((64, 64, 3), np.uint8), label, info)
    fillable = item.fillable_pixels(8, space).numpy()
    chosen = torch.zeros(3, 64, 64)
    chosen[0] = 1.0
    chosen[:, 8:16] = torch.tensor([0.4, 0.6, 0.0])[:, None, None]  # beside the annotation
    chosen[:, 32:48] = torch.tensor([0.4, 0.6, 0.0])[:, None, None]  # far from it
    chosen[:, 48:64] = torch.tensor([0.55, 0.45, 0.0])[:, None, None]  # far, but less likely than not
    far = far_lookalikes(item, chosen, info)["far_lookalikes"]
    assert fillable[32:48].sum() > 0 and far == fillable[32:48].sum()

    rows = []
    for i in range(50):
        row = new_row(f"labels/{i:02d}.png", None)
        row.update(missing_share=0.9, suspect_share=0.0, separate_share=0.0, far_share=0.01 * (i % 3), pixels=4096, classes=[0, 1])
        rows.append(row)
    rows[7].update(far_share=0.3)
    score_rows(rows, space)
    assert sorted(rows, key=rank_key)[0]["label"] == "labels/07.png"
    assert any("far from any annotation" in reason for reason in rows[7]["reasons"])


def interrupt_audit(root, checkpoints, options, journal, after: int, space=None):
    """An audit stopped as Ctrl-C would stop it, after `after` pairs."""
    import pytest

    from lmae_repair.audit import audit_dataset
    from lmae_repair.data import discover

    measured = []

    def stop(error, worked):
        measured.append(worked)
        if len(measured) == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        audit_dataset(discover(root), checkpoints, options, stop, space, journal)


def test_an_interrupted_audit_resumes_from_the_pairs_it_had_measured(tmp_path, family):
    from lmae_repair.audit import AuditOptions, journal_for
    from lmae_repair.families import find_checkpoints

    root = broken_dataset(tmp_path / "data")
    fresh = audit(root, family, "--json", str(tmp_path / "fresh.json"))
    journal = journal_for(tmp_path / "audit.json", None)
    interrupt_audit(root, find_checkpoints([family]), AuditOptions(), journal, after=3)
    assert len(journal.read_text().splitlines()) == 3
    with open(journal, "a") as f:
        f.write('{"label": "cut short by the ki')  # the line a kill left half-written
    edited = root / "labels" / "scene_007.png"  # changed since it was measured: measured again
    label = np.array(Image.open(edited))
    label[label > 0] = 0
    Image.fromarray(label).save(edited)

    resumed = audit(root, family, "--json", str(tmp_path / "audit.json"))
    assert resumed.exit_code == fresh.exit_code == 1, resumed.output  # exit 1: the defects
    assert "3 pairs measured by an earlier, interrupted run" in resumed.output
    assert not journal.exists()  # the JSON holds every row now
    assert journal.name not in "".join(resumed.output.split())  # not named as if it were kept: it was removed
    rows = {row["label"]: row for row in json.loads((tmp_path / "audit.json").read_text())}
    before = {row["label"]: row for row in json.loads((tmp_path / "fresh.json").read_text())}
    assert rows.keys() == before.keys()
    assert rows["labels/scene_007.png"]["reasons"] == ["label is all background or void"]
    for key in set(before) - {"labels/scene_007.png"}:  # the rest measured as one uninterrupted run measured them
        assert (rows[key]["suspect_pixels"], rows[key]["missing_share"]) == (before[key]["suspect_pixels"], before[key]["missing_share"]), key


def test_a_resumed_audit_measures_again_what_the_journal_cannot_stand_for(tmp_path, family):
    import shutil

    from lmae_repair.audit import AuditOptions, journal_for, label_space_of_data
    from lmae_repair.data import discover
    from lmae_repair.families import find_checkpoints

    root = make_paired(tmp_path / "data", count=6, size=64, seed=4)
    report, heatmaps = tmp_path / "out" / "audit.json", tmp_path / "heatmaps"
    journal = journal_for(report, None)
    # heatmaps deleted since: the pairs that had one are measured (and drawn) again
    interrupt_audit(root, find_checkpoints([family]), AuditOptions(min_confidence=0.0, heatmaps=heatmaps), journal, after=4)
    shutil.rmtree(heatmaps)
    result = audit(root, family, "--min-confidence", "0", "--json", str(report), "--heatmaps", str(heatmaps))
    rows = json.loads(report.read_text())
    assert len(list(heatmaps.rglob("scene_*.png"))) == sum(1 for row in rows if row["suspect_pixels"]) > 0, result.output

    # the same files at another path: the rows name the images where this run found them
    interrupt_audit(root, find_checkpoints([family]), AuditOptions(), journal, after=4)
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)  # copy2: same sizes and modification times
    result = audit(moved, family, "--json", str(report))
    assert "earlier, interrupted run" not in result.output
    assert all(row["image"].startswith(str(moved)) for row in json.loads(report.read_text()))

    # without a model, rows measured in another label space (a classes.txt added since) are not reused
    space = label_space_of_data(discover(root))
    interrupt_audit(root, None, AuditOptions(), journal, after=4, space=space)
    (root / "classes.txt").write_text("red\nbackground\ngreen\nblue\n")  # background is now 1, not 0
    result = runner.invoke(app, ["audit", str(root), "--json", str(report)])
    assert "earlier, interrupted run" not in result.output and result.exit_code == 0, result.output


def test_where_empty_labels_are_common_they_are_scored_by_evidence_not_ranked_first_as_defects():
    """A dataset with many negatives (healthy cases, defect-free photos): each label all
    background was a file defect at score 1, so all of them came before the labels that are
    broken. Common, they are scored by the model's evidence; the empty label over an image where
    the model finds a defect (annotation forgotten) still comes first among them."""
    from lmae_repair.audit import new_row, rank_key, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(20):  # annotated labels, one of them missing an object
        row = new_row(f"labels/a{i:02d}.png", None)
        row.update(missing_share=0.9, suspect_share=0.0, separate_share=0.0, far_share=round(i / (i + 101), 5), far_pixels=i,
                   pixels=1000, classes=[0, 1])  # 100 pixels annotated, the model finds a few look-alikes far from them
        rows.append(row)
    rows[3].update(suspect_share=0.03, separate_share=0.03, far_share=0.5)
    for i in range(8):  # negatives; n07 is a label left empty over a defect the model sees
        row = new_row(f"labels/n{i:02d}.png", None)
        far = 400 if i == 7 else i % 3
        row.update(score=1.0, defect=True, empty=True, reasons=["label is all background or void"], missing_share=1.0,
                   suspect_share=0.02 if i == 7 else 0.0, separate_share=0.02 if i == 7 else 0.0,
                   far_share=round(far / (far + 1), 5), far_pixels=far, pixels=1000, classes=[0])
        rows.append(row)
    unreadable = new_row("labels/zz.png", None)
    unreadable.update(score=1.0, defect=True, reasons=["unreadable label"], error="unreadable label")
    rows.append(unreadable)

    score_rows(rows, LabelSpace(2, background_id=0, void_id=255))
    ranked = [row["label"] for row in sorted(rows, key=rank_key)]
    assert ranked[0] == "labels/zz.png" and set(ranked[1:3]) == {"labels/n07.png", "labels/a03.png"}, ranked[:6]
    negatives = {row["label"]: row for row in rows if row["label"].startswith("labels/n0") and row["label"] != "labels/n07.png"}
    assert all(row["score"] < 0.5 for row in negatives.values()), negatives
    assert "as are 8 of the 28 labels" in negatives["labels/n00.png"]["reasons"][0]
    assert not any("no " in reason for row in negatives.values() for reason in row["reasons"][1:])  # lacking a class is what a negative does


def test_an_empty_label_among_many_annotated_ones_stays_a_file_defect():
    from lmae_repair.audit import new_row, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(100):
        row = new_row(f"labels/a{i:03d}.png", None)
        row.update(missing_share=0.9, suspect_share=0.0, far_share=0.0, far_pixels=0, pixels=1000, classes=[0, 1])
        rows.append(row)
    empty = new_row("labels/empty.png", None)
    empty.update(score=1.0, defect=True, empty=True, reasons=["label is all background or void"], missing_share=1.0,
                 suspect_share=0.0, far_share=0.0, far_pixels=0, pixels=1000, classes=[0])
    rows.append(empty)
    score_rows(rows, LabelSpace(2, background_id=0, void_id=255))
    assert empty["defect"] and empty["score"] == 1.0 and empty["reasons"] == ["label is all background or void"]


def test_without_a_model_common_empty_labels_stay_file_defects_listed_first(tmp_path):
    """An audit of statistics only (no model fits the labels) has no evidence to tell a negative
    from a label emptied by mistake: its empty labels were put at score 0, last, with the reason
    'scored by the model's evidence' though no model ran. They stay file defects, listed first."""
    root = make_paired(tmp_path / "ds", count=12, size=64, seed=3)
    emptied = [f"labels/scene_00{i}.png" for i in range(3)]
    for key in emptied:
        values = np.array(Image.open(root / key))
        Image.fromarray(np.zeros_like(values)).save(root / key)
    report = tmp_path / "a.json"
    result = runner.invoke(app, ["audit", str(root), "--json", str(report)])
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())
    assert sorted(row["label"] for row in rows[:3]) == emptied
    assert all(row["score"] == 1.0 and row["reasons"] == ["label is all background or void"] for row in rows[:3]), rows[:3]
    assert "scored by the model's evidence" not in " ".join(result.output.split())


def test_negatives_do_not_hide_a_label_that_lacks_a_class_every_other_label_has():
    """The classes almost every label has, and the usual background share, are the annotated
    labels' statistics: counted over the negatives too (4 of 24 here), no class was in 90% of the
    labels any more, and the label that lost one was not told at all."""
    from lmae_repair.audit import new_row, rank_key, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(20):
        row = new_row(f"labels/a{i:02d}.png", None)
        row.update(missing_share=0.6 + 0.01 * (i % 5), suspect_share=0.0, separate_share=0.0, far_share=0.0, far_pixels=0,
                   pixels=1000, classes=[0, 1, 2])
        rows.append(row)
    rows[5].update(classes=[0, 1], missing_share=0.62)  # its class 2 erased
    for i in range(4):
        row = new_row(f"labels/n{i}.png", None)
        row.update(score=1.0, defect=True, empty=True, reasons=["label is all background or void"], missing_share=1.0,
                   suspect_share=0.0, separate_share=0.0, far_share=0.0, far_pixels=0, pixels=1000, classes=[0])
        rows.append(row)
    score_rows(rows, LabelSpace(3, background_id=0, void_id=255))
    first = sorted(rows, key=rank_key)[0]
    assert first["label"] == "labels/a05.png" and "no class_2 (present in 95% of labels)" in first["reasons"], first
    assert not any("background/void covers" in reason for row in rows for reason in row["reasons"])  # 60-64%: as usual


def test_a_negatives_heatmap_drawn_while_measured_is_not_removed_as_stale_once_the_dataset_is_scored(tmp_path):
    """A negative's far look-alikes are counted again against the median label's annotated area
    once every pair is measured: 10 pixels against 3 million round to a far_share of 0, and the
    heatmap drawn for them was deleted by the same run as 'an earlier run's'."""
    from lmae_repair.audit import has_heatmap, heatmap_path, new_row, remove_stale_heatmaps, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(6):
        row = new_row(f"labels/a{i}.png", None)
        row.update(missing_share=0.75, suspect_pixels=0, suspect_share=0.0, separate_share=0.0, far_share=0.0, far_pixels=0,
                   pixels=12_000_000, classes=[0, 1])
        rows.append(row)
    for i in range(3):
        row = new_row(f"labels/n{i}.png", None)
        far = 10 if i == 0 else 0
        row.update(score=1.0, defect=True, empty=True, reasons=["label is all background or void"], missing_share=1.0,
                   suspect_pixels=0, suspect_share=0.0, separate_share=0.0, far_share=round(far / (far + 1), 5), far_pixels=far,
                   pixels=12_000_000, classes=[0])
        rows.append(row)
    assert has_heatmap(rows[6])  # drawn while it was measured
    drawn = heatmap_path(tmp_path, "labels/n0.png")
    drawn.parent.mkdir(parents=True)
    drawn.write_bytes(b"heatmap")
    score_rows(rows, LabelSpace(2, background_id=0, void_id=255))
    assert not rows[6]["defect"] and rows[6]["far_share"] == 0.0  # 10 against 3 million annotated pixels
    assert has_heatmap(rows[6]) and remove_stale_heatmaps(tmp_path, rows) == 0 and drawn.is_file()


def test_keep_void_counts_no_void_pixel_as_missing_or_suspect(tmp_path, family):
    """With Pascal VOC's 255 left out on purpose (difficult objects), a label with a large void
    blob ranked first, its blob counted as missing and suspect; --keep-void counts neither, with
    or without a model."""
    root = make_paired(tmp_path / "ds", count=4, size=64, seed=4)
    blobbed = root / "labels" / "scene_000.png"
    values = np.array(Image.open(blobbed))
    values[8:40, 8:40] = 255
    Image.fromarray(values).save(blobbed)
    void = float((values == 255).mean())
    for extra in ((), ("--keep-void",)):
        out = tmp_path / f"audit{len(extra)}.json"
        assert audit(root, family, "--json", str(out), *extra).exit_code == 0  # the untrained family is never 90% sure of
        row = next(r for r in json.loads(out.read_text()) if r["label"] == "labels/scene_000.png")  # background: void only
        if extra:
            assert row["missing_share"] < void and row["suspect_pixels"] == 0, row
        else:
            assert row["missing_share"] >= void and row["suspect_pixels"] > 0, row
    plain = runner.invoke(app, ["audit", str(root), "--keep-void", "--json", str(tmp_path / "plain.json")])  # no model fits: statistics only
    assert plain.exit_code == 0, plain.output
    row = next(r for r in json.loads((tmp_path / "plain.json").read_text()) if r["label"] == "labels/scene_000.png")
    assert row["missing_share"] < void


def test_rows_of_files_left_unpaired_name_their_image_where_one_is_known(tmp_path):
    """A JPEG label, two labels of one name, two labels naming one image and a VOC split entry
    whose label is missing: each has an image, and its row names it (null only where none is
    known), as a pair's row does."""
    from conftest import add_files_left_unpaired, make_voc

    root = make_paired(tmp_path / "ds", count=3, seed=1)
    add_files_left_unpaired(root)
    result = runner.invoke(app, ["audit", str(root), "--device", "cpu", "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 1, result.output
    rows = {row["label"]: row for row in json.loads((tmp_path / "a.json").read_text())}
    for key, image_name in (("labels/jl.jpg", "jl.png"), ("labels/d.png", "d.png"), ("images/c.png", "c.png")):
        assert rows[key]["image"] == str((root / "images" / image_name).absolute()), (key, rows[key])

    voc = make_voc(tmp_path / "voc", count=4, splits={"val": ["2007_000002", "2007_000003", "ghost"]})
    (voc / "SegmentationClass" / "2007_000003.png").unlink()
    runner.invoke(app, ["audit", str(voc), "--split", "val", "--device", "cpu", "--json", str(tmp_path / "v.json")])
    rows = {row["label"]: row for row in json.loads((tmp_path / "v.json").read_text())}
    assert rows["SegmentationClass/2007_000003.png"]["image"] == str((voc / "JPEGImages" / "2007_000003.jpg").absolute())
    assert rows["SegmentationClass/ghost.png"]["image"] is None  # neither file exists


def test_heatmaps_come_with_a_colour_key_and_use_its_colours_for_every_label(tmp_path, family):
    """The heatmaps coloured each suspect pixel by its class with nothing saying which colour is
    which class, and each label in its own palette: grey labels in VOC colours beside palette
    labels, so no key could hold for both. One colour table (the palette most labels carry) now
    draws them all, and the folder holds its key."""
    root = make_paired(tmp_path / "ds", count=4, size=64, seed=3)
    custom = [0, 0, 0, 10, 200, 250, 250, 10, 200, 200, 250, 10] + [0] * (768 - 12)
    first = root / "labels" / "scene_000.png"
    with Image.open(first) as img:
        img.load()
    img.putpalette(custom)  # one label saved by a tool that writes palettes, the others grey
    img.save(first)
    maps = tmp_path / "maps"
    result = audit(root, family, "--min-confidence", "0", "--heatmaps", str(maps))
    assert result.exit_code == 0, result.output
    assert f"whichcolouriswhichclass:{maps / 'lmae-heatmap-legend.png'}" in "".join(result.output.split())  # wrapped anywhere
    with Image.open(maps / "lmae-heatmap-legend.png") as legend:
        assert {tuple(custom[3 * c: 3 * c + 3]) for c in range(4)} <= {colour for _, colour in legend.convert("RGB").getcolors(100_000)}
    voc_only = {(128, 0, 0), (0, 128, 0), (128, 128, 0)}  # VOC's classes 1-3, not in the custom palette
    grey_maps = [maps / "labels" / f"scene_00{i}.png" for i in (1, 2, 3) if (maps / "labels" / f"scene_00{i}.png").is_file()]
    assert grey_maps
    seen = set()
    for path in grey_maps:
        heat = np.array(Image.open(path).convert("RGB"))
        seen |= {tuple(int(c) for c in rgb) for rgb in heat.reshape(-1, 3)}
    assert not seen & voc_only and seen & {tuple(custom[3 * c: 3 * c + 3]) for c in (1, 2, 3)}


def test_a_heatmaps_suspect_pixels_drawn_black_are_outlined_so_they_show_over_the_dimmed_image(tmp_path):
    """CamVid's labels carry no palette, so sky (class 0) is drawn black: suspect sky over the
    dimmed photo was nearly invisible on its heatmap. As on the HTML report's changed-pixels
    picture, such a region gets a one-pixel white ring; its pixels keep their class colour, and
    suspect pixels in a colour that shows are not ringed."""
    from lmae_repair.audit import heatmap_path, write_heatmap
    from lmae_repair.complete import Loaded
    from lmae_repair.data import LabelFile, Pair
    from lmae_repair.report import default_palette

    photo = tmp_path / "sky.png"
    Image.fromarray(np.full((40, 60, 3), 40, np.uint8)).save(photo)
    label = LabelFile(np.ones((40, 60), np.uint8), "L", None)
    item = Loaded(Pair(photo, tmp_path / "sky_label.png", "labels/sky.png"), {}, label)
    colours = default_palette()
    repaired = label.values.copy()
    repaired[10:20, 20:35] = 0  # suspect sky: black in VOC colours
    write_heatmap(tmp_path / "maps", item, repaired, colours)
    heat = np.array(Image.open(heatmap_path(tmp_path / "maps", "labels/sky.png")).convert("RGB"))
    ring = np.zeros((40, 60), bool)
    ring[9:21, 19:36] = True
    ring[10:20, 20:35] = False
    assert ((heat == (255, 255, 255)).all(axis=2) == ring).all()
    assert (heat[10:20, 20:35] == (0, 0, 0)).all()  # the suspect pixels in their legend colour
    assert (heat[~ring & ~np.pad(np.ones((10, 15), bool), ((10, 20), (20, 25)))] == 14).all()  # the rest: the photo dimmed
    repaired[10:20, 20:35] = 2  # a colour that shows over the dimmed photo: not ringed
    write_heatmap(tmp_path / "maps", item, repaired, colours)
    heat = np.array(Image.open(heatmap_path(tmp_path / "maps", "labels/sky.png")).convert("RGB"))
    assert not (heat == (255, 255, 255)).all(axis=2).any()


def audit_table(rows: list[dict], width: int) -> str:
    """The top-K table as `audit` prints it on a terminal `width` columns wide."""
    from rich.console import Console

    from lmae_repair import cli

    saved = cli.console
    cli.console = Console(width=width, soft_wrap=True, markup=False, emoji=False, force_terminal=False, color_system=None)
    try:
        with cli.console.capture() as captured:
            cli.print_audit(rows, 4)
    finally:
        cli.console = saved
    return captured.get()


def test_at_80_columns_the_top_k_reasons_get_the_width_and_wide_terminals_keep_the_one_table():
    """At 80 columns the reasons column was 24 wide: each reason folded over 5 to 8 lines. A
    terminal too narrow for a readable reasons column now gets the table without it and the
    reasons beneath, by rank, at the terminal's width; a wide one keeps the single table."""
    from lmae_repair.audit import new_row

    reasons = [["model sees whole objects the label lacks: 1.3% of it, in regions touching no annotation of their class "
                "(dataset median 0.6%)", "model finds annotated classes likely far from any annotation of them, on 1.4% "
                "as many pixels as the label annotates (dataset median 0.2%)"], [], ["background/void covers 40.0% (dataset median 2.0%)"]]
    rows = []
    for i, given in enumerate(reasons):
        row = new_row(f"labels/0016E5_0{8111 + i}.png", None)
        row.update(score=0.9 - i / 10, suspect_pixels=5423 - i, reasons=given)
        rows.append(row)
    narrow = audit_table(rows, 80)
    lines = narrow.splitlines()
    assert all(len(line) <= 80 for line in lines)
    flat = "".join(narrow.split())
    for row in rows:
        assert row["label"] in narrow and f"{row['suspect_pixels']:,}" in narrow and f"{row['score']:.2f}" in narrow
        for reason in row["reasons"]:
            assert "".join(reason.split()) in flat  # every reason, whole
    assert sum(1 for line in lines if "annotat" in line or "median" in line) <= 6  # 3 reasons, at most 2 lines each
    assert narrow.index("labels/0016E5_08113.png") < narrow.index("background/void covers 40.0%")  # beneath the table
    wide = audit_table(rows, 240)
    header = next(line for line in wide.splitlines() if "label" in line and "score" in line)
    assert "reasons" in header and "reasons" not in wide[wide.index("labels/0016E5_08113.png"):]  # none beneath the table
    assert any("labels/0016E5_08113.png" in line and reasons[2][0] in line for line in wide.splitlines())  # in its row


def test_scoring_takes_the_dataset_medians_once_not_once_per_label_with_a_reason(monkeypatch):
    """Each reason quoted the dataset median by taking it again over every label: scoring 30,000
    labels took 13 s (12,000: 1.3 s), quadratic in the number of pairs."""
    from lmae_repair.audit import new_row, score_rows
    from lmae_repair.labelspace import LabelSpace

    rows = []
    for i in range(200):
        row = new_row(f"labels/{i:04d}.png", None)
        row.update(missing_share=(i % 10) / 10, suspect_share=0.5 if i % 4 == 0 else 0.0, pixels=100, classes=[1])
        rows.append(row)
    median, calls = np.median, []
    monkeypatch.setattr(np, "median", lambda *args, **kwargs: calls.append(1) or median(*args, **kwargs))
    score_rows(rows, LabelSpace(3, background_id=0, void_id=255))
    assert sum(bool(row["reasons"]) for row in rows) >= 50
    assert any("(dataset median 0.0%)" in reason for row in rows for reason in row["reasons"])
    assert len(calls) <= 20  # a few per measure, whatever the number of labels


def test_without_a_model_an_unreadable_label_comes_before_common_empty_labels_and_a_note_says_what_they_may_be(tmp_path):
    """A CT set exported slice by slice holds many empty slices; audited without a model they
    were listed first at score 1 in name order, a truncated label somewhere among them, with no
    word that they may be the data's own empty slices. Other file defects now come first, and a
    note says how many labels are empty and that a model would score them."""
    root = make_paired(tmp_path / "ds", count=12, size=64, seed=3)
    for i in range(1, 4):
        key = f"labels/scene_00{i}.png"
        Image.fromarray(np.zeros_like(np.array(Image.open(root / key)))).save(root / key)
    truncated = root / "labels" / "scene_011.png"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    report = tmp_path / "a.json"
    result = runner.invoke(app, ["audit", str(root), "--json", str(report)])
    assert result.exit_code == 1, result.output
    rows = json.loads(report.read_text())
    assert rows[0]["label"] == "labels/scene_011.png" and "unreadable label" in rows[0]["reasons"][0], rows[:2]
    assert [row["label"] for row in rows[1:4]] == [f"labels/scene_00{i}.png" for i in range(1, 4)]
    output = " ".join(result.output.split())
    assert "note: 3 of the 11 labels are all background or void (empty slices" in output
    assert "with --models, what the model sees in each ranks it among the others" in output


def test_the_empty_labels_note_is_left_out_where_no_label_is_annotated(tmp_path):
    """0/255 masks whose 255 is void are all void or background: the note on empty slices would
    send their owner looking for empty slices, while the first note already says 255 is void."""
    root = make_paired(tmp_path / "ds", count=4, size=64, seed=3)
    for key in (f"labels/scene_00{i}.png" for i in range(4)):
        values = np.array(Image.open(root / key))
        Image.fromarray(np.where(values > 0, 255, 0).astype(np.uint8)).save(root / key)
    result = runner.invoke(app, ["audit", str(root)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "the labels hold only 0 and 255" in output and "empty slices" not in output


def test_a_reader_of_the_json_that_goes_away_leaves_the_csv_written_and_the_exit_code_told(tmp_path, family):
    """`lmae-repair audit DATA --json /dev/stdout --csv rows.csv | head`: the reader gone, the audit
    stopped at the JSON with exit code 0: rows.csv was never written and a pair that failed was
    untold in the code."""
    import subprocess
    import sys

    root = make_paired(tmp_path / "ds", count=3, size=64)
    (root / "labels" / "scene_001.png").write_bytes(b"")
    rows = tmp_path / "rows.csv"
    command = [sys.executable, "-m", "lmae_repair", "audit", str(root), "--models", str(family), "--device", "cpu",
               "--json", "/dev/stdout", "--csv", str(rows)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the JSON
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err.decode()  # as without the pipe: one pair failed
    assert len(rows.read_text().splitlines()) == 4 and "empty file" in rows.read_text()
    assert "Traceback" not in err.decode()


def test_the_further_channels_of_an_nnunet_dataset_are_one_note_not_rows_ranked_first(tmp_path):
    """An nnU-Net set of two-channel slices (imagesTr/case_0000.png and case_0001.png beside
    labelsTr/case.png): every second channel was an 'image without a label' row at score 1, listed
    above every label, so a four-channel set's audit began with three rows per case that no fix
    could clear. They are one note now, and the table holds the labels and the real defects."""
    import shutil

    root = make_paired(tmp_path / "Dataset002", count=3, images="imagesTr", labels="labelsTr")
    for image in sorted((root / "imagesTr").glob("*.png")):
        image.rename(image.with_name(f"{image.stem}_0000.png"))
        shutil.copy(image.with_name(f"{image.stem}_0000.png"), image.with_name(f"{image.stem}_0001.png"))
    shutil.copy(root / "imagesTr" / "scene_000_0000.png", root / "imagesTr" / "lonely_0001.png")  # no channel 0 paired
    report = tmp_path / "a.json"
    result = runner.invoke(app, ["audit", str(root), "--json", str(report)])
    rows = [row["label"] for row in json.loads(report.read_text())]
    assert rows[0] == "imagesTr/lonely_0001.png" and sorted(rows[1:]) == [f"labelsTr/scene_00{i}.png" for i in range(3)], rows
    output = " ".join(result.output.split())
    assert "note: further channels (_0001...) of paired images, as nnU-Net names them, left alone: 3" in output, output
    plain = make_paired(tmp_path / "frames", count=2)  # video frames seq_0000 (labelled) and seq_0001 (not): no channels
    (plain / "images" / "scene_000.png").rename(plain / "images" / "seq_0000.png")
    (plain / "labels" / "scene_000.png").rename(plain / "labels" / "seq_0000.png")
    (plain / "images" / "scene_001.png").rename(plain / "images" / "seq_0001.png")
    result = runner.invoke(app, ["audit", str(plain), "--json", str(report)])
    assert "imagesTr" not in result.output and "further channels" not in " ".join(result.output.split())
    assert json.loads(report.read_text())[0]["label"] == "images/seq_0001.png"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to write stdout to")
def test_a_json_sent_to_a_stdout_that_cannot_be_written_is_named_as_such(tmp_path, family):
    """`lmae-repair audit DATA --json /dev/stdout > /dev/full`: the JSON is written into the
    stream's own buffer, past the guard that names an unwritable stdout, so it still said
    'unexpected OSError: [Errno 28] No space left on device' (README: 'cannot write to stdout')."""
    import subprocess
    import sys

    root = make_paired(tmp_path / "ds", count=2, size=64)
    command = [sys.executable, "-m", "lmae_repair", "audit", str(root), "--models", str(family), "--device", "cpu",
               "--json", "/dev/stdout"]
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    told = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "cannot write to stdout (No space left on device)" in told and "unexpected" not in told, told


def test_where_images_without_a_label_are_common_they_are_listed_last_not_above_the_broken_labels(tmp_path):
    """A video labelled every second frame: each unlabelled frame was a row at score 1, ranked
    before every label, so the table was all frames nobody meant to label and the truncated label
    came below them. Where they are common they are listed last at score 0, and a note says why;
    a rare one (a lost label) stays a file defect listed first (`test_each_file_defect_...`)."""
    import shutil

    root = make_paired(tmp_path / "ds", count=6, size=64, seed=3)
    for i in range(4):
        shutil.copy(root / "images" / "scene_000.png", root / "images" / f"unlabelled_{i}.png")
    truncated = root / "labels" / "scene_005.png"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    report = tmp_path / "a.json"
    result = runner.invoke(app, ["audit", str(root), "--json", str(report)])
    assert result.exit_code == 1, result.output
    rows = json.loads(report.read_text())
    assert rows[0]["label"] == "labels/scene_005.png" and "unreadable label" in rows[0]["reasons"][0], rows[:2]
    assert [row["label"] for row in rows[-4:]] == [f"images/unlabelled_{i}.png" for i in range(4)]
    assert all(row["score"] == 0.0 and "as are 4 of the 10 images" in row["reasons"][0] for row in rows[-4:]), rows[-4:]
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    output = " ".join(result.output.split())
    assert "note: 4 of the 10 images have no label (frames left unannotated" in output, output


def test_an_audit_of_fewer_than_five_labels_says_the_scores_compare_nothing_and_names_the_most_suspect_label(tmp_path, family):
    """One label is its own median: audited alone, a label half void scored 0.00 with no reason
    and no word why. The note says the scores need more labels and points at the suspect pixels."""
    from lmae_repair.audit import FEW_LABELS, few_labels_note, new_row, score_rows
    from lmae_repair.labelspace import LabelSpace

    row = new_row("labels/half.png", None)
    row.update(missing_share=0.5, suspect_share=0.5, separate_share=0.1, far_share=0.4, suspect_pixels=86400, pixels=172800,
               classes=[1, 2])
    score_rows([row], LabelSpace(3, background_id=0, void_id=255))
    assert row["score"] == 0.0 and not row["reasons"]  # what the note is there to explain
    note = few_labels_note([row])
    assert note.startswith("only 1 label to compare") and "labels/half.png, 86,400 (50.0% of it)" in note
    many = []
    for i in range(FEW_LABELS):
        other = new_row(f"labels/{i}.png", None)
        other.update(missing_share=0.1, suspect_share=0.0, suspect_pixels=0, pixels=100, classes=[1])
        many.append(other)
    assert few_labels_note(many) is None
    assert few_labels_note(many[:2]).endswith("the model would fill no pixel of any of them")

    root = make_paired(tmp_path / "ds", count=1, size=64, seed=3)
    result = audit(root, family)
    assert result.exit_code == 0, result.output
    assert "note: only 1 label to compare" in " ".join(result.output.split())


def test_heatmaps_asked_for_with_no_model_that_fits_make_no_empty_folder(tmp_path):
    """`audit --heatmaps maps` where no model fits writes no heatmap (it says so), yet created
    maps/ and left it empty; the folder is now made only when heatmaps will be drawn."""
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["audit", str(root), "--device", "cpu", "--heatmaps", str(tmp_path / "maps")])
    assert "writes no heatmaps" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "maps").exists()


def test_the_json_and_csv_of_fewer_than_five_labels_say_on_every_row_that_the_scores_compare_nothing(tmp_path, family):
    """With fewer than 5 labels the scores are 0.0 whatever the labels hold, and only the note on
    the terminal said so: a script reading --json / --csv took them for clean labels. Each row
    says it (`few_labels`), false where the dataset is large enough."""
    root = make_paired(tmp_path / "ds", count=2, size=64, seed=3)
    result = audit(root, family, "--json", str(tmp_path / "a.json"), "--csv", str(tmp_path / "a.csv"))
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "a.json").read_text())
    assert len(rows) == 2 and all(row["few_labels"] is True for row in rows)
    with open(tmp_path / "a.csv", newline="") as f:
        assert [row["few_labels"] for row in csv.DictReader(f)] == ["true", "true"]

    root = make_paired(tmp_path / "many", count=5, size=64, seed=3)
    result = audit(root, family, "--json", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.output
    assert [row["few_labels"] for row in json.loads((tmp_path / "b.json").read_text())] == [False] * 5
