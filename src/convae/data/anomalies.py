"""Synthetic anomalies made per batch, with exact masks, from nothing but the batch and noise.

What DRAEM (Zavrtanik et al., ICCV 2021) trains on, without its external texture
set: each chosen image gets an irregular region (a thresholded Perlin-noise
mask, DRAEM's ``rand_perlin_2d`` at a random scale) filled from one source:

============  ===============================================================
``shuffle``   the image's own 8x8 grid cells, shuffled (TransFusion's source)
``patch``     another image of the batch, shifted (NSA's and CutPaste's
              source)
``texture``   procedural Perlin noise of two random colours
``colour``    one random colour (DRAEM's "no external data" variant)
``tone``      the image itself, its contrast and brightness changed (a stain, a
              discolouration: the texture stays; DRAEM's augmenters on the image)
``rescaled``  the image itself zoomed by 0.5-2 and turned by any angle: the same
              material at another grain and orientation (DRAEM's affine augmenter,
              widened)
============  ===============================================================

``patch``, ``tone`` and ``rescaled`` fills have their edge feathered over two pixels.

blended with a random opacity (DRAEM's ``beta``): ``x (1 - a m) + fill a m``.
The mask the segmenter learns is the whole region, whatever the opacity.
Everything is drawn from the given ``torch.Generator``, so a resumed run
makes the same anomalies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from convae.parsers import ANOMALY_SOURCES

SOURCES = ANOMALY_SOURCES  # the grammar is convae.parsers'
GRID = 8  # cells per side for ``shuffle``
FEATHERED = ("patch", "tone", "rescaled")  # fills of the image's own material, which a hard edge would give away


def perlin(size: Sequence[int], res: Sequence[int], generator: torch.Generator | None, device=None) -> Tensor:
    """2-D Perlin noise of ``size`` (H, W) with ``res`` (periods per axis) gradient cells, in about
    [-1, 1] (DRAEM's ``rand_perlin_2d``, computed on a size that ``res`` divides, then cropped)."""
    h, w = size
    ry, rx = res
    ph, pw = math.ceil(h / ry) * ry, math.ceil(w / rx) * rx
    dy, dx = ph // ry, pw // rx
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator, device=device)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)
    ys = torch.arange(ph, device=device) / dy
    xs = torch.arange(pw, device=device) / dx
    grid = torch.stack(torch.meshgrid(ys % 1, xs % 1, indexing="ij"), dim=-1)

    def tile(slice_y: slice, slice_x: slice) -> Tensor:
        return gradients[slice_y, slice_x].repeat_interleave(dy, 0).repeat_interleave(dx, 1)

    def dot(g: Tensor, shift: tuple[int, int]) -> Tensor:
        return ((grid - torch.tensor(shift, device=device)) * g).sum(-1)

    n00 = dot(tile(slice(0, -1), slice(0, -1)), (0, 0))
    n10 = dot(tile(slice(1, None), slice(0, -1)), (1, 0))
    n01 = dot(tile(slice(0, -1), slice(1, None)), (0, 1))
    n11 = dot(tile(slice(1, None), slice(1, None)), (1, 1))
    t = 6 * grid**5 - 15 * grid**4 + 10 * grid**3  # the quintic fade
    n0 = torch.lerp(n00, n10, t[..., 0])
    n1 = torch.lerp(n01, n11, t[..., 0])
    return math.sqrt(2) * torch.lerp(n0, n1, t[..., 1])[:h, :w]


def perlin_masks(n: int, size: Sequence[int], generator: torch.Generator | None, device=None) -> Tensor:
    """(n, 1, H, W) masks in {0, 1}: Perlin noise at 2^0..2^5 periods per axis (drawn per sample and
    axis) above 0.5, as DRAEM makes them; a mask that came out empty gets a disc instead."""
    h, w = size
    masks = torch.zeros(n, 1, h, w, device=device)
    for i in range(n):
        ry, rx = (2 ** int(torch.randint(0, 6, (1,), generator=generator, device=device)) for _ in "yx")
        m = perlin((h, w), (min(ry, h), min(rx, w)), generator, device) > 0.5
        if not m.any():
            cy, cx = (float(torch.rand(1, generator=generator, device=device)) * s for s in (h, w))
            yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(h, w) / 8) ** 2
        masks[i, 0] = m.float()
    return masks


