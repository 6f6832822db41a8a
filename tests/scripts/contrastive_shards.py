"""The contrastive term on each process's shard under torchrun and DDP (for tests).

Usage: torchrun ... contrastive_shards.py TOTAL OUT_DIR
Each rank writes OUT_DIR/rank{R}.pt: its term and the head's gradients after DDP.
"""

import gc
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from convae.training import distributed
from convae.training.objectives import contrastive_term, projection_head


def main(total: int, out: Path, info: distributed.Dist) -> None:
    torch.manual_seed(0)
    head = projection_head(5, 3)
    views = torch.randn(2, total, 5)  # two views of each of `total` samples
    start, stop = distributed.shard_bounds(total, info)
    net = DistributedDataParallel(head)
    projected = net(torch.cat([views[0, start:stop], views[1, start:stop]]))
    term = contrastive_term(projected, 0.5, total, info)  # the trainer's term on its shard
    term.backward()
    grads = {name: param.grad for name, param in head.named_parameters()}
    torch.save({"term": term.detach(), "grads": grads}, out / f"rank{info.rank}.pt")


info, _ = distributed.setup(torch.device("cpu"))
main(int(sys.argv[1]), Path(sys.argv[2]), info)
gc.collect()  # DDP's reducer freed while the group lives: gloo aborts a process that exits holding it
distributed.barrier(info)
distributed.cleanup()
