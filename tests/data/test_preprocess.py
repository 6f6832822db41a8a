import itertools

import numpy as np
import pytest
import torch

from convae.data.preprocess import Normalizer, augment, corrupt, jitter_brightness_contrast, resized_crops
from convae.errors import ConvaeError
from convae.parsers import Augment, Noise


def _data(seed=0, n=400, c=2, size=4):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c * size * size, c * size * size))
    x = rng.normal(size=(n, c * size * size)) @ mix * 0.1 + 0.5
    return x.reshape(n, c, size, size).astype(np.float32)


@pytest.mark.parametrize("mode", ["none", "unit", "standardize", "zca"])
def test_inverse_restores(mode):
    x = _data()
    norm = Normalizer(mode).fit(x)
    t = torch.as_tensor(x)
    assert torch.allclose(norm.inverse(norm.transform(t)), t, atol=1e-4)


def test_unit_and_standardize_statistics():
    x = _data() * 3 + 1
    unit = Normalizer("unit").fit(x).transform(torch.as_tensor(x))
    assert unit.min().item() == pytest.approx(0, abs=1e-6) and unit.max().item() == pytest.approx(1, abs=1e-6)
    std = Normalizer("standardize").fit(x).transform(torch.as_tensor(x))
    assert torch.allclose(std.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(std.std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)


def test_zca_whitens_and_stays_close_to_the_data():
    x = _data(n=2000)
    norm = Normalizer("zca", epsilon=1e-6).fit(x)
    white = norm.transform(torch.as_tensor(x)).reshape(len(x), -1).double()
    cov = torch.cov(white.T, correction=0)
    assert torch.allclose(white.mean(0), torch.zeros(white.shape[1], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(cov, torch.eye(cov.shape[0], dtype=torch.float64), atol=2e-2)
    # ZCA (unlike PCA whitening) is symmetric: the whitening matrix equals its transpose.
    assert torch.allclose(norm.state["whiten"], norm.state["whiten"].T, atol=1e-3)
    # With a larger epsilon the variance is damped below 1 (epsilon regularises small eigenvalues).
    damped = Normalizer("zca", epsilon=1.0).fit(x).transform(torch.as_tensor(x)).reshape(len(x), -1)
    assert damped.var(0).mean() < 0.9


def test_zca_refuses_huge_inputs():
    with pytest.raises(ConvaeError, match="zca on 12288 features"):
        Normalizer("zca").fit(np.zeros((2, 3, 64, 64), np.float32))


def test_normalizer_round_trips_through_dict():
    x = _data()
    norm = Normalizer("standardize").fit(x)
    again = Normalizer.from_dict(norm.to_dict())
    t = torch.as_tensor(x)
    assert torch.equal(norm.transform(t), again.transform(t))
    assert norm.output_activation == "identity" and Normalizer("unit").output_activation == "sigmoid"


@pytest.mark.parametrize("mode", ["unit", "standardize", "zca"])
def test_a_refit_normalizer_uses_its_new_statistics_in_every_dtype(mode):
    # The state is kept per device and dtype once placed, so a refit must drop what was placed.
    x = _data()
    norm = Normalizer(mode).fit(x)
    for dtype in (torch.float32, torch.float64):
        norm.transform(torch.as_tensor(x, dtype=dtype))
    shifted = x * 2 + 3
    norm.fit(shifted)
    for dtype in (torch.float32, torch.float64):
        expected = Normalizer(mode).fit(shifted).transform(torch.as_tensor(shifted, dtype=dtype))
        assert torch.equal(norm.transform(torch.as_tensor(shifted, dtype=dtype)), expected)
        assert norm.transform(torch.as_tensor(shifted, dtype=dtype)).dtype == dtype


def test_noise_kinds():
    x = torch.full((200, 1, 10, 10), 0.5)
    g = torch.Generator().manual_seed(0)
    gauss = corrupt(Noise.parse("gaussian:0.1"), x, 0, 1, g)
    assert (gauss - x).std().item() == pytest.approx(0.1, rel=0.05)
    clipped = corrupt(Noise.parse("gaussian:5"), x, 0, 1, g)
    assert clipped.min() >= 0 and clipped.max() <= 1
    masked = corrupt(Noise.parse("masking:0.25"), x, 0, 1, g)
    assert (masked == 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    sp = corrupt(Noise.parse("saltpepper:0.2"), x, 0, 1, g)
    changed = sp != x
    assert changed.float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert set(sp[changed].unique().tolist()) == {0.0, 1.0}
    assert Noise.parse(None) is None and Noise.parse("none") is None


@pytest.mark.parametrize("text", ["blur:0.3", "gaussian:x", "masking:1.5", "gaussian:-1"])
def test_noise_errors(text):
    with pytest.raises(ConvaeError, match="noise"):
        Noise.parse(text)


def test_flip_mirrors_about_half_the_samples():
    x = torch.rand(400, 1, 3, 5)
    out = augment(Augment.parse("flip"), x, 0.0, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert same.float().mean().item() == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize("shape", [(64, 2, 12), (64, 1, 9, 10), (16, 1, 6, 7, 8)])
def test_shift_translates_each_sample_within_range(shape):
    # Content away from the borders: a translation keeps every value, fills with `low`.
    x = torch.full(shape, -1.0)
    inner = (slice(None), slice(None), *(slice(2, n - 2) for n in shape[2:]))
    x[inner] = torch.rand(x[inner].shape) + 1
    out = augment(Augment.parse("shift:2"), x, -1.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    moved = 0
    for a, b in zip(x, out):
        offsets = [range(-2, 3)] * (x.ndim - 2)
        matches = [d for d in itertools.product(*offsets) if torch.equal(torch.roll(a, d, tuple(range(1, a.ndim))), b)]
        assert len(matches) == 1
        moved += any(matches[0])
    assert moved > len(x) // 2


def test_augment_parse():
    assert Augment.parse(None) is None and Augment.parse("none") is None
    both = Augment.parse("flip+shift:3")
    assert both == Augment(flip=True, shift=3) and str(both) == "flip+shift:3"
    assert Augment.parse(str(both)) == both


@pytest.mark.parametrize("text", ["flop", "shift", "shift:0", "shift:-1", "shift:1.5", "flip:2", "flip+"])
def test_augment_errors(text):
    with pytest.raises(ConvaeError, match="augment"):
        Augment.parse(text)


def test_resized_crops_read_inside_each_image_and_vary():
    # A constant image stays constant: samples past the edge pixels take their values, not zeros.
    ones = resized_crops(torch.ones(64, 1, 9, 12), 0.3, torch.Generator().manual_seed(0))
    assert ones.shape == (64, 1, 9, 12) and torch.allclose(ones, torch.ones_like(ones))
    x = torch.rand(64, 2, 9, 12)
    views = resized_crops(x, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(views, resized_crops(x, 0.3, torch.Generator().manual_seed(0)))  # one generator, one draw
    assert views.min() >= x.min() and views.max() <= x.max()  # bilinear: mixes of the image's own values
    assert not torch.allclose(views, resized_crops(x, 0.3, torch.Generator().manual_seed(1)))
    with pytest.raises(ConvaeError, match="2-D images"):
        resized_crops(torch.rand(4, 1, 9), 0.3)


def test_jitter_scales_brightness_and_contrast_within_the_data_range():
    x = 2 + 3 * torch.rand(2000, 1, 6, 6)  # data in [2, 5]
    out = jitter_brightness_contrast(x, 1.0, 2.0, 5.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 2 and out.max() <= 5
    kept = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert 0.15 < kept.float().mean() < 0.25  # a fifth left as they were
    # the others: contrast about the image's own mean, so the brightness factor shows in the mean
    ratio = (out[~kept] - 2).mean(dim=(1, 2, 3)) / (x[~kept] - 2).mean(dim=(1, 2, 3))
    assert ratio.min() > 0.15 and ratio.max() < 1.85 and ratio.std() > 0.2
    assert torch.equal(jitter_brightness_contrast(x, 0.0, 2.0, 5.0), x)  # strength 0: the data itself
    with pytest.raises(ConvaeError, match="jitter strength"):
        jitter_brightness_contrast(x, 1.5, 2.0, 5.0)
