"""Raw-pixel patch distances: the memory is the patches it says, and a map finds what is not in it."""

import numpy as np
import torch
import torch.nn.functional as F

from convae.inference.patches import downscaled, patch_maps, patch_memory, scales_for


def test_the_memory_holds_patches_of_the_images_drawn_without_repeats():
    x = np.random.default_rng(1).random((3, 2, 20, 24)).astype(np.float32)
    every = F.unfold(torch.as_tensor(x), 9).transpose(1, 2).reshape(-1, 2 * 81)
    memory = patch_memory(x, bank=50)
    assert memory.shape == (50, 162) and len(torch.unique(memory, dim=0)) == 50
    assert all((every == row).all(1).any() for row in memory)
    assert torch.equal(patch_memory(x, bank=50), memory)  # drawn from a fixed seed
    assert len(patch_memory(x, bank=10**6)) == len(every)  # every patch, when there are fewer


def test_a_map_is_zero_on_the_images_it_remembers_and_peaks_on_what_it_does_not():
    rng = np.random.default_rng(0)
    normal = rng.random((4, 1, 32, 30)).astype(np.float32)
    memory = patch_memory(normal, bank=10**6)
    assert np.abs(patch_maps(normal, memory, stride=1)).max() < 0.02  # the matmul form of cdist: ~1e-2 off at 0
    defective = normal[:1].copy()
    defective[0, 0, 10:16, 12:18] = 1.0  # a bright square that no training patch holds
    m = patch_maps(defective, memory)[0]
    assert m.shape == (32, 30)
    y, x = np.unravel_index(m.argmax(), m.shape)
    assert 8 <= y <= 18 and 10 <= x <= 20 and m[:4].max() < m.max() / 2


def test_at_half_resolution_the_memory_is_the_downscaled_images_and_the_map_is_full_size():
    rng = np.random.default_rng(2)
    normal = rng.random((4, 1, 40, 36)).astype(np.float32)
    half = downscaled(normal, 2).numpy()
    assert half.shape == (4, 1, 20, 18) and np.isclose(half[0, 0, 0, 0], normal[0, 0, :2, :2].mean())
    memory = patch_memory(normal, bank=10**6, scale=2)
    assert torch.equal(memory, patch_memory(half, bank=10**6))
    defective = normal[:1].copy()
    defective[0, 0, 16:26, 14:24] = 1.0
    m = patch_maps(defective, memory, scale=2)[0]
    assert m.shape == (40, 36)
    y, x = np.unravel_index(m.argmax(), m.shape)
    assert 12 <= y <= 30 and 10 <= x <= 28 and m[:6].max() < m.max() / 2
    assert scales_for(40) == (1, 2) and scales_for(17) == (1,) and scales_for(8) == ()
