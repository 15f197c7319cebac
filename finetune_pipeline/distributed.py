"""Data-parallel training across the processes torchrun starts.

    torchrun --nproc_per_node 2 finetune_pipeline/scripts/train.py --config ...

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and WORLD_SIZE, and where to
meet (MASTER_ADDR, MASTER_PORT). Every process runs the same run: same config, same seed, same batch
order. Each optimizer step's examples are dealt across the processes, each computes the gradient of its
share, and DistributedDataParallel sums the shares before the update, so every process holds the same
weights. Evaluation and feature extraction split their batches across the processes and gather the
results. Only rank 0 writes files and logs. Run without torchrun, everything here is a no-op.
"""

import os
from dataclasses import dataclass

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


def start(device_type: str) -> World:
    """Join the process group when torchrun started this process (gloo on CPU, nccl on CUDA)."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        _world = World(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", "0")))
    return _world


def stop() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


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


def broadcast_from_main(value: object) -> object:
    if not _world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
