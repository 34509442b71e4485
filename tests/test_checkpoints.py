import json
import shutil

import numpy as np
import pytest
import torch

from lmae_repair.checkpoints import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import LabelMAE, ModelConfig

CONFIG = ModelConfig(num_classes=3, patch_size=8, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)


def saved(tmp_path, half=False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = LabelMAE(CONFIG).eval()
    space = LabelSpace(3, ["background", "crack", "spalling"], background_id=0, void_id=255, palette=[0, 0, 0, 128, 0, 0] + [0] * 762)
    info = CheckpointInfo(CONFIG, 0.5, space, {"data": "somewhere", "pairs": 12}, {"val_pa_miou": 0.81})
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model, info, half=half)
    return path, model, info


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    path, model, info = saved(tmp_path)
    loaded, loaded_info = load_checkpoint(path)
    assert loaded_info.to_json() == info.to_json()
    assert loaded_info.label_space.names == ["background", "crack", "spalling"]
    assert loaded_info.mask_ratio == 0.5 and loaded_info.validation["val_pa_miou"] == 0.81
    image, label = torch.rand(1, 3, 16, 16), torch.randint(0, 3, (1, 16, 16))
    mask = torch.tensor([[True, False, False, True]])
    assert torch.equal(model(image, label, mask), loaded(image, label, mask))
    assert read_info(path).model == CONFIG


def test_half_precision_checkpoint_loads_close(tmp_path):
    path, model, _ = saved(tmp_path, half=True)
    loaded, _ = load_checkpoint(path)
    image, label = torch.rand(1, 3, 16, 16), torch.randint(0, 3, (1, 16, 16))
    mask = torch.tensor([[True, False, False, True]])
    assert torch.allclose(model(image, label, mask), loaded(image, label, mask), atol=5e-2)


def test_truncated_file_is_refused_in_one_line(tmp_path):
    path, _, _ = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LmaeError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_garbage_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a checkpoint")
    with pytest.raises(LmaeError, match="junk.safetensors"):
        load_checkpoint(junk)
    with pytest.raises(LmaeError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(LmaeError, match="not an L-MAE checkpoint"):
        load_checkpoint(other)


def test_weights_that_do_not_match_the_metadata_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, _, _ = saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["lmae"])
    meta["model"]["enc_dim"] = 64
    metadata["lmae"] = json.dumps(meta)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(LmaeError, match="shape"):
        load_checkpoint(path)


def test_export_family_writes_one_half_precision_file_per_ratio(tmp_path, family):
    from lmae_repair.families import export_family, find_checkpoints, set_routing

    written = export_family(family, tmp_path / "bundled" / "shapes")
    assert [p.name for p in written] == ["mask-0.25.safetensors", "mask-0.50.safetensors"]
    exported = find_checkpoints([tmp_path / "bundled" / "shapes"])
    assert [info.mask_ratio for _, info in exported] == [0.25, 0.5]
    assert written[0].stat().st_size < (family / "mask-0.25" / "best.safetensors").stat().st_size * 0.6
    objects_run = tmp_path / "objects-run"  # a --gaps objects run: one file per ratio, none lost
    for ratio in (0.25, 0.5):
        set_routing(family / f"mask-{ratio:.2f}" / "best.safetensors", objects_run / f"mask-{ratio:.2f}" / "best.safetensors", [ratio], "objects")
    assert [p.name for p in export_family(objects_run, tmp_path / "objects")] == ["mask-0.25-objects.safetensors", "mask-0.50-objects.safetensors"]
    named = tmp_path / "mine"  # a family folder's own names (which its model card uses) are kept
    named.mkdir()
    shutil.copy(family / "mask-0.25" / "best.safetensors", named / "general.safetensors")
    assert [p.name for p in export_family(named, tmp_path / "copy")] == ["general.safetensors"]


