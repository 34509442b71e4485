"""Class offsets: tuned for PA-mIoU, stored in the checkpoint, applied where a class is chosen."""

import shutil
import subprocess
import sys
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import NUM_CLASSES, as_a_user_without_override, make_paired
from lmae_repair.checkpoints import CheckpointInfo, read_info
from lmae_repair.class_bias import apply_class_bias, held_out, pa_miou, tune_offsets
from lmae_repair.cli import app
from lmae_repair.errors import LmaeError
from lmae_repair.families import set_routing
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import ModelConfig
from lmae_repair.repair import finish, prepare

runner = CliRunner()


def test_tuned_offsets_give_a_class_the_model_underrates_its_pixels():
    """The model says class 0 at 0.6 on pixels that are class 1, and at 0.9 on pixels that are
    class 0: every class-1 pixel is lost. An offset for class 1 between log(0.6/0.4) and
    log(0.9/0.1) gets both right; tuning finds one."""
    probs = np.array([[0.9, 0.1]] * 50 + [[0.6, 0.4]] * 50)
    logs, truths = np.log(probs).astype(np.float32), np.array([0] * 50 + [1] * 50)
    missed = np.zeros(2, np.int64)
    bias, before, after = tune_offsets(logs, truths, missed)
    assert before == pytest.approx(0.25)  # class 0: IoU 0.5, class 1: 0
    assert after == pytest.approx(1.0) and pa_miou(logs, truths, missed, bias) == pytest.approx(1.0)
    assert np.log(0.6 / 0.4) < bias[1] - bias[0] < np.log(0.9 / 0.1)
    folds = np.arange(100) % 2  # the same pattern in both halves of the pairs: it holds out of sample
    no_agreement = np.full((100, 2), -1, np.int16)
    assert held_out(logs, no_agreement, truths, folds, np.zeros((2, 2))) == (pytest.approx(0.25), pytest.approx(1.0))


def test_offsets_reweight_probabilities_and_no_offsets_change_nothing():
    probs = torch.tensor([0.6, 0.4]).view(2, 1, 1).expand(2, 3, 3).contiguous()
    assert torch.equal(apply_class_bias(probs, []), probs)
    shifted = apply_class_bias(probs, [0.0, 1.0])
    assert torch.allclose(shifted.sum(0), torch.ones(3, 3)) and (shifted.argmax(0) == 1).all()


def test_a_checkpoint_carries_its_offsets_and_repair_chooses_with_them():
    """Stored with the checkpoint, read back, and used by `finish`: a void patch the model calls
    class 1 at 0.6 becomes class 2 under offsets favouring it. Offsets of the wrong length are
    refused when the checkpoint is read."""
    config = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    info = CheckpointInfo(config, 0.5, LabelSpace(3, background_id=0, void_id=255), {"crop": 16}, class_bias=[0.0, 0.0, 1.0])
    assert CheckpointInfo.from_json(info.to_json()).class_bias == [0.0, 0.0, 1.0]
    label = np.full((16, 16), 2, np.uint8)
    label[:8, :8] = 255
    item = prepare(np.zeros((16, 16, 3), np.uint8), label, info)
    probs = torch.zeros(3, 16, 16)
    probs[1], probs[2] = 0.6, 0.4
    assert (finish(item, probs, info).values[:8, :8] == 2).all()
    info.class_bias = []
    assert (finish(item, probs, info).values[:8, :8] == 1).all()
    broken = info.to_json().replace('"class_bias": []', '"class_bias": [1.0]')
    with pytest.raises(LmaeError, match="class_bias has 1 values for 3 classes"):
        CheckpointInfo.from_json(broken)


