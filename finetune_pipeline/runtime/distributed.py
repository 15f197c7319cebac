"""Data-parallel training across the processes torchrun starts.

    torchrun --nproc_per_node 2 finetune_pipeline/scripts/train.py --config ...

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and WORLD_SIZE, and where to
meet (MASTER_ADDR, MASTER_PORT). Every process runs the same run: same config, same seed, same batch
order. Each optimizer step's examples are dealt across the processes, each computes the gradient of its
share, and DistributedDataParallel sums the shares before the update, so every process holds the same
weights. Evaluation and feature extraction split their batches across the processes and gather the
results. Every process runs the same code; only rank 0 writes files and logs (main_process_only). Run
without torchrun, everything here is a no-op.
"""

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_world = World()


def world() -> World:
    return _world


def launched() -> World:
    """This process as torchrun started it (RANK, WORLD_SIZE, LOCAL_RANK; without torchrun, the only one),
    known before the process group is joined and after it is left."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                 int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[World]:
    """For the span of a run: join the processes torchrun started (gloo on CPU, nccl on CUDA), then leave.

    A failure in one process must end all of them, not leave the others waiting in a collective for a process
    that never comes. So a process that fails leaves at once: it calls no collective on its way out, not even
    destroy_process_group (under nccl that waits for this process's unfinished collectives, which never finish
    once the processes have parted), and exits with its error message (rank 0 records the failure first,
    which needs no other process). Its exit ends the others: under gloo their pending or next collective fails
    at once ("Connection closed by peer"), tested without torchrun in tests/test_distributed.py; under nccl a
    collective cannot notice a vanished peer, but torchrun, which watches every process it started, stops the
    others as soon as one exits with an error (SIGTERM, and SIGKILL 30 s later for one stuck in a GPU wait).
    Announcing the failure at the next collective instead cannot work: the others may be waiting in DDP's
    gradient sum, which only a backward pass joins.
    """
    global _world
    if launched().distributed:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        _world = launched()
    try:
        yield _world
    except BaseException:
        _world = World()  # leave without waiting for the others (see above)
        raise
    if dist.is_initialized():
        dist.destroy_process_group()  # every process gets here together: nothing is left to wait for
    _world = World()


Result = TypeVar("Result")
Arguments = ParamSpec("Arguments")


def main_process_only(write: Callable[Arguments, Result]) -> Callable[Arguments, Result | None]:
    """For a function that writes (a file, train.log): it runs in rank 0 alone, and does nothing elsewhere."""

    @functools.wraps(write)
    def in_rank_0_only(*args: Arguments.args, **kwargs: Arguments.kwargs) -> Result | None:
        return write(*args, **kwargs) if _world.is_main else None

    return in_rank_0_only


def progress_bar_disabled() -> bool | None:
    """tqdm's `disable`: None (shown on a terminal) in rank 0, off in the other processes."""
    return None if _world.is_main else True


def my_share(items: list, world: World) -> list:
    """Every world.size-th item, starting at this rank's: a round-robin deal, each item to one process."""
    return items[world.rank :: world.size]


def gather_rows(rows: torch.Tensor, batches: list[list[int]]) -> torch.Tensor:
    """rows (examples, ...), in which this process filled the rows of its batches: the same tensor with
    every process's rows, on every process. In one process it is already complete and returned as is.

    Each index comes from exactly one process, so every example is counted once: nothing is padded with
    duplicates, as torch's DistributedSampler would.
    """
    if not _world.distributed:
        return rows
    mine = [index for indices in batches for index in indices]
    shares: list = [None] * _world.size
    dist.all_gather_object(shares, (mine, rows[mine].cpu()))
    gathered = torch.empty_like(rows, device="cpu")
    filled = 0
    for share_indices, share_rows in shares:
        gathered[share_indices] = share_rows
        filled += len(share_indices)
    assert filled == len(rows), f"gathered {filled} rows for {len(rows)} examples"
    return gathered


def all_sum(values: list[float]) -> list[float]:
    """The sums over all processes (float64: a loss sum must not lose precision on the way)."""
    if not _world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    """Every process waits here until all have arrived."""
    if _world.distributed:
        dist.barrier()


def broadcast_from_main(value: object) -> object:
    if not _world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