def test_a_checkpoint_can_serve_another_mask_ratio_slot(tmp_path, family):
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.families import find_checkpoints, serve_at_ratio
    from lmae_repair.repair import choose_checkpoint

    source = family / "mask-0.25" / "best.safetensors"
    dest = tmp_path / "shapes"
    serve_at_ratio(source, 0.25, dest)
    written = serve_at_ratio(dest / "mask-0.25.safetensors", 0.75, dest)  # a copy of a copy still knows
    assert written.name == "mask-0.75.safetensors"
    checkpoints = find_checkpoints([dest])
    assert [info.mask_ratio for _, info in checkpoints] == [0.25, 0.75]
    assert choose_checkpoint(0.7, [info.mask_ratio for _, info in checkpoints]) == 1  # routing sees the new slot
    original, _ = load_checkpoint(source)
    served, info = load_checkpoint(written)
    for name, tensor in original.state_dict().items():
        assert torch.allclose(served.state_dict()[name], tensor, atol=1e-2)  # the same weights, float16
    assert info.training["trained_mask_ratio"] == 0.25
    inspected = CliRunner().invoke(app, ["inspect", str(written)])
    assert inspected.exit_code == 0 and "0.75 (trained at 0.25)" in inspected.output, inspected.output
    with pytest.raises(LmaeError):
        serve_at_ratio(source, 1.5, dest)


def test_one_file_serves_several_routing_slots_and_keeps_its_gap_kind(tmp_path, family):
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.families import export_family, find_checkpoints, set_routing

    source = family / "mask-0.25" / "best.safetensors"
    dest = tmp_path / "shapes"
    set_routing(source, dest / "general.safetensors", [0.25, 0.5, 0.75])
    set_routing(source, dest / "objects.safetensors", [0.25], "objects")
    checkpoints = find_checkpoints([dest])
    assert [(path.name, info.mask_ratio, info.gap_kind) for path, info in checkpoints] == [
        ("general.safetensors", 0.25, "any"), ("objects.safetensors", 0.25, "objects"),
        ("general.safetensors", 0.5, "any"), ("general.safetensors", 0.75, "any")]
    from lmae_repair.complete import CompleteOptions, Completer

    completer = Completer(checkpoints, CompleteOptions(tmp_path / "out"))
    assert completer.model(0) is completer.model(3) and completer.model(1) is not completer.model(0)  # loaded once per file
    inspected = CliRunner().invoke(app, ["inspect", str(dest / "general.safetensors")])
    assert inspected.exit_code == 0 and "mask ratio 0.50, mask ratio 0.75" in inspected.output, inspected.output
    exported = export_family(dest, tmp_path / "copy")  # each file once, under its own name
    assert sorted(path.name for path in exported) == ["general.safetensors", "objects.safetensors"]
    with pytest.raises(LmaeError):
        set_routing(source, dest / "bad.safetensors", [0.25], "cars")


def test_average_is_the_mean_of_the_weights_and_refuses_another_model(tmp_path):
    from lmae_repair.checkpoints import average_checkpoints

    first, model_a, info = saved(tmp_path / "a")
    torch.manual_seed(1)
    model_b = LabelMAE(CONFIG).eval()
    second = tmp_path / "b.safetensors"
    later = CheckpointInfo(CONFIG, 0.5, info.label_space, training={"epochs": 2, "train_seconds": 20.0},
                           validation={"val_pa_miou": 0.5, "epoch": 2})
    save_checkpoint(second, model_b, later)
    averaged, averaged_info = average_checkpoints([first, second])
    for name, tensor in averaged.state_dict().items():
        expected = (model_a.state_dict()[name].double() + model_b.state_dict()[name].double()) / 2
        assert torch.allclose(tensor.double(), expected, atol=1e-6), name
    assert averaged_info.training["averaged_from"] == [str(first), str(second)]
    # the whole run's training record; no one epoch's validation figure passed off as the average's
    assert averaged_info.training["epochs"] == 2 and averaged_info.training["train_seconds"] == 20.0
    assert averaged_info.validation == {}
    assert averaged_info.label_space.names == info.label_space.names and averaged_info.mask_ratio == 0.5
    other_ratio = tmp_path / "c.safetensors"
    save_checkpoint(other_ratio, model_b, CheckpointInfo(CONFIG, 0.75, info.label_space))
    with pytest.raises(LmaeError, match="c.safetensors: mask ratio differs"):
        average_checkpoints([first, other_ratio])
    objects = tmp_path / "d.safetensors"  # a checkpoint for missed objects beside one for any gap
    save_checkpoint(objects, model_b, CheckpointInfo(CONFIG, 0.5, info.label_space, gap_kind="objects"))
    with pytest.raises(LmaeError, match="d.safetensors: kind of gap"):
        average_checkpoints([first, objects])
    larger = tmp_path / "e.safetensors"  # another run's, trained on larger crops: its tiles would be lost
    save_checkpoint(larger, model_b, CheckpointInfo(CONFIG, 0.5, info.label_space, training={"crop": 448}))
    with pytest.raises(LmaeError, match="e.safetensors: training crop"):
        average_checkpoints([first, larger])


