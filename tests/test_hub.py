"""Checkpoint families on the Hugging Face Hub, tested with huggingface_hub's own offline machinery
(this machine cannot reach the Hub): a populated cache read with HF_HUB_OFFLINE=1, and the upload
built without being sent."""

import json
import os
import shutil
import subprocess
import sys

import torch
from typer.testing import CliRunner

from conftest import NUM_CLASSES, make_paired
from lmae_repair.checkpoints import CheckpointInfo, read_info, save_checkpoint
from lmae_repair.cli import app
from lmae_repair.families import export_family
from lmae_repair.hub import build_upload, is_hub_spec, parse_hub_spec
from lmae_repair.labelspace import LabelSpace
from lmae_repair.model import LabelMAE, ModelConfig

runner = CliRunner()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_cache(cache, repo_id, family):
    """The huggingface_hub cache layout after a download of `repo_id` at main: the snapshot's
    files are links into blobs/, named by their contents' hash."""
    import hashlib

    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    export_family(family, snapshot)
    (snapshot / "README.md").write_text("card")
    (storage / "blobs").mkdir()
    for file in snapshot.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(storage / "blobs" / blob)
        file.symlink_to(f"../../blobs/{blob}")


def run_offline(args, cache):
    """The CLI with the Hub offline, run from the cache's parent folder (the test's own), so that
    a relative path such as runs/mine never finds the files of the folder pytest runs in."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf-home")}
    return subprocess.run([sys.executable, "-m", "lmae_repair", *args], capture_output=True, text=True, env=env, cwd=cache.parent)


def test_hub_specs_are_told_from_local_paths(tmp_path):
    assert parse_hub_spec("hf://owner/name") == ("owner/name", None)
    assert parse_hub_spec("owner/name@v1.0") == ("owner/name", "v1.0")
    assert is_hub_spec("hf://owner/name") and is_hub_spec("owner/name@main")
    (tmp_path / "runs" / "cv").mkdir(parents=True)
    assert not is_hub_spec(str(tmp_path / "runs" / "cv")) and not is_hub_spec("camvid")


def test_a_cached_family_works_offline_by_hub_name_and_revision(tmp_path, family):
    cache = tmp_path / "cache"
    populate_cache(cache, "someone/shapes", family)
    root = make_paired(tmp_path / "ds", count=3)
    for spec in ("hf://someone/shapes", "someone/shapes@main"):
        out = tmp_path / f"out-{spec[-4:]}"
        result = run_offline(["complete", str(root), "--models", spec, "--out", str(out), "--device", "cpu", "--min-confidence", "0"], cache)
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "lmae-report.json").read_text())
        assert {c["mask_ratio"] for c in report["checkpoints"]} == {0.25, 0.5}
        assert all(str(cache) in c["path"] for c in report["checkpoints"])
    missing = run_offline(["complete", str(root), "--models", "hf://someone/other", "--out", str(tmp_path / "o")], cache)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "hf://someone/other: not in the local Hugging Face cache" in missing.stderr
    typo = run_offline(["complete", str(root), "--models", "runs/mine", "--out", str(tmp_path / "o")], cache)  # no such folder
    assert typo.returncode == 2 and "runs/mine: no such local file, folder or bundled family" in typo.stderr


def test_push_builds_the_local_family_layout_and_a_model_card_without_sending(tmp_path, family):
    staging = tmp_path / "staging"
    operations = build_upload(family, "someone/shapes", staging)
    assert sorted(op.path_in_repo for op in operations) == ["README.md", "mask-0.25.safetensors", "mask-0.50.safetensors"]
    card = (staging / "README.md").read_text()
    assert "hf://someone/shapes" in card and "4 classes" in card and "| 0.25 |" in card and "| 0.50 |" in card
    # the same resolver reads the upload as a local family
    root = make_paired(tmp_path / "ds", count=2)
    result = runner.invoke(app, ["complete", str(root), "--models", str(staging), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output

    shutil.rmtree(staging)
    shown = runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run", "--staging", str(staging)])
    assert shown.exit_code == 0, shown.output
    assert "would upload to someone/shapes" in shown.output and "nothing sent" in shown.output
    assert (staging / "mask-0.50.safetensors").is_file()
    bad = runner.invoke(app, ["push", str(family), "not a repo", "--dry-run"])
    assert bad.exit_code == 2 and "hf://owner/name" in bad.output

    (family / "README.md").write_text("# shapes\n\nMeasured with lmae-repair evaluate: PA-mIoU 0.9.\n")  # its own model card
    shutil.rmtree(staging)
    build_upload(family, "someone/shapes", staging)
    card = (staging / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: lmae-repair") and "Measured with lmae-repair evaluate: PA-mIoU 0.9." in card


def test_a_push_the_hub_does_not_answer_fails_in_one_line(tmp_path, family, monkeypatch):
    """The HTTP client's own errors (no network, a name that does not resolve) are not
    huggingface_hub's: they still end in one line that says what to check."""
    import huggingface_hub

    class ConnectError(Exception):  # what the client raises when DNS fails, by its class name only
        pass

    def unreachable(*args, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    result = runner.invoke(app, ["push", str(family), "someone/shapes", "--staging", str(tmp_path / "staging")])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "someone/shapes: upload failed (ConnectError" in errors[0] and "HF_TOKEN" in errors[0]


def test_the_card_lists_every_mask_ratio_a_file_serves(tmp_path, family):
    from lmae_repair.families import set_routing

    (tmp_path / "fam").mkdir()
    set_routing(family / "mask-0.25" / "best.safetensors", tmp_path / "fam" / "general.safetensors", [0.25, 0.5, 0.75])
    build_upload(tmp_path / "fam", "someone/one", tmp_path / "staging")
    card = (tmp_path / "staging" / "README.md").read_text()
    assert "| 0.25, 0.50, 0.75 |" in card, card


def test_push_from_another_folder_refuses_figures_evaluated_with_relative_models(tmp_path, family, monkeypatch):
    """evaluate --models given relative, push run from elsewhere: the figures are still known to
    be another family's (the JSON names the checkpoints by paths that open from any folder)."""
    other = tmp_path / "other"  # the same kind of family with other weights
    config = ModelConfig(num_classes=NUM_CLASSES, patch_size=16, enc_depth=1, enc_dim=32, enc_heads=4, dec_depth=1, dec_dim=16, dec_heads=2)
    torch.manual_seed(1)
    save_checkpoint(other / "best.safetensors", LabelMAE(config), CheckpointInfo(config, 0.5, LabelSpace(NUM_CLASSES, background_id=0, void_id=255), {"crop": 32}))
    make_paired(tmp_path / "ds", count=2, size=64)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "ds", "--models", "other", "--device", "cpu", "--json", "figures.json"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path / "ds")
    pushed = runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run", "--evaluate-json", str(tmp_path / "figures.json")])
    assert pushed.exit_code == 2 and "which is not one of" in pushed.output, pushed.output


