"""`lmae-repair evaluate`: the damage is what the options say, the figures mean what they say, and
the command prints and writes them for the model and the baselines."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import NUM_CLASSES, make_paired, make_voc
from lmae_repair.cli import app
from lmae_repair.evaluate import EvaluateOptions, Scores, degrade
from lmae_repair.labelspace import LabelSpace

runner = CliRunner()
VOC_SPACE = LabelSpace(NUM_CLASSES, background_id=0, void_id=255)
NO_BACKGROUND = LabelSpace(NUM_CLASSES, background_id=None, void_id=255)


def test_random_patches_are_erased_to_void_at_the_mask_ratio():
    label = np.ones((64, 48), np.uint8)  # 4 x 3 patches of 16 px
    damaged, erased = degrade(label, VOC_SPACE, EvaluateOptions(mask_ratio=0.5), np.random.default_rng(0))
    assert erased.sum() == 6 * 16 * 16
    assert (damaged[erased] == 255).all() and (damaged[~erased] == 1).all()
    blocks = erased.reshape(4, 16, 3, 16)
    assert all(blocks[r, :, c, :].all() or not blocks[r, :, c, :].any() for r in range(4) for c in range(3))


def test_label_first_takes_the_annotated_patches_and_background_first_the_others():
    label = np.zeros((32, 64), np.uint8)
    label[:, :32] = 2  # left half annotated: patches 0, 1, 4, 5 of a 2 x 4 grid
    _, label_first = degrade(label, VOC_SPACE, EvaluateOptions(mask_ratio=0.5, strategy="label-first"), np.random.default_rng(0))
    assert label_first[:, :32].all() and not label_first[:, 32:].any()
    _, background_first = degrade(label, VOC_SPACE, EvaluateOptions(mask_ratio=0.5, strategy="background-first"), np.random.default_rng(0))
    assert background_first[:, 32:].all() and not background_first[:, :32].any()


def test_objects_become_background_in_voc_data_and_void_without_background():
    label = np.zeros((100, 100), np.uint8)
    label[10:20, 10:20] = 1  # 1% of the image
    label[40:50, 40:50] = 2
    label[:, 80:] = 3  # 20%: too big to be an erasable object at the 5% limit
    options = EvaluateOptions(mask_ratio=1.0, strategy="objects", max_object_share=0.05)
    damaged, erased = degrade(label, VOC_SPACE, options, np.random.default_rng(0))
    assert erased.sum() == 200 and (damaged[erased] == 0).all() and (damaged[:, 80:] == 3).all()
    damaged, _ = degrade(label, NO_BACKGROUND, options, np.random.default_rng(0))
    assert (damaged[10:20, 10:20] == 255).all()
    half = EvaluateOptions(mask_ratio=0.5, strategy="objects")
    counts = [degrade(label, VOC_SPACE, half, np.random.default_rng(s))[1].sum() for s in range(4)]
    assert set(counts) == {100}  # one of the two small objects every time


def test_scores_of_a_perfect_and_of_a_useless_repair():
    truth = np.array([[1, 1, 2, 2], [0, 0, 3, 3]], np.uint8)
    erased = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    damaged = np.where(erased, 255, truth).astype(np.uint8)
    perfect, useless = Scores(NUM_CLASSES), Scores(NUM_CLASSES)
    perfect.add_damaged(truth, damaged, truth, erased)
    perfect.add_intact(truth, truth)
    wrong = np.where(erased, 0, truth).astype(np.uint8)  # fills every hole with background
    useless.add_damaged(wrong, damaged, truth, erased)
    useless.add_intact(np.zeros_like(truth), truth)
    good, bad = perfect.summary(VOC_SPACE), useless.summary(VOC_SPACE)
    assert good["pa_miou"] == 1.0 and good["restored"] == 1.0 and good["precision"] == 1.0 and good["intact_changed"] == 0.0
    assert bad["restored"] == 0.0 and bad["precision"] == 0.0 and bad["intact_changed"] == 0.75
    assert bad["class_iou"]["class_1"] == 0.0 and good["class_iou"]["class_1"] == 1.0


def test_evaluate_command_prints_and_writes_figures_for_model_and_nearest_fill(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=3, size=64, seed=5)
    report = tmp_path / "figures.json"
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--json", str(report), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "PA-mIoU" in result.output and "nearest" in result.output and "IoU per class" in result.output
    figures = json.loads(report.read_text())
    assert figures["pairs"] == 3 and figures["strategy"] == "random" and figures["erased_pixels"] > 0
    assert set(figures["methods"]) == {"lmae-repair", "nearest"}
    nearest = figures["methods"]["nearest"]
    # generated scenes are big flat shapes: the nearest labelled pixel is usually right
    assert nearest["restored"] > 0.6
    for method in figures["methods"].values():
        for key in ("pa_miou", "miou", "restored", "precision", "intact_changed"):
            assert 0.0 <= method[key] <= 1.0, key
    again = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--json", str(tmp_path / "b.json"), "--seed", "3"])
    assert again.exit_code == 0
    repeated = json.loads((tmp_path / "b.json").read_text())["methods"]["nearest"]
    assert {**repeated, "seconds": 0} == {**nearest, "seconds": 0}  # same seed, same figures


def test_a_single_value_option_given_twice_is_refused_not_silently_cut_to_the_last(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2, size=64, seed=5)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "-m", "0.25", "-m", "0.5"])
    assert result.exit_code == 2
    assert "'--mask-ratio' / '-m': given 2 times" in " ".join(result.output.split()).replace("│ ", "")
    assert "PA-mIoU" not in result.output  # nothing was scored for a ratio the user did not mean alone
    repeatable = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--models", str(family), "--max-pairs", "1", "--device", "cpu"])
    assert repeatable.exit_code == 0, repeatable.output


def test_a_pair_the_model_fails_on_is_reported_and_the_others_are_scored(tmp_path, family, monkeypatch):
    from lmae_repair.complete import Completer

    real = Completer._repair_fitting

    def fail_on_scene_1(self, choice, chunk, tiles):
        if any(item.pair.label.name == "scene_001.png" for item in chunk):
            raise RuntimeError("out of memory")
        return real(self, choice, chunk, tiles)

    monkeypatch.setattr(Completer, "_repair_fitting", fail_on_scene_1)
    root = make_paired(tmp_path / "ds", count=3, size=64, seed=5)
    report = tmp_path / "figures.json"
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--batch-size", "1", "--json", str(report)])
    assert result.exit_code == 1, result.output
    assert "scene_001.png: the model failed" in " ".join(result.output.split()) and "Traceback" not in result.output
    figures = json.loads(report.read_text())
    assert figures["pairs"] == 2 and len(figures["failed"]) == 1 and "scene_001.png" in figures["failed"][0]


def test_objects_protocol_on_voc_data(tmp_path, family):
    root = make_voc(tmp_path / "voc", count=3, size=64)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--strategy", "objects", "--mask-ratio", "1",
                                 "--max-object-share", "0.5", "--json", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "o.json").read_text())
    assert figures["missing_value"] == 0 and figures["erased_pixels"] > 0
    assert "nothing to score" not in result.output and "every label is all void" not in result.output
    everything = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--mask-ratio", "1"])
    assert everything.exit_code == 0 and "every label is all void" in everything.output
    none_small = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--strategy", "objects",
                                     "--max-object-share", "0"])
    assert none_small.exit_code == 1 and "raise --max-object-share" in none_small.output


def test_bad_options_and_missing_extra_give_one_line_errors(tmp_path, family, monkeypatch):
    root = make_paired(tmp_path / "ds", count=1, size=32)
    bad = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--strategy", "everything"])
    assert bad.exit_code == 2 and "--strategy" in bad.output and "Traceback" not in bad.output
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    missing = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--baselines", "all"])
    assert missing.exit_code == 2 and "scikit-image" in missing.output


def test_random_walker_baseline_when_scikit_image_is_installed(tmp_path, family):
    pytest.importorskip("skimage")
    root = make_paired(tmp_path / "ds", count=2, size=48)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--baselines", "all", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    walker = json.loads((tmp_path / "r.json").read_text())["methods"]["random-walker"]
    assert walker["restored"] > 0.5


def test_a_model_trained_with_the_objects_strategy_restores_what_nearest_fill_cannot(tmp_path, trained_family):
    """Generated objects erased to background: the model reads their colour from the image,
    nearest fill paints them with the surrounding class."""
    root = make_voc(tmp_path / "voc", count=6, size=64, seed=11)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(trained_family), "--strategy", "objects", "--mask-ratio", "1",
                                 "--max-object-share", "0.5", "--json", str(tmp_path / "o.json")])
    assert result.exit_code == 0, result.output
    methods = json.loads((tmp_path / "o.json").read_text())["methods"]
    assert methods["lmae-repair"]["restored"] > methods["nearest"]["restored"] + 0.2, methods


def test_the_title_counts_one_pair_in_the_singular(tmp_path, family):
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--max-pairs", "1"])
    assert result.exit_code == 0, result.output
    assert "random damage at 0.5: 1 pair, " in result.output


def test_a_patch_larger_than_the_images_erases_nothing_and_the_note_says_to_lower_it(tmp_path, family):
    """--patch-size 512 on small images erased nothing, and the note said only to raise --mask-ratio."""
    root = make_paired(tmp_path / "ds", count=2, size=64)
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--patch-size", "128"])
    told = " ".join(result.output.split())
    assert "erased no annotated pixel" in told and "lower --patch-size" in told, told


def test_a_damage_that_erases_nothing_says_why_in_one_line_in_place_of_a_table_of_dashes(tmp_path, family):
    """concrete-voc val --strategy objects --max-pairs 5 erased nothing and printed tables of '-'
    under a '0 erased pixels' title, exit code 0, as if it were a result."""
    root = make_voc(tmp_path / "voc", count=3, size=64)
    report = tmp_path / "o.json"
    none_small = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--strategy", "objects",
                                     "--max-object-share", "0", "--json", str(report)])
    told = " ".join(none_small.output.split())
    assert none_small.exit_code == 1, told
    assert "nothing scored: the damage erased no annotated pixel in 3 pairs (none holds an object" in told, told
    assert "PA-mIoU" not in told and "IoU per class" not in told
    figures = json.loads(report.read_text())
    assert figures["erased_pixels"] == 0 and figures["objects"] == 0 and figures["methods"]["lmae-repair"]["pa_miou"] is None
    drawn_none = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--strategy", "objects",
                                     "--max-object-share", "0.5", "--mask-ratio", "0.001"])
    told = " ".join(drawn_none.output.split())
    assert drawn_none.exit_code == 1 and "and the draw at --mask-ratio 0.001 took none" in told, told
    assert "PA-mIoU" not in told


def test_the_json_holds_every_setting_and_a_command_that_measures_the_same_figures_again(tmp_path, family):
    """--json lacked the split, --max-pairs, --threshold, the arithmetic and the version: a paper
    table's figures could not be re-run from it (concrete-voc --split val read as the whole set)."""
    import shlex

    root = make_voc(tmp_path / "voc", count=5, size=64)
    first = tmp_path / "a.json"
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--split", "val", "--max-pairs", "1", "-m", "0.25",
                                 "--seed", "2", "--threshold", "0.4", "--device", "cpu", "--json", str(first)])
    assert result.exit_code == 0, result.output
    figures = json.loads(first.read_text())
    assert figures["split"] == "val" and figures["max_pairs"] == 1 and figures["threshold"] == 0.4 and figures["pairs"] == 1
    assert figures["precision"] in ("bf16", "fp32", "int8") and figures["native_scale"] is False and figures["version"]
    words = shlex.split(figures["command"])
    assert words[:2] == ["lmae-repair", "evaluate"] and "--split" in words and "--threshold" in words
    again = runner.invoke(app, [*words[1:], "--json", str(tmp_path / "b.json")])
    assert again.exit_code == 0, again.output
    repeated = json.loads((tmp_path / "b.json").read_text())
    strip = lambda methods: {name: {**m, "seconds": 0} for name, m in methods.items()}  # noqa: E731
    assert strip(repeated["methods"]) == strip(figures["methods"]) and repeated["command"] == figures["command"]