def test_tune_writes_tuned_checkpoints_and_keeps_the_input(tmp_path, trained_family):
    data = make_paired(tmp_path / "val", count=4, size=64, seed=5)
    out = tmp_path / "tuned"
    result = runner.invoke(app, ["tune", str(data), "--models", str(trained_family), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "PA-mIoU on" in result.output
    tuned = read_info(out / "mask-0.50" / "best.safetensors")  # a run of one ratio keeps its layout too
    assert len(tuned.class_bias) == NUM_CLASSES and len(tuned.continuation) == 2 and "continuation:" in result.output
    record = tuned.training["class_bias_tuned_on"]
    assert record["pairs"] == 4 and record["pa_miou_after"] >= record["pa_miou_before"]
    assert "held_out_after" in record and "scored on the other" in result.output
    assert "too few pairs" not in result.output
    alone = runner.invoke(app, ["tune", str(data), "--models", str(trained_family), "--out", str(tmp_path / "one"), "--max-pairs", "1"])
    assert alone.exit_code == 0 and "too few pairs to score the offsets" in alone.output  # offsets of one pair, said so
    assert read_info(trained_family / "mask-0.50" / "best.safetensors").class_bias == []  # the input is untouched
    run = tmp_path / "run"  # a training run of two mask ratios: both files are kept under --out, in the run's layout
    for ratio in ("0.25", "0.50"):  # the same weights, each file serving its own ratio, as a run's do
        set_routing(trained_family / "mask-0.50" / "best.safetensors", run / f"mask-{ratio}" / "best.safetensors", [float(ratio)])
    both = runner.invoke(app, ["tune", str(data), "--models", str(run), "--out", str(tmp_path / "run-tuned"), "--max-pairs", "2"])
    assert both.exit_code == 0, both.output
    assert sorted(p.relative_to(tmp_path / "run-tuned").as_posix() for p in (tmp_path / "run-tuned").rglob("*.safetensors")) == [
        "mask-0.25/best.safetensors", "mask-0.50/best.safetensors"]
    inside = runner.invoke(app, ["tune", str(data), "--models", str(trained_family), "--out", str(data / "tuned")])
    assert inside.exit_code == 2 and "would be written inside the input" in inside.output


def test_tune_leaves_a_bundled_family_as_it_is_and_writes_tuned_copies(tmp_path, monkeypatch):
    """With no --models and no --out on CamVid-like data: the bundled camvid family is picked,
    left untouched, and its tuned copies land in ./camvid-tuned, offsets and record included."""
    from pathlib import Path

    import lmae_repair
    from lmae_repair.families import bundled_families

    examples = Path(lmae_repair.__file__).resolve().parents[1] / "examples" / "camvid"
    if not examples.is_dir() or "camvid" not in bundled_families():
        pytest.skip("needs the repository's examples and bundled models")
    bundled = sorted(bundled_families()["camvid"].glob("*.safetensors"))
    before = [path.read_bytes() for path in bundled]
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tune", str(examples), "--max-pairs", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "camvid-tuned" in result.output
    tuned = sorted((tmp_path / "camvid-tuned").glob("*.safetensors"))
    assert [path.name for path in tuned] == [path.name for path in bundled]
    assert all(len(read_info(path).class_bias) == 11 and read_info(path).training["class_bias_tuned_on"]["pairs"] == 2 for path in tuned)
    assert [path.read_bytes() for path in bundled] == before


def test_the_tuning_sample_stays_bounded_and_keeps_the_class_shares(monkeypatch):
    """Millions of erased pixels are thinned to a uniform sample of at most twice TUNING_PIXELS,
    missed pixels included, so each class keeps its share and the memory stays bounded."""
    import lmae_repair.class_bias as class_bias

    monkeypatch.setattr(class_bias, "TUNING_PIXELS", 1000)
    gathered = class_bias.ErasedProbabilities(2, seed=0)
    truth = np.zeros((40, 50), np.int64)
    truth[:, :10] = 1  # a fifth of the pixels are class 1
    erased = np.ones((40, 50), bool)
    fillable = np.ones((40, 50), bool)
    fillable[:4] = False  # a tenth may not be filled: missed
    for _ in range(20):
        gathered.add(torch.full((2, 40, 50), 0.5), truth, erased, fillable)
    logs, truths, folds, missed, agreed = gathered.arrays()
    assert len(truths) <= 2000 and gathered.rate < 0.1 and logs.shape == (len(truths), 2) and set(folds) == {0}
    assert agreed.shape == (len(truths), 2) and (agreed == -1).all()  # none given: no class continued
    assert abs((truths == 1).mean() - 0.2) < 0.05
    assert abs(missed.sum() / (missed.sum() + len(truths)) - 0.1) < 0.03


def test_tune_of_a_family_whose_objects_file_finds_no_object_tunes_the_rest_and_keeps_the_family_whole(tmp_path, trained_family):
    from conftest import write_pair

    rng = np.random.default_rng(0)
    for i in range(3):  # two large regions, no small object for the objects damage to erase
        label = np.ones((64, 64), np.uint8)
        label[:, 32:] = 2
        write_pair(tmp_path / "val" / "images" / f"p{i}.png", tmp_path / "val" / "labels" / f"p{i}.png",
                   rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), label)
    family = tmp_path / "mine"
    set_routing(trained_family / "mask-0.50" / "best.safetensors", family / "general.safetensors", [0.5])
    set_routing(trained_family / "mask-0.50" / "best.safetensors", family / "objects.safetensors", [0.5], "objects")
    out = tmp_path / "tuned"
    result = runner.invoke(app, ["tune", str(tmp_path / "val"), "--models", str(family), "--out", str(out), "--device", "cpu"])
    text = " ".join(result.output.split())
    # was: exit 2 after general.safetensors was written, the objects file missing from --out
    assert result.exit_code == 1, text
    assert "general.safetensors: PA-mIoU on" in text and "objects.safetensors could fill; nothing to tune on: copied unchanged to" in text
    assert sorted(p.name for p in out.iterdir()) == ["general.safetensors", "objects.safetensors"]
    assert (out / "objects.safetensors").read_bytes() == (family / "objects.safetensors").read_bytes()


def test_a_tuned_checkpoint_says_where_its_offsets_were_tuned(tmp_path, trained_family, monkeypatch):
    from conftest import make_voc

    make_voc(tmp_path / "voc", count=6, size=64, seed=5)
    monkeypatch.chdir(tmp_path)  # a relative DATA, as users type it
    result = runner.invoke(app, ["tune", "voc", "--split", "val", "--models", str(trained_family), "--out", "tuned", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = read_info(tmp_path / "tuned" / "mask-0.50" / "best.safetensors").training["class_bias_tuned_on"]
    # was {"data": "voc", ...}: relative to a folder it does not name, and silent on the split (train or val?)
    assert record["data"] == str((tmp_path / "voc").resolve()) and record["split"] == "val" and record["pairs"] == 2
    shown = " ".join(runner.invoke(app, ["inspect", "tuned"]).output.split())
    assert "│ tuned on │" in shown and "split val, 2 pairs: PA-mIoU" in shown, shown


def test_tune_into_a_folder_it_cannot_write_is_refused_before_any_pair_is_tuned(tmp_path, trained_family):
    """tune writes into the run folder it reads (or --out) once every pair has been measured: a
    read-only run folder (a colleague's, a shared models folder) was found out only then, after
    minutes or hours of tuning, as 'best.safetensors: cannot write it (Permission denied)'."""
    data = make_paired(tmp_path / "val", count=2, size=64, seed=5)
    run = tmp_path / "run"
    shutil.copytree(trained_family, run)
    (run / "mask-0.50").chmod(0o555)
    (tmp_path / "read-only").mkdir(mode=0o555)
    for extra in ([], ["--out", str(tmp_path / "read-only")], ["--out", str(tmp_path / "read-only" / "tuned")]):
        command = [sys.executable, "-m", "lmae_repair", "tune", str(data), "--models", str(run), "--device", "cpu", *extra]
        result = subprocess.run(as_a_user_without_override(command), capture_output=True, text=True)
        assert result.returncode == 2 and "is not a writable folder" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "tuning" not in result.stdout  # refused before the work
    (run / "mask-0.50").chmod(0o755)
