"""Training objectives: what a training step feeds the network, what the network returns, its loss.

Each objective owns all three, so the batch layout and the loss that reads it
live in one class:

- :class:`Reconstruction`: the network input is the (corrupted) batch, the
  output its reconstruction, the loss ``--loss`` against the clean batch.
- :class:`Contrastive`: as above, plus two random resized crops of each
  image after the images (all first views, then all second views). They are
  encoded for a contrastive term on their codes (SimCLR's NT-Xent through a
  projection head), not reconstructed.
- :class:`Segmentation` (DRAEM): the input holds synthetic anomalies
  (:mod:`convae.data.anomalies`); the autoencoder restores the clean image
  and a U-Net (:class:`~convae.network.segmenter.Segmenter`) segments the
  anomalies from the input and its reconstruction, under a focal loss.

A new term follows them: a ``views`` method for extra inputs, a ``network``
that returns what its loss needs, a ``loss`` that reads the
:class:`~convae.training.batches.Batch`, and the second network (if any) as
``head``, trained and checkpointed with the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convae.config import TrainConfig
from convae.data.preprocess import jitter_brightness_contrast, resized_crops
from convae.errors import ConvaeError
from convae.metrics import ssim
from convae.network.model import AutoEncoder
from convae.network.segmenter import Segmenter
from convae.training import distributed
from convae.training.batches import Batch


def ssim_loss(out: Tensor, target: Tensor) -> Tensor:
    """1 - SSIM (11-pixel Gaussian windows, as scikit-image and Bergmann et al.'s AE-SSIM) of images in [0, 1]."""
    return 1 - ssim(out, target, 1.0).mean()


LOSS_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy,
    "ssim": ssim_loss,
    "ssim+l1": lambda out, target: ssim_loss(out, target) + F.l1_loss(out, target),
    "ssim+mse": lambda out, target: ssim_loss(out, target) + F.mse_loss(out, target),  # DRAEM's
}


