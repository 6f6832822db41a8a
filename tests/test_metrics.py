import numpy as np
import pytest
import torch

from convae.metrics import per_sample_mse, per_sample_ssim, psnr, ssim


def test_ssim_properties():
    x = torch.rand(4, 1, 16, 16)
    assert torch.allclose(ssim(x, x, 1.0), torch.ones(4), atol=1e-5)
    slightly = ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1), 1.0)
    badly = ssim(x, torch.rand_like(x), 1.0)
    assert (slightly > badly).all() and (slightly < 1).all()


@pytest.mark.parametrize("channels, size, data_range", [(1, (28, 28), 1.0), (3, (32, 20), 1.0), (1, (16, 40), 255.0)])
def test_ssim_matches_scikit_image(channels, size, data_range):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((3, channels, *size)) * data_range
    b = np.clip(a + rng.normal(0, 0.1 * data_range, a.shape), 0, data_range)
    ours = per_sample_ssim(a.astype(np.float32), b.astype(np.float32), data_range)
    theirs = [
        structural_similarity(
            x, y, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0
        )
        for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_ssim_shrinks_its_window_for_small_images():
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(ssim(x, x, 1.0), torch.ones(2), atol=1e-5)


def test_mse_and_psnr():
    x = np.zeros((2, 1, 2, 2))
    y = np.stack([np.full((1, 2, 2), 0.1), np.full((1, 2, 2), 0.2)])
    np.testing.assert_allclose(per_sample_mse(x, y), [0.01, 0.04])
    assert psnr(0.01, 1.0) == pytest.approx(20.0) and psnr(0.0, 1.0) == float("inf")
