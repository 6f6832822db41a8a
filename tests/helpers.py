"""Small data for tests: written on the fly, never downloaded."""

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    dtype_code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    payload = struct.pack(">BBBB", 0, 0, dtype_code, array.ndim)
    payload += b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path = Path(str(path) + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_fake_mnist(directory: Path, n_train: int = 20, n_test: int = 10, fill: int = 0) -> Path:
    """Four IDX files shaped like MNIST's (8x8 images); ``fill`` marks which copy was read."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
        images[:, 0, 0] = fill
        write_idx(directory / f"{split}-images-idx3-ubyte", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return directory


def blobs(n: int = 96, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Images of a bright blob at a random place: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(1, size - 2, size=(n, 2))
    images = np.exp(-((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2) / 4.0)
    images = np.repeat(images[:, None], channels, axis=1)
    return (images * 255).astype(np.uint8)


def write_npz(path: Path, n: int = 96, size: int = 8, channels: int = 1) -> Path:
    x = blobs(n, size, channels)
    np.savez(path, x=x[:, 0] if channels == 1 else x.transpose(0, 2, 3, 1), y=np.arange(n) % 3)
    return path


def train_inspection_run(tmp_path: Path, arch: str, *flags: str, **layout) -> Path:
    """A run trained through the CLI on a synthetic inspection set (convae.data.synthetic) below ``tmp_path``."""
    from convae.cli import main
    from convae.data.synthetic import inspection_set

    root = inspection_set(tmp_path / "set", **layout)
    out = tmp_path / "run"
    assert main(["train", "--data", f"mvtec:{root}", "--arch", arch, "--quiet", "--out", str(out), *flags]) == 0
    return out


ARCH = "conv(8,3,stride=2) bn relu conv(16,3,stride=2) bn relu dense(8)"


def small_config(npz: str, tmp_path: Path, name: str = "run", **over):
    """A quick training config on ``npz`` (the ``npz`` fixture's source) into ``tmp_path / name``."""
    from convae.config import resolve_config

    settings = dict(data=npz, arch=ARCH, epochs=3, batch_size=16, lr=3e-3, out=str(tmp_path / name), quiet=True)
    settings.update(over)
    return resolve_config(settings)
