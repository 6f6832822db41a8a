"""Input preparation fitted on training data, stored with the model, inverted for output images.

Normalisation (``--normalize``):

================  ===============================================================
``none``          data as loaded
``unit``          min-max scaling to [0, 1] (images loaded from uint8 already are)
``standardize``   per-channel zero mean, unit variance
``zca``           ZCA whitening: zero mean, decorrelated, unit variance
                  (``W = U diag(1/sqrt(lambda + eps)) U^T``), as recommended by
                  LeCun et al. ("Efficient BackProp") and Ioffe & Szegedy for
                  faster convergence
================  ===============================================================

Corruption for denoising (``--noise``): ``gaussian:SIGMA``, ``masking:P``,
``saltpepper:P``; applied in the data's original scale (so SIGMA is in pixel
units for images) to the network's input only; the loss compares with the
clean data.

Augmentation (``--augment``), applied to input and target alike during training
only: ``flip`` mirrors a random half of the samples along the last axis,
``shift:N`` translates each sample by up to N steps along every spatial axis
(filling with the data's low value); ``flip+shift:2`` does both.

Patches (``--crop N``): :func:`random_crop`, an N-sided patch of each sample
at a random place, for training on large images; scoring then slides windows
of that size over them (:mod:`convae.inference.scoring`).

Views for a contrastive term (``--contrastive``): :func:`resized_crops`, SimCLR's
random resized crops of 2-D images, each flipped or not, then
:func:`jitter_brightness_contrast`, the grey part of SimCLR's colour distortion.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from convae.config import NORMALIZE
from convae.data.samples import floats
from convae.errors import ConvaeError
from convae.parsers import Augment, Noise

ZCA_MAX_FEATURES = 8192


@dataclass
class Normalizer:
    """Maps data to the network's scale and back. ``state`` holds tensors only (checkpoint-safe)."""

    mode: str = "unit"
    epsilon: float = 1e-2
    state: dict[str, Tensor] = field(default_factory=dict)
    # The state as the batches need it, per (key, device, dtype): copying a CPU scalar to a GPU on
    # every step made the host wait for the device twice a step (the profile of 2026-12-04).
    _placed: dict[tuple, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZE:
            raise ConvaeError(f"normalize must be one of {', '.join(NORMALIZE)}, not {self.mode!r}")

    @property
    def output_activation(self) -> str:
        """The decoder output that matches this scale: sigmoid for [0, 1], identity otherwise."""
        return "sigmoid" if self.mode == "unit" else "identity"

    def fit(self, x: np.ndarray, rows: np.ndarray | None = None) -> Normalizer:
        """Fit on ``x`` (its ``rows`` only, when given: the training split), in one pass over them."""
        return self.fit_statistics(scan(x, rows, covariance=self.mode == "zca"))

    def fit_statistics(self, stats: Statistics) -> Normalizer:
        """Fit on what :func:`scan` gathered (with ``covariance`` for zca)."""
        self._placed.clear()
        if self.mode == "unit":
            lo, hi = stats.low, stats.high
            self.state = {"low": torch.tensor(lo), "high": torch.tensor(hi if hi > lo else lo + 1.0)}
        elif self.mode == "standardize":
            mean = stats.sum / stats.count
            std = np.sqrt(np.maximum(stats.sum_sq / stats.count - mean**2, 0.0))
            shape = (1, -1) + (1,) * (stats.spatial_dims)
            self.state = {
                "mean": torch.tensor(mean, dtype=torch.float32).view(shape),
                "std": torch.tensor(np.maximum(std, 1e-8), dtype=torch.float32).view(shape),
            }
        elif self.mode == "zca":
            if stats.outer is None:
                raise ValueError("zca needs the statistics scanned with covariance=True")
            mean = stats.flat_sum / stats.samples
            cov = stats.outer / stats.samples - np.outer(mean, mean)
            eigval, eigvec = np.linalg.eigh(cov)
            eigval = np.clip(eigval, 0, None)
            whiten = (eigvec / np.sqrt(eigval + self.epsilon)) @ eigvec.T
            colour = (eigvec * np.sqrt(eigval + self.epsilon)) @ eigvec.T
            self.state = {
                "mean": torch.tensor(mean, dtype=torch.float32),
                "whiten": torch.tensor(whiten, dtype=torch.float32),
                "colour": torch.tensor(colour, dtype=torch.float32),
            }
        return self

    def _get(self, key: str, like: Tensor) -> Tensor:
        place = (key, like.device, like.dtype)
        if place not in self._placed:
            self._placed[place] = self.state[key].to(device=like.device, dtype=like.dtype)
        return self._placed[place]

    def transform(self, x: Tensor) -> Tensor:
        if self.mode == "unit":
            lo = self._get("low", x)
            return (x - lo) / (self._get("high", x) - lo)
        if self.mode == "standardize":
            return (x - self._get("mean", x)) / self._get("std", x)
        if self.mode == "zca":
            flat = x.reshape(len(x), -1) - self._get("mean", x)
            return (flat @ self._get("whiten", x)).reshape(x.shape)
        return x

    def inverse(self, x: Tensor) -> Tensor:
        if self.mode == "unit":
            lo = self._get("low", x)
            return x * (self._get("high", x) - lo) + lo
        if self.mode == "standardize":
            return x * self._get("std", x) + self._get("mean", x)
        if self.mode == "zca":
            flat = x.reshape(len(x), -1) @ self._get("colour", x) + self._get("mean", x)
            return flat.reshape(x.shape)
        return x

    def to_dict(self) -> dict:
        return {"mode": self.mode, "epsilon": self.epsilon, "state": dict(self.state)}

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        return cls(mode=data["mode"], epsilon=float(data["epsilon"]), state=dict(data["state"]))


@dataclass
class Statistics:
    """What the normalisers need of the training samples, gathered in one pass by :func:`scan`:
    the range, per-channel sums of values and of squares (float64), and for ZCA the sums of the
    flattened samples and of their outer products."""

    low: float
    high: float
    samples: int
    count: int  # values per channel
    sum: np.ndarray
    sum_sq: np.ndarray
    spatial_dims: int
    flat_sum: np.ndarray | None = None
    outer: np.ndarray | None = None


def _blocks(x: Any, rows: np.ndarray, chunk_bytes: int) -> Iterator[np.ndarray]:
    if hasattr(x, "blocks"):  # rows read on demand (a file's, a Dataset's): they read in bulk, or in workers
        yield from x.blocks(rows, chunk_bytes)
        return
    step = max(1, chunk_bytes // max(x[:1].nbytes, 1))
    for i in range(0, len(rows), step):
        yield x[rows[i : i + step]]


def scan(x: Any, rows: np.ndarray | None = None, covariance: bool = False, chunk_bytes: int = 2**26) -> Statistics:
    """One pass over ``x`` (its ``rows``, when given), 64 MB at a time: nothing the size of the data is
    held, however large it is or however slowly its rows are decoded. ``covariance`` adds what ZCA
    needs (a features x features matrix: at most :data:`ZCA_MAX_FEATURES` features)."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    features = int(np.prod(x.shape[1:]))
    if covariance and features > ZCA_MAX_FEATURES:
        raise ConvaeError(
            f"zca on {features} features needs a {features}x{features} matrix; "
            f"use it on inputs of at most {ZCA_MAX_FEATURES} values or choose --normalize standardize"
        )
    channels = x.shape[1]
    low, high = np.inf, -np.inf
    total, total_sq = np.zeros(channels), np.zeros(channels)
    flat_sum = np.zeros(features) if covariance else None
    outer = np.zeros((features, features)) if covariance else None
    for part in _blocks(x, rows, chunk_bytes):
        low, high = min(low, part.min()), max(high, part.max())
        values = floats(part).astype(np.float64)
        per_channel = values.swapaxes(0, 1).reshape(channels, -1)
        total += per_channel.sum(axis=1)
        total_sq += (per_channel**2).sum(axis=1)
        if covariance:
            flat = values.reshape(len(values), -1)
            flat_sum += flat.sum(axis=0)
            outer += flat.T @ flat
    if x.dtype == np.uint8:  # as floats() scales them, to the bit
        low, high = floats(np.array([low]))[0], floats(np.array([high]))[0]
    count = len(rows) * (features // channels)
    return Statistics(float(low), float(high), len(rows), count, total, total_sq, x.ndim - 2, flat_sum, outer)


def corrupt(
    noise: Noise, x: Tensor, low: float = 0.0, high: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """``x`` (original scale) corrupted by ``noise``; ``low``/``high`` bound the data (clip, pepper, salt)."""
    if noise.kind == "gaussian":
        draw = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + noise.amount * draw).clamp(low, high)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if noise.kind == "masking":
        return torch.where(u < noise.amount, torch.zeros_like(x) + low, x)
    salt = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < 0.5
    corrupted = torch.where(salt, torch.full_like(x, high), torch.full_like(x, low))
    return torch.where(u < noise.amount, corrupted, x)


def augment(spec: Augment, x: Tensor, low: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """A batch shaped (N, C, *spatial) flipped and shifted as ``spec`` says; each sample draws its own
    flip and offsets (the gaps filled with ``low``)."""
    per_sample = (len(x),) + (1,) * (x.ndim - 1)  # broadcasts one value per sample
    if spec.flip:
        mask = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        x = torch.where(mask.view(per_sample), x.flip(-1), x)
    if spec.shift:
        s = spec.shift
        for axis in range(2, x.ndim):
            padded = torch.nn.functional.pad(x, [0, 0] * (x.ndim - 1 - axis) + [s, s], value=low)
            # Sample i reads padded positions offset_i .. offset_i + size - 1 along this axis.
            offset = torch.randint(0, 2 * s + 1, (len(x),), generator=generator, device=x.device)
            positions = torch.arange(x.shape[axis], device=x.device).view(-1, *[1] * (x.ndim - 1 - axis))
            x = padded.gather(axis, (offset.view(per_sample) + positions).expand(x.shape))
    return x


def random_crop(x: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """A ``size``-sided patch of each sample (N, C, *spatial), at a random place drawn per sample;
    the centre of each without a ``generator`` (deterministic pictures). Samples already of
    that size are returned as they are."""
    if all(s == size for s in x.shape[2:]):
        return x
    for axis in range(2, x.ndim):
        room = x.shape[axis] - size + 1
        if generator is None:
            offset = torch.full((len(x),), room // 2, device=x.device)
        else:
            offset = torch.randint(0, room, (len(x),), generator=generator, device=x.device)
        positions = torch.arange(size, device=x.device).view(-1, *[1] * (x.ndim - 1 - axis))
        shape = list(x.shape)
        shape[axis] = size
        index = (offset.view((len(x),) + (1,) * (x.ndim - 1)) + positions).expand(shape)
        x = x.gather(axis, index)
    return x


def resized_crops(x: Tensor, min_area: float, generator: torch.Generator | None = None) -> Tensor:
    """SimCLR's views of 2-D images (N, C, H, W): for each, a random crop resized back to H x W, half of them flipped.

    The crop covers a fraction ``min_area`` to 1 of the image, its aspect ratio
    3/4 to 4/3 (Chen et al., 2020); bilinear resampling. Its outermost samples
    lie up to half a pixel past the last pixel centres: they take the edge
    pixels' values (not zeros), so a view never darkens at its border.
    """
    if x.ndim != 4:
        raise ConvaeError(f"crops are of 2-D images shaped (N, C, H, W), not {tuple(x.shape)}")
    n, device = len(x), x.device

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=device)

    area = uniform(min_area, 1.0)
    aspect = (uniform(-1.0, 1.0) * math.log(4 / 3)).exp()
    width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    theta = torch.zeros(n, 2, 3, device=device)  # output -> input coordinates in [-1, 1]: a scale, a shift, a flip
    theta[:, 0, 2] = uniform(-1.0, 1.0) * (1 - width)
    theta[:, 1, 2] = uniform(-1.0, 1.0) * (1 - height)
    flip = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    theta[:, 0, 0], theta[:, 1, 1] = width * flip, height
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def jitter_brightness_contrast(
    x: Tensor, strength: float, low: float, high: float, generator: torch.Generator | None = None
) -> Tensor:
    """SimCLR's colour distortion without its hue and saturation: with probability 0.8 each sample's
    brightness (its values above ``low``) and then its contrast (about its own mean) are scaled by factors
    drawn from ``1 +- 0.8 * strength``, the result clipped to ``[low, high]``; the other samples are kept.

    Two crops of one image share its grey levels: without this, a contrastive term can match views by
    them instead of by what the image shows (Chen et al., 2020, found the same of colour).
    """
    if not 0 <= strength <= 1:
        raise ConvaeError(f"jitter strength must be in [0, 1], not {strength}")
    shape, device = (len(x),) + (1,) * (x.ndim - 1), x.device

    def uniform() -> Tensor:
        return torch.rand(shape, generator=generator, device=device)

    distorted = uniform() < 0.8
    brightness, contrast = (torch.where(distorted, 1 + 0.8 * strength * (2 * uniform() - 1), 1.0) for _ in "bc")
    x = (low + (x - low) * brightness).clamp(low, high)
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return ((x - mean) * contrast + mean).clamp(low, high)