def test_push_refuses_figures_of_another_family(tmp_path, family, trained_family):
    def evaluation(checkpoint):
        figures = {"pa_miou": 0.5, "restored": 0.5, "precision": 0.5, "intact_changed": 0.0}
        result = {"strategy": "random", "mask_ratio": 0.5, "pairs": 2, "data": "ds", "seed": 0,
                  "models": [str(checkpoint)], "methods": {"lmae-repair": figures}}
        path = tmp_path / f"{checkpoint.parent.parent.name}.json"
        path.write_text(json.dumps(result))
        return str(path)

    args = ["push", str(family), "someone/shapes", "--dry-run", "--evaluate-json"]
    other = runner.invoke(app, args + [evaluation(trained_family / "mask-0.50" / "best.safetensors")])
    assert other.exit_code == 2 and "which is not one of" in other.output, other.output
    own = runner.invoke(app, args + [evaluation(family / "mask-0.50" / "best.safetensors")])
    assert own.exit_code == 0, own.output


def test_the_card_and_inspect_say_how_each_file_of_a_family_was_made(tmp_path, family):
    from dataclasses import replace

    from lmae_repair.checkpoints import load_checkpoint, save_checkpoint

    model, info = load_checkpoint(family / "mask-0.25" / "best.safetensors")
    general = replace(info, training={"command": "lmae-repair train mine --init models/concrete/mask-0.50.safetensors", "epochs": 2,
                                      "init": "/abs/models/concrete/mask-0.50.safetensors",
                                      "averaged_from": ["runs/ft/mask-0.25/epoch-001.safetensors", "runs/ft/mask-0.25/epoch-002.safetensors"]},
                      class_bias=[-1.0] + [0.0] * (info.label_space.num_classes - 1))
    objects = replace(info, mask_ratio=0.5, gap_kind="objects", training={"command": "lmae-repair train mine --gaps objects", "epochs": 1})
    save_checkpoint(tmp_path / "fam" / "general.safetensors", model, general)
    save_checkpoint(tmp_path / "fam" / "objects.safetensors", model, objects)
    build_upload(tmp_path / "fam", "someone/mine", tmp_path / "staging")
    card = (tmp_path / "staging" / "README.md").read_text()
    # the card gave the first file's training for the whole family, without its init, averaging or offsets
    assert "`lmae-repair train mine --gaps objects`" in card, card
    assert "- init: `/abs/models/concrete/mask-0.50.safetensors`" in card
    assert "averaged: the weights of 2 checkpoints (epoch-001.safetensors, epoch-002.safetensors)" in card
    assert f"class offsets (`lmae-repair tune`): {info.label_space.names[0]} -1.0" in card
    shown = " ".join(runner.invoke(app, ["inspect", str(tmp_path / "fam" / "general.safetensors")]).output.split())
    assert "training init │ /abs/models/concrete/mask-0.50.safetensors" in shown, shown