def focal_loss(logits: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """The focal loss (Lin et al., 2017) of per-pixel logits against a {0, 1} mask: cross-entropy
    down-weighted where it is already right, so the few anomalous pixels are not drowned out."""
    ce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    p = torch.sigmoid(logits)
    right = p * mask + (1 - p) * (1 - mask)
    return (ce * (1 - right) ** gamma).mean()


def nt_xent(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """SimCLR's contrastive loss (Chen et al., 2020): row i of ``a`` and of ``b`` are two views of one sample.

    Each view's positive is the other view of its sample, its negatives the
    other 2N - 2 views of the batch; cross-entropy over cosine similarities / tau.
    """
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = len(a)
    sim = (z @ z.T / tau).fill_diagonal_(float("-inf"))  # a view is not its own positive
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def contrastive_term(projected: Tensor, tau: float, total: int, info: distributed.Dist) -> Tensor:
    """NT-Xent of a step's projected views (this process's first views, then its second, of its
    shard of a global batch of ``total`` samples); each view's negatives are the views of the
    whole global batch, gathered from every process, as in one process."""
    pairs = distributed.gather_rows(torch.stack(projected.chunk(2), 1), total, info)
    return nt_xent(*pairs.unbind(1), tau)


def projection_head(code_size: int, outputs: int) -> nn.Module:
    """SimCLR's MLP on the codes (code -> 256 -> outputs): the term shapes the codes through it,
    so they keep what the head discards. Trained and checkpointed with the run, not exported."""
    return nn.Sequential(nn.Linear(code_size, 256), nn.ReLU(), nn.Linear(256, outputs))


class Reconstruction:
    """Reconstruct the clean batch from the network's input."""

    term: str | None = None  # the name of an extra term, logged as train_<term>
    head: nn.Module | None = None  # trained beside the model, checkpointed under "head"

    def __init__(self, config: TrainConfig):
        self.config = config
        self.loss_fn = LOSS_FUNCTIONS[config.loss]

    def views(self, seen: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
        """A training step's network input, in the data's scale, from the batch as the model sees it."""
        return seen

    def network(self, model: AutoEncoder) -> nn.Module:
        """The module a training step calls (DDP-wrapped and compiled as a whole)."""
        return model

    def loss(self, out: Tensor, batch: Batch, total: int, info: distributed.Dist) -> tuple[Tensor, Tensor | None]:
        """The step's loss and its extra term (None here), in float32, for a shard of ``total`` samples."""
        return self.reconstruction(out, batch.target, total, info), None

    def reconstruction(self, out: Tensor, target: Tensor, total: int, info: distributed.Dist) -> Tensor:
        """The shard's mean loss, weighted by its share of the global batch: DDP averages the
        processes' gradients, which is the global batch's mean only if shards of unequal size (a
        last batch that does not split evenly) count by their size. One process: weight 1."""
        return self.loss_fn(out.float(), target) * (len(target) * info.world / total)


class _WithProjection(nn.Module):
    """The autoencoder and a contrastive projection head as one module, so DDP and torch.compile
    see the whole step. Takes the images, then their first views, then their second views;
    returns the images' reconstructions and the views' projected codes."""

    def __init__(self, model: AutoEncoder, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        images = len(x) // 3
        out, z = self.model.forward_with_code(x, decoded=images)
        with torch.autocast(x.device.type, enabled=False):  # the head and the term in float32, as the loss
            return out, self.head(z[images:].float().flatten(1))


class Contrastive(Reconstruction):
    """Reconstruction plus ``contrastive`` times NT-Xent between two jittered crops of each image."""

    term = "contrastive"

    def __init__(self, config: TrainConfig, model: AutoEncoder):
        super().__init__(config)
        if len(model.input_shape) != 3:
            raise ConvaeError("contrastive compares crops of 2-D images; this data is not (N, C, H, W)")
        self.head = projection_head(math.prod(model.code_shape), config.contrastive_head)

    def views(self, seen: Tensor, low: float, high: float, generator: torch.Generator | None) -> Tensor:
        # Reconstructing the crops instead would train the decoder on zoomed-in images the model never
        # meets after training: worse test MSE and a worse probe (benchmarks/RESULTS.md).
        crop, strength = self.config.contrastive_crop, self.config.contrastive_jitter
        views = torch.cat([resized_crops(seen, crop, generator), resized_crops(seen, crop, generator)])
        if strength:
            views = jitter_brightness_contrast(views, strength, low, high, generator)
        return torch.cat([seen, views])

    def network(self, model: AutoEncoder) -> nn.Module:
        return _WithProjection(model, self.head)

    def loss(self, out: tuple[Tensor, Tensor], batch: Batch, total: int, info: distributed.Dist):
        out, projected = out
        term = contrastive_term(projected, self.config.contrastive_tau, total, info)
        return self.reconstruction(out, batch.target, total, info) + self.config.contrastive * term, term


class _WithSegmenter(nn.Module):
    """The autoencoder and the segmenter as one module (one DDP wrapper, one compiled graph):
    the input's reconstruction, and the segmenter's logits of input and reconstruction."""

    def __init__(self, model: AutoEncoder, segmenter: Segmenter):
        super().__init__()
        self.model, self.segmenter = model, segmenter

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(x)
        return out, self.segmenter(x, out)


class Segmentation(Reconstruction):
    """DRAEM: restore the clean image from one with synthetic anomalies, and segment them."""

    term = "segmentation"

    def __init__(self, config: TrainConfig, model: AutoEncoder):
        super().__init__(config)
        if len(model.input_shape) != 3:
            raise ConvaeError("--segmenter segments 2-D images; this data is not (N, C, H, W)")
        self.head = Segmenter(config.segmenter, model.input_shape)

    def network(self, model: AutoEncoder) -> nn.Module:
        return _WithSegmenter(model, self.head)

    def loss(self, out: tuple[Tensor, Tensor], batch: Batch, total: int, info: distributed.Dist):
        out, logits = out
        weight = len(batch.target) * info.world / total
        term = focal_loss(logits.float(), batch.mask) * weight
        return self.reconstruction(out, batch.target, total, info) + term, term


def objective_for(config: TrainConfig, model: AutoEncoder) -> Reconstruction:
    if config.segmenter:
        return Segmentation(config, model)
    return Contrastive(config, model) if config.contrastive else Reconstruction(config)
