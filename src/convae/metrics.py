"""Reconstruction metrics: pure functions shared by training, evaluation and anomaly scoring.

All take data in its original scale (the preprocessing already inverted).
SSIM follows Wang et al. (2004) as scikit-image's ``structural_similarity``
computes it with ``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False`` (an 11-pixel Gaussian window, K1 = 0.01,
K2 = 0.03, the mean over the valid region), so convae's figures compare with
published tables; a test checks it against scikit-image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from convae.errors import ConvaeError

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # scikit-image's: 2 * int(3.5 * sigma + 0.5) + 1


def psnr(mse: float, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error, for data spanning ``data_range``."""
    if mse <= 0:
        return math.inf
    return 10 * math.log10(data_range**2 / mse) if data_range > 0 else -math.inf  # constant data: no signal


def per_sample_mse(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Mean squared error of each sample, in float64."""
    return ((x_hat.astype(np.float64) - x) ** 2).reshape(len(x), -1).mean(1)


def per_sample_l1(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    return np.abs(x_hat.astype(np.float64) - x).reshape(len(x), -1).mean(1)


def ssim_map(a: Tensor, b: Tensor, data_range: float, window: int = SSIM_WINDOW) -> Tensor:
    """Local SSIM of 2-D images (N, C, H, W): (N, C, H - w + 1, W - w + 1) for a w-pixel window.

    Images smaller than the window get the largest odd window that fits
    (scikit-image refuses them instead).
    """
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2
    coords = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = (g / g.sum()).to(device=a.device, dtype=a.dtype)
    # The five local means in one pass, each a separable Gaussian (two 1-D convolutions): the same
    # values as five 2-D blurs, at a fraction of their cost (SSIM is a training loss here).
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    k = stacked.shape[1]
    blurred = F.conv2d(stacked, g.view(1, 1, -1, 1).expand(k, 1, window, 1), groups=k)
    blurred = F.conv2d(blurred, g.view(1, 1, 1, -1).expand(k, 1, 1, window), groups=k)
    mu_a, mu_b, aa, bb, ab = blurred.chunk(5, dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    var_a = aa - mu_a**2
    var_b = bb - mu_b**2
    cov = ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: Tensor, b: Tensor, data_range: float, window: int = SSIM_WINDOW) -> Tensor:
    """Mean SSIM of each sample of 2-D images (N, C, H, W)."""
    return ssim_map(a, b, data_range, window).flatten(1).mean(1)


def per_sample_ssim(x: np.ndarray, x_hat: np.ndarray, data_range: float, chunk: int = 2048) -> np.ndarray:
    """:func:`ssim` of NumPy images, a chunk at a time (bounded memory)."""
    out = []
    for i in range(0, len(x), chunk):
        a = torch.as_tensor(x[i : i + chunk], dtype=torch.float32)
        b = torch.as_tensor(x_hat[i : i + chunk], dtype=torch.float32)
        out.append(ssim(a, b, data_range).double().numpy())
    return np.concatenate(out)


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve of anomaly ``maps`` against defect ``masks`` (N, H, W): (false-positive
    rate of the normal pixels, mean share of each defect region flagged), exact at every distinct map
    value as the threshold falls, from (0, 0). Each connected defect region (8-connectivity) counts once,
    whatever its size, as MVTec AD defines it."""
    from skimage.measure import label

    masks = masks.astype(bool)
    regions = np.zeros(masks.shape, np.int64)
    count = 0
    for i, mask in enumerate(masks):
        lab = label(mask, connectivity=2)
        regions[i][lab > 0] = lab[lab > 0] + count
        count += int(lab.max())
    if count == 0 or masks.all():
        raise ConvaeError("AUPRO needs defect regions and normal pixels")
    order = np.argsort(-maps.ravel(), kind="stable")  # the threshold falls from the highest value
    values, region, normal = maps.ravel()[order], regions.ravel()[order], ~masks.ravel()[order]
    size = np.bincount(regions.ravel(), minlength=count + 1)
    weight = np.zeros(len(region))
    inside = region > 0
    weight[inside] = 1.0 / (size[region[inside]] * count)
    fpr, pro = np.cumsum(normal) / normal.sum(), np.cumsum(weight)
    last = np.r_[np.flatnonzero(np.diff(values)), len(values) - 1]  # ties: one point per distinct value
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve (:func:`pro_curve`) up to ``fpr_limit`` false-positive
    rate, over ``fpr_limit`` (1 is perfect; a random map scores about ``fpr_limit / 2``), as MVTec AD
    defines it."""
    fpr, pro = pro_curve(masks, maps)
    cut = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:cut], pro[:cut]
    if cut < len(fpr):  # the curve at the limit, between the points either side
        x = np.r_[x, fpr_limit]
        y = np.r_[y, np.interp(fpr_limit, fpr[cut - 1 : cut + 1], pro[cut - 1 : cut + 1])]
    return float(np.trapezoid(y, x) / fpr_limit)
