"""Batches of samples as one picture, for TensorBoard and for reports alike."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def make_grid(images: Tensor, columns: int = 8, pad: int = 1) -> Tensor:
    """(N, C, H, W) in [0, 1] -> one (C, rows*(H+pad), columns*(W+pad)) image; C is 1 or 3."""
    images = images.detach().float().cpu().clamp(0, 1)
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    n, c, h, w = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    grid = torch.ones(c, rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid
