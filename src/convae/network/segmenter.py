"""A discriminative network: a U-Net over an image and its reconstruction, giving anomaly logits.

DRAEM's second network (Zavrtanik et al., 2021). Its body is any spec the mirror
builds (:mod:`convae.network.model`), declared with ``skip`` to make it a U-Net,
over the image and the reconstruction stacked as 2C channels; a 1x1
convolution turns the restored 2C channels into one logit per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from convae.network.layers import LAYERS
from convae.network.model import AutoEncoder


class Segmenter(nn.Module):
    """(image, reconstruction), each (N, C, *spatial) in the network's scale -> logits (N, 1, *spatial)."""

    def __init__(self, arch: str | Sequence[str | dict], image_shape: Sequence[int]):
        super().__init__()
        channels, *spatial = image_shape
        self.body = AutoEncoder(arch, (2 * channels, *spatial), output="identity")
        self.logits = LAYERS["conv", len(spatial)](2 * channels, 1, 1)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        return self.logits(torch.relu(self.body(torch.cat([x, x_hat], dim=1))))
