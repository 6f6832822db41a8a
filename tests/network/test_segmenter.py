"""DRAEM's discriminative network: a U-Net over image and reconstruction, one logit per pixel."""

import torch

from convae.network.segmenter import Segmenter

UNET = "conv(8,3,stride=2) bn relu skip conv(16,3,stride=2) bn relu skip conv(16,3,stride=2) relu"


def test_a_logit_per_pixel_at_odd_sizes_from_both_inputs():
    seg = Segmenter(UNET, (3, 21, 17))
    x, x_hat = torch.rand(2, 3, 21, 17), torch.rand(2, 3, 21, 17)
    logits = seg(x, x_hat)
    assert logits.shape == (2, 1, 21, 17)
    assert seg(torch.rand(1, 3, 30, 26), torch.rand(1, 3, 30, 26)).shape == (1, 1, 30, 26)
    assert seg.body.input_shape == (6, 21, 17)  # the two stacked
    # it reads the reconstruction too: another one changes the logits
    assert not torch.allclose(seg(x, x_hat), seg(x, torch.rand_like(x_hat)))
    logits.sum().backward()
    assert all(p.grad is not None for p in seg.parameters())
