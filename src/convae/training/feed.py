"""How training samples reach the device: where they live, and batches of them by index.

Three placements, chosen by :func:`choose_placement` or forced with ``--placement``:

==========  ===================================================================
``device``  the whole array on the GPU; a batch is a gather there (no copies)
``host``    the whole array in host memory (pinned for a GPU), gathered there
``stream``  rows stay in their file (:class:`~convae.data.rows.FileArray`) or
            their torch Dataset (:class:`~convae.data.torchdata.DatasetRows`); each
            step's rows are read by DataLoader workers, pinned and prefetched
==========  ===================================================================

Whatever the placement, a batch holds the same rows in the same order, so a
run computes the same numbers (``tests/test_feed.py``). uint8 samples travel as
bytes and become floats in [0, 1] on the device. Under torchrun each process
is handed only its own slice of every global batch, so with ``stream`` each
reads only the rows it trains on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch import Tensor

from convae.data import floats
from convae.data.rows import FileArray
from convae.errors import ConvaeError
from convae.runtime import fits_on_device

PREFETCH = 4  # batches each worker reads ahead


def available_memory() -> int:
    """Bytes the system can give without swapping (Linux's MemAvailable; else all physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_placement(asked: str, nbytes: int, file_backed: bool, device: torch.device, world: int = 1) -> str:
    """``asked`` unless it is ``auto``: then the device when the data fits there (a GPU with room to
    spare), host memory when it is there already or fits in a quarter of what is free (once per
    process), else streamed from its file. On a CPU, device and host are the same memory."""
    if asked == "device" and device.type != "cuda":
        return "host"
    if asked != "auto":
        return asked
    if device.type == "cuda" and fits_on_device(nbytes, device):
        return "device"
    if not file_backed or nbytes * world <= available_memory() // 4:
        return "host"
    return "stream"


def to_device(raw: Tensor, device: torch.device) -> Tensor:
    """Samples on ``device`` in the data's scale: uint8 travels as bytes (4x less than float32) and is
    scaled there by :func:`convae.data.floats`."""
    return floats(raw.to(device, non_blocking=True))


def read_rows(x: np.ndarray | FileArray | Tensor, idx: np.ndarray | Tensor) -> Tensor:
    """Rows of an array, a file or a tensor, by index, as a tensor where the rows were (host or device)."""
    if isinstance(x, Tensor):
        return x[torch.as_tensor(idx, device=x.device)]
    idx = idx.cpu().numpy() if isinstance(idx, Tensor) else np.asarray(idx)
    return torch.from_numpy(np.ascontiguousarray(x[idx]))


class _Rows(torch.utils.data.Dataset):
    """A step's rows by their indices (one DataLoader item is one batch). A read error comes back
    as its message, so that the training process reports it in one line, not as a worker's traceback."""

    def __init__(self, x: np.ndarray | FileArray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: np.ndarray) -> Tensor | str:
        try:
            return read_rows(self.x, idx)
        except ConvaeError as err:
            return str(err)


class _Steps(torch.utils.data.Sampler):
    """The index arrays of the epoch's steps, set before each pass (the workers stay up between)."""

    def __init__(self) -> None:
        self.steps: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


class Feed:
    """A run's training samples in their placement; :meth:`rows` and :meth:`batches` give them on the
    device, in the data's scale."""

    def __init__(self, x: Any, device: torch.device, placement: str, workers: int | None, world: int = 1):
        if workers is None:  # reading is light: the cores are for training (2 workers on 2 cores: 90 %, 1: 97 %)
            workers = min(4, max(1, (os.cpu_count() or 1) // 4))
        self.device = device
        self.source = x
        in_memory = isinstance(x, np.ndarray)  # else rows read on demand: a file's, or a torch Dataset's
        self.placement = choose_placement(placement, x.nbytes, not in_memory, device, world)
        # Where indices and the epoch's permutation live: with the data, so a gather never crosses devices.
        self.index_device = device if self.placement == "device" else torch.device("cpu")
        self.x: Tensor | None = None
        if self.placement == "stream":
            self._steps = _Steps()
            self._loader = torch.utils.data.DataLoader(
                _Rows(x),
                sampler=self._steps,
                batch_size=None,  # each item is a whole step's rows
                num_workers=workers,
                pin_memory=device.type == "cuda",
                prefetch_factor=PREFETCH if workers else None,
                persistent_workers=workers > 0,
            )
        else:
            self.x = self._resident(x, self.index_device)
            if self.placement == "host" and device.type == "cuda":
                self.x = self.x.pin_memory()

    @staticmethod
    def _resident(x: np.ndarray | FileArray, where: torch.device) -> Tensor:
        if isinstance(x, np.ndarray):  # in memory already (a read-only buffer is copied: torch writes)
            return torch.from_numpy(x if x.flags.writeable else x.copy()).to(where)
        out = torch.empty(tuple(x.shape), dtype=torch.from_numpy(x[:1]).dtype, device=where)
        done = 0
        for block in x.blocks():  # 64 MB at a time: no second whole copy on the way
            out[done : done + len(block)] = torch.from_numpy(block)
            done += len(block)
        return out

    def rows(self, idx: np.ndarray | Tensor) -> Tensor:
        """Samples by index, on the device."""
        return to_device(read_rows(self.x if self.x is not None else self.source, idx), self.device)

    def batches(self, steps: Sequence[Tensor]) -> Iterator[Tensor]:
        """Each step's rows on the device, in order: gathered where they live, or read ahead by workers."""
        if self.x is not None:
            for idx in steps:
                yield to_device(self.x[idx], self.device)
            return
        self._steps.steps = [idx.cpu().numpy() for idx in steps]
        for raw in self._loader:
            if isinstance(raw, str):
                raise ConvaeError(raw)
            yield to_device(raw, self.device)

    def changed(self) -> str | None:
        """Why the file the samples stream from is no longer the one opened, or None."""
        if self.placement == "stream" and isinstance(self.source, FileArray):
            return self.source.changed()
        return None