def test_average_of_tuned_checkpoints_says_their_offsets_are_not_carried_over(tmp_path):
    from typer.testing import CliRunner

    from lmae_repair.cli import app

    first, model, info = saved(tmp_path / "a")
    tuned = tmp_path / "tuned.safetensors"
    save_checkpoint(tuned, model, CheckpointInfo(CONFIG, 0.5, info.label_space, class_bias=[0.5] + [0.0] * (CONFIG.num_classes - 1)))
    result = CliRunner().invoke(app, ["average", str(first), str(tuned), "--out", str(tmp_path / "avg.safetensors")])
    assert result.exit_code == 0, result.output
    assert "not carried over; tune the average" in " ".join(result.output.split())
    assert read_info(tmp_path / "avg.safetensors").class_bias == []
    save_checkpoint(tmp_path / "untuned.safetensors", model, CheckpointInfo(CONFIG, 0.5, info.label_space))
    plain = CliRunner().invoke(app, ["average", str(first), str(tmp_path / "untuned.safetensors"), "--out", str(tmp_path / "b.safetensors")])
    assert plain.exit_code == 0 and "not carried over" not in plain.output


def test_a_checkpoint_can_attend_only_near_the_patches_it_rebuilds(tmp_path):
    """`families.set_context` copies a checkpoint (weights unchanged) whose encoder and decoder
    then see only the patches near those being rebuilt (`context_patches`): what lies far away
    no longer changes the repair, as it does with the whole tile (0, the default)."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app
    from lmae_repair.families import set_context
    from lmae_repair.repair import predict, prepare

    path, model, info = saved(tmp_path)
    info.training["crop"] = 64
    save_checkpoint(path, model, info)
    near_path = set_context(path, tmp_path / "near.safetensors", 1, half=False)
    near_model, near_info = load_checkpoint(near_path)
    assert near_info.context_patches == 1 and info.context_patches == 0
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), near_model.state_dict().values()))
    assert "1 patches of the patches it rebuilds" in CliRunner().invoke(app, ["inspect", str(near_path)]).output

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    label = np.ones((64, 64), np.uint8)
    label[:8, :8] = 255  # one void patch, top left: the only one rebuilt
    far_image, far_label = image.copy(), label.copy()
    far_image[48:, 48:] = 255 - far_image[48:, 48:]
    far_label[48:, 48:] = 2

    def rebuilt(model, info, image, label):
        return predict(model, info, [prepare(image, label, info)], "cpu", precision="fp32")[0][:, :8, :8]

    assert torch.allclose(rebuilt(near_model, near_info, image, label), rebuilt(near_model, near_info, far_image, far_label), atol=1e-6)
    assert not torch.allclose(rebuilt(model, info, image, label), rebuilt(model, info, far_image, far_label), atol=1e-4)
    with pytest.raises(LmaeError):
        set_context(path, tmp_path / "bad.safetensors", -1)


def test_a_family_folder_mixing_class_names_is_refused_naming_both_label_spaces(tmp_path):
    from dataclasses import replace

    from typer.testing import CliRunner

    from lmae_repair.cli import app

    path, model, info = saved(tmp_path / "made")
    family = tmp_path / "mine"
    save_checkpoint(family / "general.safetensors", model, info)
    renamed = replace(info, mask_ratio=0.25, label_space=replace(info.label_space, names=["background", "rust", "corrosion"]))
    save_checkpoint(family / "objects.safetensors", model, renamed)  # same values, another meaning: was taken as one family
    for command in (["inspect", str(family)], ["push", str(family), "me/mine", "--dry-run"]):
        result = CliRunner().invoke(app, command)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in text, text
        assert "objects.safetensors: its label space (3 classes (background, rust, corrosion)" in text
        assert "(3 classes (background, crack, spalling), background id 0, void id 255)" in text


def test_average_refuses_a_checkpoint_whose_classes_have_other_names(tmp_path):
    from dataclasses import replace

    from typer.testing import CliRunner

    from lmae_repair.cli import app

    first, model, info = saved(tmp_path / "a")
    other = tmp_path / "rust.safetensors"  # trained on data whose classes.txt says rust, corrosion: was averaged in
    save_checkpoint(other, model, replace(info, label_space=replace(info.label_space, names=["background", "rust", "corrosion"])))
    result = CliRunner().invoke(app, ["average", str(first), str(other), "--out", str(tmp_path / "mean.safetensors")])
    assert result.exit_code == 2 and "rust.safetensors: label space differs from" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "mean.safetensors").exists()


def test_a_family_folder_zipped_on_a_mac_is_read_without_its_appledouble_files(tmp_path):
    """A zip made on a Mac gives `._general.safetensors` (binary metadata, not a checkpoint) beside
    each file or under `__MACOSX/`: `--models FOLDER` stopped with "not a readable safetensors checkpoint"."""
    from lmae_repair.checkpoints import checkpoints_in_folder
    from lmae_repair.families import find_checkpoints

    path, model, info = saved(tmp_path / "made")
    family = tmp_path / "mine"
    save_checkpoint(family / "general.safetensors", model, info)
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x00"
    (family / "._general.safetensors").write_bytes(junk)
    (family / "__MACOSX").mkdir()
    (family / "__MACOSX" / "._general.safetensors").write_bytes(junk)
    (family / ".cache").mkdir()
    shutil.copy(family / "general.safetensors", family / ".cache" / "general.safetensors")
    assert checkpoints_in_folder(family) == [family / "general.safetensors"]
    assert [path for path, _ in find_checkpoints([family])] == [family / "general.safetensors"]


def test_set_routing_refuses_a_mask_ratio_given_twice(tmp_path, family):
    """[0.5, 0.5, 0.75, 0.75] was written as it was: the file then came twice into the same
    routing slot and `inspect` listed 'mask ratio 0.50, mask ratio 0.50'. 0.5 and 0.501 are one
    slot as far as anything shows (two decimals, as a run folder's name): refused too."""
    from lmae_repair.families import set_routing

    source = family / "mask-0.25" / "best.safetensors"
    for ratios, said in (([0.5, 0.5, 0.75], "0.5 is given twice"), ([0.25, 0.5, 0.501], "0.5 and 0.501 are both mask ratio 0.50")):
        with pytest.raises(LmaeError, match=said):
            set_routing(source, tmp_path / "general.safetensors", ratios)
        assert not (tmp_path / "general.safetensors").exists()


def test_average_out_without_the_suffix_writes_a_checkpoint_a_folder_scan_finds(tmp_path):
    """`average ... --out family/mask-0.50` wrote a file named `mask-0.50`, which `--models family`
    and `inspect family` then refused as "no .safetensors checkpoint found"."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app

    first, model, info = saved(tmp_path / "a")
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "b.safetensors", LabelMAE(CONFIG).eval(), info)
    result = CliRunner().invoke(app, ["average", str(first), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "family" / "mask-0.50")])
    assert result.exit_code == 0, result.output
    assert [path.name for path in (tmp_path / "family").iterdir()] == ["mask-0.50.safetensors"]
    assert ".safetensors added" in " ".join(result.output.split())
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "family")])
    assert shown.exit_code == 0 and "mask-0.50.safetensors" in shown.output, shown.output


@pytest.mark.parametrize("edit, problem", [
    (lambda meta: [meta], "a JSON list, not an object"),
    (lambda meta: {**meta, "training": None}, "training is null, not an object"),
    (lambda meta: {**meta, "mask_ratio": 7}, "mask ratios must be in (0, 1], got 7.0"),
    (lambda meta: {key: value for key, value in meta.items() if key != "label_space"}, "it has no 'label_space'"),
])
def test_metadata_of_the_wrong_shape_is_refused_naming_the_file(tmp_path, edit, problem):
    """A hand-edited or foreign lmae metadata: a list, or a null training record, ended in
    "unexpected AttributeError: 'list' object has no attribute 'get'", without the file's name; a
    mask ratio of 7 was taken and routed to."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, _, _ = saved(tmp_path)
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata={**metadata, "lmae": json.dumps(edit(json.loads(metadata["lmae"])))})
    with pytest.raises(LmaeError) as error:
        read_info(edited)
    assert str(error.value) == f"{edited}: invalid metadata: {problem}"


