import math

import numpy as np
import pytest
import torch
from torch import nn

from convae.data.preprocess import Normalizer, random_crop
from convae.inference.scoring import Scorer, importance, smooth, window_starts


class _Shifted(nn.Module):
    """A stand-in model of 8x8 windows that returns its input plus ``offset`` (and counts its calls)."""

    input_shape = (1, 8, 8)

    def __init__(self, offset: float):
        super().__init__()
        self.offset, self.windows = offset, 0

    def forward(self, x):
        assert x.shape[2:] == (8, 8)
        self.windows += len(x)
        return x + self.offset


def test_sliding_windows_cover_every_pixel_and_blend_to_the_windows_answer():
    assert window_starts(20, 8) == [0, 4, 8, 12] and window_starts(21, 8)[-1] == 13 and window_starts(8, 8) == [0]
    x = torch.rand(2, 1, 21, 19)
    scorer = Scorer(_Shifted(0.25), Normalizer("none"), "mse", window=8)
    x_hat, err = scorer.residual(x)
    # every window says x + 0.25; any blend of them says so too, at every pixel, the borders included
    assert torch.allclose(x_hat, x + 0.25, atol=1e-6) and torch.allclose(err, torch.full_like(err, 0.0625))
    assert scorer.model.windows == 2 * len(window_starts(21, 8)) * len(window_starts(19, 8))
    _, maps, score = scorer(x)
    assert maps.shape == (2, 21, 19) and torch.allclose(score, torch.full((2,), 0.0625, dtype=score.dtype))
    with pytest.raises(Exception, match="smaller than the 8-pixel patches"):
        scorer(torch.rand(1, 1, 7, 30))


class _Squashed(nn.Module):
    """A stand-in model whose answer at a pixel depends on where in its window the pixel is."""

    def __init__(self, window: tuple[int, ...]):
        super().__init__()
        self.input_shape = (2, *window)
        self.ramp = torch.linspace(0.5, 1.5, math.prod(window)).reshape(window)

    def forward(self, x):
        return torch.tanh(x * self.ramp + x.flip(1))


@pytest.mark.parametrize("size, window", [((23,), (8,)), ((21, 19), (8, 8)), ((9, 13, 10), (4, 6, 4))])
@pytest.mark.parametrize("all_windows", [False, True])
def test_the_blend_is_the_weighted_mean_of_each_window_s_answer_where_it_lies(size, window, all_windows, monkeypatch):
    import itertools

    from convae.inference import scoring

    monkeypatch.setattr(scoring, "WINDOW_BATCH", 5)  # several chunks of windows
    model = _Squashed(window)
    x = torch.rand(3, 2, *size)
    scorer = Scorer(model, Normalizer("none"), "mse", window=window[0], all_windows=all_windows)
    scorer.window = window  # a window that is not a cube, to catch axes mixed up
    x_hat, err = scorer.residual(x)
    # the reference: each window's slice, answered alone, added back where it was cut
    weight, total = importance(window), torch.zeros(size)
    want_hat, want_err = torch.zeros_like(x), torch.zeros(3, *size)
    for corner in itertools.product(*(window_starts(s, w) for s, w in zip(size, window))):
        where = tuple(slice(c, c + w) for c, w in zip(corner, window))
        answer = model(x[(..., *where)])
        want_hat[(..., *where)] += answer * weight
        want_err[(slice(None), *where)] += ((answer - x[(..., *where)]) ** 2).mean(1) * weight
        total[where] += weight
    assert torch.allclose(x_hat, want_hat / total, atol=1e-6) and torch.allclose(err, want_err / total, atol=1e-6)


def test_the_blend_weighs_window_centres_above_their_edges():
    w = importance((8, 8))
    assert w[3:5, 3:5].min() == 1 and w[0, 0] < 0.1 and w.min() > 0


def test_smoothing_matches_scipy_nearest_mode():
    from scipy.ndimage import gaussian_filter

    maps = np.random.default_rng(0).random((3, 20, 9)).astype(np.float32)
    want = gaussian_filter(maps, sigma=(0, 4, 4), mode="nearest")
    assert np.abs(smooth(torch.from_numpy(maps)).numpy() - want).max() < 1e-6


def test_random_crops_are_patches_of_their_sample():
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)
    g = torch.Generator().manual_seed(0)
    patches = random_crop(x, 4, g)
    assert patches.shape == (2, 3, 4, 4)
    for sample, patch in zip(x, patches):
        r, c = divmod(int((patch[0, 0, 0] - sample[0, 0, 0]).item()), 12)
        assert torch.equal(patch, sample[:, r : r + 4, c : c + 4])
    assert torch.equal(random_crop(x, 4), x[:, :, 3:7, 4:8])  # no generator: the centre
    assert random_crop(x[:, :, :4, :4], 4) is not None
