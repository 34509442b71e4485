"""Bad input: a corpus of broken and unusual files, built here, run through every command.

Each broken pair must be named in one line (stderr and the report) and skipped while the rest is
processed, unusual but valid files (grayscale/RGBA/CMYK images, 16-bit labels, names with spaces
and accents, symlinked folders) must just work, setup errors must end with one line and exit code
2, and no command may modify an input file.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_cityscapes, make_paired, make_scene, write_pair
from lmae_repair.cli import app

runner = CliRunner()

# name -> (the file the message must name, words of the problem); each is one failed pair
BROKEN = {
    "truncated PNG label": ("trunc_label.png", "unreadable label"),
    "truncated JPEG image": ("trunc_image.jpg", "unreadable image"),
    "zero-byte label": ("zero_label.png", "unreadable label (empty file)"),
    "zero-byte image": ("zero_image.png", "unreadable image (empty file)"),
    "text file named .png": ("text_label.png", "unreadable label"),
    "label size differs": ("small_label.png", "label is 32x32 but its image is 64x64"),
    "16-bit label beyond 8 bits": ("wide_big.png", "16-bit label with values above 255"),
    "RGB colour label": ("colour.png", "colour (RGB) label"),
    "values beyond the label space": ("outside.png", "values outside the label space (9"),
    "very large image": ("huge.png", "8000x6000 (48.0 megapixels) is larger than the 20 megapixels"),
    "same stem, two image files": ("dup.jpg", "labels/dup.png: its image is ambiguous, 2 images share its name (dup.jpg, dup.png"),
    "same stem, two label files": ("twin.bmp", "2 labels share this name (twin.bmp, twin.png)"),
    "label without image": ("no_image.png", "no image with the same name"),
    "JPEG label": ("jpeg_label.jpg", "a JPG label; lossy compression"),
    "FIFO named .png (reading it would wait forever)": ("fifo.png", "not a regular file"),
    "symlink to nothing": ("dangling.png", "a link to"),
    "multi-page TIFF label (written back, only its first page would survive)": ("pages.tif", "label has 2 pages"),
}
# label path relative to the dataset -> what is unusual about it; each must be repaired
UNUSUAL = {
    "labels/gray.png": "grayscale image",
    "labels/rgba.png": "RGBA image",
    "labels/cmyk.png": "CMYK JPEG image",
    "labels/wide16.png": "16-bit label with 8-bit values",
    "labels/street scène 01.png": "spaces and non-ASCII characters",
    "labels/linked/far.png": "symlinked image and label folders (one with a link back to itself)",
}
GOOD = 4
HUGE_LIMIT = "20000000"  # pixels: the 8000x6000 pair is refused without being decoded


def build_corpus(tmp_path):
    """A paired dataset with GOOD ordinary pairs, one pair per BROKEN case and per UNUSUAL case."""
    root = make_paired(tmp_path / "corpus", count=GOOD, size=64, seed=3)
    images, labels = root / "images", root / "labels"
    rng = np.random.default_rng(5)

    def pair(image_name, label_name, image=None, label=None):
        scene_image, scene_label = make_scene(rng)
        write_pair(images / image_name, labels / label_name, scene_image if image is None else image,
                   scene_label if label is None else label)
        return scene_image, scene_label

    image, label = pair("trunc_label.png", "trunc_label.png")
    data = (labels / "trunc_label.png").read_bytes()
    (labels / "trunc_label.png").write_bytes(data[: len(data) // 2])
    pair("trunc_image.jpg", "trunc_image.png")
    data = (images / "trunc_image.jpg").read_bytes()
    (images / "trunc_image.jpg").write_bytes(data[: len(data) // 2])
    pair("zero_label.png", "zero_label.png")
    (labels / "zero_label.png").write_bytes(b"")
    pair("zero_image.png", "zero_image.png")
    (images / "zero_image.png").write_bytes(b"")
    pair("text_label.png", "text_label.png")
    (labels / "text_label.png").write_text("this is not a PNG\n")
    pair("small_label.png", "small_label.png", label=label[:32, :32])
    pair("wide_big.png", "wide_big.png")
    Image.fromarray(np.full((64, 64), 300, dtype=np.uint16)).save(labels / "wide_big.png")
    pair("colour.png", "colour.png")
    Image.fromarray(np.stack([label * 60, label * 30, label * 0], -1)).save(labels / "colour.png")
    outside = label.copy()
    outside[:8, :8] = 9
    pair("outside.png", "outside.png", label=outside)
    Image.new("RGB", (8000, 6000), (90, 90, 90)).save(images / "huge.png")
    Image.new("L", (8000, 6000), 0).save(labels / "huge.png")
    pair("dup.jpg", "dup.png")
    Image.fromarray(image).save(images / "dup.png")
    pair("twin.png", "twin.png")
    Image.fromarray(label).save(labels / "twin.bmp")
    pair("no_image_partner.png", "no_image.png")
    (images / "no_image_partner.png").unlink()
    Image.fromarray(image).save(images / "lonely.png")  # an image without label: noted, not a failure
    pair("jpeg_label.png", "jpeg_label.png")
    Image.fromarray(label).save(labels / "jpeg_label.jpg")  # lossy: reported, its image not "unlabelled"
    (labels / "jpeg_label.png").unlink()

    image, label = pair("gray.png", "gray.png")
    Image.fromarray(image).convert("L").save(images / "gray.png")
    Image.fromarray(image).convert("RGBA").save(images / "rgba.png")
    Image.fromarray(label).save(labels / "rgba.png")
    Image.fromarray(image).convert("CMYK").save(images / "cmyk.jpg")
    Image.fromarray(label).save(labels / "cmyk.png")
    pair("wide16.png", "wide16.png")
    wide = np.array(Image.open(labels / "wide16.png")).astype(np.uint16)
    Image.fromarray(wide).save(labels / "wide16.png")
    assert Image.open(labels / "wide16.png").mode.startswith("I")
    pair("street scène 01.png", "street scène 01.png")
    elsewhere = tmp_path / "elsewhere"
    write_pair(elsewhere / "img" / "far.png", elsewhere / "lab" / "far.png", *make_scene(rng))
    (images / "linked").symlink_to(elsewhere / "img", target_is_directory=True)
    (labels / "linked").symlink_to(elsewhere / "lab", target_is_directory=True)
    (elsewhere / "lab" / "loop").symlink_to(elsewhere / "lab", target_is_directory=True)  # a loop: read once
    pair("pages.png", "pages.tif")
    Image.fromarray(label).save(labels / "pages.tif", save_all=True, append_images=[Image.fromarray(label)])
    os.mkfifo(labels / "fifo.png")
    (labels / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    return root


def hashes(*folders):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_each_broken_pair_named_once(text, root):
    lines = [line for line in text.splitlines() if line.startswith("failed:")]
    for line in lines:  # every file named as the user gave the dataset, unpaired ones as unreadable ones
        assert line.removeprefix("failed: ").startswith(str(root)), line
    for case, (name, problem) in BROKEN.items():
        named = [line for line in lines if name in line]
        assert named, f"{case}: no line names {name}"
        assert any(problem in line for line in named), (case, named)
    assert "Traceback" not in text


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LMAE_REPAIR_MAX_PIXELS", HUGE_LIMIT)
    return build_corpus(tmp_path)


def test_complete_skips_each_broken_pair_in_one_line_and_repairs_the_rest(tmp_path, corpus, family):
    before = hashes(corpus, tmp_path / "elsewhere")
    out = tmp_path / "out"
    env = {**os.environ, "LMAE_REPAIR_MAX_PIXELS": HUGE_LIMIT}
    result = subprocess.run(
        [sys.executable, "-m", "lmae_repair", "complete", str(corpus), "--out", str(out), "--models", str(family),
         "--device", "cpu", "--min-confidence", "0"], capture_output=True, text=True, env=env)
    assert result.returncode == 1, result.stderr  # some pairs failed
    assert_each_broken_pair_named_once(result.stderr, corpus)
    assert "1 image has no label" in result.stdout and "lonely.png" in result.stdout

    report = json.loads((out / "lmae-report.json").read_text())
    entries = {entry["label"]: entry for entry in report["pairs"]}
    assert report["totals"]["failed"] == len(BROKEN)
    for key, what in list(UNUSUAL.items()) + [(f"labels/scene_{i:03d}.png", "ordinary") for i in range(GOOD)]:
        assert entries[key]["error"] is None, (what, entries[key]["error"])
        written = Image.open(out / key)
        assert written.size == (64, 64) and written.mode == ("I;16" if "16-bit" in what else "L"), what
    assert not (out / "labels" / "linked").is_symlink()  # outputs are real files, not writes through the link
    failed = [entry["error"] for entry in report["pairs"] if entry["error"]]
    for case, (name, problem) in BROKEN.items():
        assert any(name in error and problem in error for error in failed), case
    assert hashes(corpus, tmp_path / "elsewhere") == before  # no input modified


def test_audit_evaluate_tune_and_train_also_skip_broken_pairs_and_modify_nothing(tmp_path, corpus, family):
    before = hashes(corpus, tmp_path / "elsewhere")
    audit = runner.invoke(app, ["audit", str(corpus), "--models", str(family), "--device", "cpu",
                                "--json", str(tmp_path / "audit.json")])
    assert audit.exit_code == 1, audit.output
    assert_each_broken_pair_named_once(audit.output, corpus)
    rows = {row["label"]: row for row in json.loads((tmp_path / "audit.json").read_text())}
    # unusual but fine: judged by their evidence (null for file defects), not listed as defects
    assert all(rows[key]["evidence"] is not None for key in UNUSUAL)

    evaluate = runner.invoke(app, ["evaluate", str(corpus), "--models", str(family), "--device", "cpu"])
    assert evaluate.exit_code == 1, evaluate.output
    assert_each_broken_pair_named_once(evaluate.output, corpus)
    assert f"{GOOD + len(UNUSUAL)} pairs" in evaluate.output.split("damage at")[1]  # the figures' title

    tune = runner.invoke(app, ["tune", str(corpus), "--models", str(family), "--device", "cpu", "--out", str(tmp_path / "tuned")])
    assert tune.exit_code == 1, tune.output
    assert_each_broken_pair_named_once(tune.output, corpus)

    train = runner.invoke(app, ["train", str(corpus), "--epochs", "1", "--batch-size", "4", "--crop", "32",
                                "--workers", "0", "--num-classes", "4", "--out", str(tmp_path / "run")])
    assert train.exit_code == 1, train.output
    skipped = "\n".join(line.replace("skipped:", "failed:", 1) for line in train.output.splitlines())
    broken_at_scan = {k: v for k, v in BROKEN.items() if k != "truncated JPEG image"}  # decoded only when used
    for case, (name, problem) in broken_at_scan.items():
        assert any(name in line and problem in line for line in skipped.splitlines()), case
    assert (tmp_path / "run" / "mask-0.50" / "best.safetensors").is_file()
    assert "Traceback" not in train.output
    assert hashes(corpus, tmp_path / "elsewhere") == before


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_and_empty_dataset_folders(tmp_path, family):
    (tmp_path / "empty").mkdir()
    for command in ("complete", "audit", "evaluate", "train"):
        extra = ["--models", str(family)] if command != "train" else []
        one_line_error(runner.invoke(app, [command, str(tmp_path / "nowhere"), *extra]), "nowhere", "no such dataset folder")
        one_line_error(runner.invoke(app, [command, str(tmp_path / "empty"), *extra]), "empty", "no dataset layout found")


def test_an_output_that_cannot_be_written(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        result = runner.invoke(app, ["complete", str(root), "--out", str(out), "--models", str(family)])
        one_line_error(result, str(out), "cannot write the output here")
        assert "completing" not in result.output  # refused before the models load and the work starts
    result = runner.invoke(app, ["audit", str(root), "--models", str(family), "--json", str(tmp_path / "a_file" / "x.json")])
    one_line_error(result, "a_file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        one_line_error(runner.invoke(app, ["complete", str(root), "--out", str(locked / "out"), "--models", str(family)]),
                       "cannot write the output here")


def test_a_report_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    for command in ("audit", "evaluate"):
        result = runner.invoke(app, [command, str(root), "--models", str(tmp_path / "no-such-model"), "--json", str(tmp_path)])
        one_line_error(result, str(tmp_path), "--json names a folder")  # said first, not after the models
    result = runner.invoke(app, ["audit", str(root), "--models", str(family), "--csv", str(tmp_path / "a" / "b.csv")])
    assert result.exit_code == 0 and (tmp_path / "a" / "b.csv").is_file()  # a missing folder is made


def test_train_refuses_a_learning_rate_of_zero(tmp_path):
    """--lr 0 was accepted: the run spent its epochs and wrote checkpoints equal to its start."""
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--crop", "32", "--epochs", "1", "--lr", "0"])
    one_line_error(result, "--lr must be above 0")
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_seed_torch_cannot_take(tmp_path):
    """--seed 99999999999999999999 (above 64 bits) ended after the label scan in 'unexpected
    ValueError: Overflow when unpacking long long'."""
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--crop", "32", "--epochs", "1", "--seed", str(2**64)])
    one_line_error(result, "--seed must be below 2**64")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [
    ["--batch-size", "0"], ["--crop", "0"], ["--patch-size", "0"], ["--lr", "-1"], ["--workers", "-3"],
    ["--epochs", "0"], ["--val-max-pairs", "-1"], ["--void-id", "300"],
])
def test_train_refuses_impossible_options_in_one_line(tmp_path, option):
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), *option])
    assert result.exit_code == 2 and option[0] in result.output and "Invalid value" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_a_patch_larger_than_any_image(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--patch-size", "100000"])
    assert result.exit_code == 2 and "--patch-size" in result.output


def test_truncated_corrupt_and_mismatched_checkpoints(tmp_path, family):
    from lmae_repair.checkpoints import CheckpointInfo, save_checkpoint
    from lmae_repair.labelspace import LabelSpace
    from lmae_repair.model import LabelMAE, ModelConfig

    root = make_paired(tmp_path / "ds", count=2)
    good = family / "mask-0.50" / "best.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64))
    config = ModelConfig(num_classes=2, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    other = tmp_path / "binary.safetensors"
    save_checkpoint(other, LabelMAE(config), CheckpointInfo(config, 0.5, LabelSpace(2, background_id=0, void_id=255), {"crop": 32}))
    for command in ("complete", "audit", "evaluate"):
        out = ["--out", str(tmp_path / f"out-{command}")] if command == "complete" else []
        for checkpoint in (truncated, corrupt):
            one_line_error(runner.invoke(app, [command, str(root), "--models", str(checkpoint), *out]), checkpoint.name)
        one_line_error(runner.invoke(app, [command, str(root), "--models", str(other), *out]), "binary.safetensors", "does not fit the labels")
    result = runner.invoke(app, ["train", str(root), "--init", str(truncated), "--out", str(tmp_path / "run")])
    one_line_error(result, "truncated.safetensors")


def test_debug_shows_the_traceback_that_is_otherwise_hidden(tmp_path):
    command = [sys.executable, "-m", "lmae_repair"]
    plain = subprocess.run(command + ["complete", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: no such dataset folder"]
    debug = subprocess.run(command + ["--debug", "complete", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "LmaeError" in debug.stderr
    at_the_end = subprocess.run(command + ["complete", str(tmp_path / "nowhere"), "--debug"], capture_output=True, text=True)
    assert "No such option" not in at_the_end.stderr and "Traceback" in at_the_end.stderr  # where users add it


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names there must be valid Unicode")
def test_a_file_name_that_is_not_utf8_is_repaired_and_reported(tmp_path, family):
    """Linux file names are bytes; one from an old Latin-1 tool failed the HTML report and the
    audit CSV after all the work was done, on every rerun."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    for folder in ("images", "labels"):
        os.rename(bytes(root / folder / "scene_001.png"), bytes(root / folder) + b"/sc\xe8ne.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lmae_repair"]
    done = subprocess.run(command + ["complete", str(root), "--out", str(out), "--models", str(family), "--device", "cpu",
                                     "--min-confidence", "0"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert (out / "lmae-report.html").is_file() and os.path.exists(bytes(out / "labels") + b"/sc\xe8ne.png")
    audited = subprocess.run(command + ["audit", str(root), "--models", str(family), "--device", "cpu",
                                        "--csv", str(tmp_path / "a.csv")], capture_output=True)
    assert audited.returncode == 0, audited.stderr.decode(errors="replace")
    assert b"labels/sc\xe8ne.png" in (tmp_path / "a.csv").read_bytes()


def test_report_files_are_written_through_links_and_into_special_files(tmp_path, family):
    """`--json` names where the figures go: a link stays a link (its target gets them), a named
    pipe is written into, not replaced by a plain file (as /dev/stdout would be)."""
    root = make_paired(tmp_path / "ds", count=2)
    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--json", str(tmp_path / "link.json")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.json").is_symlink() and json.loads(target.read_text())["pairs"] == 2
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = subprocess.Popen([sys.executable, "-c", f"print(len(open({str(pipe)!r}).read()) > 0)"], stdout=subprocess.PIPE, text=True)
    result = runner.invoke(app, ["audit", str(root), "--models", str(family), "--json", str(pipe)])
    assert result.exit_code == 0, result.output
    assert reader.communicate(timeout=60)[0].strip() == "True"
    assert pipe.is_fifo() and not list(tmp_path.glob(".pipe*"))  # still a pipe; no journal beside it


def test_figures_sent_to_dev_stdout_are_all_stdout_holds_whether_piped_or_redirected(tmp_path, family):
    """`--json /dev/stdout | jq`: the tables and progress go to stderr, stdout holds the JSON alone."""
    root = make_paired(tmp_path / "ds", count=2)
    for command in ("evaluate", "audit"):
        args = [sys.executable, "-m", "lmae_repair", command, str(root), "--models", str(family), "--device", "cpu", "--json", "/dev/stdout"]
        piped = subprocess.run(args, capture_output=True, text=True)
        assert piped.returncode == 0, piped.stderr
        figures = json.loads(piped.stdout)
        assert (figures["pairs"] if command == "evaluate" else len(figures)) == 2
        assert ("PA-mIoU" if command == "evaluate" else "labels most likely broken") in piped.stderr  # the table is still shown
    with open(tmp_path / "out.txt", "w") as sent:  # `> out.txt`: the file holds the figures alone too
        assert subprocess.run(args, stdout=sent, stderr=subprocess.DEVNULL).returncode == 0
    assert len(json.loads((tmp_path / "out.txt").read_text())) == 2


def test_audit_refuses_one_file_for_both_tables_and_an_unwritable_heatmaps_folder(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    same = str(tmp_path / "rows.out")
    one_line_error(runner.invoke(app, ["audit", str(root), "--models", str(family), "--json", same, "--csv", same]),
                   "--json and --csv name the same file")
    (tmp_path / "a_file").write_text("x")
    result = runner.invoke(app, ["audit", str(root), "--models", str(family), "--heatmaps", str(tmp_path / "a_file")])
    one_line_error(result, "a_file", "--heatmaps names a file")
    assert "auditing" not in result.output  # refused before the work


def test_a_class_list_saved_with_a_byte_order_mark_is_read(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    names = ["background"] + [f"class_{i}" for i in range(1, 4)]
    (root / "classes.txt").write_bytes("\ufeff".encode() + "\n".join(names).encode())
    from lmae_repair.labelspace import read_class_names
    assert read_class_names(root / "classes.txt") == names


def test_split_and_class_lists_saved_as_utf16_are_read(tmp_path, family):
    """Windows PowerShell's `>` and Notepad's "Unicode" write UTF-16 with a byte-order mark: the
    split list named no pair (--split val: "found no image/label pairs") and classes.txt failed."""
    from conftest import make_voc

    root = make_voc(tmp_path / "voc", count=4)  # val: 2007_000002, 2007_000003
    (root / "ImageSets" / "Segmentation" / "val.txt").write_bytes("2007_000002\r\n2007_000003\r\n".encode("utf-16"))
    (root / "classes.txt").write_bytes("background\r\nrust\r\nhole\r\ncrack\r\n".encode("utf-16"))
    result = runner.invoke(app, ["complete", str(root), "--split", "val", "--out", str(tmp_path / "out"),
                                 "--models", str(family), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "SegmentationClass").iterdir()) == ["2007_000002.png", "2007_000003.png"]
    from lmae_repair.labelspace import read_class_names
    assert read_class_names(root / "classes.txt") == ["background", "rust", "hole", "crack"]


def test_labels_that_fit_a_family_by_their_values_alone_are_pointed_to_it(tmp_path, monkeypatch):
    """CamVid labels without their classes.txt: the message names the family to pass."""
    from lmae_repair.families import no_fit_reason
    from lmae_repair.labelspace import LabelSpace
    space = LabelSpace(11, background_id=None, void_id=11, names=["sky", "building", "pole", "road"] + [f"c{i}" for i in range(7)])
    reason = no_fit_reason({"camvid": None}, [set(range(12))], None, [("camvid", space)])
    assert "pass --models camvid" in reason and "sky, building, pole, road" in reason
    assert "colour labels" in no_fit_reason({"camvid": None}, [], None, [])


def test_two_files_for_one_routing_slot_are_refused_and_one_file_named_twice_counts_once(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    one = family / "mask-0.25" / "best.safetensors"
    twin = tmp_path / "twin.safetensors"
    twin.write_bytes(one.read_bytes())
    result = runner.invoke(app, ["complete", str(root), "--models", str(one), "--models", str(twin), "--out", str(tmp_path / "o")])
    one_line_error(result, "both serve mask ratio 0.25")
    result = runner.invoke(app, ["complete", str(root), "--models", str(one), "--models", str(one), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0 and "(mask ratios 0.25)" in result.output, result.output


def test_the_advice_to_train_on_cityscapes_holds_val_out(tmp_path):
    """The bundled families do not fit Cityscapes' 19 train ids; the train command advised had
    trained on all of it (val too, so nothing was left to choose best.safetensors on)."""
    root = make_cityscapes(tmp_path / "cs")
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"train a family for it with `lmae-repair train {root} --split train --val-split val --mask-ratio 0.25" in " ".join(result.output.split())


def test_the_advice_to_train_puts_the_run_folder_outside_the_data(tmp_path, monkeypatch):
    """Run from inside the data, `--out runs/mine` would be refused by train itself."""
    from lmae_repair.families import how_to_train

    root = make_paired(tmp_path / "ds", count=1)
    assert "--out runs/mine" in how_to_train(root)
    monkeypatch.chdir(root / "images")
    assert "--out ../../ds-runs`, then pass --models ../../ds-runs" in how_to_train(Path(".."))
    assert "lmae-repair train --images pics --labels 'my gts' --mask-ratio" in how_to_train(Path("my gts"), Path("pics"))
    from lmae_repair.data import discover
    from lmae_repair.families import NoFamilyFits

    (root / "classes.txt").write_text("unlabelled\nsky\nroad\ncar\n")  # train would refuse it: no train command advised
    advice = NoFamilyFits("no family fits", discover(root)).advice
    assert advice.startswith("before training a family for them: class 0 is named 'unlabelled'") and "lmae-repair train" not in advice
    (tmp_path / "pics").mkdir()
    monkeypatch.chdir(tmp_path / "pics")  # inside the --images folder: the run folder goes beside the labels
    assert "--out ../gts-runs`" in how_to_train(Path("../gts"), Path("."))


def test_masks_saved_as_0_and_255_are_refused_not_filled(tmp_path, family):
    """255 is void in these label spaces: binary masks saved black and white would have every
    object taken for missing annotation and filled (the output a curator would not catch)."""
    root = make_paired(tmp_path / "ds", count=3)
    for label in (root / "labels").iterdir():
        values = np.array(Image.open(label))
        Image.fromarray(np.where(values > 0, 255, 0).astype(np.uint8)).save(label)
    for command in (["complete", str(root), "--models", str(family), "--out", str(tmp_path / "o")],
                    ["train", str(root), "--epochs", "1", "--crop", "32", "--out", str(tmp_path / "r")]):
        one_line_error(runner.invoke(app, command), "0 and 255", "save the objects as 1")
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
    from lmae_repair.families import masks_of_0_and_255

    assert masks_of_0_and_255([{0, 255}, {0}]) is not None
    # data that says 255 is void (a class list naming it, a palette): background and void only is a label to complete
    assert masks_of_0_and_255([{0, 255}], names=["background", "crack"]) is not None  # names alone say nothing of 255
    assert masks_of_0_and_255([{0, 255}], names=["background", "crack"], void_declared=True) is None
    assert masks_of_0_and_255([{0, 255}], palette=[0, 0, 0, 128, 0, 0]) is None
    assert masks_of_0_and_255([{0, 1, 255}]) is None
    (root / "classes.txt").write_text("background\nlesion\n")  # named classes: still no label holds lesion
    one_line_error(runner.invoke(app, ["train", str(root), "--epochs", "1", "--crop", "32", "--out", str(tmp_path / "r")]),
                   "the labels hold only 0 and 255")
    unmatched = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o")])  # no bundled family fits
    one_line_error(unmatched, "the labels hold only 0 and 255")
    assert "lmae-repair train" not in unmatched.output  # which would refuse them too


def test_masks_of_0_and_255_beside_a_plain_class_list_are_refused_not_filled(tmp_path, family):
    """A classes.txt of names (`background`, `lesion`) says nothing of 255: with a checkpoint
    trained on 0/1 masks, complete took 255 for void and turned the lesions of 0/255 masks into
    background (14% of the pixels of a set of binary masks changed, exit 0). Refused like unnamed
    masks, unless the class list itself names 255 as void."""
    root = make_paired(tmp_path / "ds", count=3)
    for label in (root / "labels").iterdir():
        values = np.array(Image.open(label))
        Image.fromarray(np.where(values > 0, 255, 0).astype(np.uint8)).save(label)
    (root / "classes.txt").write_text("background\nlesion\n")
    for command in (["complete", str(root), "--models", str(family), "--out", str(tmp_path / "o")],
                    ["evaluate", str(root), "--models", str(family)],
                    ["audit", str(root), "--models", str(family)]):
        one_line_error(runner.invoke(app, command), "0 and 255", "save the objects as 1", "255 void")
    assert not (tmp_path / "o").exists()
    (root / "classes.txt").write_text("0 background\n1 lesion\n255 void\n")  # 255 said to be missing annotation
    done = runner.invoke(app, ["complete", str(root), "--models", str(family), "--out", str(tmp_path / "o")])
    assert done.exit_code == 0, done.output


def test_workers_ended_by_the_groups_signal_count_as_an_interruption():
    """`timeout`, Slurm and `docker stop` signal the whole process group: PyTorch may report the
    loading workers' end before the signal reaches the command, which must still end as
    interrupted (143, how to go on), not as an unexpected error."""
    import signal

    from lmae_repair.errors import signal_that_ended_workers

    ended = RuntimeError("DataLoader worker (pid 22955) is killed by signal: Terminated. ")
    assert signal_that_ended_workers(ended) == signal.SIGTERM
    assert signal_that_ended_workers(RuntimeError("DataLoader worker (pid 1) is killed by signal: Interrupt. ")) == signal.SIGINT
    assert signal_that_ended_workers(RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed. ")) is None
    assert signal_that_ended_workers(ValueError("Terminated")) is None
    try:  # torch's commoner form: "exited unexpectedly", raised from the worker's report
        try:
            raise ended
        except RuntimeError as report:
            raise RuntimeError("DataLoader worker (pid(s) 22955) exited unexpectedly") from report
    except RuntimeError as outer:
        assert signal_that_ended_workers(outer) == signal.SIGTERM
    from lmae_repair.cli import guarded
    import typer

    def body():
        raise ended

    with pytest.raises(typer.Exit) as stopped:
        guarded(body, "interrupted: go on with --resume")
    assert stopped.value.exit_code == 143


def test_soft_edged_masks_that_no_family_fits_are_told_as_train_would_tell_them(tmp_path):
    """0/255 masks resized with bilinear interpolation: complete and audit said to train a family
    on them ('train a family for it with lmae-repair train ...'), which then refused them as
    soft-edged. They now say what is wrong with them, and no training advice."""
    root = make_paired(tmp_path / "ds", count=3, size=64)
    for path in (root / "labels").glob("*.png"):
        mask = Image.fromarray((np.array(Image.open(path)) > 0).astype(np.uint8) * 255)
        mask.resize((96, 96), Image.BILINEAR).resize((64, 64), Image.BILINEAR).save(path)
    completed = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o")])
    told = " ".join(completed.output.split())
    assert completed.exit_code == 2 and "soft edges" in told and "(mask >= 128)" in told, told
    assert "train a family for it" not in told and "--num-classes N" in told
    audited = " ".join(runner.invoke(app, ["audit", str(root)]).output.split())
    assert "soft edges" in audited and "train a family for it" not in audited, audited


@pytest.mark.parametrize("command", [
    ["audit", "{data}", "--models", "{family}", "--heatmaps", ""],
    ["tune", "{data}", "--models", "{family}", "--out", ""],
    ["complete", "{data}", "--models", "{family}", "--out", ""],
    ["complete", "--images", "", "--labels", "", "--models", "{family}", "--out", "{out}"],
    ["complete", "{data}", "--models", "", "--out", "{out}"],
    ["train", "{data}", "--out", "", "--epochs", "1", "--crop", "32"],
    ["inspect", ""],
    ["average", "", "", "--out", "{out}.safetensors"],
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, family, monkeypatch, command):
    """`--out "$OUT"` with OUT unset is `--out ""`, which Path() reads as the current folder: audit
    wrote its heatmaps there, tune its checkpoints, --images "" paired whatever lay below it."""
    data = make_paired(tmp_path / "ds", count=2)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    args = [part.format(data=data, family=family, out=tmp_path / "out") for part in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "empty path" in result.output, result.output
    assert list(here.iterdir()) == [] and not (tmp_path / "out").exists()


def test_a_malformed_max_pixels_is_a_setup_error_not_every_pair_unreadable(tmp_path, family, monkeypatch):
    """LMAE_REPAIR_MAX_PIXELS=abc had failed each pair as an 'unreadable label (invalid literal for
    int() ...)' (exit code 1, or 'no usable training pair'); 1e8, as one writes a large number, too."""
    data = make_paired(tmp_path / "ds", count=2)
    for bad in ("abc", "-5", "0", "nan"):
        monkeypatch.setenv("LMAE_REPAIR_MAX_PIXELS", bad)
        for command in (["complete", "--out", str(tmp_path / "out")], ["audit"], ["evaluate"]):
            one_line_error(runner.invoke(app, [command[0], str(data), "--models", str(family), *command[1:]]), "LMAE_REPAIR_MAX_PIXELS", repr(bad))
        one_line_error(runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "run")]), "LMAE_REPAIR_MAX_PIXELS")
        assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    monkeypatch.setenv("LMAE_REPAIR_MAX_PIXELS", "1e8")
    result = runner.invoke(app, ["complete", str(data), "--models", str(family), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("LMAE_REPAIR_MAX_PIXELS", "1000")  # smaller than the 64x64 pairs: each one refused, saying so
    result = runner.invoke(app, ["complete", str(data), "--models", str(family), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 1 and "larger than the 0.001 megapixels" in result.output, result.output


def test_out_of_the_wrong_kind_is_named_as_such(tmp_path, family):
    """train --out FILE said 'FILE/mask-0.50: Not a directory' after the scan, tune --out FILE
    'FILE: File exists', average --out FOLDER 'cannot write it (Is a directory)'."""
    data = make_paired(tmp_path / "ds", count=2)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep\n")
    one_line_error(runner.invoke(app, ["train", str(data), "--out", str(a_file), "--crop", "32", "--epochs", "1"]), "--out names a file")
    one_line_error(runner.invoke(app, ["tune", str(data), "--models", str(family), "--out", str(a_file)]), "--out names a file")
    checkpoints = [str(family / "mask-0.25" / "best.safetensors"), str(family / "mask-0.50" / "best.safetensors")]
    one_line_error(runner.invoke(app, ["average", *checkpoints, "--out", str(tmp_path)]), "--out names a folder")
    assert a_file.read_text() == "keep\n"


def test_columns_zero_does_not_silence_every_message(tmp_path):
    """COLUMNS=0 made rich print everything at width 0: an error ended with exit code 2 and not a
    word, the help was empty."""
    env = {**os.environ, "COLUMNS": "0"}
    result = subprocess.run([sys.executable, "-m", "lmae_repair", "complete", str(tmp_path / "nowhere")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "nowhere: no such dataset folder" in result.stderr, result.stderr
    shown = subprocess.run([sys.executable, "-m", "lmae_repair", "complete", "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "--labels-only" in shown.stdout


def test_cityscapes_class_names_that_no_family_fits_are_said_to_come_from_its_file_names(tmp_path):
    """Cityscapes has no class list: its 19 names come from the train-id file names, and the
    message that no family fits said they came "from its class list", sending the user to look
    for a file that is not there."""
    root = make_cityscapes(tmp_path / "cs")
    result = runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "class names road, sidewalk, building, wall, fence, pole, ... (from its Cityscapes file names)" in output, output
    (root / "classes.txt").write_text("\n".join(["road", "sidewalk", "building"]) + "\n")
    output = " ".join(runner.invoke(app, ["complete", str(root), "--out", str(tmp_path / "o")]).output.split())
    assert "class names road, sidewalk, building (from its class list)" in output, output


def test_the_advice_to_train_names_a_folder_starting_with_a_dash_so_it_can_be_pasted(tmp_path, monkeypatch):
    """A dataset folder `-ds` (reached with `--` or `./-ds`): the advised `lmae-repair train -ds ...`
    answered "No such option: -d" when pasted."""
    from lmae_repair.families import how_to_train

    make_paired(tmp_path / "-ds", count=1)
    monkeypatch.chdir(tmp_path)
    assert "`lmae-repair train ./-ds --mask-ratio" in how_to_train(Path("-ds"))
    assert "`lmae-repair train './-my ds' --mask-ratio" in how_to_train(Path("-my ds"))
    assert "`lmae-repair train /abs/-ds --mask-ratio" in how_to_train(Path("/abs/-ds"))


@pytest.mark.parametrize("name", ["Classes.txt", "CLASSES.TXT", "classes.txt.txt"])
def test_a_class_list_named_as_windows_or_macos_find_it_is_read(tmp_path, name):
    """`Classes.txt` (found by its scripts on Windows and macOS, whose names ignore letter case) or
    `classes.txt.txt` (renamed on Windows with extensions hidden): the class names were ignored
    without a word, and the labels taken for values no list names."""
    from lmae_repair.labelspace import declared_class_names, find_classes_file

    root = make_paired(tmp_path / "ds", count=1)
    (root / name).write_text("background\nrust\nhole\n")
    assert find_classes_file(root) == root / name
    assert declared_class_names(root, None) == ["background", "rust", "hole"]
    (root / "classes.txt").write_text("background\ncrack\n")  # the exact name wins
    assert find_classes_file(root) == root / "classes.txt"


def test_a_dataset_whose_labels_are_all_unreadable_is_told_why_not_to_save_colour_labels(tmp_path):
    """Every label truncated or empty (a copy that failed): no family could be chosen, and the
    error said to save colour labels as class indices, naming no file; it names the first
    unreadable label and why it could not be read."""
    root = make_paired(tmp_path / "ds", count=2)
    labels = sorted((root / "labels").glob("*.png"))
    labels[0].write_bytes(b"")
    labels[1].write_bytes(labels[1].read_bytes()[:40])
    for command in (["complete", str(root), "--out", str(tmp_path / "out")], ["audit", str(root)]):
        result = runner.invoke(app, command)
        text = " ".join(result.output.split())
        assert "colour labels must be saved" not in text, text
        assert f"none of the 2 labels sampled could be read as class indices (first: {labels[0]}: unreadable label (empty file))" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding, name", [("utf-8", b"scene_\xff"), ("ascii", "scène_日本".encode())])
def test_a_strict_stdout_prints_any_file_name_instead_of_failing_after_the_work(tmp_path, family, encoding, name):
    """PYTHONIOENCODING=utf-8 (many Dockerfiles set it) and a file name that is not UTF-8, or an
    ASCII stdout (cp1252 on Windows, redirected) and a name such as 日本.png: the audit measured
    every pair and then failed on its table, exit code 2, 'unexpected UnicodeEncodeError'."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    for folder, suffix in (("images", b".png"), ("labels", b".png")):
        os.rename(root / folder / "scene_000.png", os.path.join(os.fsencode(root / folder), name + suffix))
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    command = [sys.executable, "-m", "lmae_repair", "audit", str(root), "--models", str(family), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert b"scene_001.png" in result.stdout and b"labels most likely broken" in result.stdout
