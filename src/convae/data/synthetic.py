"""Synthetic inspection data in MVTec AD's layout: textures, and defects with exact masks.

``inspection_set(root)`` writes::

    root/train/good/000.png ...            normal textures, for training
    root/test/good/000.png ...             normal textures, for testing
    root/test/<kind>/000.png ...           one defect each: scratch, hole or stain
    root/ground_truth/<kind>/000_mask.png  255 where the defect is, 0 elsewhere

A texture is woven: two sinusoidal gratings at random small angles and
phases, with fine noise, so that no two images are alike and a model must
learn the texture, not the picture. A scratch is a thin bright or dark line,
a hole a dark disc with a lighter rim, a stain a soft blot that shifts the
texture's grey level by a third of its range (the hardest of the three: it
keeps the texture's pattern). Used by the tests and by
``benchmarks/inspection.py``; NumPy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFECTS = ("scratch", "hole", "stain")


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """One woven texture (size, size) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((size, size))
    for base in (0.0, np.pi / 2):
        angle = base + rng.normal(0, 0.05)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        out += np.sin(2 * np.pi * u / 8 + rng.uniform(0, 2 * np.pi))
    out = 0.5 + 0.2 * out + rng.normal(0, 0.03, out.shape)
    return np.clip(out, 0, 1)


def defect(rng: np.random.Generator, image: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(image with one defect of ``kind``, its mask as bool)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
    out = image.copy()
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.4) * size
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= 1.2)
        out[mask] = rng.choice([0.05, 0.95])
    elif kind == "hole":
        radius = rng.uniform(0.04, 0.08) * size
        distance = np.hypot(yy - cy, xx - cx)
        mask = distance <= radius + 1
        out[distance <= radius + 1] = 0.75
        out[distance <= radius] = 0.02
    elif kind == "stain":
        radius = rng.uniform(0.07, 0.12) * size
        blot = np.exp(-(np.hypot(yy - cy, xx - cx) ** 2) / (2 * radius**2))
        shift = 0.35 * rng.choice([-1.0, 1.0]) * blot
        out = np.clip(out + shift, 0, 1)
        mask = blot > 0.25  # where the shift exceeds 0.09: outside it the texture is changed by less
    else:
        raise ValueError(f"unknown defect kind {kind!r} (known: {', '.join(DEFECTS)})")
    return out, mask


def inspection_set(
    root: str | Path,
    normal: int = 160,
    test_normal: int = 20,
    per_defect: int = 20,
    size: int = 128,
    kinds: tuple[str, ...] = DEFECTS,
    seed: int = 0,
) -> Path:
    """Write a synthetic inspection set in MVTec AD's layout below ``root``; returns ``root``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)

    def save(array: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(array * 255).astype(np.uint8)).save(path)

    for i in range(normal):
        save(texture(rng, size), root / "train" / "good" / f"{i:03d}.png")
    for i in range(test_normal):
        save(texture(rng, size), root / "test" / "good" / f"{i:03d}.png")
    for kind in kinds:
        for i in range(per_defect):
            image, mask = defect(rng, texture(rng, size), kind)
            save(image, root / "test" / kind / f"{i:03d}.png")
            save(mask.astype(np.float64), root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root
