"""From raw inputs to reconstructions, anomaly maps and image scores, in torch.

One module computes them for ``convae score`` and for the exported scorer
(``convae export --scores``), so the two cannot disagree:

- the **reconstruction**: the input normalised as in training, through the
  model, the normalisation inverted; a run trained on patches (``--crop N``)
  reconstructs a larger image by N x N **sliding windows** that overlap by
  half, each window's output weighted by a Gaussian that falls towards its
  edges (as MONAI's ``sliding_window_inference`` blends), so that seams do not
  show;
- the **anomaly map**: the squared residual averaged over channels or, for a
  run with a segmenter (DRAEM, ``--segmenter``), the segmenter's probability of
  an anomaly at each pixel given the input and its reconstruction; blended
  over the windows like the reconstruction, then (2-D images) smoothed by a
  Gaussian of :data:`SMOOTHING` pixels, since single-pixel noise in a
  reconstruction is not a defect;
- the **score** of each sample: the mean squared or absolute error, 1 - SSIM,
  or the map's maximum (a defect is local: its peak stands out where the
  image's mean does not); with a segmenter, the maximum of its map before
  smoothing.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convae.data.preprocess import Normalizer
from convae.errors import ConvaeError
from convae.metrics import ssim
from convae.network.model import AutoEncoder

MAP_METRICS = ("mse", "l1", "ssim", "max")  # the scores of a reconstruction (knn, of codes: convae.inference.anomaly)
SMOOTHING = 4.0  # pixels
OVERLAP = 0.5  # of a window's side, between neighbouring sliding windows
WINDOW_BATCH = 64  # windows through the model at once


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian reaching 4 sigma each side (scipy.ndimage's ``truncate=4``)."""
    radius = int(4 * sigma + 0.5)
    g = torch.exp(-((torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2) / 2)
    return (g / g.sum()).float()


def smooth(maps: Tensor, sigma: float = SMOOTHING) -> Tensor:
    """Maps (N, H, W) smoothed by a Gaussian, the edge pixels repeated beyond the border (scipy's
    ``gaussian_filter(mode="nearest")``), as two 1-D convolutions."""
    if sigma <= 0:
        return maps
    g = gaussian_kernel(sigma).to(maps)
    r = len(g) // 2
    out = maps[:, None]
    # replicate padding needs a pad smaller than the side; repeat the edges by hand for tiny maps
    out = torch.cat([out[..., :1].expand(-1, -1, -1, r), out, out[..., -1:].expand(-1, -1, -1, r)], dim=3)
    out = F.conv2d(out, g.view(1, 1, 1, -1))
    out = torch.cat([out[..., :1, :].expand(-1, -1, r, -1), out, out[..., -1:, :].expand(-1, -1, r, -1)], dim=2)
    return F.conv2d(out, g.view(1, 1, -1, 1))[:, 0]


def window_starts(size: int, window: int, overlap: float = OVERLAP) -> list[int]:
    """Where windows of ``window`` begin along an axis of ``size``, the last flush with the end."""
    if size <= window:
        return [0]
    stride = max(1, int(window * (1 - overlap)))
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


def importance(window: tuple[int, ...]) -> Tensor:
    """How much each pixel of a window counts in the blend: a Gaussian of a quarter of the side,
    never zero (MONAI's ``sigma_scale=0.125`` of the window each way from the centre)."""
    weight = torch.ones(())
    for side in window:
        axis = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        g = torch.exp(-((axis / (0.125 * side)) ** 2) / 2)
        weight = weight[..., None] * g
    return (weight / weight.max()).clamp_min(1e-3).float()


class Scorer(nn.Module):
    """Raw inputs (N, C, *spatial), in the data's scale (images in [0, 1]) -> (reconstruction,
    anomaly_map, score). ``window``: the patch side of a run trained on crops (sliding windows), taken
    :data:`WINDOW_BATCH` at a time, or all at once with ``all_windows`` (an exported graph, whose
    steps cannot depend on its batch size)."""

    def __init__(
        self,
        model: AutoEncoder,
        normalizer: Normalizer,
        metric: str = "mse",
        window: int | None = None,
        data_range: float = 1.0,
        segmenter: nn.Module | None = None,
        all_windows: bool = False,
    ):
        super().__init__()
        if metric not in MAP_METRICS:
            raise ConvaeError(f"the scorer's metric must be one of {', '.join(MAP_METRICS)}, not {metric!r}")
        spatial = len(model.input_shape) - 1
        if metric in ("ssim", "max") and spatial != 2:
            raise ConvaeError(f"the {metric} score needs 2-D images")
        self.model, self.normalizer, self.metric, self.segmenter = model, normalizer, metric, segmenter
        self.window = (window,) * spatial if window else None
        self.data_range, self.all_windows = data_range, all_windows

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.normalizer.inverse(self.model(self.normalizer.transform(x)))

    def _residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.segmenter is None:
            x_hat = self.reconstruct(x)
            return x_hat, ((x_hat - x) ** 2).mean(1)
        seen = self.normalizer.transform(x)
        out = self.model(seen)
        return self.normalizer.inverse(out), torch.sigmoid(self.segmenter(seen, out))[:, 0]

    def residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The reconstruction and the raw anomaly map: the squared residual averaged over channels, or
        the segmenter's probabilities (by windows when the inputs are larger than the run's patches)."""
        if self.window is not None and tuple(x.shape[2:]) != self.window:
            return self._windows(x)
        return self._residual(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x_hat, err = self.residual(x)
        maps = smooth(err) if err.dim() == 3 else err
        n = x.shape[0]
        if self.metric == "mse":
            score = err.reshape(n, -1).mean(1)
        elif self.metric == "l1":
            score = (x_hat - x).abs().reshape(n, -1).mean(1)
        elif self.metric == "max":
            # A segmenter's map is a probability already: its peak, unsmoothed, keeps a thin defect's
            # (a scratch's) height, which smoothing spreads away (RESULTS.md, real photographs).
            peaks = err if self.segmenter is not None else maps
            score = peaks.reshape(n, -1).amax(1)
        else:
            score = 1 - ssim(x, x_hat, self.data_range)
        return x_hat, maps, score

    def _windows(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction and raw map of inputs larger than the window, blended. The windows are
        gathered and their outputs added back by flat pixel indices, a few ops whatever their number,
        so that an exported graph stays small (a slice and an update per window took an export
        of 225 windows past 15 minutes)."""
        size = tuple(x.shape[2:])
        if any(s < w for s, w in zip(size, self.window)):
            shown = "x".join(map(str, size))
            raise ConvaeError(
                f"inputs of {shown} are smaller than the {self.window[0]}-pixel patches the run trained on"
            )
        n, channels = x.shape[:2]
        index = window_indices(size, self.window).to(x.device)  # (windows, pixels of a window)
        weight = importance(self.window).to(x).flatten()
        total = x.new_zeros(math.prod(size)).index_add_(0, index.flatten(), weight.repeat(len(index)))
        flat = x.flatten(2)
        x_hat = torch.zeros_like(flat)
        err = x.new_zeros((n, flat.shape[2]))
        per = len(index) if self.all_windows else max(1, WINDOW_BATCH // n)
        for first in range(0, len(index), per):
            where = index[first : first + per]
            k = len(where)
            windows = flat[:, :, where].permute(2, 0, 1, 3).reshape(k * n, channels, *self.window)
            out_hat, out_err = self._residual(windows)  # window-major, as gathered
            out_hat = (out_hat.reshape(k, n, channels, -1) * weight).permute(1, 2, 0, 3).reshape(n, channels, -1)
            out_err = (out_err.reshape(k, n, -1) * weight).permute(1, 0, 2).reshape(n, -1)
            x_hat = x_hat.index_add(2, where.flatten(), out_hat)
            err = err.index_add(1, where.flatten(), out_err)
        return (x_hat / total).reshape(x.shape), (err / total).reshape(n, *size)


def window_indices(size: tuple[int, ...], window: tuple[int, ...]) -> Tensor:
    """(windows, prod(window)): the flat indices into an input of ``size`` of each sliding window's
    pixels (:func:`window_starts` along each axis), windows in row-major order of their corners."""
    strides = [math.prod(size[axis + 1 :]) for axis in range(len(size))]
    offsets = torch.zeros((), dtype=torch.long)
    for side, stride in zip(window, strides):  # a window's own pixels, relative to its first
        offsets = offsets[..., None] + torch.arange(side) * stride
    grids = [window_starts(s, w) for s, w in zip(size, window)]
    corners = torch.tensor([sum(c * st for c, st in zip(corner, strides)) for corner in itertools.product(*grids)])
    return corners[:, None] + offsets.flatten()[None, :]


def data_range_of(normalizer: Normalizer) -> float:
    """The span of the data a run trained on, for SSIM's constants (images: 1)."""
    if normalizer.mode == "unit":
        return float(normalizer.state["high"] - normalizer.state["low"]) or 1.0
    return 1.0


def score_batches(scorer: Scorer, x: Tensor, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Scores (N,) and anomaly maps of ``x`` in batches of ``batch`` samples on ``device`` (CPU tensors out)."""
    scores, maps = [], []
    with torch.no_grad():
        for part in x.split(batch):
            _, m, s = scorer(part.to(device))
            scores.append(s.cpu().double())
            maps.append(m.cpu())
    return torch.cat(scores), torch.cat(maps)


def batch_for(shape: tuple[int, ...], budget: int = 2**21) -> int:
    """Samples per scoring batch: 1024, fewer for large inputs (a 2^21-value budget)."""
    return max(1, min(1024, budget // max(1, math.prod(shape))))
