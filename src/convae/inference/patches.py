"""Raw-pixel patch distances: how far each small patch of an image is from the nearest patch of normal images.

No training and no model: each :data:`PATCH` x :data:`PATCH` pixel patch of a
test image is scored by its Euclidean distance to the nearest patch of a
memory of (at most :data:`BANK`) patches drawn from normal training images; the
distances, taken on a grid of :data:`STRIDE` pixels, are upsampled to the image.
On real photographs this finds what differs from the training texture, where a
model trained on synthetic anomalies finds what resembles them: the two maps
together (``convae score --metric max+patch``) beat each alone
(benchmarks/RESULTS.md). The benchmark's raw-pixel baseline is this module.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 9  # pixels per side of a patch
BANK = 20_000  # patches in the memory, at most
STRIDE = 2  # pixels between the patches a map is computed at, before upsampling (4: 4.5x faster, worse)


def patch_memory(x: np.ndarray, bank: int = BANK, patch: int = PATCH, seed: int = 0) -> torch.Tensor:
    """(M, C * patch * patch) patches of images ``x`` (N, C, H, W) in [0, 1]: ``bank`` of them (or every
    one, if fewer) at places drawn at random, without cutting out the others."""
    n, _, h, w = x.shape
    rows, cols = h - patch + 1, w - patch + 1
    total = n * rows * cols
    places = np.random.default_rng(seed).choice(total, min(bank, total), replace=False)
    image, place = np.divmod(np.sort(places), rows * cols)
    top, left = np.divmod(place, cols)
    cut = [np.asarray(x[i, :, t : t + patch, s : s + patch], np.float32).ravel() for i, t, s in zip(image, top, left)]
    return torch.as_tensor(np.stack(cut))


def patch_maps(x: np.ndarray, memory: torch.Tensor, patch: int = PATCH, stride: int = STRIDE) -> np.ndarray:
    """(N, H, W) distance of each pixel's patch in ``x`` (N, C, H, W) to its nearest patch in ``memory``."""
    images = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    h, w = images.shape[2:]
    rows, cols = h - patch + 1, w - patch + 1
    pad = patch // 2
    maps = []
    for image in images:
        grid = F.unfold(image[None], patch)[0].T.reshape(rows, cols, -1)[::stride, ::stride]
        small_shape = grid.shape[:2]
        grid = grid.reshape(-1, grid.shape[-1])
        dist = torch.cat([torch.cdist(part, memory).min(dim=1).values for part in grid.split(4096)])
        small = dist.reshape(1, 1, *small_shape)
        inner = F.interpolate(small, size=(rows, cols), mode="bilinear", align_corners=True)
        maps.append(F.pad(inner, (pad, pad, pad, pad), mode="replicate")[0, 0])
    return torch.stack(maps).numpy() if maps else np.zeros((0, h, w), np.float32)
