"""Arrays as samples: the shape rules that make an array ``(N, C, *spatial)``, and the one uint8 -> float conversion.

Shared by every way data comes in: ``--data`` sources, Python arrays, torch Datasets.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from convae.data.rows import FileArray
from convae.errors import ConvaeError


def floats(x: Any) -> Any:
    """Samples in the data's scale as float32: uint8 images (as loaders keep them) in [0, 1]; others as they are.

    The one uint8 -> float conversion, for arrays, ``FileArray`` rows and tensors alike (a tensor stays
    a tensor, on its device), so that training, scoring and export see the same values to the bit."""
    torch = sys.modules.get("torch")  # a tensor can only come from a loaded torch; NumPy callers never load it
    if torch is not None and isinstance(x, torch.Tensor):
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    x = np.asarray(x)  # a FileArray is read here, whole
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= 255.0  # in place: one float32 copy, not two
        return out
    return x.astype(np.float32)


def as_samples(x: np.ndarray | FileArray, name: str, spatial_dims: int | None = None) -> np.ndarray | FileArray:
    """An array of samples (N, C, *spatial): uint8 kept as bytes, anything else as float32.

    With ``spatial_dims`` (1, 2 or 3) the array is (N, C, *spatial) or, without a channel
    axis, (N, *spatial). Without it, image rules: (N, H, W), (N, C, H, W) or (N, H, W, C).
    A :class:`FileArray` of uint8 or float32 stays in its file (checked in bounded memory);
    one that needs its axes moved or its type changed is read into memory.
    """
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ConvaeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    add_channel = (lambda a: a.with_shape((a.shape[0], 1, *a.shape[1:]))) if isinstance(x, FileArray) else None
    if spatial_dims is not None:
        if x.ndim == spatial_dims + 1:
            x = add_channel(x) if add_channel else x[:, None]
        elif x.ndim != spatial_dims + 2:
            axes = {1: "L", 2: "H, W", 3: "D, H, W"}[spatial_dims]
            raise ConvaeError(
                f"{name}: --spatial-dims {spatial_dims} takes arrays shaped (N, C, {axes}) or (N, {axes}), "
                f"not {x.shape}"
            )
    elif x.ndim == 3:
        x = add_channel(x) if add_channel else x[:, None]
    elif x.ndim == 4:
        # Channels-last when the last axis looks like channels and the second does not.
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = np.asarray(x).transpose(0, 3, 1, 2)
    else:
        raise ConvaeError(
            f"{name}: expected an array shaped (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.shape} "
            "(signals and volumes: --spatial-dims 1 or 3)"
        )
    if len(x) == 0:
        raise ConvaeError(f"{name}: the array holds no samples")
    if 0 in x.shape:
        raise ConvaeError(f"{name}: the array has an empty axis (shape {x.shape})")
    if isinstance(x, FileArray) and x.dtype in (np.uint8, np.float32):
        if x.dtype == np.float32:
            done = 0
            for block in x.blocks():
                _check_finite(block, name, done)
                done += len(block)
        return x
    if x.dtype == np.uint8:  # kept as bytes: converted where it is used (4x less memory than float32)
        return np.ascontiguousarray(x)
    x = floats(np.ascontiguousarray(x))
    _check_finite(x, name)
    return x


def _check_finite(x: np.ndarray, name: str, first: int = 0) -> None:
    if not np.isfinite(x).all():
        bad = first + int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).argmax())
        raise ConvaeError(f"{name}: the array holds NaN or infinite values (first in sample {bad})")
