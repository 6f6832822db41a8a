"""A PyTorch ``Dataset`` as rows read on demand: what :class:`~convae.data.rows.FileArray` is to a
``.npy`` file, :class:`DatasetRows` is to a map-style ``torch.utils.data.Dataset``.

``convae.fit(dataset)`` trains on a Dataset that decodes its files on demand without holding it
in memory: :class:`DatasetRows` answers what the toolkit asks of an array (``len``, ``shape``,
``dtype``, ``x[indices]``, ``blocks()``) by calling ``dataset[i]`` for just those rows, and its
scans go through DataLoader workers, so decoding runs beside training. An ``IterableDataset``
(no length, no random access) is read once into a temporary file of rows (:func:`spool`), then
streamed from there like a ``.npy``. Items are tensors or arrays, or ``(sample, label)`` pairs;
each is shaped by the rules of :func:`~convae.data.samples.as_samples` (one sample at a time).
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.utils.data

from convae.data.rows import CHUNK_BYTES, FileArray, OnDemandRows
from convae.data.samples import as_samples
from convae.errors import ConvaeError


def _sample_of(item: Any) -> Any:
    return item[0] if isinstance(item, (tuple, list)) else item


def _is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2


def as_row(item: Any, where: str, spatial_dims: int | None = None) -> np.ndarray:
    """One item's sample as an array (C, *spatial): uint8 as bytes, anything else float32."""
    x = _sample_of(item)
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return as_samples(x[None], where, spatial_dims)[0]


def check_like(row: np.ndarray, i: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``row`` (item ``i``) when it has item 0's shape and type; else one line naming the item."""
    if row.shape != shape or row.dtype != dtype:
        raise ConvaeError(
            f"dataset item {i} is {row.dtype} {tuple(row.shape)}, item 0 was {dtype} {shape}: "
            "every sample must have one shape and type"
        )
    return row


class DatasetRows(OnDemandRows):
    """The samples of a map-style Dataset, ``(N, C, *spatial)``, read by index when asked for."""

    def __init__(self, dataset: torch.utils.data.Dataset, spatial_dims: int | None = None, workers: int | None = None):
        self.dataset, self.spatial_dims = dataset, spatial_dims
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ConvaeError("the Dataset has no length; give a map-style Dataset or an IterableDataset") from None
        if n == 0:
            raise ConvaeError("the dataset holds no samples")
        first = dataset[0]
        self.pairs = _is_pair(first)
        row = as_row(first, "dataset item 0", spatial_dims)
        self.shape: tuple[int, ...] = (n, *row.shape)
        self.dtype = row.dtype

    def row(self, i: int) -> np.ndarray:
        """Sample ``i``, checked against the first: one line naming the item when it differs."""
        row = as_row(self.dataset[int(i)], f"dataset item {i}", self.spatial_dims)
        return check_like(row, i, self.shape[1:], self.dtype)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """These rows, in this order, read in this process."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for k, i in enumerate(rows):
            if not -len(self) <= i < len(self):
                raise IndexError(f"row index {i} out of range for {len(self)} rows")
            out[k] = self.row(i % len(self))
        return out

    def blocks(self, rows: np.ndarray | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The given rows (all, by default) in order, ``chunk_bytes`` at a time, decoded by DataLoader
        workers: a scan in bounded memory that uses the cores."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        step = max(1, chunk_bytes // max(1, self.row_bytes))
        parts = [rows[i : i + step] for i in range(0, len(rows), step)]
        if self.workers == 0 or len(parts) < 2:
            yield from (self.read(part) for part in parts)
            return
        loader = torch.utils.data.DataLoader(
            _Reads(self), sampler=parts, batch_size=None, num_workers=self.workers, prefetch_factor=2
        )
        for block in loader:
            if isinstance(block, str):
                raise ConvaeError(block)
            yield block.numpy()

    def labels(self) -> np.ndarray | None:
        """The labels: the Dataset's ``targets`` (as torchvision's datasets have them), else, for
        ``(sample, label)`` items, read with every item (one pass over the data), else None."""
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and len(targets) == len(self):
            return np.asarray(targets, dtype=np.int64)
        if not self.pairs:
            return None
        loader = torch.utils.data.DataLoader(
            _Labels(self.dataset), batch_size=1024, num_workers=self.workers, collate_fn=np.asarray
        )
        return np.concatenate(list(loader)).astype(np.int64)


class _Reads(torch.utils.data.Dataset):
    """A block of rows per item, for :meth:`DatasetRows.blocks`; an error comes back as its message."""

    def __init__(self, rows: DatasetRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: np.ndarray) -> Any:
        try:
            return torch.from_numpy(self.rows.read(idx))
        except ConvaeError as err:
            return str(err)


class _Labels(torch.utils.data.Dataset):
    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> int:
        return int(self.dataset[i][1])


def spool(dataset: torch.utils.data.IterableDataset, spatial_dims: int | None = None) -> tuple[FileArray, Any]:
    """An IterableDataset read once, through a DataLoader, into a temporary file of rows (removed when
    the process ends): ``(rows, labels or None)``. Memory holds one item at a time."""
    fd, path = tempfile.mkstemp(prefix="convae-spool-", suffix=".rows")
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    shape, dtype, labels, n = None, None, [], 0
    try:
        with os.fdopen(fd, "wb") as f:
            loader = torch.utils.data.DataLoader(dataset, batch_size=None)
            for item in loader:
                row = as_row(item, f"dataset item {n}", spatial_dims)
                if shape is None:
                    shape, dtype = row.shape, row.dtype
                check_like(row, n, shape, dtype)
                if _is_pair(item):
                    labels.append(int(item[1]))
                f.write(np.ascontiguousarray(row).tobytes())
                n += 1
    except BaseException:
        os.unlink(path)
        raise
    if n == 0:
        os.unlink(path)
        raise ConvaeError("the dataset holds no samples")
    st = os.stat(path)
    rows = FileArray(path, 0, (n, *shape), np.dtype(dtype), stamp=(st.st_size, st.st_mtime_ns))
    return rows, (np.asarray(labels, np.int64) if len(labels) == n else None)