def test_the_figures_say_which_checkpoint_repaired_the_damaged_labels(tmp_path, family):
    """CamVid val at --mask-ratio 0.01: every damaged label went to the objects checkpoint (the
    labels' own void follows edges), restored 0.61 against 0.97 at 0.25, and nothing said so."""
    root = make_paired(tmp_path / "ds", count=3, size=64, seed=5)
    report = tmp_path / "r.json"
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--json", str(report)])
    assert result.exit_code == 0, result.output
    routed = json.loads(report.read_text())["routed"]
    assert sum(routed.values()) == 3, routed
    names = {path.name for path in family.rglob("*.safetensors")}
    assert all(served.split(" (mask ratio ")[0] in names for served in routed), routed
    served, count = next(iter(routed.items()))
    assert f"damaged labels repaired with {served}: {count} pair" in " ".join(result.output.split())


def test_the_rerun_command_keeps_every_digit_of_the_settings_it_was_given(tmp_path, family):
    """`command` wrote --mask-ratio 0.1234567 as 0.123457 (six significant digits): the line that
    was to measure the same figures again ran another damage."""
    import shlex

    root = make_voc(tmp_path / "voc", count=2, size=64)
    report = tmp_path / "o.json"
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--max-pairs", "1", "-m", "0.1234567",
                                 "--threshold", "0.3333333", "--device", "cpu", "--json", str(report)])
    assert result.exit_code in (0, 1), result.output
    words = shlex.split(json.loads(report.read_text())["command"])
    assert words[words.index("--mask-ratio") + 1] == "0.1234567" and words[words.index("--threshold") + 1] == "0.3333333", words


