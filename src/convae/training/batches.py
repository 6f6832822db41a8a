"""What the network sees per batch: raw rows -> :class:`Batch` (input and target), in one place.

A training step, validation, the compile trial and the TensorBoard pictures all
call one :class:`BatchPipeline`, so they cannot prepare batches differently.
The stages, in order, on rows in the data's original scale:

=============  ==================================================================
crop           ``--crop N``: an N-sided patch of each sample (at random with a
               generator, the centre with ``centred=True``)
augment        ``--augment`` (training only): input and target alike
anomalies      ``--segmenter`` (training only): synthetic anomalies in the input,
               their masks in :attr:`Batch.mask` (:mod:`convae.data.anomalies`)
corrupt        ``--noise``: the input only, in the original scale
views          the objective's extra views (training only; ``--contrastive``)
normalise      input and target into the network's scale; the input laid out
               channels-last when the run is
=============  ==================================================================

A new per-batch stage is one more step of :meth:`BatchPipeline.__call__` and,
where it yields more than input and target, one more field of :class:`Batch`
(as the anomalies' masks are).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from convae.data.anomalies import Anomalies
from convae.data.preprocess import Normalizer, augment, corrupt, random_crop
from convae.parsers import Augment, Noise

Views = Callable[[Tensor, float, float, "torch.Generator | None"], Tensor]


@dataclass
class Batch:
    """One batch as the network meets it."""

    raw: Tensor  # the rows after cropping and augmentation, in the data's scale: what MSE is measured against
    input: Tensor  # what the network takes: corrupted, with the objective's views, normalised
    target: Tensor  # what it should give back: ``raw`` normalised
    mask: Tensor | None = None  # (N, 1, *spatial) in {0, 1}: where synthetic anomalies are (training, --segmenter)


@dataclass
class BatchPipeline:
    """Raw rows -> :class:`Batch`; ``low``/``high`` are the data's range (training split)."""

    normalizer: Normalizer
    low: float
    high: float
    crop: int | None = None
    noise: Noise | None = None
    augment: Augment | None = None
    views: Views | None = None
    channels_last: bool = False
    anomalies: Anomalies | None = None

    def __call__(
        self, raw: Tensor, generator: torch.Generator | None = None, *, train: bool = False, centred: bool = False
    ) -> Batch:
        """A batch of raw rows (N, C, *spatial) prepared. ``train`` adds augmentation and the objective's
        views; ``centred`` crops the centre whatever the generator (pictures that compare across epochs)."""
        if self.crop is not None:
            raw = random_crop(raw, self.crop, None if centred else generator)
        if train and self.augment is not None:
            raw = augment(self.augment, raw, self.low, generator)
        seen, mask = raw, None
        if train and self.anomalies is not None:
            seen, mask = self.anomalies(raw, self.low, self.high, generator)
        if self.noise is not None:
            seen = corrupt(self.noise, seen, self.low, self.high, generator)
        if train and self.views is not None:
            seen = self.views(seen, self.low, self.high, generator)
        target = self.normalizer.transform(raw)
        x = target if seen is raw else self.normalizer.transform(seen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(raw, x, target, mask)

    def display(self, x: Tensor) -> Tensor:
        """Samples in the data's scale mapped to [0, 1] for pictures."""
        return ((x - self.low) / max(self.high - self.low, 1e-12)).clamp(0, 1)


def monitored(val_idx: Tensor, train_idx: Tensor, cap: int | None) -> Tensor:
    """The rows validation measures each epoch (and the pictures show): at most ``cap`` of the
    validation split, evenly spread, since a pass over a huge split each epoch could cost more than
    the epoch. Without a validation split (``val_fraction`` 0) the training rows stand in, capped
    alike: a pass over all of Fashion-MNIST's 60,000 costs a third of an epoch's training on a CPU."""
    return capped(val_idx if len(val_idx) else train_idx, cap)


def capped(idx: Tensor, cap: int | None) -> Tensor:
    return idx[:: math.ceil(len(idx) / cap)] if cap and len(idx) > cap else idx
