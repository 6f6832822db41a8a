"""Multi-process training through ``torchrun`` (PyTorch DDP), in the nanoGPT manner.

``torchrun --nproc_per_node=N -m convae train ...`` sets RANK, LOCAL_RANK and
WORLD_SIZE; :func:`setup` then joins the process group (NCCL on GPUs, gloo on
CPU) and picks this process's device. Without those variables everything here
is a no-op and the run is a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1 or dist.is_initialized()

    @property
    def main(self) -> bool:
        """Only the main process writes summaries, checkpoints and the progress bar."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; returns (Dist, this process's device)."""
    if not launched_by_torchrun():
        return Dist(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A rank that dies takes the job down (torchrun ends the others); the
        # timeout bounds how long a collective can wait for a peer.
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10)
        )
    return Dist(rank, local_rank, world), device


def all_mean(value: torch.Tensor, info: Dist) -> torch.Tensor:
    """The mean of ``value`` over all processes (itself when single-process)."""
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world
    return value


def all_max(value: torch.Tensor, info: Dist) -> torch.Tensor:
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def shard_bounds(total: int, info: Dist) -> tuple[int, int]:
    """This process's rows [start, stop) of a global batch of ``total`` rows (all of them in a
    single process); sizes differ by at most one row when ``total`` does not split evenly."""
    return total * info.rank // info.world, total * (info.rank + 1) // info.world


def gather_rows(rows: torch.Tensor, total: int, info: Dist) -> torch.Tensor:
    """Every process's ``rows`` (its shard of a global batch of ``total`` rows), in rank order,
    with gradients flowing back to each process's own rows.

    Each process then computes the loss of the whole batch; the gradient it gets for its rows
    is the sum over the processes of that loss's gradient, so DDP's average of the parameter
    gradients is the gradient one process would compute on the whole batch.
    """
    if info.world == 1:
        return rows
    return _GatherRows.apply(rows, total, info)


class _GatherRows(torch.autograd.Function):
    # Not torch.distributed.nn.functional.all_gather: it is deprecated, and wants the same
    # number of rows on every process, which a last partial batch need not have.
    @staticmethod
    def forward(ctx, rows: torch.Tensor, total: int, info: Dist) -> torch.Tensor:
        bounds = [shard_bounds(total, Dist(r, r, info.world)) for r in range(info.world)]
        ctx.bounds = bounds[info.rank]
        padded = rows.new_zeros((max(stop - start for start, stop in bounds), *rows.shape[1:]))
        padded[: len(rows)] = rows
        gathered = [torch.empty_like(padded) for _ in bounds]
        dist.all_gather(gathered, padded)
        return torch.cat([g[: stop - start] for g, (start, stop) in zip(gathered, bounds)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.bounds
        return grad[start:stop], None, None


def barrier(info: Dist) -> None:
    if info.world > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