def test_push_builds_only_into_a_new_empty_or_earlier_staging_folder(tmp_path, family):
    """Everything under --staging is uploaded: a folder of the user's had its README.md replaced by
    the model card and its other files listed for the upload; an earlier push's checkpoint of
    another mask ratio went up again with the next family."""
    staging = tmp_path / "mine"
    staging.mkdir()
    (staging / "README.md").write_text("my notes\n")
    (staging / "notes.txt").write_text("keep\n")
    result = runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run", "--staging", str(staging)])
    assert result.exit_code == 2 and "--staging holds other files" in result.output, result.output
    assert (staging / "README.md").read_text() == "my notes\n" and sorted(p.name for p in staging.iterdir()) == ["README.md", "notes.txt"]
    result = runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run", "--staging", str(staging / "notes.txt")])
    assert result.exit_code == 2 and "--staging names a file" in result.output, result.output

    earlier = tmp_path / "earlier"
    assert runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run", "--staging", str(earlier)]).exit_code == 0
    shutil.rmtree(family / "mask-0.25")  # the next family has one ratio only
    result = runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run", "--staging", str(earlier)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in earlier.iterdir()) == ["README.md", "mask-0.50.safetensors"]
    assert "mask-0.25" not in result.output


def test_tune_of_a_family_from_the_hub_leaves_the_cache_as_downloaded(tmp_path, trained_family):
    """`tune --models hf://...` without --out wrote the tuned files into the huggingface_hub
    cache's snapshot, so that hf://owner/name silently stood for other files than the
    repository's commit on this machine: the tuned copies go to ./<name>-tuned, as a bundled
    family's do."""
    cache = tmp_path / "cache"
    populate_cache(cache, "someone/shapes", trained_family)
    snapshot = cache / "models--someone--shapes" / "snapshots" / COMMIT
    before = {path.name: path.read_bytes() for path in snapshot.iterdir()}
    data = make_paired(tmp_path / "val", count=2, size=64, seed=5)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "lmae_repair", "tune", str(data), "--models", "hf://someone/shapes", "--device", "cpu"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {path.name: path.read_bytes() for path in snapshot.iterdir()} == before
    assert all(path.is_symlink() for path in snapshot.iterdir())
    tuned = tmp_path / "shapes-tuned" / "mask-0.50.safetensors"  # named as in the repository, not by the blob's hash
    assert "shapes-tuned" in result.stdout and tuned.is_file() and read_info(tuned).training.get("class_bias_tuned_on")


def test_push_takes_the_repository_as_models_names_it(tmp_path, family):
    """`push RUN hf://owner/name` (the form --models takes) wrote a card telling users to run
    `--models hf://hf://owner/name`, and would have asked the Hub for a repository of that name;
    a revision, which push does not upload to, is refused."""
    staging = tmp_path / "staging"
    shown = runner.invoke(app, ["push", str(family), "hf://someone/shapes", "--dry-run", "--staging", str(staging)])
    assert shown.exit_code == 0, shown.output
    card = (staging / "README.md").read_text()
    assert "would upload to someone/shapes" in shown.output and "hf://hf://" not in card and "--models hf://someone/shapes " in card
    revision = runner.invoke(app, ["push", str(family), "someone/shapes@v2", "--dry-run"])
    assert revision.exit_code == 2 and "give someone/shapes without @v2" in revision.output, revision.output


