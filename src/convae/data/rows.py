"""Arrays that stay in their ``.npy`` file: rows read on demand with ``os.pread``, never mapped.

:class:`FileArray` answers what the toolkit asks of an array (``len``, ``shape``,
``dtype``, ``x[i]``, ``x[a:b]``, ``x[indices]``) by reading just those rows, so a
file larger than memory trains, and a process's memory holds the rows it
asked for, no more. A memory map would do the reading too, but every page it
touches counts in the process's resident memory until the kernel takes it
back, and a truncated file kills the reader with SIGBUS instead of an error.
A FileArray pickles as its path and layout, so DataLoader workers open the
file themselves. NumPy only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from convae.errors import ConvaeError

CHUNK_BYTES = 2**26  # 64 MB: what a scan over the whole file holds at once


class OnDemandRows:
    """What the toolkit asks of an array, for rows read on demand: ``len``, ``ndim``, ``nbytes``,
    ``x[i]``, ``x[a:b]``, ``x[indices]``, ``x[mask]`` and ``np.asarray(x)``, all through
    ``read(rows)``. A subclass gives ``shape``, ``dtype`` and ``read``."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key]))[0]
        if isinstance(key, slice):  # x[:1] must not build an index of every row
            return self.read(np.arange(*key.indices(len(self))))
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.read(key.astype(np.int64))


@dataclass
class FileArray(OnDemandRows):
    """Rows ``(N, *sample)`` of a C-ordered array at ``offset`` in ``path``."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    stamp: tuple[int, int] = (0, 0)  # (size, mtime_ns) when opened: a changed file is noticed
    _fd: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str, mapped: np.memmap) -> FileArray:
        """The file's array, laid out as ``np.load(path, mmap_mode="r")`` found it."""
        st = os.stat(path)
        return cls(str(path), int(mapped.offset), tuple(mapped.shape), mapped.dtype, stamp=(st.st_size, st.st_mtime_ns))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # each process opens the file itself

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    def with_shape(self, shape: tuple[int, ...]) -> FileArray:
        """The same rows viewed with another sample shape of as many values (a channel axis added)."""
        assert shape[0] == self.shape[0] and np.prod(shape[1:]) == np.prod(self.shape[1:])
        return FileArray(self.path, self.offset, tuple(shape), self.dtype, self.stamp)

    # -- reading
    def read(self, rows: np.ndarray) -> np.ndarray:
        """These rows, in this order; consecutive rows of the file are read in one call."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.empty((0, *self.shape[1:]), self.dtype)
        if rows.min() < -len(self) or rows.max() >= len(self):
            raise IndexError(f"row index out of range for {len(self)} rows")
        at = np.where(rows < 0, rows + len(self), rows)
        order = np.argsort(at, kind="stable")
        ordered = at[order]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        sorted_rows = out if np.array_equal(order, np.arange(len(order))) else np.empty_like(out)
        flat = sorted_rows.reshape(len(rows), -1).view(np.uint8)
        starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)  # where a run of consecutive rows begins
        for begin, end in zip(starts, [*starts[1:], len(ordered)]):
            self._pread(flat[begin:end], int(ordered[begin]))
        if sorted_rows is not out:
            out[order] = sorted_rows
        return out

    def blocks(self, rows: np.ndarray | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The given rows (all, by default) in ``chunk_bytes`` pieces: a scan in bounded memory."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        step = max(1, chunk_bytes // max(self.row_bytes, 1))
        for i in range(0, len(rows), step):
            yield self.read(rows[i : i + step])

    def _pread(self, out: np.ndarray, first_row: int) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as err:
                raise ConvaeError(f"{self.path}: cannot read the data file ({err.strerror}); did it vanish?") from None
        want, where = out.nbytes, self.offset + first_row * self.row_bytes
        view = memoryview(out).cast("B")
        done = 0
        while done < want:
            try:
                got = os.preadv(self._fd, [view[done:]], where + done)
            except OSError as err:
                raise ConvaeError(f"{self.path}: cannot read the data file ({err.strerror})") from None
            if got == 0:
                raise ConvaeError(f"{self.path}: the file ended early; was it truncated or replaced while in use?")
            done += got

    def changed(self) -> str | None:
        """Why the file no longer is the one opened (vanished, resized, rewritten), or None."""
        try:
            st = os.stat(self.path)
        except OSError:
            return f"{self.path} vanished"
        if (st.st_size, st.st_mtime_ns) != self.stamp:
            return f"{self.path} changed (size or modification time)"
        return None
