"""The optimizer a run steps and how its learning rate moves.

Adam or AdamW (fused on CUDA); a constant, cosine or one-cycle schedule planned over the run's
steps from ``schedule_start``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convae.config import TrainConfig


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], steps_per_epoch: int, device: torch.device):
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    optimizer = cls(params, **kwargs)
    return optimizer, make_schedule(config, optimizer, steps_per_epoch)


def planned_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The optimizer steps a run takes: its epochs', or ``max_steps`` if that comes first."""
    steps = config.epochs * steps_per_epoch
    return min(steps, config.max_steps) if config.max_steps else steps


def make_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule, spanning the steps from ``config.schedule_start`` to the end of
    ``config.epochs``; it sets the optimizer's rate (and one-cycle's momentum) for the next step."""
    total = max(planned_steps(config, steps_per_epoch) - config.schedule_start, 1)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    elif config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return scheduler