def test_the_hub_unreachable_and_hf_hub_offline_are_told_apart(tmp_path, family):
    """With the network down (HF_HUB_OFFLINE not set) the error said "... or unset
    HF_HUB_OFFLINE"; and a repository cached at another revision was called absent from the cache."""
    cache = tmp_path / "cache"
    populate_cache(cache, "someone/shapes", family)
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there

    def error(spec, **extra):
        result = subprocess.run([sys.executable, "-m", "lmae_repair", "inspect", spec], capture_output=True, text=True, env={**env, **extra})
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr

    down = error("hf://someone/other")
    assert "hf://someone/other: not in the local Hugging Face cache, and the Hub cannot be reached (" in down
    assert "HF_HUB_OFFLINE" not in down
    assert "HF_HUB_OFFLINE is set" in error("hf://someone/other", HF_HUB_OFFLINE="1")
    other = error("hf://someone/shapes@v2", HF_HUB_OFFLINE="1")
    assert "holds someone/shapes at main but not at v2" in other and "(hf://someone/shapes@main)" in other


def test_a_push_under_hf_hub_offline_is_refused_before_anything_is_built(tmp_path, family, monkeypatch):
    """Under HF_HUB_OFFLINE=1 push built the files, listed them as "uploading", then failed with
    huggingface_hub's offline error and the advice to check HF_TOKEN."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    staging = tmp_path / "staging"
    result = runner.invoke(app, ["push", str(family), "someone/shapes", "--staging", str(staging)])
    assert result.exit_code == 2 and "uploading" not in result.output, result.output
    assert " ".join(result.output.split()) == ("error: someone/shapes: push needs the Hub, and HF_HUB_OFFLINE is set: unset it "
                                               "to upload (--dry-run builds the files without sending them)")
    assert not staging.exists()
    assert runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run"]).exit_code == 0


def test_a_cached_file_whose_blob_is_gone_names_the_damaged_cache(tmp_path, family):
    """huggingface_hub keeps a snapshot's files as links into blobs/: with a blob removed (a
    pruned cache) the error was "no such checkpoint file", naming a file that is listed there."""
    cache = tmp_path / "cache"
    populate_cache(cache, "someone/shapes", family)
    file = cache / "models--someone--shapes" / "snapshots" / COMMIT / "mask-0.25.safetensors"
    file.unlink()
    file.symlink_to("../../blobs/0123abcd")
    result = run_offline(["inspect", "hf://someone/shapes"], cache)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (f"{file}: a link to ../../blobs/0123abcd, which does not exist (the Hugging Face cache's copy of someone/shapes "
            "is damaged: delete its models--someone--shapes folder there and download it again)") in " ".join(result.stderr.split())


def test_a_dry_run_without_staging_says_its_files_are_gone_and_how_to_keep_them(family):
    """README: --dry-run is there to look at the upload; without --staging the temporary folder
    is removed, and the run said only 'nothing sent', so the user looked for files in vain."""
    shown = runner.invoke(app, ["push", str(family), "someone/shapes", "--dry-run"])
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.split())
    assert "nothing sent" in said and "now removed" in said and "--staging DIR keeps them" in said


def test_average_of_a_bundled_or_hub_family_says_it_takes_local_files_and_where_they_are(tmp_path, family):
    """`average hf://owner/cv` said "hf:/owner/cv: no such file or folder" (Path merged the
    slashes) and `average camvid` the same, as if mistyped: average reads local files only."""
    cache = tmp_path / "cache"
    populate_cache(cache, "someone/shapes", family)
    out = str(tmp_path / "avg.safetensors")
    cached = " ".join(run_offline(["average", "hf://someone/shapes", "--out", out], cache).stderr.split())
    assert "hf://someone/shapes: average takes local checkpoint files or run folders, not a Hub family" in cached, cached
    assert str(cache / "models--someone--shapes" / "snapshots" / COMMIT) in cached
    absent = " ".join(run_offline(["average", "hf://someone/other", "--out", out], cache).stderr.split())
    assert "not a Hub family; `lmae-repair inspect hf://someone/other` downloads it" in absent, absent
    bundled = run_offline(["average", "camvid", "--out", out], cache)
    assert bundled.returncode == 2 and "camvid: average takes local checkpoint files or run folders, not a bundled family" in bundled.stderr
    assert "models/camvid" in bundled.stderr and not os.path.exists(out)
    typo = run_offline(["average", str(tmp_path / "nowhere"), "--out", out], cache)
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in typo.stderr
