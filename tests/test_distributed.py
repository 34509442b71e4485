"""Multi-process training (torchrun + DistributedDataParallel), run for real on CPU with gloo."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_paired
from lmae_repair.checkpoints import load_checkpoint
from lmae_repair.cli import app
from lmae_repair.data import discover
from lmae_repair.distributed import Ranks, ranks_from_environment
from lmae_repair.errors import LmaeError
from lmae_repair.labelspace import LabelSpace
from lmae_repair.train import TrainOptions, make_loader, validate

runner = CliRunner()


def torchrun_train(data, out, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lmae_repair", "train", str(data), "--split", "train", "--val-split", "val",
               "--out", str(out), "--batch-size", "2", "--crop", "64", "--workers", "0", "--device", "cpu", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_torchrun_with_two_cpu_processes_trains_a_normal_checkpoint(tmp_path):
    data = tmp_path / "ds"
    make_paired(data / "train", count=8, size=64, seed=1)
    make_paired(data / "val", count=3, size=64, seed=2)
    (data / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    out = tmp_path / "run"

    first = torchrun_train(data, out, "--epochs", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    # Only rank 0 prints: each epoch line once.
    assert first.stdout.count("epoch 1 ") == 1 and first.stdout.count("epoch 2 ") == 1, first.stdout
    assert "2 processes x 2 images per step" in first.stdout

    folder = out / "mask-0.50"
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    # Sharded: the two processes together see the 8 training pairs once per epoch, not twice.
    assert [record["images"] for record in history] == [8, 8]

    model, info = load_checkpoint(folder / "last.safetensors")
    assert info.training["processes"] == 2 and info.training["batch_size"] == 4
    assert info.training["command"].startswith("torchrun --nproc_per_node 2 -m lmae_repair train")
    # Validation figures were summed across ranks: one process scoring all pairs agrees.
    alone = validate(model, discover(data, "val").pairs, info.label_space, 0.5, 64, torch.device("cpu"), 0)
    assert alone["val_pa_miou"] == pytest.approx(history[-1]["val_pa_miou"], abs=2e-3)
    assert alone["val_miou"] == pytest.approx(history[-1]["val_miou"], abs=2e-3)

    resumed = torchrun_train(data, out, "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [json.loads(line)["epoch"] for line in (folder / "history.jsonl").read_text().splitlines()] == [1, 2, 3]

    # A normal checkpoint: complete uses it as it would a single-process one.
    repaired = runner.invoke(app, ["complete", str(data / "val"), "--out", str(tmp_path / "fixed"),
                                   "--models", str(out), "--workers", "0"])
    assert repaired.exit_code == 0, repaired.output
    assert len(list((tmp_path / "fixed" / "labels").glob("*.png"))) == 3


def test_each_process_reads_its_own_shard_of_the_training_pairs(tmp_path):
    pairs = discover(make_paired(tmp_path / "ds", count=10, size=64)).pairs
    space = LabelSpace(4)
    options = TrainOptions(out=tmp_path / "run", mask_ratios=[0.5], crop=64, batch_size=2, workers=0)
    shards = []
    for rank in (0, 1):
        loader = make_loader(pairs, space, options, torch.device("cpu"), Ranks(rank, 2, rank))
        loader.sampler.set_epoch(1)
        shards.append([index for index, _ in loader.sampler])
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}])
def test_a_broken_torchrun_environment_is_a_clear_error(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(LmaeError, match="WORLD_SIZE"):
        ranks_from_environment()


def test_without_torchrun_training_is_a_single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ranks_from_environment() == Ranks(0, 1, 0)


def torchrun_place(monkeypatch, rank):
    """The environment torchrun gives process `rank` of two on one machine."""
    for name, value in {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)


def test_an_error_every_process_meets_is_printed_once_not_once_per_process(monkeypatch, tmp_path):
    torchrun_place(monkeypatch, 1)
    other = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert other.exit_code == 2 and other.output == ""  # rank 0 says it; `error: rank 1: ...` repeated it
    torchrun_place(monkeypatch, 0)
    first = runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert first.exit_code == 2 and "missing: no such dataset folder" in first.output


def test_an_error_of_one_process_alone_is_printed_by_it(monkeypatch, tmp_path):
    make_paired(tmp_path / "ds", count=2, size=32)
    torchrun_place(monkeypatch, 1)
    monkeypatch.setenv("RANK", "5")  # its own broken placement: no other process says it
    result = runner.invoke(app, ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--crop", "32", "--device", "cpu"])
    assert result.exit_code == 2 and "error: rank 5: RANK 5 / WORLD_SIZE 2" in result.output


@pytest.mark.parametrize("command", [["complete"], ["audit"], ["inspect", "camvid"]])
def test_a_command_other_than_train_under_torchrun_is_refused_once(monkeypatch, tmp_path, command):
    data = make_paired(tmp_path / "ds", count=2, size=32)
    out = tmp_path / "fixed"
    extra = [str(data), "--out", str(out)] if command[0] == "complete" else [str(data)] if command[0] == "audit" else []
    torchrun_place(monkeypatch, 0)
    result = runner.invoke(app, command + extra)
    assert result.exit_code == 2, result.output
    assert f"{command[0]} runs as one process, but it was started as 2 (WORLD_SIZE 2" in result.output
    assert not out.exists()  # each process had completed the dataset, or failed on the other's lock
    torchrun_place(monkeypatch, 1)
    assert runner.invoke(app, command + extra).output == ""  # said once, by rank 0


def test_a_process_that_loses_the_others_says_so_and_how_to_go_on(monkeypatch):
    from lmae_repair import distributed

    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: None)
    gone = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                        "peer [127.0.0.1]:16621. This is typically caused by a remote worker crashing.")
    with pytest.raises(LmaeError, match="lost contact with another training process .* --resume continues"):
        with distributed.process_group(Ranks(0, 2, 0), torch.device("cpu")):
            raise gone
    with pytest.raises(RuntimeError, match="out of memory"):  # any other failure is its own
        with distributed.process_group(Ranks(0, 2, 0), torch.device("cpu")):
            raise RuntimeError("CUDA out of memory")


def test_history_counts_distinct_pairs_when_the_shares_are_padded(tmp_path):
    """7 pairs on 2 processes: each share is padded to 4, so 8 crops are trained on an epoch;
    history said "images": 8 where there are 7 pairs, one read twice."""
    from lmae_repair.train import epoch_images

    pairs = discover(make_paired(tmp_path / "ds", count=7, size=64)).pairs
    options = TrainOptions(out=tmp_path / "run", mask_ratios=[0.5], crop=64, batch_size=2, workers=0)
    shards = []
    for rank in (0, 1):
        loader = make_loader(pairs, LabelSpace(4), options, torch.device("cpu"), Ranks(rank, 2, rank))
        loader.sampler.set_epoch(1)
        shards.append([index for index, _ in loader.sampler])
    trained = len(shards[0]) + len(shards[1])
    assert trained == 8 and len(set(shards[0] + shards[1])) == 7
    assert epoch_images(trained, loader.sampler) == {"images": 7, "repeated": 1}
    alone = make_loader(pairs, LabelSpace(4), options, torch.device("cpu"))
    assert epoch_images(len(alone.sampler), alone.sampler) == {"images": 7}


def test_a_process_that_loses_the_first_process_of_its_machine_still_says_so(monkeypatch, tmp_path):
    """Lost contact is what this process alone saw: where the one killed was LOCAL_RANK 0, which
    speaks for the machine, the survivors printed nothing and only torchrun's summary was left."""
    from lmae_repair import distributed, train

    make_paired(tmp_path / "ds", count=2, size=32)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: None)

    def peer_gone(*args, **kwargs):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:16621.")

    monkeypatch.setattr(train, "train_one_ratio", peer_gone)
    torchrun_place(monkeypatch, 1)
    result = runner.invoke(app, ["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--crop", "32", "--device", "cpu"])
    assert result.exit_code == 2 and "error: rank 1: lost contact with another training process" in result.output, result.output