def test_inspect_names_the_validation_figures_and_the_data_they_were_measured_on(tmp_path):
    """inspect printed a checkpoint's validation as bare `val_pa_miou`, `epoch`, `tile` rows beside
    the training rows, and never the validation data (kept in its training record); an average
    said nothing of why it has no figures."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app, training_recipe

    _, model, info = saved(tmp_path)
    training = {"data": "/d/train", "pairs": 12, "val_data": "/d/val", "val_split": "val", "val_pairs": 5, "lr": 0.0005,
                "batch_size": 16, "seed": 3, "mask_mix": [1.0, 2.0, 2.0, 2.0], "class_weighting": "paper", "weights_from": "gaps"}
    save_checkpoint(tmp_path / "run.safetensors", model, CheckpointInfo(CONFIG, 0.5, info.label_space, training, {"val_pa_miou": 0.81, "epoch": 4}))
    shown = " ".join(CliRunner().invoke(app, ["inspect", str(tmp_path / "run.safetensors")]).output.split())
    assert "│ validation pa_miou │ 0.81 │" in shown and "│ validation epoch │ 4 │" in shown, shown
    assert "│ validation data │ /d/val, split val, 5 pairs │" in shown
    assert "│ training recipe │" in shown
    assert training_recipe(training) == "lr 0.0005, batch 16, seed 3, mask mix 1:2:2:2, class weighting paper (from gaps)"
    save_checkpoint(tmp_path / "avg.safetensors", model, CheckpointInfo(CONFIG, 0.5, info.label_space, {"averaged_from": ["a", "b"]}))
    averaged = " ".join(CliRunner().invoke(app, ["inspect", str(tmp_path / "avg.safetensors")]).output.split())
    assert "│ validation │ none (an average of 2 checkpoints: measu" in averaged, averaged


def test_inspect_shows_every_file_of_a_folder_that_is_no_family_before_its_error(tmp_path):
    """inspect of a folder mixing patch sizes, or holding one truncated file, gave only the error:
    the folder one inspects to see what is wrong in it could not be looked at."""
    from dataclasses import replace

    from typer.testing import CliRunner

    from lmae_repair.cli import app

    _, model, info = saved(tmp_path / "made")
    family = tmp_path / "mixed"
    save_checkpoint(family / "mask-0.50.safetensors", model, info)
    other = replace(CONFIG, patch_size=16)
    save_checkpoint(family / "mask-0.75.safetensors", LabelMAE(other), replace(info, model=other, mask_ratio=0.75))
    result = CliRunner().invoke(app, ["inspect", str(family)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and text.count("│ mask ratio ") == 2, text
    assert text.endswith("give one family at a time") and "its patch size (16) differs" in text
    (family / "mask-0.75.safetensors").write_bytes((family / "mask-0.75.safetensors").read_bytes()[:1000])
    truncated = CliRunner().invoke(app, ["inspect", str(family)])
    text = " ".join(truncated.output.split())
    assert truncated.exit_code == 2 and text.count("│ mask ratio ") == 1, text
    assert "failed: " in text and "mask-0.75.safetensors: not a readable safetensors checkpoint" in text
    assert text.endswith(f"error: {family}: 1 of 2 checkpoints unreadable")


def test_a_pytorch_file_an_empty_one_and_a_truncated_one_are_told_apart(tmp_path):
    """A .pt renamed .safetensors (or a run's state.pt given as --models) and an empty file were
    refused as "header too large" and "header too small", a truncated one as "incomplete
    metadata, file not fully covered": safetensors' words, which do not say what to do."""
    path, model, _ = saved(tmp_path)
    renamed = tmp_path / "renamed.safetensors"
    torch.save(model.state_dict(), renamed)
    state = tmp_path / "state.pt"
    torch.save({"model": model.state_dict()}, state, _use_new_zipfile_serialization=False)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    expected = {
        renamed: "a PyTorch file (torch.save), not a safetensors checkpoint of lmae-repair",
        state: "a PyTorch file (torch.save), not a safetensors checkpoint of lmae-repair; a training run's state.pt: give the best.safetensors beside it",
        empty: "an empty file (0 bytes), not a checkpoint",
        cut: f"truncated: shorter than its header says ({cut.stat().st_size:,} bytes); copy or download it again",
    }
    for file, problem in expected.items():
        with pytest.raises(LmaeError) as error:
            read_info(file)
        assert str(error.value) == f"{file}: {problem}"


def test_a_models_folder_unzipped_from_a_mac_lists_only_its_families(tmp_path, monkeypatch):
    """LMAE_REPAIR_MODELS set to a models folder unzipped from a Mac: its `__MACOSX/` (AppleDouble
    `._x.safetensors` only) was taken for a bundled family, so every run without --models stopped
    with "__MACOSX: no .safetensors checkpoint found"; a hidden folder was listed the same way."""
    from lmae_repair.families import bundled_families, find_checkpoints

    _, model, info = saved(tmp_path / "made")
    root = tmp_path / "models"
    save_checkpoint(root / "mine" / "general.safetensors", model, info)
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x00"
    (root / "__MACOSX" / "mine").mkdir(parents=True)
    (root / "__MACOSX" / "mine" / "._general.safetensors").write_bytes(junk)
    (root / ".old").mkdir()
    shutil.copy(root / "mine" / "general.safetensors", root / ".old" / "general.safetensors")
    monkeypatch.setenv("LMAE_REPAIR_MODELS", str(root))
    assert list(bundled_families()) == ["mine"]
    assert [path for path, _ in find_checkpoints(["mine"])] == [root / "mine" / "general.safetensors"]


@pytest.mark.parametrize("written_by, hint", [
    ("0.10.0", True),  # newer: 0.10 > 0.1 as versions, not as text ("0.10.0" < "0.2.0" as strings)
    ("1.0.0rc1", True),
    ("0.1.0", False),  # this very version: a damaged file, not a newer one
    ("0.0.9", False),
    ("unknown", False),
])
def test_metadata_a_newer_lmae_repair_wrote_says_to_upgrade(tmp_path, written_by, hint):
    """A field added by a newer lmae-repair gave "invalid metadata: model config has unknown
    fields: future_field", with no word that the file is newer than the program reading it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lmae_repair import __version__

    path, _, _ = saved(tmp_path)
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    lmae = json.loads(metadata["lmae"])
    lmae["model"]["future_field"] = 1
    lmae["package_version"] = written_by
    edited = tmp_path / "newer.safetensors"
    save_file(tensors, str(edited), metadata={**metadata, "lmae": json.dumps(lmae)})
    with pytest.raises(LmaeError) as error:
        read_info(edited)
    plain = f"{edited}: invalid metadata: model config has unknown fields: future_field"
    newer = f" (written by lmae-repair {written_by}, newer than this {__version__}: upgrade lmae-repair to read it)"
    assert str(error.value) == plain + (newer if hint else "")


def test_average_refusal_gives_the_values_that_differ(tmp_path):
    """`average A B` said "architecture, mask ratio differ from A" without the values, leaving the
    user to inspect both files to find out which ratio or which layer count each had."""
    from dataclasses import replace

    from lmae_repair.checkpoints import average_checkpoints

    first, _, info = saved(tmp_path / "a")
    deeper = replace(CONFIG, enc_depth=2)
    other = tmp_path / "b.safetensors"
    save_checkpoint(other, LabelMAE(deeper), replace(info, model=deeper, mask_ratio=0.25))
    with pytest.raises(LmaeError) as error:
        average_checkpoints([first, other])
    assert str(error.value) == (f"{other}: architecture, mask ratio differ from {first} (enc_depth 2 vs 1; mask ratio 0.25 vs 0.5); "
                                "only checkpoints of one model can be averaged")
    renamed = tmp_path / "c.safetensors"
    save_checkpoint(renamed, LabelMAE(CONFIG), replace(info, label_space=replace(info.label_space, names=["background", "rust", "corrosion"])))
    with pytest.raises(LmaeError, match=r"label space differs from .* \(3 classes \(background, rust, corrosion\), background id 0, "
                                        r"void id 255 vs 3 classes \(background, crack, spalling\)"):
        average_checkpoints([first, renamed])


def test_inspect_json_writes_a_pa_miou_of_nothing_as_null_not_bare_nan(tmp_path):
    """A run whose validation hid no annotated pixel stores a PA-mIoU of NaN; `inspect --json`
    printed it as bare NaN, which is not JSON (strict readers refuse the whole document), as
    history.jsonl did before it wrote null. One file and a folder's list alike."""
    from typer.testing import CliRunner

    from lmae_repair.cli import app

    model = LabelMAE(CONFIG).eval()
    space = LabelSpace(3, ["background", "crack", "spalling"], background_id=0, void_id=255)
    path = tmp_path / "run" / "best.safetensors"
    path.parent.mkdir()
    save_checkpoint(path, model, CheckpointInfo(CONFIG, 0.5, space, {"data": "x"}, {"val_pa_miou": float("nan"), "val_miou": 0.5}))

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    for target in (path, path.parent):
        result = CliRunner().invoke(app, ["inspect", str(target), "--json"])
        assert result.exit_code == 0, result.output
        document = json.loads(result.output, parse_constant=strict)
        validation = (document if isinstance(document, dict) else document[0])["validation"]
        assert validation == {"val_pa_miou": None, "val_miou": 0.5}
    assert np.isnan(read_info(path).validation["val_pa_miou"])  # the checkpoint itself is unchanged


def test_set_routing_takes_one_ratio_as_a_number_and_refuses_ratios_that_are_not_numbers(tmp_path, family):
    """From a notebook `set_routing(src, dest, 0.5)` (one slot) had raised "TypeError: 'float'
    object is not iterable", and ['0.5'] (read from a text field) "'<' not supported between
    instances of 'float' and 'str'". One number is one slot; anything not a number is refused
    saying so, before anything is written."""
    from lmae_repair.families import set_routing

    source = family / "mask-0.25" / "best.safetensors"
    written = set_routing(source, tmp_path / "half.safetensors", np.float32(0.5))
    assert read_info(written).slot_ratios == [0.5]
    with pytest.raises(LmaeError, match=r"mask ratios must be numbers in \(0, 1\], got \['0.5'\]"):
        set_routing(source, tmp_path / "text.safetensors", ["0.5"])
    assert not (tmp_path / "text.safetensors").exists()


def test_set_routing_and_set_context_write_a_file_a_family_folder_finds_and_refuse_a_wrong_type_in_one_line(tmp_path):
    """`set_routing(src, "mine/general")` wrote `general` without .safetensors, which `--models
    mine` then did not find (`average --out` adds the suffix); `set_context(..., "3")` raised
    "'<' not supported between instances of 'str' and 'int'"."""
    from lmae_repair.families import find_checkpoints, set_context, set_routing

    path, _, _ = saved(tmp_path)
    routed = set_routing(path, tmp_path / "mine" / "general", [0.25, 0.5])
    near = set_context(path, tmp_path / "near" / "mask-0.50", 1)
    assert routed == tmp_path / "mine" / "general.safetensors" and near == tmp_path / "near" / "mask-0.50.safetensors"
    assert {found for found, _ in find_checkpoints([tmp_path / "mine"])} == {routed}
    assert {found for found, _ in find_checkpoints([tmp_path / "near"])} == {near}
    for patches in ("3", 1.5, True):
        with pytest.raises(LmaeError, match="context patches must be a whole number"):
            set_context(path, tmp_path / "bad.safetensors", patches)
