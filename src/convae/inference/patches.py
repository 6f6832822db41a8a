"""Raw-pixel patch distances: how far each small patch of an image is from the nearest patch of normal images.

No training and no model: each :data:`PATCH` x :data:`PATCH` pixel patch of a
test image is scored by its Euclidean distance to the nearest patch of a
memory of (at most :data:`BANK`) patches drawn from normal training images; the
distances, taken on a grid of :data:`STRIDE` pixels, are upsampled to the image.
With ``scale`` 2 the same is done on the images at half resolution (18 pixels
of context, a quarter of the work). On real photographs this finds what differs
from the training texture, where a model trained on synthetic anomalies finds
what resembles them: the maps together (``convae score --metric max+patch``,
both scales of :data:`SCALES`) beat each alone (benchmarks/RESULTS.md). The
benchmark's raw-pixel baseline is this module at scale 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 9  # pixels per side of a patch
BANK = 20_000  # patches in the memory, at most
STRIDE = 2  # pixels between the patches a map is computed at, before upsampling (4: 4.5x faster, worse)
SCALES = (1, 2)  # max+patch's resolutions: full, and half (research/patch_variants.py)


def downscaled(x: np.ndarray | torch.Tensor, scale: int) -> torch.Tensor:
    """Images (N, C, H, W) at 1/``scale`` of their resolution (means of ``scale`` x ``scale`` pixels)."""
    images = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    return F.avg_pool2d(images, scale) if scale > 1 else images


def scales_for(size: int, patch: int = PATCH) -> tuple[int, ...]:
    """The :data:`SCALES` at which images whose smaller side is ``size`` pixels still hold a patch."""
    return tuple(s for s in SCALES if size // s >= patch)


def patch_memory(x: np.ndarray, bank: int = BANK, patch: int = PATCH, seed: int = 0, scale: int = 1) -> torch.Tensor:
    """(M, C * patch * patch) patches of images ``x`` (N, C, H, W) in [0, 1] (at 1/``scale`` of their
    resolution): ``bank`` of them (or every one, if fewer) at places drawn at random, without cutting
    out the others."""
    if scale > 1:
        x = downscaled(x, scale).numpy()
    n, _, h, w = x.shape
    rows, cols = h - patch + 1, w - patch + 1
    total = n * rows * cols
    places = np.random.default_rng(seed).choice(total, min(bank, total), replace=False)
    image, place = np.divmod(np.sort(places), rows * cols)
    top, left = np.divmod(place, cols)
    cut = [np.asarray(x[i, :, t : t + patch, s : s + patch], np.float32).ravel() for i, t, s in zip(image, top, left)]
    return torch.as_tensor(np.stack(cut))


def patch_maps(
    x: np.ndarray, memory: torch.Tensor, patch: int = PATCH, stride: int = STRIDE, scale: int = 1
) -> np.ndarray:
    """(N, H, W) distance of each pixel's patch in ``x`` (N, C, H, W) to its nearest patch in ``memory``
    (a memory of the same ``scale``: then the map, computed at 1/``scale`` of the resolution, is
    upsampled to the images' size)."""
    full = x.shape[2:]
    images = downscaled(x, scale)
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
        padded = F.pad(inner, (pad, pad, pad, pad), mode="replicate")
        if scale > 1:
            padded = F.interpolate(padded, size=tuple(full), mode="bilinear", align_corners=False)
        maps.append(padded[0, 0])
    return torch.stack(maps).numpy() if maps else np.zeros((0, *full), np.float32)