def test_a_malformed_world_size_is_named_as_such_not_taken_for_a_count_of_processes(monkeypatch, tmp_path):
    """WORLD_SIZE=abc was refused as 'torchrun started it abc times'; the placement's own error says
    what is wrong."""
    monkeypatch.setenv("WORLD_SIZE", "abc")
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(app, ["audit", str(make_paired(tmp_path / "ds", count=2, size=32))])
    assert result.exit_code == 2 and "must be integers" in result.output and "abc times" not in result.output, result.output


def test_a_command_after_train_on_another_rank_prints_again(monkeypatch, tmp_path):
    """train silences the console on torchrun's other ranks; in one process (a notebook, this
    test suite) every later command then printed nothing but errors (evaluate's table vanished)."""
    torchrun_place(monkeypatch, 1)
    runner.invoke(app, ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["inspect", "camvid"])
    assert result.exit_code == 0 and "camvid" in result.output, result.output


def test_a_process_waiting_for_others_that_never_come_says_so_and_stops_on_sigterm(tmp_path):
    """WORLD_SIZE=2 left in a batch job's environment, no torchrun: train printed nothing more
    and waited inside PyTorch's C++ for a second process for 30 minutes, deaf to the scheduler's
    SIGTERM (Python's handler waits for the call to return). It now says what it waits for, and
    SIGTERM ends it at once, before anything is written."""
    import os
    import signal
    import socket
    import time

    data = make_paired(tmp_path / "ds", count=2, size=32)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.pop("OMP_NUM_THREADS", None)
    log = tmp_path / "log.txt"
    command = [sys.executable, "-m", "lmae_repair", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--batch-size", "2", "--crop", "32", "--workers", "0", "--device", "cpu", "--preset", "tiny"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "waiting for the 2 processes of WORLD_SIZE 2" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(2)  # inside init_process_group
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "waiting for the 2 processes of WORLD_SIZE 2 to join at 127.0.0.1" in " ".join(log.read_text().split())
    assert not (tmp_path / "run").exists()
