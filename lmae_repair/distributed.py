"""Multi-process training under torchrun: which process this is, and the few collective steps
training needs.

`torchrun --nproc_per_node N -m lmae_repair train ...` starts N copies of the command, each with
RANK, WORLD_SIZE and LOCAL_RANK in its environment. Each copy trains on its own shard of the
data (`dataset.SeededSampler`) with the model wrapped in DistributedDataParallel, which averages the
gradients, so the copies hold identical weights after every step. Losses, image counts and
validation confusion matrices are summed across the copies, so every copy computes the same
figures (and the learning-rate schedule stays in step); only rank 0 writes files and prints.

Without torchrun WORLD_SIZE is unset: one process, and the collective steps do nothing (the
device is still chosen as asked: `device_for_rank`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from lmae_repair.errors import RankError, stop_if_interrupted


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world_size`, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_environment() -> Ranks:
    """Read the variables torchrun sets; a single process when they are absent."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise RankError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise RankError(f"RANK {rank} / WORLD_SIZE {world_size}: not a valid process placement")
    return Ranks(rank, world_size, local_rank)


def device_for_rank(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process: rank r on this machine uses cuda:LOCAL_RANK."""
    if device.type != "cuda" or not ranks.distributed:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # else pinned-memory threads and caches also open GPU 0
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise RankError(
            f"LOCAL_RANK {ranks.local_rank}: this machine has {torch.cuda.device_count()} GPUs; "
            "start at most that many processes per node (torchrun --nproc_per_node)"
        )
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device, say=None) -> Iterator[None]:
    """Join the job's process group (NCCL between GPUs, gloo between CPU processes) for the
    duration of the block, and leave it afterwards so the process exits cleanly. `say` (rank 0's
    console print) tells that the run waits for the others (`join_group`)."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    join_group(backend, ranks, say)
    try:
        yield
    except Exception as exc:
        if lost_contact(exc):
            stop_if_interrupted(exc)  # a Ctrl-C reaches every process: said as an interruption
            # this process's own view (`RankError`): the one lost may be the first of the machine,
            # which speaks for the others (`cli.speaks_for_machine`)
            raise RankError(LOST_CONTACT) from exc
        raise
    finally:
        dist.destroy_process_group()


def join_group(backend: str, ranks: Ranks, say=None) -> None:
    """`init_process_group`, which waits inside PyTorch's C++ for every process of WORLD_SIZE.
    Where they never come (a WORLD_SIZE left in a batch job's environment, a process that failed
    to start) train had printed nothing for 30 minutes, and a SIGTERM or Ctrl-C did nothing
    either, as Python's handlers (`errors.watch_interrupts`) wait for the C++ call to return: the
    scheduler's signal only took effect with its SIGKILL. So it says that it waits, and for that
    wait the two signals end the process at once (nothing is written yet), with the shell's
    128 + signal exit status."""
    import signal

    if say is not None:
        say(f"waiting for the {ranks.world_size} processes of WORLD_SIZE {ranks.world_size} to join at "
            f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} (torchrun's variables; "
            "without torchrun, unset WORLD_SIZE to train as one process)")
    handlers = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


LOST_CONTACT = ("lost contact with another training process (it stopped or failed: its own message or torchrun's "
                "summary says why); every finished epoch is saved; the same command with --resume continues from the last one")


def lost_contact(exc: BaseException) -> bool:
    """Whether `exc` is a collective step that failed because another process is gone: when one
    process was killed, the first had said 'unexpected RuntimeError: [.../gloo/transport/tcp/pair.cc:553]
    Connection closed by peer [127.0.0.1]:16621. This is typically caused by a remote w', cut off
    mid-word, and nothing of the run kept or of --resume."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc) if isinstance(exc, RuntimeError) else ""
    return any(words in text for words in ("Connection closed by peer", "Connection reset by peer", "remote worker crashing"))


def _collective_device() -> torch.device:
    """NCCL reduces GPU tensors, gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over all processes (`values` itself when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    total = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(values.device)


def wait_for_all() -> None:
    """Barrier: e.g. so no process reads a checkpoint before rank 0 has written it."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