def test_images_without_a_label_are_noted_as_not_scored(tmp_path, family):
    """A video labelled every second frame: evaluate scored the labelled frames and said nothing of
    the others, while complete and train note such images; it notes them too now."""
    root = make_paired(tmp_path / "ds", count=2, size=64, seed=5)
    (root / "images" / "seq01").mkdir()
    (root / "images" / "scene_001.png").rename(root / "images" / "seq01" / "frame_000002.png")
    (root / "labels" / "scene_001.png").unlink()
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--max-pairs", "1"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert f"note: 1 image has no label and is not scored (first: {root / 'images' / 'seq01' / 'frame_000002.png'}: no label" in output, output


def test_labels_all_void_erase_nothing_and_the_line_says_so_not_to_raise_the_mask_ratio(tmp_path, family):
    """Two labels all void: 'the damage erased no annotated pixel (raise --mask-ratio, or lower
    --patch-size ...)' sent the user after the wrong cause; the line names the labels' void."""
    from PIL import Image

    root = make_paired(tmp_path / "ds", count=2, size=64)
    for label in (root / "labels").iterdir():
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(label)
    report = tmp_path / "o.json"
    result = runner.invoke(app, ["evaluate", str(root), "--models", str(family), "--device", "cpu", "--json", str(report)])
    told = " ".join(result.output.split())
    assert result.exit_code == 1, told
    assert "erased no annotated pixel in 2 pairs (no label holds an annotated pixel (all void)" in told, told
    assert "raise --mask-ratio" not in told
    assert json.loads(report.read_text())["unannotated"] == 2
