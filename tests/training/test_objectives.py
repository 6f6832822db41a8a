import math

import pytest
import torch

from convae.training.objectives import nt_xent


def test_nt_xent_rewards_views_that_match_and_stand_apart():
    n = 8
    blind = torch.ones(n, 5)  # every view alike: the positive is one of 2n - 1 equal candidates
    assert float(nt_xent(blind, blind, 0.5)) == pytest.approx(math.log(2 * n - 1), rel=1e-5)
    apart = torch.eye(n)  # each sample its own direction, both views on it
    assert float(nt_xent(apart, apart, 0.1)) < 1e-3
    swapped = torch.eye(n).roll(1, 0)  # each view closest to another sample's: worse than blind
    assert float(nt_xent(apart, swapped, 0.5)) > math.log(2 * n - 1)


def test_the_ssim_losses_are_zero_for_equal_images_and_train_a_run(tmp_path):
    from helpers import write_npz

    from convae.config import resolve_config
    from convae.errors import ConvaeError
    from convae.training.objectives import LOSS_FUNCTIONS
    from convae.training.train import train

    a = torch.rand(4, 1, 16, 16)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1).requires_grad_()
    for name in ("ssim", "ssim+l1"):
        assert float(LOSS_FUNCTIONS[name](a, a)) == pytest.approx(0, abs=1e-6)
        loss = LOSS_FUNCTIONS[name](b, a)
        loss.backward()
        assert float(loss.detach()) > 0.1 and torch.isfinite(b.grad).all()
    data = f"npy:{write_npz(tmp_path / 'd.npz', n=64)}"
    settings = dict(data=data, arch="conv(8,3,stride=2) relu dense(6)", epochs=3, batch_size=16, lr=3e-3, quiet=True)
    result = train(resolve_config({**settings, "loss": "ssim", "out": str(tmp_path / "run")}))
    losses = [m["train_loss"] for m in result["metrics"]]
    assert losses[-1] < losses[0]
    with pytest.raises(ConvaeError, match="loss ssim compares images in \\[0, 1\\]: use it with normalize unit"):
        resolve_config({**settings, "loss": "ssim", "normalize": "standardize"}).validate()