def shuffled_cells(x: Tensor, generator: torch.Generator | None, grid: int = GRID) -> Tensor:
    """Each image's ``grid`` x ``grid`` cells in a random order (the image cropped to a multiple of
    the grid, the rest left as it was)."""
    n, c, h, w = x.shape
    ch, cw = h // grid, w // grid
    if ch == 0 or cw == 0:
        return x.flip(-1)
    core = x[:, :, : ch * grid, : cw * grid]
    cells = core.reshape(n, c, grid, ch, grid, cw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ch, cw)
    order = torch.argsort(torch.rand(n, grid * grid, generator=generator, device=x.device), dim=1)
    cells = cells[torch.arange(n, device=x.device)[:, None], order]
    core = cells.reshape(n, grid, grid, c, ch, cw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ch * grid, cw * grid)
    out = x.clone()
    out[:, :, : ch * grid, : cw * grid] = core
    return out


def shifted_others(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Each image replaced by another of the batch (itself in a batch of one), shifted at random."""
    other = x.roll(1, dims=0)
    dy, dx = (int(torch.randint(0, s, (1,), generator=generator, device=x.device)) for s in x.shape[2:])
    return other.roll((dy, dx), dims=(2, 3))


def textures(x: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """Procedural textures: Perlin noise between two random colours per image."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        r = 2 ** int(torch.randint(2, 6, (1,), generator=generator, device=x.device))
        t = (perlin((h, w), (min(r, h), min(r, w)), generator, x.device) + 1) / 2
        a, b = (low + (high - low) * torch.rand(c, 1, 1, generator=generator, device=x.device) for _ in "ab")
        out[i] = a + (b - a) * t.clamp(0, 1)
    return out


def toned(x: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """Each image with its contrast scaled by 0.5-1.5 about its mean and its brightness shifted by
    15-40 % of the range, up or down."""
    n, device = len(x), x.device
    mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=generator, device=device)
    sign = torch.where(torch.rand(n, 1, 1, 1, generator=generator, device=device) < 0.5, -1.0, 1.0)
    shift = sign * (0.15 + 0.25 * torch.rand(n, 1, 1, 1, generator=generator, device=device)) * (high - low)
    return (mean + (x - mean) * contrast + shift).clamp(low, high)


def rescaled(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Each image resampled zoomed by 0.5-2 (log-uniform), turned by any angle and shifted, the edges
    reflected: the same material at another grain and orientation."""
    n, device = len(x), x.device
    h, w = x.shape[2:]
    zoom = torch.exp((2 * torch.rand(n, generator=generator, device=device) - 1) * math.log(2))
    angle = 2 * math.pi * torch.rand(n, generator=generator, device=device)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = 2 * torch.rand(n, 2, generator=generator, device=device) - 1
    # a rotation in pixels, written in affine_grid's coordinates (each axis scaled to [-1, 1])
    theta = torch.stack(
        (torch.stack((cos, -sin * h / w, shift[:, 0]), 1), torch.stack((sin * w / h, cos, shift[:, 1]), 1)), 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colours(x: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    n, c = x.shape[:2]
    return (low + (high - low) * torch.rand(n, c, 1, 1, generator=generator, device=x.device)).expand_as(x)


@dataclass(frozen=True)
class Anomalies:
    """Makes a batch's synthetic anomalies: ``fraction`` of the images get one, from one of
    ``sources`` (drawn per image), at an opacity drawn from ``opacity``."""

    sources: tuple[str, ...] = SOURCES
    fraction: float = 0.5
    opacity: tuple[float, float] = (0.2, 1.0)

    def __call__(
        self, x: Tensor, low: float, high: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(images with anomalies, masks (N, 1, H, W) in {0, 1}) of images (N, C, H, W) in [low, high]."""
        n, device = len(x), x.device
        masks = perlin_masks(n, x.shape[2:], generator, device)
        chosen = torch.rand(n, generator=generator, device=device) < self.fraction
        masks = masks * chosen.view(n, 1, 1, 1)
        pick = torch.randint(0, len(self.sources), (n,), generator=generator, device=device)
        lo, hi = self.opacity
        alpha = lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=generator, device=device)
        fill = x.clone()
        blend = masks * alpha
        for k, source in enumerate(self.sources):
            rows = torch.nonzero(pick == k).flatten()
            if not len(rows):
                continue
            part = x[rows]
            if source == "shuffle":
                fill[rows] = shuffled_cells(part, generator)
            elif source == "patch":
                fill[rows] = shifted_others(x, generator)[rows]
            elif source == "texture":
                fill[rows] = textures(part, low, high, generator)
            elif source == "tone":
                fill[rows] = toned(part, low, high, generator)
            elif source == "rescaled":
                fill[rows] = rescaled(part, generator)
            else:
                fill[rows] = colours(part, low, high, generator)
            if source in FEATHERED:
                # the fill blends into its surroundings instead of cutting in
                soft = F.avg_pool2d(masks[rows], 5, stride=1, padding=2, count_include_pad=False)
                blend[rows] = soft * alpha[rows]
        return x * (1 - blend) + fill * blend, masks
