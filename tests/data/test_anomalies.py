"""Synthetic anomalies: Perlin noise and masks, each fill source, what changes and what does not."""

import pytest
import torch

from convae.data.anomalies import FEATHERED, SOURCES, Anomalies, perlin, perlin_masks, rescaled, shuffled_cells, toned


def test_perlin_noise_is_smooth_seeded_and_takes_any_size():
    a = perlin((13, 11), (4, 2), torch.Generator().manual_seed(0))
    b = perlin((13, 11), (4, 2), torch.Generator().manual_seed(0))
    assert a.shape == (13, 11) and torch.equal(a, b) and a.abs().max() <= 1.5
    # Perlin noise is zero at the lattice points (every 4th row of a 16-pixel side at 4 periods).
    lattice = perlin((16, 16), (4, 4), torch.Generator().manual_seed(1))[::4, ::4]
    assert torch.allclose(lattice, torch.zeros_like(lattice), atol=1e-6)


def test_masks_are_binary_and_never_empty():
    masks = perlin_masks(12, (32, 24), torch.Generator().manual_seed(0))
    assert masks.shape == (12, 1, 32, 24) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.flatten(1).sum(1) > 0).all()


def test_shuffled_cells_are_the_images_own_pixels_rearranged():
    x = torch.rand(2, 3, 16, 16)
    out = shuffled_cells(x, torch.Generator().manual_seed(0), grid=4)
    assert not torch.equal(out, x)
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    # each 4x4 cell of the output is a cell of the input
    cells = x.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 16, 16).transpose(1, 2).reshape(2, 16, -1)
    moved = out.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 16, 16).transpose(1, 2).reshape(2, 16, -1)
    assert all(any(torch.equal(moved[0, i], cells[0, j]) for j in range(16)) for i in range(16))


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_changes_the_images_inside_their_masks_only(source):
    x = torch.rand(6, 3, 32, 32) * 0.5 + 0.25
    out, masks = Anomalies((source,), fraction=1.0, opacity=(1.0, 1.0))(x, 0.0, 1.0, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and masks.shape == (6, 1, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    # a feathered edge reaches two pixels past its mask; nothing else changes outside it
    reach = torch.nn.functional.max_pool2d(masks, 5, stride=1, padding=2) if source in FEATHERED else masks
    assert torch.equal(out * (1 - reach), x * (1 - reach))
    inside = masks.expand_as(x) > 0
    assert (out[inside] != x[inside]).float().mean() > 0.5


def test_a_toned_image_keeps_its_texture_at_another_brightness():
    x = torch.rand(32, 1, 16, 16) * 0.1 + 0.45  # never clipped
    out = toned(x, 0.0, 1.0, torch.Generator().manual_seed(0))
    shift = (out.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs()
    assert (shift >= 0.15 - 1e-6).all() and (shift <= 0.4 + 1e-6).all()
    # the same pattern, scaled: every image's fill is perfectly correlated with the image
    a, b = (t.flatten(1) - t.flatten(1).mean(1, keepdim=True) for t in (x, out))
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert torch.allclose(corr, torch.ones_like(corr), atol=1e-4)


def test_rescaled_images_are_the_same_material_turned_and_zoomed_at_any_size():
    flat = torch.full((4, 2, 12, 20), 0.3)
    assert torch.allclose(rescaled(flat, torch.Generator().manual_seed(0)), flat)
    stripes = (torch.arange(32) % 4 < 2).float().expand(8, 1, 32, 32)  # vertical stripes
    out = rescaled(stripes, torch.Generator().manual_seed(1))
    assert out.shape == stripes.shape and out.min() >= 0 and out.max() <= 1
    # turned: along their rows, the inputs repeat every 4 pixels and the outputs do not
    assert not torch.allclose(out, out.roll(4, dims=3), atol=0.05)


def test_only_a_fraction_of_images_get_an_anomaly_and_the_same_generator_makes_the_same_ones():
    x = torch.rand(64, 1, 16, 16)
    make = Anomalies(fraction=0.25)
    out, masks = make(x, 0.0, 1.0, torch.Generator().manual_seed(0))
    again, same = make(x, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(masks, same)
    hit = masks.flatten(1).amax(1) > 0
    assert 4 <= int(hit.sum()) <= 28 and torch.equal(out[~hit], x[~hit])
